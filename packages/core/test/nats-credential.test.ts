import { describe, expect, it } from 'vitest';
import { FerryError, NATS_TLS_ENV, decodeClientTls, encodeClientTls } from '../src/index.js';

const cred = { ca: '-----BEGIN CERTIFICATE-----\nca\n', cert: '-----BEGIN CERTIFICATE-----\nc\n', key: '-----BEGIN PRIVATE KEY-----\nk\n' };

describe('the NATS credential in the environment', () => {
  it('is one line that reads back as it was written', () => {
    const line = encodeClientTls(cred);
    expect(line).not.toMatch(/\s/);
    expect(decodeClientTls(line)).toEqual(cred);
  });

  it('refuses anything but the three PEM blocks, naming the variable', () => {
    for (const bad of ['', 'not base64 json', encodeClientTls({ ...cred, key: 'x' }), Buffer.from('[1,2]').toString('base64'), Buffer.from('null').toString('base64')]) {
      let err: unknown;
      try {
        decodeClientTls(bad);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(FerryError);
      expect((err as FerryError).code).toBe('USAGE');
      expect((err as FerryError).message).toContain(NATS_TLS_ENV);
    }
  });
});
