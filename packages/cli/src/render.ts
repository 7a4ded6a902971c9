/**
 * Turning copy events into output: a progress bar on a terminal, a summary,
 * or NDJSON for scripts.
 */
import { formatBytes, formatDuration, formatRate } from '@ferry/core';
import type { OutputStyle } from '@ferry/core';
import type { CopyEvent, CopySummary, TreeSummary } from '@ferry/coordinator';

export interface Output {
  write(text: string): void;
  isTTY?: boolean;
  columns?: number;
}

export interface Renderer {
  onEvent(event: CopyEvent): void;
  /** Clears any progress line before an error is printed. */
  finish(): void;
}

export function formatSummary(s: CopySummary): string {
  const resumed = s.resumedBytes > 0 ? `; resumed: ${formatBytes(s.resumedBytes)} were done before, ${formatBytes(s.movedBytes)} moved now` : '';
  const lines = [
    `ferry: copied ${s.source} -> ${s.destination}`,
    `  ${formatBytes(s.bytes)} (${s.bytes} bytes) in ${s.seconds.toFixed(1)} s, ${formatRate(s.seconds > 0 ? s.movedBytes / s.seconds : 0)}${resumed}`,
    ...(s.rangesReused > 0 ? [`  delta: ${s.rangesSent} range${s.rangesSent === 1 ? '' : 's'} sent, ${s.rangesReused} (${formatBytes(s.reusedBytes)}) reused from the old file`] : []),
    `  ${s.ranges} ranges, ${s.resends} re-sent, ${s.agents} agent${s.agents === 1 ? '' : 's'} x ${s.streams} stream${s.streams === 1 ? '' : 's'}${s.tuned ? ' (tuned)' : ''}, ${s.mode} mode`,
    `  root hash (${s.hash}): ${s.rootHash}`,
  ];
  return lines.join('\n') + '\n';
}

export function formatTreeSummary(s: TreeSummary): string {
  const resumed = s.resumedFiles > 0 ? `; ${s.resumedFiles} files (${formatBytes(s.resumedBytes)}) were done by an earlier run` : '';
  const attributes = s.attributes > 0 ? `, ${s.attributes} had their extended attributes alone set again` : '';
  const synced = s.unchanged > 0 || s.deleted > 0 || s.attributes > 0 ? `\n  ${s.unchanged} entries were already the same at the destination${attributes}${s.deleted > 0 ? `, ${s.deleted} deleted there` : ''}` : '';
  const notCopied = s.failed > 0 || s.skipped > 0 ? `\n  ${s.failed} failed, ${s.skipped} skipped (listed in ${s.stateDir}/failed.ndjson and skipped.ndjson)` : '';
  const lines = [
    `ferry: copied ${s.source} -> ${s.destination}`,
    `  ${s.files} files, ${formatBytes(s.bytes)} in ${s.seconds.toFixed(1)} s, ${formatRate(s.seconds > 0 ? s.bytes / s.seconds : 0)}, ${Math.round(s.filesPerSec)} files/s${resumed}`,
    `  ${s.dirs} directories, ${s.symlinks} symlinks, ${s.hardlinks} hard links; ${s.streams} stream${s.streams === 1 ? '' : 's'}, ${s.mode} mode, ${s.hash} hashes${synced}${notCopied}`,
  ];
  return lines.join('\n') + '\n';
}

/** `ferry sync --dry-run`'s last line: what a sync would do. */
export function formatSyncPlan(s: TreeSummary): string {
  const p = s.plan!;
  const unreadable = p.unreadable > 0 ? `; ${p.unreadable} source entries could not be read (--delete would delete nothing)` : '';
  return `ferry: dry run, nothing changed: ${p.create} to create, ${p.update} to update, ${p.delete} to delete, ${p.unchanged} unchanged (${s.source} -> ${s.destination})${unreadable}\n`;
}

export function treeProgressLine(e: Extract<CopyEvent, { type: 'tree.progress' }>, rate: number): string {
  const failed = e.failed > 0 ? `  ${e.failed} failed` : '';
  return `${e.files} files  ${formatBytes(e.bytes)}  ${formatRate(rate)}  ${e.dirs} dirs${failed}`;
}

export function progressLine(e: Extract<CopyEvent, { type: 'progress' }>, columns = 80): string {
  const pct = e.total > 0 ? e.bytes / e.total : 1;
  const tail = ` ${(pct * 100).toFixed(1).padStart(5)}%  ${formatBytes(e.bytes)}/${formatBytes(e.total)}  ${formatRate(e.rate)}  ETA ${e.etaSeconds === null ? '--' : formatDuration(e.etaSeconds)}  agents ${e.agentsBusy}/${e.agents}`;
  const width = Math.max(10, Math.min(40, columns - tail.length - 3));
  const filled = Math.round(pct * width);
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}]${tail}`;
}

export function createRenderer(style: OutputStyle, stdout: Output, stderr: Output, verbose = false): Renderer {
  if (style === 'json') {
    return {
      onEvent: (event) => stdout.write(JSON.stringify(event) + '\n'),
      finish: () => {},
    };
  }
  const bar = style === 'human' && stderr.isTTY === true;
  let shown = false;
  let treeStart = 0;
  const clear = () => {
    if (shown) stderr.write('\r\x1b[2K');
    shown = false;
  };
  return {
    onEvent: (event) => {
      switch (event.type) {
        case 'progress':
          if (bar) {
            stderr.write(`\r\x1b[2K${progressLine(event, stderr.columns ?? 80)}`);
            shown = true;
          }
          return;
        case 'range.resend':
          clear();
          if (style !== 'quiet') stderr.write(`ferry: range ${event.range} re-sent: ${event.reason}\n`);
          return;
        case 'agent.error':
          clear();
          if (style !== 'quiet' && (event.fatal || verbose)) stderr.write(`ferry: agent ${event.agent}: ${event.message}\n`);
          return;
        case 'warning':
          clear();
          if (style !== 'quiet') stderr.write(`ferry: warning: ${event.message}\n`);
          return;
        case 'log':
          if (verbose) {
            clear();
            stderr.write(`ferry: ${event.message}\n`);
          }
          return;
        case 'done':
          clear();
          if (style === 'human') stdout.write(formatSummary(event));
          return;
        case 'tree.start':
          treeStart = Date.now();
          return;
        case 'tree.progress':
          if (bar) {
            const s = (Date.now() - treeStart) / 1000;
            stderr.write(`\r\x1b[2K${treeProgressLine(event, s > 0 ? event.bytes / s : 0)}`);
            shown = true;
          }
          return;
        case 'file.failed':
          clear();
          if (style !== 'quiet') stderr.write(`ferry: not copied: ${event.path}: ${event.message}\n`);
          return;
        case 'tree.done':
          clear();
          if (style === 'human') stdout.write(event.plan ? formatSyncPlan(event) : formatTreeSummary(event));
          return;
        case 'sync.change':
          clear();
          if (style === 'human') stdout.write(`${event.action.padEnd(6)} ${event.path === '' ? '.' : event.path}${event.reason ? ` (${event.reason})` : ''}\n`);
          return;
        default:
          return;
      }
    },
    finish: clear,
  };
}
