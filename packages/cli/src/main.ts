#!/usr/bin/env node
/**
 * Entry point of the `ferry` command.
 */
import { EXIT_CODES } from '@ferry/core';

const controller = new AbortController();
let interrupts = 0;
const onSignal = (name: string) => {
  interrupts++;
  if (interrupts > 1) {
    process.stderr.write(`ferry: ${name} again, exiting now\n`);
    process.exit(EXIT_CODES.INTERRUPTED);
  }
  controller.abort(new Error(name));
};
process.on('SIGINT', () => onSignal('SIGINT'));
process.on('SIGTERM', () => onSignal('SIGTERM'));
// A closed pipe on stdout (ferry cp ... | head) must not crash the copy.
process.stdout.on('error', () => {});

const io = {
  stdout: { write: (s: string) => void process.stdout.write(s), isTTY: process.stdout.isTTY === true, columns: process.stdout.columns },
  stderr: { write: (s: string) => void process.stderr.write(s), isTTY: process.stderr.isTTY === true, columns: process.stderr.columns },
  exitCode: 0,
  signal: controller.signal,
};

const args = process.argv.slice(2);
// sshd starts a bare `ferry serve` for every stream: it skips loading the rest of the CLI.
const code =
  args.length === 1 && args[0] === 'serve'
    ? await (await import('./serve-command.js')).runServe(io)
    : await (await import('./cli.js')).runCli(args, io);
process.exitCode = code;
// Agents and helpers may hold handles (sockets in teardown); do not linger once done.
setTimeout(() => process.exit(code), 2000).unref();
