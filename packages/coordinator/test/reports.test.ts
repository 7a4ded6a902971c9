/**
 * How an agent reports: against a real nats-server with JetStream, an agent
 * running a discard job (no bytes, the control plane alone) stores the
 * completions of each durable batch in a few batch messages, not one message
 * per range, takes work items that carry runs of ranges, and acks every work
 * item once the completions of all its ranges are stored.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AckPolicy, DeliverPolicy, jetstreamManager, jetstream } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/transport-node';
import { runAgent } from '@ferry/agent';
import { COMPLETIONS_PER_MESSAGE, decodeCompletions, encodeMessage, jobSubjects, MESSAGE_VERSION, planRanges, workItemsOf } from '@ferry/core';
import type { Completion, JobSpec } from '@ferry/core';
import { setupJobStreams, startEmbeddedNats } from '@ferry/coordinator';
import type { EmbeddedNats } from '@ferry/coordinator';

const JOB = 'feed0001';
const RANGES = 600;
const MiB = 1024 * 1024;

let dir: string;
let nats: EmbeddedNats;
let nc: NatsConnection;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ferry-reports-'));
  nats = await startEmbeddedNats({ storeDir: join(dir, 'nats') });
  nc = await connect({ servers: nats.url, token: nats.token });
});

afterAll(async () => {
  await nc?.close();
  await nats?.stop();
  await rm(dir, { recursive: true, force: true });
});

function discardSpec(localPath: string): JobSpec {
  return {
    v: MESSAGE_VERSION,
    jobId: JOB,
    direction: 'push',
    mode: 'helper',
    localPath,
    remotePath: '/bench/file',
    remoteHosts: [{ host: 'discard', port: 22, user: 'bench' }],
    remoteCommand: 'ferry serve',
    fileBytes: RANGES * MiB,
    rangeBytes: MiB,
    rangeCount: RANGES,
    hash: 'xxh3',
    streams: 2,
    windowBytes: 8 * MiB,
    connectionBytesPerSec: 0,
    maxConnectionsPerHost: 0,
    agentCount: 1,
    ackWaitMs: 30_000,
    maxDeliver: 5,
    durableEveryRanges: 256,
    durableIntervalMs: 5_000,
    ssh: { knownHostsFile: join(dir, 'known_hosts'), identityFiles: [], connectTimeoutMs: 10_000 },
    createdAt: Date.now(),
    discard: true,
  };
}

/** Every message of the job's done stream, oldest first. */
async function doneMessages(): Promise<Uint8Array[]> {
  const s = jobSubjects(JOB);
  const jsm = await jetstreamManager(nc);
  const name = `peek${Date.now()}`;
  await jsm.consumers.add(s.doneStream, { name, ack_policy: AckPolicy.None, deliver_policy: DeliverPolicy.All });
  const consumer = await jetstream(nc).consumers.get(s.doneStream, name);
  const total = (await jsm.streams.info(s.doneStream)).state.messages;
  const out: Uint8Array[] = [];
  while (out.length < total) {
    const batch = await consumer.fetch({ max_messages: 1000, expires: 2000 });
    for await (const m of batch) out.push(m.data);
  }
  await jsm.consumers.delete(s.doneStream, name);
  return out;
}

describe('the work queue as agents see it', () => {
  it("says with each delivery how many work items are left behind it, down to 0 for the last (the agent's QueueWatch)", async () => {
    const jsm = await jetstreamManager(nc);
    await setupJobStreams(nc, jsm, discardSpec(join(dir, 'source')));
    const s = jobSubjects(JOB);
    const js = jetstream(nc);
    const items = [...workItemsOf(JOB, planRanges(48 * MiB, MiB), [...Array(48).keys()], () => 0)];
    expect(items.length).toBe(3);
    for (const item of items) await js.publish(s.workSubject, encodeMessage(item));
    const consumer = await js.consumers.get(s.workStream, s.workConsumer);
    const left: number[] = [];
    for (let i = 0; i < items.length; i++) {
      for await (const m of await consumer.fetch({ max_messages: 1, expires: 2000 })) {
        left.push(m.info.pending);
        m.ack();
      }
    }
    expect(left).toEqual([2, 1, 0]);
  });
});

describe('agent reports', () => {
  it('takes runs of ranges, stores the completions of a durable batch in batch messages and acks every work item', async () => {
    const source = join(dir, 'source');
    await writeFile(source, '');
    const jsm = await jetstreamManager(nc);
    await setupJobStreams(nc, jsm, discardSpec(source));
    const s = jobSubjects(JOB);
    const js = jetstream(nc);
    // As the coordinator publishes them: runs of 16 consecutive ranges of 1 MiB, one re-send alone.
    const items = [...workItemsOf(JOB, planRanges(RANGES * MiB, MiB), [...Array(RANGES).keys()], (i) => (i === 100 ? 1 : 0))];
    expect(items.map((w) => w.count ?? 1)).toContain(16);
    expect(items.length).toBe(40);
    for (const item of items) await js.publish(s.workSubject, encodeMessage(item));

    const abort = new AbortController();
    const lines: string[] = [];
    const agent = runAgent({ jobId: JOB, natsUrl: nats.url, natsToken: nats.token, agentId: 'reporter', signal: abort.signal, inProcess: true, log: (l) => lines.push(l) });
    // Wait until every range is reported and every work item acked (the work queue then drops it).
    const deadline = Date.now() + 60_000;
    for (;;) {
      const done = (await jsm.streams.info(s.doneStream)).state.messages;
      const work = (await jsm.streams.info(s.workStream)).state.messages;
      const reported = done > 0 ? (await doneMessages()).reduce((n, d) => n + decodeCompletions(d, JOB).length, 0) : 0;
      if (reported >= RANGES && work === 0) break;
      if (Date.now() > deadline) throw new Error(`after 60 s: ${reported} of ${RANGES} ranges reported, ${work} work items not acked; agent said: ${lines.join(' | ')}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    abort.abort();
    const summary = await agent;
    expect(summary.ranges).toBe(RANGES);

    const messages = await doneMessages();
    const completions: Completion[] = messages.flatMap((d) => decodeCompletions(d, JOB));
    // One message per range would be 600; batches of a durable batch hold up to COMPLETIONS_PER_MESSAGE.
    expect(messages.length).toBeLessThanOrEqual(RANGES / 20);
    for (const d of messages) expect(decodeCompletions(d, JOB).length).toBeLessThanOrEqual(COMPLETIONS_PER_MESSAGE);
    expect(completions.map((c) => c.range).sort((a, b) => a - b)).toEqual([...Array(RANGES).keys()]);
    expect(completions.every((c) => c.durable && c.srcHash === c.dstHash && c.agent === 'reporter' && c.length === MiB)).toBe(true);
    expect(completions.find((c) => c.range === 100)?.attempt).toBe(1);
  });
});
