/**
 * The handshake that opens every session joining a shared helper (serve's
 * hub.ts, transport's remote.ts), before the framed protocol starts.
 *
 * The client that starts a helper with `--shared-helper` makes a secret (the
 * hub key) and hands it to the helper in HELLO, inside its SSH session: never
 * on a command line, never in a file. A socket path says nothing about who
 * listens there (another user's listener at the same path on a second node
 * behind one host name), so each join proves it knows the key and the hub
 * proves it back, both over fresh nonces; the key itself never crosses the
 * socket.
 *
 *   joiner -> hub : JOIN_MAGIC | joinNonce (32)
 *   hub -> joiner : HUB_GO | hubNonce (32) | HMAC(key, "hub" | joinNonce | hubNonce)
 *                   (or HUB_FULL, and the hub closes: no room for this session)
 *   joiner -> hub : HMAC(key, "join" | joinNonce | hubNonce)
 *   hub -> joiner : HUB_ACCEPTED, then the framed protocol (HELLO first);
 *                   or HUB_REFUSED, and the hub closes.
 *
 * The joiner checks the hub's proof before it sends its own, and sends
 * nothing else (no path, no data) until the hub accepted it. The two proofs
 * are labelled apart, so neither side can be used to answer the other's
 * challenge. Functions over data only: the sockets are the callers'.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

/** Bytes of the hub key and of each nonce. */
export const HUB_KEY_BYTES = 32;
export const HUB_NONCE_BYTES = 32;
const PROOF_BYTES = 32;

/** Opens a join: tells a hub from a helper's stdin, and the version of this handshake. */
export const JOIN_MAGIC = Buffer.from('ferry-hub-join-1\n', 'latin1');

export const HUB_GO = 0;
export const HUB_FULL = 1;
export const HUB_ACCEPTED = 0;
export const HUB_REFUSED = 2;

/** Bytes of the joiner's opening message. */
export const JOIN_REQUEST_BYTES = JOIN_MAGIC.length + HUB_NONCE_BYTES;
/** Bytes of the hub's answer to it (HUB_GO): status, nonce, proof. */
export const HUB_CHALLENGE_BYTES = 1 + HUB_NONCE_BYTES + PROOF_BYTES;
/** Bytes of the joiner's proof. */
export const JOIN_PROOF_BYTES = PROOF_BYTES;

/** The hub key as HELLO carries it (hex), or undefined when `value` is not one. */
export function parseHubKey(value: unknown): Buffer | undefined {
  if (typeof value !== 'string' || !/^[0-9a-f]+$/.test(value) || value.length !== 2 * HUB_KEY_BYTES) return undefined;
  return Buffer.from(value, 'hex');
}

function proof(label: 'hub' | 'join', key: Buffer, joinNonce: Buffer, hubNonce: Buffer): Buffer {
  return createHmac('sha256', key).update(label).update(joinNonce).update(hubNonce).digest();
}

function same(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

export function joinRequest(joinNonce: Buffer): Buffer {
  return Buffer.concat([JOIN_MAGIC, joinNonce]);
}

/** The joiner's nonce from its opening message, or undefined when it is not one. */
export function parseJoinRequest(message: Buffer): Buffer | undefined {
  if (message.length !== JOIN_REQUEST_BYTES || !message.subarray(0, JOIN_MAGIC.length).equals(JOIN_MAGIC)) return undefined;
  return Buffer.from(message.subarray(JOIN_MAGIC.length));
}

export function hubChallenge(key: Buffer, joinNonce: Buffer, hubNonce: Buffer): Buffer {
  return Buffer.concat([Buffer.from([HUB_GO]), hubNonce, proof('hub', key, joinNonce, hubNonce)]);
}

/**
 * What the joiner makes of the hub's answer: `full` (no room), `ok` with the
 * proof to send back, or `unproven` (the peer does not know the key, or is
 * not a hub at all).
 */
export function checkHubChallenge(key: Buffer, joinNonce: Buffer, answer: Buffer): { status: 'full' } | { status: 'unproven' } | { status: 'ok'; reply: Buffer } {
  if (answer.length === 1 && answer[0] === HUB_FULL) return { status: 'full' };
  if (answer.length !== HUB_CHALLENGE_BYTES || answer[0] !== HUB_GO) return { status: 'unproven' };
  const hubNonce = answer.subarray(1, 1 + HUB_NONCE_BYTES);
  if (!same(answer.subarray(1 + HUB_NONCE_BYTES), proof('hub', key, joinNonce, hubNonce))) return { status: 'unproven' };
  return { status: 'ok', reply: proof('join', key, joinNonce, hubNonce) };
}

/** Whether the joiner's proof shows it knows the key. */
export function checkJoinProof(key: Buffer, joinNonce: Buffer, hubNonce: Buffer, joinProof: Buffer): boolean {
  return same(joinProof, proof('join', key, joinNonce, hubNonce));
}
