/**
 * @ferry/transport: SSH for ferry. Connections with known_hosts checking and
 * ~/.ssh/config honoured (resolveRemoteHost: one host's SshRoute),
 * the helper-protocol client, SFTP range I/O, and `connectRemote()` which puts
 * both behind one `RemoteConnection` interface.
 *
 * ```ts
 * const remote = await connectRemote({ host, port: 22, user }, ssh, { mode: 'auto', remoteCommand: 'ferry serve', windowBytes: 8 << 20 });
 * const file = await remote.openFile('/lustre/in/.big.h5.ferry-1a2b.part', 'write');
 * const w = file.beginWrite(offset, length, 'xxh3');
 * ```
 */
export { connectSsh, routeFromSettings, shellQuote } from './ssh.js';
export { EMPTY_SSH_CONFIG, evaluateSshConfig, loadSshConfig, parseSshConfig } from './ssh-config.js';
export type { ConfigSource, HostConfig, SshConfig } from './ssh-config.js';
export { DEFAULT_KEEPALIVE_COUNT_MAX, DEFAULT_KEEPALIVE_INTERVAL_MS, resolveRemoteHost } from './ssh-route.js';
export type { CommandLineSsh, LocalFacts, ResolvedRemoteHost, RouteDefaults } from './ssh-route.js';
export type { ConnectOptions } from './ssh.js';
export { HelperClient, isSlowHelperStart } from './helper-client.js';
export type { HelperStreams, RangeWrite } from './helper-client.js';
export { SftpSession, sftpErrno } from './sftp-session.js';
export { connectRemote, MAX_SHARED_JOINS } from './remote.js';
export { classifySshFailure, connectOpenSsh, opensshArgs } from './openssh.js';
export type { BatchRead, BatchResult, OpenFileOptions, RangeSink, ReadBatchResult, ReadBatchSink, RemoteConnection, RemoteFile, RemoteOptions, SetAttrs, WalkWanted } from './remote.js';
export type { BatchWrite } from './helper-client.js';
export type { BatchEntry, BatchEntryKind } from '@ferry/core';
export { execCapture } from './exec.js';
export type { SendWindow } from './send-window.js';
export { packetRingStats, usePacketRing } from './packet-ring.js';
export { gatherStats, gatherWrites } from './gather-writes.js';
export type { GatherStats } from './gather-writes.js';
export { CHANNEL_READ_BUFFER_BYTES, limitReadBuffer } from './read-buffer.js';
export type { PacketRingStats } from './packet-ring.js';
export type { ExecResult } from './exec.js';
export {
  appendKnownHost,
  checkHostKey,
  formatKnownHostsLine,
  hostKeyAlgorithmsFor,
  hostKeyName,
  knownKeyTypes,
  matchHost,
  parseKnownHosts,
  readKnownHostsFiles,
  readKnownHostsSources,
} from './known-hosts.js';
export type { KnownHostEntry } from './known-hosts.js';
export { diesWithThisProcess, pdeathsigTool } from './parent-death.js';
export type { DeathSignal } from './parent-death.js';
