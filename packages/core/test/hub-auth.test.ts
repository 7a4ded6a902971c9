import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { HUB_CHALLENGE_BYTES, HUB_FULL, JOIN_MAGIC, checkHubChallenge, checkJoinProof, hubChallenge, joinRequest, parseHubKey, parseJoinRequest } from '@ferry/core';

const key = randomBytes(32);
const joinNonce = randomBytes(32);
const hubNonce = randomBytes(32);

describe('shared helper join handshake', () => {
  it('lets a joiner and a hub with the same key prove it to each other', () => {
    expect(parseJoinRequest(joinRequest(joinNonce))).toEqual(joinNonce);
    const challenge = hubChallenge(key, joinNonce, hubNonce);
    expect(challenge.length).toBe(HUB_CHALLENGE_BYTES);
    const checked = checkHubChallenge(key, joinNonce, challenge);
    expect(checked.status).toBe('ok');
    expect(checkJoinProof(key, joinNonce, hubNonce, (checked as { reply: Buffer }).reply)).toBe(true);
  });

  it('finds a hub without the key unproven, and a joiner without the key refused', () => {
    const other = randomBytes(32);
    expect(checkHubChallenge(key, joinNonce, hubChallenge(other, joinNonce, hubNonce)).status).toBe('unproven');
    const theirs = checkHubChallenge(other, joinNonce, hubChallenge(other, joinNonce, hubNonce));
    expect(checkJoinProof(key, joinNonce, hubNonce, (theirs as { reply: Buffer }).reply)).toBe(false);
  });

  it("does not take the hub's proof for the joiner's (the two are labelled apart), nor a proof for other nonces", () => {
    const hubProof = hubChallenge(key, joinNonce, hubNonce).subarray(1 + 32);
    expect(checkJoinProof(key, joinNonce, hubNonce, hubProof)).toBe(false);
    const reply = (checkHubChallenge(key, joinNonce, hubChallenge(key, joinNonce, hubNonce)) as { reply: Buffer }).reply;
    expect(checkJoinProof(key, joinNonce, randomBytes(32), reply)).toBe(false);
    expect(checkJoinProof(key, randomBytes(32), hubNonce, reply)).toBe(false);
  });

  it('reads a one-byte answer as full, and anything else malformed as unproven', () => {
    expect(checkHubChallenge(key, joinNonce, Buffer.from([HUB_FULL])).status).toBe('full');
    expect(checkHubChallenge(key, joinNonce, Buffer.alloc(0)).status).toBe('unproven');
    expect(checkHubChallenge(key, joinNonce, randomBytes(HUB_CHALLENGE_BYTES)).status).toBe('unproven');
    expect(checkHubChallenge(key, joinNonce, Buffer.concat([hubChallenge(key, joinNonce, hubNonce), Buffer.from([0])])).status).toBe('unproven');
    expect(parseJoinRequest(Buffer.concat([JOIN_MAGIC, randomBytes(31)]))).toBeUndefined();
    expect(parseJoinRequest(Buffer.concat([Buffer.from('ferry-hub-join-2\n'), randomBytes(32)]))).toBeUndefined();
  });

  it('takes a hub key only as 64 hex digits', () => {
    expect(parseHubKey(key.toString('hex'))).toEqual(key);
    for (const bad of [undefined, true, '', 'xyz', key.toString('hex').slice(2), key.toString('hex').toUpperCase(), key.toString('base64')]) expect(parseHubKey(bad)).toBeUndefined();
  });
});
