/**
 * The credential of a job's NATS beyond loopback (the coordinator's
 * nats-tls.ts makes it): the job's CA, a client certificate and its key. It
 * reaches agents the way the token does, in their environment (or the 0600
 * rendezvous file), as one line.
 */
import { FerryError } from './errors.js';

/** What a client of the job's NATS needs: the job's CA and its own certificate and key, PEM. */
export interface NatsClientTls {
  ca: string;
  cert: string;
  key: string;
}

/** The environment variable that carries a NatsClientTls to agents (base64 of its JSON). */
export const NATS_TLS_ENV = 'FERRY_NATS_TLS';

/** The one-line form of a client credential, for FERRY_NATS_TLS and the rendezvous file. */
export function encodeClientTls(tls: NatsClientTls): string {
  return Buffer.from(JSON.stringify({ ca: tls.ca, cert: tls.cert, key: tls.key })).toString('base64');
}

/** Reads FERRY_NATS_TLS's value; a malformed one is a usage error that names the variable. */
export function decodeClientTls(text: string): NatsClientTls {
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(text, 'base64').toString('utf8'));
  } catch {
    value = undefined;
  }
  const rec = value as Partial<Record<keyof NatsClientTls, unknown>> | null | undefined;
  const pem = (v: unknown, kind: string): v is string => typeof v === 'string' && v.length < 65_536 && v.includes(`-----BEGIN ${kind}`);
  if (!rec || typeof rec !== 'object' || !pem(rec.ca, 'CERTIFICATE') || !pem(rec.cert, 'CERTIFICATE') || !pem(rec.key, 'PRIVATE KEY')) {
    throw new FerryError('USAGE', `${NATS_TLS_ENV} must hold the job's NATS credential as the coordinator sets it (base64 of {ca, cert, key} in PEM): start agents with ferry's launchers`);
  }
  return { ca: rec.ca, cert: rec.cert, key: rec.key };
}
