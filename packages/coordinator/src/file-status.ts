/**
 * status.json of a single-file job, as `ferry status` reads it: written at the
 * start, once a second while agents work (collect-reports.ts), and at the end.
 */
import type { FerryError } from '@ferry/core';
import type { RunState } from './file-context.js';
import { rangeBytesOf } from './file-context.js';
import { writeStatus } from './job-state.js';
import type { JobPhase, JobStatus } from './job-state.js';
import type { PreparedCopy } from './prepare.js';

export class FileStatus {
  phase: JobPhase = 'running';
  /** What was written last; undefined until the job has started. */
  last: JobStatus | undefined;

  constructor(
    private readonly jobDir: string,
    private readonly prep: PreparedCopy,
    private readonly state: RunState,
  ) {}

  /**
   * Counters that follow from the journal are recomputed on every save; what the agents
   * report (rates, per node and host) is kept from the last save that had it.
   */
  readonly save = async (extra: Partial<JobStatus> = {}): Promise<void> => {
    const { prep, state } = this;
    const { plan } = state;
    const status: JobStatus = {
      jobId: prep.jobId,
      source: prep.sourceLabel,
      destination: prep.destinationLabel,
      fileBytes: prep.fileBytes,
      ranges: plan.count,
      rangesInFlight: 0,
      rate: 0,
      agents: [],
      nodes: [],
      hosts: [],
      errors: 0,
      ...this.last,
      ...extra,
      phase: this.phase,
      pid: process.pid,
      updatedAt: Date.now(),
      bytesDone: rangeBytesOf(plan, state.done),
      rangesDone: state.done.size,
      rangesPending: extra.rangesPending ?? Math.max(0, plan.count - state.done.size - (extra.rangesInFlight ?? 0)),
      resends: state.resends,
    };
    if (this.phase !== 'running') {
      status.rangesInFlight = 0;
      status.rate = 0;
    }
    this.last = status;
    await writeStatus(this.jobDir, status).catch(() => {});
  };

  /** The job ended with `e`: interrupted or failed (nothing is written before the job started). */
  async failed(e: FerryError): Promise<void> {
    if (!this.last) return;
    this.phase = e.code === 'INTERRUPTED' ? 'interrupted' : 'failed';
    await writeStatus(this.jobDir, { ...this.last, phase: this.phase, updatedAt: Date.now(), error: { code: e.code, message: e.message } }).catch(() => {});
  }
}
