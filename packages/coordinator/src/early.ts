/**
 * The coordinator's first connection, opened as soon as the command line is
 * known. A small copy's time goes mostly to waiting: the SSH login, then the
 * remote helper starting (a python or node process on the other host). This
 * module loads only core and transport, so the CLI can start that wait
 * before it loads the rest of the coordinator (agents, NATS, trees), and the
 * two overlap instead of following each other. The command's first
 * connectAny for the same hosts, settings and data path takes the connection
 * where it would have opened its own (prepare.ts), so errors come out in the
 * same order as before: a missing source is still reported first.
 */
import { statSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { BENCH_DISCARD_ENV, benchDiscardRequested, parseLocation, resolveCopyOptions } from '@ferry/core';
import type { CopyOptions } from '@ferry/core';
import { connectAhead, coordinatorConnectOptions, dropAhead, remoteSideOf } from './prepare.js';

/**
 * Starts the first connection of `ferry cp|sync|check SOURCE DESTINATION`;
 * nothing where the command will not open one the usual way (both sides
 * local or remote, a control-plane benchmark, options that do not parse, a
 * local source that is missing, or a directory when `trees` is false: the
 * command itself says what is wrong). The promise settles (never rejects)
 * when the caller should load the rest of ferry: once the login is done and
 * the remote helper is starting (connectAhead), at once where no connection
 * was started.
 */
export function connectEarly(source: string, destination: string, given: CopyOptions, signal?: AbortSignal, trees = true): Promise<void> {
  try {
    const src = parseLocation(source);
    if (benchDiscardRequested(process.env[BENCH_DISCARD_ENV], src, parseLocation(destination))) return Promise.resolve();
    const remoteSide = remoteSideOf(source, destination);
    if (!remoteSide) return Promise.resolve();
    // No login for a command that will fail at once: a local source that is not there, or a
    // directory where the command takes none (cp without -r).
    if (src.kind === 'local') {
      const st = statSync(src.path, { throwIfNoEntry: false });
      if (!st || (st.isDirectory() && !trees)) return Promise.resolve();
    }
    const options = resolveCopyOptions(given, { cores: availableParallelism() });
    return connectAhead(remoteSide, options, coordinatorConnectOptions(options, signal));
  } catch {
    // The command reports it.
    return Promise.resolve();
  }
}

/** Closes the early connection if the command did not take it. */
export function dropEarly(): void {
  dropAhead();
}
