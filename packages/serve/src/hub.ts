/**
 * A shared helper: one `ferry serve` that, besides the session on its own
 * stdin/stdout, takes further sessions on a Unix socket. Other SSH connections
 * of the same client reach it through an OpenSSH `direct-streamlocal` channel
 * instead of starting a helper each: on a 2-core host, 16 streams started 16
 * Node processes (~0.19 s of CPU each) before the first byte moved.
 *
 * The socket lives in a fresh directory (mode 0700, so only this user can
 * connect) under `$XDG_RUNTIME_DIR` when that is a directory of this user's
 * that nobody else can enter, else under the temporary directory; both are
 * node-local on the usual HPC setups. Before a session is served, the joiner
 * proves it knows the key its client gave this helper in HELLO, and the hub
 * proves it back (core's hub-auth.ts): a socket path alone proves nothing (the
 * same path on another node behind one host name may be another user's
 * listener, and a directory's name in /tmp is visible to all). A join that
 * does not prove the key is refused and never reaches `serve()`.
 *
 * The socket closes when the session that opened it ends; sessions already
 * joined run to their end.
 */
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { chmod, lstat, mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { HUB_ACCEPTED, HUB_FULL, HUB_NONCE_BYTES, HUB_REFUSED, JOIN_PROOF_BYTES, JOIN_REQUEST_BYTES, checkJoinProof, hubChallenge, parseJoinRequest } from '@ferry/core';

export interface Hub {
  /** The socket's path, for the client's `direct-streamlocal` channels. */
  readonly path: string;
  /** Sessions joined and not yet ended. */
  readonly sessions: number;
  /** Stops taking sessions, removes the socket, and resolves when the joined sessions have ended. */
  close(): Promise<void>;
}

/** Sessions one hub takes at most; a client that finds it full starts a helper of its own. */
export const MAX_HUB_SESSIONS = 64;

/** How long a joiner may take to prove itself before the hub hangs up. */
export const JOIN_TIMEOUT_MS = 10_000;

export interface HubOptions {
  /** The secret each joining session must prove it knows (HUB_KEY_BYTES, from the client's HELLO). */
  key: Buffer;
  /** @default MAX_HUB_SESSIONS */
  maxSessions?: number;
  /** Where the socket's directory goes. @default socketBase(): $XDG_RUNTIME_DIR when safe, else the temporary directory */
  base?: string;
  /** @default JOIN_TIMEOUT_MS */
  joinTimeoutMs?: number;
}

/**
 * Where hub sockets go: `$XDG_RUNTIME_DIR` when it is set, absolute, a
 * directory (not a link) owned by this user and closed to everyone else, as
 * systemd makes it; the temporary directory otherwise.
 */
export async function socketBase(env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const runtime = env.XDG_RUNTIME_DIR;
  if (runtime && isAbsolute(runtime)) {
    const st = await lstat(runtime).catch(() => undefined);
    if (st && st.isDirectory() && st.uid === process.getuid?.() && (st.mode & 0o077) === 0) return runtime;
  }
  return tmpdir();
}

/** Why `dir` (just made for a socket) is not this user's alone, or undefined when it is. */
export async function privateDirProblem(dir: string): Promise<string | undefined> {
  const st = await lstat(dir);
  if (!st.isDirectory()) return `${dir} is not a directory`;
  if (st.uid !== process.getuid?.()) return `${dir} is owned by uid ${st.uid}, not this user (uid ${process.getuid?.()})`;
  if ((st.mode & 0o077) !== 0) return `${dir} has mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}: others can reach it`;
  return undefined;
}

/** Reads exactly `n` bytes from `socket`, or undefined when it ends, fails or sends more first. */
function readExactly(socket: Socket, n: number): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    let have = 0;
    const done = (value: Buffer | undefined) => {
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
      resolve(value);
    };
    const onData = (chunk: Buffer) => {
      parts.push(Buffer.from(chunk));
      have += chunk.length;
      // A joiner sends nothing beyond each step before it is answered: more is not a joiner.
      if (have >= n) done(have === n ? Buffer.concat(parts) : undefined);
    };
    const onEnd = () => done(undefined);
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('close', onEnd);
  });
}

/** The hub's side of the join handshake (core's hub-auth.ts): true when the joiner proved the key. */
async function acceptJoin(socket: Socket, key: Buffer, timeoutMs: number): Promise<boolean> {
  const timer = setTimeout(() => socket.destroy(), timeoutMs);
  try {
    const request = await readExactly(socket, JOIN_REQUEST_BYTES);
    const joinNonce = request && parseJoinRequest(request);
    if (!joinNonce) return false;
    const hubNonce = randomBytes(HUB_NONCE_BYTES);
    socket.write(hubChallenge(key, joinNonce, hubNonce));
    const proof = await readExactly(socket, JOIN_PROOF_BYTES);
    if (!proof || !checkJoinProof(key, joinNonce, hubNonce, proof)) {
      if (!socket.destroyed) socket.end(Buffer.from([HUB_REFUSED]));
      return false;
    }
    socket.write(Buffer.from([HUB_ACCEPTED]));
    return true;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Listens for sessions; `session` serves one that proved the key and resolves
 * when it ends. Throws when no private directory can be made for the socket.
 */
export async function openHub(session: (socket: Socket) => Promise<void>, options: HubOptions): Promise<Hub> {
  const { key } = options;
  const maxSessions = options.maxSessions ?? MAX_HUB_SESSIONS;
  const joinTimeoutMs = options.joinTimeoutMs ?? JOIN_TIMEOUT_MS;
  const dir = await mkdtemp(join(options.base ?? (await socketBase()), 'ferry-hub-'));
  const problem = await privateDirProblem(dir).catch((err: unknown) => `${dir}: ${(err as Error).message}`);
  if (problem !== undefined) {
    await rm(dir, { recursive: true, force: true }).catch(() => {});
    throw new Error(`refusing to put a shared helper's socket where others can reach it: ${problem}`);
  }
  const path = join(dir, 's');
  const running = new Set<Promise<void>>();
  const server: Server = createServer((socket) => {
    socket.on('error', () => {});
    if (running.size >= maxSessions) {
      socket.end(Buffer.from([HUB_FULL]));
      return;
    }
    // A session counts from its first byte: joiners still proving themselves take room too.
    const p = acceptJoin(socket, key, joinTimeoutMs)
      .then((joined) => (joined ? session(socket) : undefined))
      .catch(() => {})
      .finally(() => {
        socket.end();
        running.delete(p);
      });
    running.add(p);
  });
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => {
        server.off('error', reject);
        resolve();
      });
    });
    await chmod(path, 0o600);
  } catch (err) {
    server.close();
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  // A helper ended by a signal (sshd's session torn down, a batch job's end) removes the directory too.
  const onSignal = (signal: NodeJS.Signals) => {
    rmSync(dir, { recursive: true, force: true });
    process.kill(process.pid, signal);
  };
  const signals: NodeJS.Signals[] = ['SIGTERM', 'SIGHUP', 'SIGINT'];
  for (const s of signals) process.once(s, onSignal);
  let closing: Promise<void> | undefined;
  return {
    path,
    get sessions() {
      return running.size;
    },
    close() {
      closing ??= (async () => {
        // close() stops new sessions at once; its callback would wait for the joined ones.
        server.close();
        await rm(dir, { recursive: true, force: true });
        for (const s of signals) process.off(s, onSignal);
        while (running.size > 0) await Promise.allSettled([...running]);
      })();
      return closing;
    },
  };
}
