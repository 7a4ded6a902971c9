/**
 * A shared helper: one `ferry serve` that, besides the session on its own
 * stdin/stdout, takes further sessions on a Unix socket. Other SSH connections
 * of the same client reach it through an OpenSSH `direct-streamlocal` channel
 * instead of starting a helper each: on a 2-core host, 16 streams started 16
 * Node processes (~0.19 s of CPU each) before the first byte moved.
 *
 * The socket lives in a fresh directory (mode 0700, so only this user can
 * connect) under the temporary directory, which is node-local on the usual
 * HPC setups; a socket reached from another node fails to connect and the
 * client starts a helper of its own. The socket closes when the session that
 * opened it ends; sessions already joined run to their end.
 */
import { rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

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

/** Listens for sessions; `session` serves one and resolves when it ends. */
export async function openHub(session: (socket: Socket) => Promise<void>, maxSessions = MAX_HUB_SESSIONS): Promise<Hub> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-hub-'));
  const path = join(dir, 's');
  const running = new Set<Promise<void>>();
  const server: Server = createServer((socket) => {
    if (running.size >= maxSessions) {
      socket.destroy();
      return;
    }
    socket.on('error', () => {});
    const p = session(socket)
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
  } catch (err) {
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
