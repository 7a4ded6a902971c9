#!/usr/bin/env node
/**
 * Entry point of the `ferry` command.
 */
import { EXIT_CODES } from '@ferry/core';

const controller = new AbortController();
let interrupts = 0;
const onSignal = (name: string) => {
  // A closed terminal hangs up more than once (the shell signals its jobs, then the kernel the
  // foreground group as the shell exits), and nobody is there to mean "now": only a second
  // Ctrl-C or SIGTERM exits at once.
  if (name === 'SIGHUP' && interrupts > 0) return;
  interrupts++;
  if (interrupts > 1) {
    process.stderr.write(`ferry: ${name} again, exiting now\n`);
    process.exit(EXIT_CODES.INTERRUPTED);
  }
  controller.abort(new Error(name));
};
const args = process.argv.slice(2);
const serving = args[0] === 'serve';
process.on('SIGINT', () => onSignal('SIGINT'));
process.on('SIGTERM', () => onSignal('SIGTERM'));
// A closed terminal (SIGHUP) stops a copy as Ctrl-C does: agents make what they wrote
// durable and the job stays resumable. The helper keeps SIGHUP's default: it ends.
if (!serving) process.on('SIGHUP', () => onSignal('SIGHUP'));
// A closed pipe on stdout (ferry cp ... | head) or a terminal gone (EIO) must not crash the copy.
process.stdout.on('error', () => {});
process.stderr.on('error', () => {});

const io = {
  stdout: { write: (s: string) => void process.stdout.write(s), isTTY: process.stdout.isTTY === true, columns: process.stdout.columns },
  stderr: { write: (s: string) => void process.stderr.write(s), isTTY: process.stderr.isTTY === true, columns: process.stderr.columns },
  exitCode: 0,
  signal: controller.signal,
};

// sshd starts a bare `ferry serve` for every stream: it skips loading the rest of the CLI.
const code =
  args.length === 1 && serving
    ? await (await import('./serve-command.js')).runServe(io)
    : await (await import('./cli.js')).runCli(args, io);
process.exitCode = code;
// Agents and helpers may hold handles (sockets in teardown); do not linger once done.
setTimeout(() => process.exit(code), 2000).unref();
