/**
 * `ferry status` and `ferry resume`: both work from the state directory alone,
 * so they answer while a job runs, after it died, or days later.
 */
import { FerryError, formatBytes, formatDuration, formatRate } from '@ferry/core';
import type { JobFile, JobStatus, TreeJobFile, TreeJobStatus } from '@ferry/coordinator';

export interface SingleJobView {
  kind?: undefined;
  job: JobFile;
  status: JobStatus | undefined;
  /** The phase, corrected: a 'running' job whose coordinator is gone was interrupted. */
  phase: string;
}

/** A tree copy (`cp -r`). */
export interface TreeJobView {
  kind: 'tree';
  job: TreeJobFile;
  status: TreeJobStatus | undefined;
  phase: string;
}

export type JobView = SingleJobView | TreeJobView;

export async function loadJob(stateDir: string, idOrPrefix: string): Promise<JobView> {
  const { jobDirOf, listJobs, readJobFile, readStatus, readTreeJobFile, readTreeStatus, pidAlive } = await import('@ferry/coordinator');
  const ids = (await listJobs(stateDir)).filter((id) => id.startsWith(idOrPrefix));
  if (ids.length === 0) throw new FerryError('USAGE', `no job ${idOrPrefix} in ${stateDir}: 'ferry status' lists the jobs there (or pass --state-dir)`);
  if (ids.length > 1) throw new FerryError('USAGE', `job id prefix ${idOrPrefix} matches ${ids.length} jobs (${ids.join(', ')}): give more of it`);
  const dir = jobDirOf(stateDir, ids[0]!);
  const tree = await readTreeJobFile(dir);
  if (tree) {
    const status = await readTreeStatus(dir);
    let phase: string = status?.phase ?? 'new';
    if (status?.phase === 'running' && !pidAlive(status.pid)) phase = 'interrupted (its coordinator is gone)';
    return { kind: 'tree', job: tree, status, phase };
  }
  const job = await readJobFile(dir);
  if (!job) throw new FerryError('USAGE', `job ${ids[0]} in ${stateDir} has no readable job.json`);
  const status = await readStatus(dir);
  let phase: string = status?.phase ?? 'new';
  if (status?.phase === 'running' && !pidAlive(status.pid)) phase = 'interrupted (its coordinator is gone)';
  return { job, status, phase };
}

export async function loadJobs(stateDir: string): Promise<JobView[]> {
  const { listJobs } = await import('@ferry/coordinator');
  const out: JobView[] = [];
  for (const id of await listJobs(stateDir)) out.push(await loadJob(stateDir, id));
  return out;
}

function percent(v: SingleJobView): string {
  const done = v.status?.bytesDone ?? 0;
  return v.job.fileBytes > 0 ? `${((done / v.job.fileBytes) * 100).toFixed(1)}%` : '100%';
}

export function formatJobList(views: JobView[], stateDir: string): string {
  if (views.length === 0) return `no jobs in ${stateDir}\n`;
  const rows = views.map((v) =>
    v.kind === 'tree'
      ? `${v.job.jobId}  ${v.phase.padEnd(11)} ${`${(v.status?.files ?? 0) + (v.status?.resumedFiles ?? 0)}f`.padStart(6)}  ${formatBytes(v.status?.bytes ?? 0).padStart(9)}  ${v.job.sourceLabel}/ -> ${v.job.destinationLabel}/`
      : `${v.job.jobId}  ${v.phase.padEnd(11)} ${percent(v).padStart(6)}  ${formatBytes(v.job.fileBytes).padStart(9)}  ${v.job.sourceLabel} -> ${v.job.destinationLabel}`,
  );
  return `JOB               STATE         DONE       SIZE  COPY\n${rows.join('\n')}\n`;
}

function formatTreeJob(v: TreeJobView): string {
  const s = v.status;
  const lines = [
    `job ${v.job.jobId} (tree): ${v.phase}`,
    `  ${v.job.sourceLabel}/ -> ${v.job.destinationLabel}/`,
    `  ${s?.files ?? 0} files (${formatBytes(s?.bytes ?? 0)}) copied by the last run, ${s?.resumedFiles ?? 0} done before; ${s?.dirs ?? 0} directories; ${s?.failed ?? 0} failed, ${s?.skipped ?? 0} skipped`,
  ];
  if (s?.error) lines.push(`  stopped by ${s.error.code}: ${s.error.message}`);
  if (v.phase !== 'done' && v.phase !== 'running') lines.push(`  go on with: ferry resume ${v.job.jobId}   (or rerun the same ferry cp -r command)`);
  if (s) lines.push(`  updated ${new Date(s.updatedAt).toISOString()}`);
  return lines.join('\n') + '\n';
}

export function formatJob(v: JobView): string {
  if (v.kind === 'tree') return formatTreeJob(v);
  const s = v.status;
  const lines = [
    `job ${v.job.jobId}: ${v.phase}`,
    `  ${v.job.sourceLabel} -> ${v.job.destinationLabel}`,
    `  ${formatBytes(s?.bytesDone ?? 0)} of ${formatBytes(v.job.fileBytes)} done (${percent(v)}); ranges: ${s?.rangesDone ?? 0} done, ${s?.rangesInFlight ?? 0} in flight, ${s?.rangesPending ?? v.job.rangeCount} pending of ${v.job.rangeCount} (${formatBytes(v.job.rangeBytes)} each)`,
  ];
  if (s && v.phase === 'running') {
    const eta = s.rate > 0 ? formatDuration((v.job.fileBytes - s.bytesDone) / s.rate) : '--';
    lines.push(`  rate ${formatRate(s.rate)}, ETA ${eta}, ${s.agents.length} agents, ${s.errors} errors, ${s.resends} re-sent`);
    for (const n of s.nodes ?? []) lines.push(`    node ${n.node}: ${formatRate(n.rate)}, ${n.agents} agents, ${formatBytes(n.bytes)} moved`);
    for (const a of s.agents) lines.push(`    agent ${a.agent} on ${a.node}: ${formatRate(a.rate)}, ${a.inFlight} in flight, ${formatBytes(a.bytes)} moved, ${a.errors} errors`);
  }
  if (s && s.hosts.length > 0) {
    for (const h of s.hosts) lines.push(`    remote host ${h.host}: ${formatBytes(h.bytes)} written${v.phase === 'running' ? `, ${formatRate(h.rate ?? 0)}` : ''}`);
  }
  if (s?.error) lines.push(`  stopped by ${s.error.code}: ${s.error.message}`);
  if (v.phase !== 'done' && v.phase !== 'running') lines.push(`  resume with: ferry resume ${v.job.jobId}   (or rerun the same ferry cp command)`);
  if (s) lines.push(`  updated ${new Date(s.updatedAt).toISOString()}`);
  return lines.join('\n') + '\n';
}
