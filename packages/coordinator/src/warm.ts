/**
 * Warm start (see @ferry/launcher's warm.ts): with local agents, the
 * coordinator starts them before it prepares the copy, and tells each which
 * connections its slots will open, so their start-up overlaps the
 * coordinator's own instead of following it. FERRY_WARM_START=0 turns it off
 * (agents then start once the job exists, as with every other launcher).
 */
import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { MESSAGE_VERSION, chooseRangeBytes, globalSlot, parseLocation, slotHost, slotStaggerMs } from '@ferry/core';
import type { RemoteHost, ResolvedCopyOptions, SshSettings, WarmHint } from '@ferry/core';
import { WarmAgents } from '@ferry/launcher';
import type { CopyRequest } from './copy.js';
import { remoteHostsOf, sshSettings } from './prepare.js';

export const WARM_START_ENV = 'FERRY_WARM_START';

/**
 * The connections agent `index` will open: one per slot that is not idle, with
 * its first wait; with `rangeCount` known (a push), none for slots beyond it
 * (they connect only if work reaches them).
 */
export function warmHint(index: number, hosts: RemoteHost[], ssh: SshSettings, options: Pick<ResolvedCopyOptions, 'streams' | 'maxConnectionsPerHost' | 'mode' | 'remoteCommand' | 'windowBytes'>, rangeCount = Infinity): WarmHint {
  const connections: WarmHint['connections'] = [];
  for (let slot = 0; slot < options.streams; slot++) {
    if (globalSlot(index, slot, options.streams) >= rangeCount) break;
    const h = slotHost(index, slot, options.streams, hosts.length, options.maxConnectionsPerHost);
    if (h !== undefined) connections.push({ host: hosts[h]!, delayMs: slotStaggerMs(index, slot, options.streams) });
  }
  return { v: MESSAGE_VERSION, connections, ssh, mode: options.mode, remoteCommand: options.remoteCommand, windowBytes: options.windowBytes };
}

/**
 * Starts the local agents of a copy ahead of its preparation, or returns
 * undefined where that does not apply (another launcher, agents that join by
 * themselves, a discard benchmark, a command line prepare will refuse anyway).
 * A push starts no more agents than its ranges need, a pull one (its size is
 * not known yet); the job's launch adds the rest (WarmAgents.go).
 */
export async function startWarmAgents(request: CopyRequest, options: ResolvedCopyOptions, discard: boolean): Promise<WarmAgents | undefined> {
  if (process.env[WARM_START_ENV] === '0' || discard) return undefined;
  if ((request.externalAgents ?? 0) > 0 || (request.launcher && request.launcher.name !== 'local')) return undefined;
  let src, dst;
  try {
    src = parseLocation(request.source);
    dst = parseLocation(request.destination);
  } catch {
    return undefined;
  }
  const remote = src.kind === 'remote' && dst.kind === 'local' ? src : src.kind === 'local' && dst.kind === 'remote' ? dst : undefined;
  if (!remote) return undefined;
  let ssh: SshSettings;
  // Connections opened ahead: one per slot that will have a range. A pull does not know
  // the size yet: only the first slot, which every copy uses (the others connect once the
  // job exists, as without warm start, so a small file costs no connection it won't use).
  let ahead = 1;
  try {
    ssh = await sshSettings(options);
    if (src.kind === 'local') {
      const size = (await stat(resolve(src.path))).size;
      ahead = Math.max(1, Math.ceil(size / (options.rangeBytes ?? chooseRangeBytes(size))));
    }
  } catch {
    // prepareCopy says what is wrong.
    return undefined;
  }
  const hosts = remoteHostsOf(remote);
  // Agents that will be needed whatever the job turns out to be; go() starts any more it needs.
  const count = Math.min(options.agents, Math.ceil(ahead / options.streams));
  return new WarmAgents({ count, command: request.agentCommand, env: {}, hintFor: (i) => warmHint(i, hosts, ssh, options, ahead) });
}
