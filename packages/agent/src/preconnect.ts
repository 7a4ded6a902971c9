/**
 * Warm start: a local agent is started while the coordinator still prepares
 * the copy (connects, checks the destination, creates the job), and opens the
 * SSH connections its slots will use in the meantime. On a fresh connection
 * most of the wait is the remote side: sshd, the user's shell start-up files,
 * then `ferry serve` loading; doing it alongside the coordinator's own takes
 * that off the time to the first byte.
 *
 * The hint comes from the command line and ssh_config (resolved by the
 * coordinator before any remote host was contacted), so a connection is used
 * only if the job's spec, once it arrives, asks for the same thing: the same
 * host reached the same way (its whole route), the same SSH settings, remote
 * command and window, and the mode the connection ended up in.
 * Anything else is closed and the slot connects as usual.
 *
 * The agent that runs inside the coordinator's process is also lent the
 * coordinator's own connection (lend()): one slot uses it instead of logging
 * in again, and leaves it open when done, for the coordinator still needs it.
 */
import { setMaxListeners } from 'node:events';
import { FerryError, remoteHostKey, toFerryError } from '@ferry/core';
import type { ErrorCode, JobSpec, RemoteHost, SshSettings, WarmHint } from '@ferry/core';
import { connectRemote } from '@ferry/transport';
import type { RemoteConnection } from '@ferry/transport';
import { agentHelperTimeoutMs } from './agent.js';
import { signalListeners } from './concurrency.js';

/** Failures of a connection opened ahead that the slot's own connect would only repeat, after the same wait. */
const FINAL_FAILURES: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['HOST_UNREACHABLE', 'CONNECTION_LOST', 'HELPER_UNTRUSTED']);

type Opening = Promise<RemoteConnection>;

export class Preconnected {
  private readonly byHost = new Map<string, Opening[]>();
  private readonly abort = new AbortController();
  private closed = false;
  private lent: { host: RemoteHost; conn: RemoteConnection } | undefined;
  private readonly borrowedOut = new WeakSet<RemoteConnection>();

  constructor(private readonly hint: WarmHint) {
    setMaxListeners(signalListeners(hint.connections.length), this.abort.signal);
    for (const { host, delayMs } of hint.connections) {
      const opening = this.open(host, delayMs);
      // Nobody may ever take it: its failure is reported (or not) by take().
      opening.catch(() => {});
      const key = remoteHostKey(host);
      this.byHost.set(key, [...(this.byHost.get(key) ?? []), opening]);
    }
  }

  private async open(host: RemoteHost, delayMs: number): Promise<RemoteConnection> {
    if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs));
    if (this.closed) throw new FerryError('INTERRUPTED', 'warm start ended');
    const conn = await connectRemote(host, this.hint.ssh, {
      mode: this.hint.mode,
      remoteCommand: this.hint.remoteCommand,
      windowBytes: this.hint.windowBytes,
      helperTimeoutMs: agentHelperTimeoutMs(this.hint.ssh),
      signal: this.abort.signal,
    });
    if (this.closed) {
      conn.close();
      throw new FerryError('INTERRUPTED', 'warm start ended');
    }
    return conn;
  }

  /** Offers `conn`, the coordinator's connection to `host`, to the first slot that goes there. */
  lend(host: RemoteHost, conn: RemoteConnection): void {
    this.lent = { host, conn };
  }

  /** Whether a connection to `host` was opened ahead or lent (and not taken yet). */
  has(host: RemoteHost): boolean {
    return this.lentTo(host) || (this.byHost.get(remoteHostKey(host))?.length ?? 0) > 0;
  }

  /** Whether `conn` (from take()) is the coordinator's connection, lent. */
  isLent(conn: RemoteConnection): boolean {
    return this.borrowedOut.has(conn);
  }

  private lentTo(host: RemoteHost): boolean {
    return this.lent !== undefined && remoteHostKey(this.lent.host) === remoteHostKey(host);
  }

  /**
   * A connection to `host` opened ahead, if there is one and it suits `spec`;
   * undefined when the slot is to connect itself. Throws the connection's
   * failure when connecting again would fail the same way (host unreachable).
   */
  async take(host: RemoteHost, spec: JobSpec): Promise<RemoteConnection | undefined> {
    if (this.lentTo(host)) {
      const { conn } = this.lent!;
      this.lent = undefined;
      if (this.suits(host, spec) && conn.mode === spec.mode && conn.alive) {
        const b = borrowed(conn);
        this.borrowedOut.add(b);
        return b;
      }
    }
    const list = this.byHost.get(remoteHostKey(host));
    const opening = list?.shift();
    if (!opening) return undefined;
    const suits = this.suits(host, spec);
    let conn: RemoteConnection;
    try {
      conn = await opening;
    } catch (err) {
      // Refusals the coordinator may have cleared meanwhile (it adds a new host key with
      // --accept-new-host-key) or that the slot should report itself: connect again.
      if (suits && FINAL_FAILURES.has(toFerryError(err).code)) throw err;
      return undefined;
    }
    if (!suits || conn.mode !== spec.mode || !conn.alive) {
      conn.close();
      return undefined;
    }
    return conn;
  }

  private suits(host: RemoteHost, spec: JobSpec): boolean {
    return (
      this.hint.remoteCommand === spec.remoteCommand &&
      this.hint.windowBytes === spec.windowBytes &&
      (this.hint.mode === 'auto' || this.hint.mode === spec.mode) &&
      sshKey(this.hint.ssh) === sshKey(spec.ssh) &&
      // The same host reached the same way: its route (ssh_config's answer) included.
      spec.remoteHosts.some((h) => remoteHostKey(h) === remoteHostKey(host))
    );
  }

  /** Closes every connection not taken (and stops those still opening). */
  close(): void {
    this.closed = true;
    this.lent = undefined;
    this.abort.abort();
    for (const list of this.byHost.values()) for (const opening of list.splice(0)) opening.then((c) => c.close(), () => {});
  }
}

/** `conn` for a borrower: the same connection, except that close() leaves it open for its owner. */
function borrowed(conn: RemoteConnection): RemoteConnection {
  return new Proxy(conn, {
    get(target, key) {
      if (key === 'close') return () => {};
      const value: unknown = Reflect.get(target, key, target);
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  });
}

/** SSH settings as a comparable string (absent and default fields alike, whatever encoding carried them). */
function sshKey(s: SshSettings): string {
  return JSON.stringify([s.knownHostsFile, s.knownHostsGiven ?? false, s.identityFiles, s.agentSocket ?? '', s.connectTimeoutMs, s.transport ?? 'ssh2', s.sshCommand ?? [], s.sendWindowBytes ?? 0, s.sharedHelper ?? false, s.configFile ?? '']);
}
