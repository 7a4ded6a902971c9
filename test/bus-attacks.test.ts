/**
 * Attacks on a job's bus by someone who holds its credential (issue #30,
 * finding 4), against real agents, a real nats-server and a real copy:
 * a job spec rewritten to make agents run a command of the attacker's, and
 * completions forged to mark ranges done without their data.
 */
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import {
  AGENT_EXEC_ENV,
  JOB_SPEC_SHA256_ENV,
  MESSAGE_VERSION,
  agentExecOf,
  decode,
  decodeAgentEvent,
  encodeAgentExec,
  encodeMessage,
  jobSubjects,
  makeCompletionBatch,
  specDigest,
} from '@ferry/core';
import type { AgentEvent, Completion, JobSpec } from '@ferry/core';
import { setupJobStreams, startEmbeddedNats } from '@ferry/coordinator';
import type { EmbeddedNats } from '@ferry/coordinator';
import { startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { REMOTE_CMD, fileHash, makeRandomFile, parseEvents, runFerry, startFerry, tempDir } from './helpers.js';

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

/** A job spec of 4 ranges of 1 MiB pushed to a host where nothing listens: an agent that went on would fail to connect, not copy. */
function testSpec(fields: Pick<JobSpec, 'jobId' | 'mode' | 'localPath' | 'hash'>): JobSpec {
  return {
    v: MESSAGE_VERSION,
    direction: 'push',
    remotePath: '/nonexistent/.dst.part',
    remoteHosts: [{ host: '127.0.0.1', port: 9, user: 'nobody' }],
    remoteCommand: 'ferry serve',
    fileBytes: 4 * MiB,
    rangeBytes: MiB,
    rangeCount: 4,
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
    ...fields,
  };
}

describe('a job spec rewritten on the bus', () => {
  const JOB = 'a77ac0de';
  const pwned = join('/tmp', `pwned-${process.pid}-${Date.now()}`);

  function legitSpec(): JobSpec {
    return testSpec({ jobId: JOB, mode: 'helper', localPath: join(work.path, 'source'), hash: 'xxh3' });
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

describe('work items forged on the bus', () => {
  it("whose offset is a shell command are dropped by a real agent before they reach a file or a remote command line", async () => {
    const JOB = 'b0b0cafe';
    const pwned = join('/tmp', `pwned-${process.pid}-${Date.now()}-item`);
    cleanups.push(() => rm(pwned, { force: true }));
    // SFTP mode hashes ranges with `dd ... skip=OFFSET count=LENGTH` on the remote host.
    const spec = testSpec({ jobId: JOB, mode: 'sftp', localPath: join(work.path, 'source-items'), hash: 'sha256' });
    await makeRandomFile(spec.localPath, 4 * MiB);
    const jsm = await jetstreamManager(nc);
    await setupJobStreams(nc, jsm, spec);
    const s = jobSubjects(JOB);
    await jetstream(nc).publish(s.workSubject, encodeMessage({ v: MESSAGE_VERSION, job: JOB, range: 0, offset: `0 count=1 status=none; touch ${pwned}; echo`, length: MiB, attempt: 0 }));
    const agent = startFerry(['agent', '--job', JOB, '--nats', nats.url, '--id', 'victim-3'], {
      env: { FERRY_NATS_TOKEN: nats.token, [AGENT_EXEC_ENV]: encodeAgentExec(agentExecOf(spec)), [JOB_SPEC_SHA256_ENV]: specDigest(encodeMessage(spec)) },
      timeoutMs: 60_000,
    });
    cleanups.push(() => agent.child.kill('SIGKILL'));
    for (let i = 0; i < 300 && !agent.stderr().includes('dropping malformed work item'); i++) await new Promise((r) => setTimeout(r, 100));
    expect(agent.stderr()).toContain(`dropping malformed work item: work item for range 0 has offset 0 count=1 status=none; touch ${pwned}; echo and length ${MiB}, not whole numbers`);
    // Terminated, not handed out again.
    expect((await jsm.streams.info(s.workStream)).state.messages).toBe(0);
    await new Kvm(nc).open(s.kvBucket).then((kv) => kv.put('stop', encodeMessage({ v: MESSAGE_VERSION, job: JOB, type: 'stop', reason: 'test over' })));
    nc.publish(s.control, encodeMessage({ v: MESSAGE_VERSION, job: JOB, type: 'stop', reason: 'test over' }));
    await agent.result;
    expect(existsSync(pwned)).toBe(false);
  });
});

describe('completions forged on the bus', () => {
  let sshd: Sshd;
  beforeAll(async () => {
    sshd = await startSshd();
  });
  afterAll(async () => {
    await sshd?.stop();
  });

  it('are not acted on when they do not match an outstanding range, and the copy stays byte-identical', async () => {
    const dir = join(work.path, 'forged');
    const src = join(dir, 'src.bin');
    const { mkdir } = await import('node:fs/promises');
    await mkdir(dir, { recursive: true });
    const RANGES = 48;
    await makeRandomFile(src, RANGES * MiB);
    const dst = join(dir, 'dst.bin');
    // A copy on the test's nats-server (--nats), whose token the attacker holds; slow enough
    // (--limit-rate) for the forgeries to arrive while ranges are outstanding.
    const run = startFerry(
      ['cp', src, `${sshd.user}@${sshd.host}:${sshd.port}:${dst}`, '-i', sshd.userKey, '--known-hosts', sshd.knownHosts, '--remote-cmd', REMOTE_CMD,
        '--state-dir', join(dir, 'state'), '--nats', nats.url, '-a', '2', '-s', '1', '--range-size', '1MiB', '--limit-rate', '12MiB', '--json'],
      { env: { FERRY_NATS_TOKEN: nats.token } },
    );
    cleanups.push(() => run.child.kill('SIGKILL'));

    // The attacker finds the job and one of its agents' names (heartbeats are on the bus).
    const jsm = await jetstreamManager(nc);
    let job: string | undefined;
    for (let i = 0; i < 200 && !job; i++) {
      for await (const name of jsm.streams.names()) {
        const m = /^FERRY_DONE_([0-9a-f]+)$/.exec(name);
        if (m && m[1] !== 'a77ac0de' && m[1] !== 'b0b0cafe') job = m[1];
      }
      if (!job) await new Promise((r) => setTimeout(r, 100));
    }
    expect(job).toBeDefined();
    const s = jobSubjects(job!);
    const agent = await new Promise<string>((resolve) => {
      const sub = nc.subscribe(`${s.heartbeat}.*`, {
        callback: (_e, m) => {
          sub.unsubscribe();
          resolve((decode(m.data) as { agent: string }).agent);
        },
      });
    });

    const forged = (over: Partial<Completion>): Completion => ({
      v: MESSAGE_VERSION,
      job: job!,
      range: 40,
      attempt: 0,
      offset: 40 * MiB,
      length: MiB,
      srcHash: 'deadbeefdeadbeef',
      dstHash: 'deadbeefdeadbeef',
      durable: true,
      agent,
      remoteHost: `${sshd.host}:${sshd.port}`,
      startedAt: Date.now(),
      finishedAt: Date.now(),
      ...over,
    });
    const js = jetstream(nc);
    // Each would have marked a range done without its data (or failed the job).
    await js.publish(s.doneSubject, encodeMessage(forged({ range: RANGES + 5, offset: (RANGES + 5) * MiB }))); // not a range of the plan
    await js.publish(s.doneSubject, encodeMessage(forged({ range: 41, offset: 41 * MiB, length: 1 }))); // wrong length
    await js.publish(s.doneSubject, encodeMessage(forged({ range: 42, offset: 0 }))); // wrong offset
    await js.publish(s.doneSubject, encodeMessage(forged({ range: 43, offset: 43 * MiB, attempt: 7 }))); // an attempt never sent
    await js.publish(s.doneSubject, encodeMessage(forged({ range: 44, offset: 44 * MiB, error: { code: 'DEST_NO_SPACE', message: 'forged: disk full' }, attempt: 3 }))); // a failure of an attempt never sent
    await js.publish(s.doneSubject, encodeMessage(forged({ range: 45, offset: 45 * MiB, agent: 'mallory' }))); // not an agent of the job: the range is done again
    // A range done already, claimed again with other hashes: not outstanding, changes nothing.
    const done = Number((await run.waitFor((e) => e.type === 'range.done')).range);
    await js.publish(s.doneSubject, encodeMessage(forged({ range: done, offset: done * MiB })));
    // And a batch of all of them at once, the way agents report durable batches.
    await js.publish(s.doneSubject, encodeMessage(makeCompletionBatch(job!, Array.from({ length: RANGES }, (_, i) => forged({ range: i, offset: i * MiB, length: MiB + 1 })))));

    const r = await run.result;
    expect(r.code, r.stderr).toBe(0);
    expect(await fileHash(dst)).toBe(await fileHash(src));
    const logs = parseEvents(r.stdout).filter((e) => e.type === 'warning').map((e) => String(e.message));
    const ignored = logs.filter((m) => m.startsWith('ignoring a completion from agent'));
    expect(ignored).toEqual(
      expect.arrayContaining([
        `ignoring a completion from agent '${agent}': range ${RANGES + 5} is not one of the job's ${RANGES} ranges`,
        `ignoring a completion from agent '${agent}': range 41 is bytes ${41 * MiB}-${42 * MiB}, the completion claims ${41 * MiB}-${41 * MiB + 1}`,
        `ignoring a completion from agent '${agent}': range 42 is bytes ${42 * MiB}-${43 * MiB}, the completion claims 0-${MiB}`,
        `ignoring a completion from agent '${agent}': attempt 7 of range 43 was never sent (the last was 0)`,
        `ignoring a completion from agent '${agent}': attempt 3 of range 44 was never sent (the last was 0)`,
        "ignoring a completion from agent 'mallory': agent 'mallory' is not one of this job's agents",
      ]),
    );
    // The range of the unknown agent's claim was handed out again and copied for real.
    const events = parseEvents(r.stdout);
    const done45 = events.filter((e) => e.type === 'range.done' && e.range === 45);
    expect(done45.length).toBeGreaterThanOrEqual(1);
    expect(done45.every((e) => e.agent !== 'mallory' && e.hash !== 'deadbeefdeadbeef')).toBe(true);
    expect(events.filter((e) => e.type === 'range.done' && e.hash === 'deadbeefdeadbeef')).toEqual([]);
  });
});
