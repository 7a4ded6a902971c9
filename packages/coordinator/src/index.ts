/**
 * @ferry/coordinator: plans, publishes, journals, verifies and finalizes a copy.
 *
 * ```ts
 * const summary = await runCopy({ source: '/data/big.h5', destination: 'dtn:/lustre/in/', agentCommand: [process.execPath, cli, 'agent'] });
 * ```
 */
export { runCopy, defaultStateDir, LOCAL_BUS_ENV } from './copy.js';
export { setupJobStreams } from './nats-streams.js';
export type { CopyRequest } from './copy.js';
export type { CopyEvent, CopySummary, TreeSummary } from './events.js';
export { runTreeCopy, HUGE_FILE_BYTES } from './tree-copy.js';
export { isLocalDirectory } from './tree-target.js';
export { runSync } from './sync.js';
export type { FileSyncSummary } from './sync.js';
export { startEmbeddedNats, findExecutable, freePort } from './nats-server.js';
export type { EmbeddedNats, EmbeddedNatsOptions } from './nats-server.js';
export { prepareCopy, makeJobId } from './prepare.js';
export type { PreparedCopy } from './prepare.js';
export { JournalFile } from './journal-file.js';
export { checkPrivateDir, readPrivateFile, writePrivateFile } from './private-file.js';
export { jobDirOf, listJobs, readJobFile, readStatus, readTreeJobFile, readTreeStatus, pidAlive, foldJournal } from './job-state.js';
export type { JobFile, JobPhase, JobStatus, TreeJobFile, TreeJobStatus } from './job-state.js';
export { expandRemoteSources } from './remote-glob.js';
export { jobManifest, readTreeRecords, writeManifestFile } from './manifest.js';
export type { JobManifest } from './manifest.js';
export { runVerify, listRanges, DEFAULT_VERIFY_CONNECTIONS } from './verify.js';
export type { BadRange, VerifyEvent, VerifyProblem, VerifyRequest, VerifySummary } from './verify.js';
export { runCheck, checkOutcome, DEFAULT_CHECK_RANGE_BYTES, DEFAULT_CHECK_STREAMS } from './check.js';
export type { CheckEntry, CheckEvent, CheckRequest, CheckSummary } from './check.js';
export { openReportFile } from './report-file.js';
export type { ReportFile } from './report-file.js';
