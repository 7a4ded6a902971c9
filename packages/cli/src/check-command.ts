/**
 * `ferry check SRC DST`: runs the coordinator's check and renders it: the
 * differences as `rclone check --combined` marks them and a summary line
 * (human), or NDJSON events (`--json`), and the lists the options name.
 */
import { FerryError, formatBytes, toFerryError } from '@ferry/core';
import type { CheckStatus, CopyOptions } from '@ferry/core';
import type { CheckEntry, CheckEvent, CheckSummary, ReportFile } from '@ferry/coordinator';
import { reportError } from './actions.js';
import type { CliIo } from './actions.js';
import type { Output } from './render.js';

/** The list options and what each holds: all entries with their marks, or the paths of one status. */
export const CHECK_LISTS = [
  { option: '--combined', key: 'combined', status: undefined },
  { option: '--match', key: 'match', status: 'same' },
  { option: '--differ', key: 'differ', status: 'differ' },
  { option: '--missing-on-dst', key: 'missingOnDst', status: 'missing-on-dst' },
  { option: '--missing-on-src', key: 'missingOnSrc', status: 'missing-on-src' },
  { option: '--error', key: 'error', status: 'error' },
] as const satisfies ReadonlyArray<{ option: string; key: string; status: CheckStatus | undefined }>;

export interface CheckCommandOptions {
  copyOptions: CopyOptions;
  sizeOnly: boolean;
  verbose: boolean;
  /** File for each list option given (`-`: stdout). */
  lists: Partial<Record<(typeof CHECK_LISTS)[number]['key'], string>>;
}

export function formatCheckSummary(s: CheckSummary): string {
  const hashed = s.hash === 'none' ? 'sizes only' : `${formatBytes(s.bytesHashed)} hashed (${s.hash})`;
  return `ferry: check ${s.source} -> ${s.destination}: ${s.same} same, ${s.differ} differ, ${s.missingOnDst} only in source, ${s.missingOnSrc} only in destination, ${s.errors} error${s.errors === 1 ? '' : 's'}; ${hashed} in ${s.seconds.toFixed(1)} s\n`;
}

export async function checkCommand(io: CliIo, source: string, destination: string, o: CheckCommandOptions): Promise<void> {
  const style = o.copyOptions.json ? 'json' : o.copyOptions.quiet ? 'quiet' : 'human';
  const opened: ReportFile[] = [];
  let early: typeof import('@ferry/coordinator/early') | undefined;
  try {
    // The login starts while the rest of ferry loads (coordinator's early.ts).
    early = await import('@ferry/coordinator/early');
    await early.connectEarly(source, destination, o.copyOptions, io.signal);
    const { runCheck, checkOutcome, openReportFile } = await import('@ferry/coordinator');
    const sinks: Array<{ status: CheckStatus | undefined; out: Output }> = [];
    for (const l of CHECK_LISTS) {
      const path = o.lists[l.key];
      if (path === undefined) continue;
      if (path === '-') {
        sinks.push({ status: l.status, out: io.stdout });
        continue;
      }
      const f = await openReportFile(path, l.option);
      opened.push(f);
      sinks.push({ status: l.status, out: f });
    }
    const onEntry = (e: CheckEntry) => {
      for (const s of sinks) {
        if (s.status === undefined) s.out.write(`${e.mark} ${e.path}\n`);
        else if (s.status === e.status) s.out.write(`${e.path}\n`);
      }
      if (e.status === 'same') return;
      if (style === 'json') io.stdout.write(JSON.stringify({ type: 'check.entry', ...e }) + '\n');
      else if (style === 'human') {
        io.stdout.write(`${e.mark} ${e.path}\n`);
        if (e.status === 'error' || o.verbose) io.stderr.write(`ferry: ${e.status === 'error' ? 'not compared' : e.status}: ${e.path}: ${e.reason ?? ''}\n`);
      }
    };
    const onEvent = (e: CheckEvent) => {
      if (style === 'json') {
        if (e.type !== 'check.done') io.stdout.write(JSON.stringify(e) + '\n');
        return;
      }
      if (e.type === 'warning' && style === 'human') io.stderr.write(`ferry: warning: ${e.message}\n`);
    };
    const summary = await runCheck({ source, destination, options: o.copyOptions, sizeOnly: o.sizeOnly, onEntry, onEvent, ...(io.signal ? { signal: io.signal } : {}) });
    for (const f of opened.splice(0)) await f.close();
    const outcome = checkOutcome(summary);
    if (style === 'json') io.stdout.write(JSON.stringify({ type: 'check.done', ...summary, exitCode: outcome?.exitCode ?? 0 }) + '\n');
    else if (style === 'human') io.stdout.write(formatCheckSummary(summary));
    if (outcome && style !== 'json') io.stderr.write(`ferry: ${outcome.message}\n`);
    io.exitCode = outcome?.exitCode ?? 0;
  } catch (err) {
    for (const f of opened) await f.close().catch(() => {});
    const e = toFerryError(err);
    if (style === 'json') io.stdout.write(JSON.stringify({ type: 'error', code: e.code, message: e.message, host: e.host, path: e.path, exitCode: e.exitCode }) + '\n');
    reportError(io, e);
  } finally {
    early?.dropEarly();
  }
}

/** The list options as given on the command line, each checked to name a file. */
export function checkListsFrom(opts: Record<string, unknown>): CheckCommandOptions['lists'] {
  const lists: CheckCommandOptions['lists'] = {};
  for (const l of CHECK_LISTS) {
    const v = opts[l.key];
    if (v === undefined) continue;
    if (typeof v !== 'string' || v === '') throw new FerryError('USAGE', `${l.option} must name a file (or - for stdout)`);
    lists[l.key] = v;
  }
  return lists;
}
