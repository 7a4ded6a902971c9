/**
 * TLS for an embedded nats-server that listens beyond loopback: a CA made for
 * one run of one job, a server certificate and one client certificate, all
 * signed by it. nats-server requires the client certificate (`verify: true`)
 * and the token besides; agents trust no CA but the job's. The CA's private
 * key never leaves this process: nobody can sign another certificate for the
 * job. The client credential travels like the token (environment, the 0600
 * rendezvous file), never argv, never a file of its own.
 *
 * node-forge builds the certificates (Node 20 has no X.509 writer; forge has
 * no dependencies and no native code); node:crypto makes the RSA keys (in its
 * thread pool) and the signatures: forge's own, in JavaScript, take ~140 ms each.
 */
import { createPrivateKey, generateKeyPair as generateKeyPairCb, randomBytes, sign } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { mkdir, open, rm } from 'node:fs/promises';
import { isIP } from 'node:net';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import forge from 'node-forge';
import type { NatsClientTls } from '@ferry/core';

const generateKeyPair = promisify(generateKeyPairCb);

/** Files nats-server's `tls` block names. */
export interface NatsServerTlsFiles {
  caFile: string;
  certFile: string;
  keyFile: string;
}

export interface JobTls {
  server: NatsServerTlsFiles;
  client: NatsClientTls;
}

/** Certificates outlive any run: a run makes new ones, and clocks of the nodes may differ by a while. */
const VALID_DAYS = 365;
const CLOCK_SKEW_MS = 60 * 60_000;

async function rsaKeys(): Promise<{ privateKey: KeyObject; publicKey: forge.pki.rsa.PublicKey; keyPem: string }> {
  const { privateKey, publicKey } = await generateKeyPair('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  return { privateKey: createPrivateKey(privateKey), publicKey: forge.pki.publicKeyFromPem(publicKey), keyPem: privateKey };
}

/** What forge's `cert.sign(key, sha256)` does, with the signature made by node:crypto. */
function signCertificate(cert: forge.pki.Certificate, key: KeyObject): void {
  const oid = forge.pki.oids.sha256WithRSAEncryption!;
  const c = cert as forge.pki.Certificate & { signatureOid: string; tbsCertificate: forge.asn1.Asn1; md: forge.md.MessageDigest };
  c.signatureOid = oid;
  c.siginfo.algorithmOid = oid;
  c.md = forge.md.sha256.create();
  c.tbsCertificate = (forge.pki as unknown as { getTBSCertificate(cert: forge.pki.Certificate): forge.asn1.Asn1 }).getTBSCertificate(cert);
  const tbs = Buffer.from(forge.asn1.toDer(c.tbsCertificate).getBytes(), 'binary');
  c.signature = sign('sha256', tbs, key).toString('binary');
}

function certificate(subject: string, publicKey: forge.pki.PublicKey, issuer: forge.pki.CertificateField[] | undefined, extensions: object[]): forge.pki.Certificate {
  const cert = forge.pki.createCertificate();
  cert.publicKey = publicKey;
  // Positive (leading 0x01..0x7f), random: two runs' certificates never share a serial.
  cert.serialNumber = (0x10 + (randomBytes(1)[0]! & 0x6f)).toString(16).padStart(2, '0') + randomBytes(15).toString('hex');
  const now = Date.now();
  cert.validity.notBefore = new Date(now - CLOCK_SKEW_MS);
  cert.validity.notAfter = new Date(now + VALID_DAYS * 86_400_000);
  const attrs = [{ name: 'commonName', value: subject }];
  cert.setSubject(attrs);
  cert.setIssuer(issuer ?? attrs);
  cert.setExtensions(extensions);
  return cert;
}

/** Names the server certificate holds: where agents may reach it, and loopback for the coordinator itself. */
export function serverNames(addresses: readonly string[]): { ips: string[]; dns: string[] } {
  const ips = new Set<string>(['127.0.0.1']);
  const dns = new Set<string>(['localhost', hostname()]);
  for (const a of addresses) {
    if (!a || a === '0.0.0.0' || a === '::') continue;
    if (isIP(a)) ips.add(a);
    else dns.add(a);
  }
  return { ips: [...ips], dns: [...dns] };
}

/** The CA, server and client certificates of one run, as PEM (nothing written). */
export async function makeJobCertificates(jobId: string, addresses: readonly string[]): Promise<{ ca: string; serverCert: string; serverKey: string; client: NatsClientTls }> {
  const [caKeys, serverKeys, clientKeys] = await Promise.all([rsaKeys(), rsaKeys(), rsaKeys()]);
  const ca = certificate(`ferry job ${jobId} CA`, caKeys.publicKey, undefined, [
    { name: 'basicConstraints', cA: true, pathLenConstraint: 0, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
  ]);
  signCertificate(ca, caKeys.privateKey);
  const names = serverNames(addresses);
  const server = certificate(`ferry job ${jobId} nats-server`, serverKeys.publicKey, ca.subject.attributes, [
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: true },
    { name: 'subjectAltName', altNames: [...names.dns.map((value) => ({ type: 2, value })), ...names.ips.map((ip) => ({ type: 7, ip }))] },
  ]);
  signCertificate(server, caKeys.privateKey);
  const client = certificate(`ferry job ${jobId} agent`, clientKeys.publicKey, ca.subject.attributes, [
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', clientAuth: true },
  ]);
  signCertificate(client, caKeys.privateKey);
  const caPem = forge.pki.certificateToPem(ca);
  return { ca: caPem, serverCert: forge.pki.certificateToPem(server), serverKey: serverKeys.keyPem, client: { ca: caPem, cert: forge.pki.certificateToPem(client), key: clientKeys.keyPem } };
}

/** Writes a file that must not exist yet, readable by the user only. */
async function writeNew(file: string, text: string): Promise<void> {
  const fh = await open(file, 'wx', 0o600);
  try {
    await fh.writeFile(text);
  } finally {
    await fh.close();
  }
}

/**
 * Makes a run's certificates and writes what nats-server reads into `dir`
 * (made afresh, 0700; each file 0600, created exclusively). The client
 * credential is returned, not written.
 */
export async function createJobTls(dir: string, jobId: string, addresses: readonly string[]): Promise<JobTls> {
  const made = await makeJobCertificates(jobId, addresses);
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { mode: 0o700 });
  const server = { caFile: join(dir, 'ca.pem'), certFile: join(dir, 'server-cert.pem'), keyFile: join(dir, 'server-key.pem') };
  await writeNew(server.caFile, made.ca);
  await writeNew(server.certFile, made.serverCert);
  await writeNew(server.keyFile, made.serverKey);
  return { server, client: made.client };
}
