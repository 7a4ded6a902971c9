/**
 * Attacks on a job's bus by someone who holds its credential (issue #30,
 * finding 4), against real agents and a real nats-server: a job spec
 * rewritten to make agents run a command of the attacker's.
 */
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import {
  AGENT_EXEC_ENV,
  JOB_SPEC_SHA256_ENV,
  MESSAGE_VERSION,
  agentExecOf,
  decodeAgentEvent,
  encodeAgentExec,
  encodeMessage,
  jobSubjects,
  specDigest,
} from '@ferry/core';
import type { AgentEvent, JobSpec } from '@ferry/core';
import { setupJobStreams, startEmbeddedNats } from '@ferry/coordinator';
import type { EmbeddedNats } from '@ferry/coordinator';
import { makeRandomFile, runFerry, tempDir } from './helpers.js';

const MiB = 1024 * 1024;

let work: { path: string; remove(): Promise<void> };
let nats: EmbeddedNats;
let nc: NatsConnection;
const cleanups: Array<() => Promise<unknown> | unknown> = [];

beforeAll(async () => {
  work = await tempDir('ferry-bus-attacks-');
  nats = await startEmbeddedNats({ storeDir: join(work.path, 'nats') });
  nc = await connect({ servers: nats.url, token: nats.token });
});

afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await Promise.resolve(fn()).catch(() => {});
});

afterAll(async () => {
  await nc?.close().catch(() => {});
  await nats?.stop({ discard: true }).catch(() => {});
  await work?.remove();
});

describe('a job spec rewritten on the bus', () => {
  const JOB = 'a77ac0de';
  const pwned = join('/tmp', `pwned-${process.pid}-${Date.now()}`);

  function legitSpec(): JobSpec {
    return {
      v: MESSAGE_VERSION,
      jobId: JOB,
      direction: 'push',
      mode: 'helper',
      localPath: join(work.path, 'source'),
      remotePath: '/nonexistent/.dst.part',
      // Nothing listens there: an agent that went on would fail to connect, not copy.
      remoteHosts: [{ host: '127.0.0.1', port: 9, user: 'nobody' }],
      remoteCommand: 'ferry serve',
      fileBytes: 4 * MiB,
      rangeBytes: MiB,
      rangeCount: 4,
      hash: 'xxh3',
      streams: 1,
      windowBytes: MiB,
      connectionBytesPerSec: 0,
      maxConnectionsPerHost: 0,
      agentCount: 1,
      ackWaitMs: 30_000,
      maxDeliver: 3,
      durableEveryRanges: 4,
      durableIntervalMs: 5000,
      ssh: { knownHostsFile: join(work.path, 'known_hosts'), identityFiles: [], connectTimeoutMs: 2000, transport: 'ssh2', sshCommand: ['ssh'] },
      createdAt: Date.now(),
    };
  }

  /** What an attacker with the token writes over the spec: agents are to run `touch` as the victim. */
  const rewrites: Array<[string, (s: JobSpec) => JobSpec]> = [
    ['its ssh command', (s) => ({ ...s, ssh: { ...s.ssh, transport: 'openssh', sshCommand: ['sh', '-c', `touch ${pwned}`, 'sh'] } })],
    ['its remote command', (s) => ({ ...s, mode: 'helper', remoteCommand: `touch ${pwned}` })],
    ['its ssh -F file', (s) => ({ ...s, ssh: { ...s.ssh, transport: 'openssh', configFile: join(work.path, 'evil_config') } })],
  ];

  afterEach(async () => {
    await rm(pwned, { force: true });
  });

  for (const [what, rewrite] of rewrites) {
    it(`set to run 'touch ${'/tmp/pwned-...'}' through ${what}: a real agent refuses it and runs nothing`, async () => {
      const spec = legitSpec();
      await makeRandomFile(spec.localPath, 4 * MiB);
      await setupJobStreams(nc, await jetstreamManager(nc), spec);
      // The coordinator launches its agents with what they may run and the digest of the spec it stored.
      const launchEnv = { FERRY_NATS_TOKEN: nats.token, [AGENT_EXEC_ENV]: encodeAgentExec(agentExecOf(spec)), [JOB_SPEC_SHA256_ENV]: specDigest(encodeMessage(spec)) };
      // The attacker rewrites the spec before the agents read it.
      const kv = await new Kvm(nc).open(jobSubjects(JOB).kvBucket);
      await kv.put('spec', encodeMessage(rewrite(spec)));
      const events: AgentEvent[] = [];
      const sub = nc.subscribe(jobSubjects(JOB).events, { callback: (_e, m) => events.push(decodeAgentEvent(m.data, JOB)) });
      cleanups.push(() => sub.unsubscribe());

      // With the digest (every agent the coordinator launches): the spec is not the one it wrote.
      const launched = await runFerry(['agent', '--job', JOB, '--nats', nats.url, '--id', 'victim-1'], { env: launchEnv, timeoutMs: 60_000 });
      expect(launched.code).toBe(62);
      expect(launched.stderr).toMatch(new RegExp(`ferry: error: refusing the job spec of job ${JOB} in NATS: it is not the one the coordinator wrote \\(SHA-256 [0-9a-f]{16}\\.\\.\\., expected [0-9a-f]{16}\\.\\.\\.\\); someone else has written to the job's bus\\n$`));

      // Without it (an agent whose launcher gave only its own settings): the spec asks for
      // something else than the agent was started with.
      const own = await runFerry(['agent', '--job', JOB, '--nats', nats.url, '--id', 'victim-2'], { env: { ...launchEnv, [JOB_SPEC_SHA256_ENV]: undefined }, timeoutMs: 60_000 });
      expect(own.code).toBe(62);
      expect(own.stderr).toMatch(/ferry: error: refusing the job spec in NATS: it asks for .*this agent was started with .*An agent runs only what its own command line and environment say/);

      expect(existsSync(pwned)).toBe(false);
      await nc.flush();
      // The coordinator hears why each agent left.
      const fatal = events.filter((e) => e.type === 'agent.error' && e.fatal);
      expect(fatal.map((e) => (e.type === 'agent.error' ? [e.agent, e.error.code] : []))).toEqual([
        ['victim-1', 'PROTOCOL'],
        ['victim-2', 'PROTOCOL'],
      ]);
    });
  }
});
