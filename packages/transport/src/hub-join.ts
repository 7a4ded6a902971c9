/**
 * The joiner's side of the shared-helper handshake (core's hub-auth.ts), over
 * a `direct-streamlocal` channel to the socket a helper named in its HELLO.
 * Nothing but the handshake is sent until the hub has proved it knows the key.
 */
import { randomBytes } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { FerryError, HUB_ACCEPTED, HUB_CHALLENGE_BYTES, HUB_NONCE_BYTES, checkHubChallenge, joinRequest } from '@ferry/core';

/**
 * How a join ended: `joined` (the framed protocol may start), `full` (the hub
 * has no room), `gone` (the peer hung up or stayed silent before answering:
 * nothing was trusted or sent, the caller starts a helper of its own).
 */
export type JoinOutcome = 'joined' | 'full' | 'gone';

/**
 * Reads up to `n` bytes: resolves with what arrived once `n` have, or the
 * stream ends, or `timeoutMs` passes. More than `n` is returned as is (and
 * then fails the caller's checks): a hub sends nothing unasked.
 */
function readUpTo(stream: Duplex, n: number, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    let have = 0;
    const done = () => {
      clearTimeout(timer);
      stream.off('data', onData);
      stream.off('end', done);
      stream.off('close', done);
      resolve(Buffer.concat(parts));
    };
    const onData = (chunk: Buffer) => {
      parts.push(Buffer.from(chunk));
      have += chunk.length;
      if (have >= n) done();
    };
    const timer = setTimeout(done, timeoutMs);
    stream.on('data', onData);
    stream.once('end', done);
    stream.once('close', done);
  });
}

/**
 * Proves `key` to the hub at `path` on `label` over `stream`, after the hub
 * proved it first. Throws HELPER_UNTRUSTED when the peer answers without
 * proving the key: something else listens where the shared helper should be.
 */
export async function joinHub(stream: Duplex, key: Buffer, timeoutMs: number, label: string, path: string): Promise<JoinOutcome> {
  const untrusted = (why: string) =>
    new FerryError(
      'HELPER_UNTRUSTED',
      `the shared helper socket ${path} on ${label} ${why}: another user may be listening there (a host name that reaches several nodes, each with its own /tmp); refused to join it and sent it nothing. Drop --shared-helper for this host, or connect to one node by its own name`,
      { host: label, path },
    );
  const joinNonce = randomBytes(HUB_NONCE_BYTES);
  stream.write(joinRequest(joinNonce));
  const answer = await readUpTo(stream, HUB_CHALLENGE_BYTES, timeoutMs);
  if (answer.length === 0) return 'gone';
  const checked = checkHubChallenge(key, joinNonce, answer);
  if (checked.status === 'full') return 'full';
  if (checked.status === 'unproven') throw untrusted('answered without proving the secret this copy gave its helper');
  stream.write(checked.reply);
  const verdict = await readUpTo(stream, 1, timeoutMs);
  if (verdict.length === 1 && verdict[0] === HUB_ACCEPTED) return 'joined';
  // The hub proved the key, so this is our own helper turning the join down: a bug, not an attack.
  throw new FerryError('HELPER_UNAVAILABLE', `the shared helper on ${label} refused this connection's proof of the secret (${verdict.length === 0 ? 'it hung up' : `answer ${verdict.toString('hex')}`}): run the same ferry version on both sides`, { host: label, path });
}
