/**
 * The job's control plane over NATS JetStream (see job-bus.ts): an embedded
 * `nats-server -js` (or the one --nats names), the job's work-queue stream
 * with one shared durable pull consumer, its completions stream, its KV
 * bucket (spec, stop, the journal's mirror), and plain subjects for
 * heartbeats, events and control. Loaded only when a job needs it (bus.ts).
 */
import { join } from 'node:path';
import type { JetStreamManager } from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { decode, decodeCompletions, decodeWorkItem, encodeMessage, jobSubjects } from '@ferry/core';
import type { Completion, JobSpec, RangePlan, WorkItem } from '@ferry/core';
import { AckPolicy, DeliverPolicy, JetStreamPublisher, Kvm, RetentionPolicy, StorageType, connectBus, jetstream, jetstreamManager, nanos } from './bus.js';
import { KV_HASH_BLOCK } from './job-bus.js';
import type { BusJoin, CompletionFeed, JobBus, Recovered } from './job-bus.js';
import { startEmbeddedNats } from './nats-server.js';
import type { EmbeddedNats } from './nats-server.js';

/** A completions pull request's life: also the longest wait before consuming again after a nats-server restart. */
const COMPLETIONS_EXPIRES_MS = 5_000;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export interface NatsJobBusOptions {
  jobId: string;
  jobDir: string;
  /** A running server (--nats) and its token; otherwise an embedded one is started. */
  url: string | undefined;
  token: string | undefined;
  /** Where an embedded server listens, and the address agents elsewhere use. */
  listen: string;
  advertise: string;
  /** A fresh job on an external server: nothing of an earlier run of the same id may leak in. */
  fresh: boolean;
}

/** Completions an earlier run's agents stored but its coordinator never journaled. */
async function recoverCompletions(nc: NatsConnection, jsm: JetStreamManager, jobId: string): Promise<Completion[]> {
  const s = jobSubjects(jobId);
  const info = await jsm.streams.info(s.doneStream).catch(() => undefined);
  if (!info || info.state.messages === 0) return [];
  const name = `recover_${process.pid}_${Date.now()}`;
  await jsm.consumers.add(s.doneStream, { name, ack_policy: AckPolicy.None, deliver_policy: DeliverPolicy.All, inactive_threshold: nanos(60_000) });
  const consumer = await jetstream(nc).consumers.get(s.doneStream, name);
  const out: Completion[] = [];
  let seen = 0;
  try {
    while (seen < info.state.messages) {
      const batch = await consumer.fetch({ max_messages: 1000, expires: 2000 });
      let got = 0;
      for await (const m of batch) {
        got++;
        seen++;
        try {
          out.push(...decodeCompletions(m.data, jobId));
        } catch {
          // not ours or damaged: ignore
        }
      }
      if (got === 0) break;
    }
  } finally {
    await jsm.consumers.delete(s.doneStream, name).catch(() => false);
  }
  return out;
}

/** Ranges the job's KV bucket records as done, with their hashes (empty when there is no bucket). */
async function readKvMirror(nc: NatsConnection, jobId: string, plan: RangePlan): Promise<Array<[number, string]>> {
  const s = jobSubjects(jobId);
  let kv: KV;
  try {
    kv = await new Kvm(nc).open(s.kvBucket);
    const done = await kv.get('done');
    if (!done || done.length === 0) return [];
    const { runs } = decode(done.value) as { runs: Array<[number, number]> };
    const out: Array<[number, string]> = [];
    const blocks = new Map<number, string[]>();
    for (const [start, end] of runs) {
      for (let i = start; i < Math.min(end, plan.count); i++) {
        const b = Math.floor(i / KV_HASH_BLOCK);
        if (!blocks.has(b)) {
          const e = await kv.get(`hashes.${b}`);
          blocks.set(b, e && e.length > 0 ? (decode(e.value) as string[]) : []);
        }
        const h = blocks.get(b)![i - b * KV_HASH_BLOCK];
        if (h) out.push([i, h]);
      }
    }
    return out;
  } catch {
    return [];
  }
}

/** Streams, consumers and KV bucket of a run. Each run starts them afresh (an earlier run's state was read first). */
export async function setupJobStreams(nc: NatsConnection, jsm: JetStreamManager, spec: JobSpec): Promise<KV> {
  const s = jobSubjects(spec.jobId);
  for (const name of [s.workStream, s.doneStream]) await jsm.streams.delete(name).catch(() => false);
  await jsm.streams.add({
    name: s.workStream,
    subjects: [s.workSubject],
    retention: RetentionPolicy.Workqueue,
    storage: StorageType.File,
    duplicate_window: nanos(10 * 60_000),
  });
  await jsm.consumers.add(s.workStream, {
    durable_name: s.workConsumer,
    ack_policy: AckPolicy.Explicit,
    ack_wait: nanos(spec.ackWaitMs),
    max_deliver: spec.maxDeliver,
    max_ack_pending: 100_000,
    max_waiting: 4096,
  });
  await jsm.streams.add({ name: s.doneStream, subjects: [s.doneSubject], retention: RetentionPolicy.Limits, storage: StorageType.File });
  await jsm.consumers.add(s.doneStream, {
    durable_name: s.doneConsumer,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: nanos(60_000),
    max_ack_pending: 100_000,
  });
  const kv = await new Kvm(nc).create(s.kvBucket, { history: 1 });
  await kv.put('spec', encodeMessage(spec));
  // A resumed job's bucket may hold the previous run's stop, stream count and rate share.
  for (const key of ['stop', 'streams', 'rate']) await kv.delete(key);
  return kv;
}

class NatsJobBus implements JobBus {
  readonly kind = 'nats' as const;
  private readonly subjects;
  private readonly publisher: JetStreamPublisher;
  private kv: KV | undefined;
  private readonly subscriptions: Array<{ unsubscribe(): void }> = [];

  constructor(
    private readonly jobId: string,
    private readonly nc: NatsConnection,
    private readonly jsm: JetStreamManager,
    private readonly nats: EmbeddedNats | undefined,
    readonly join: BusJoin,
  ) {
    this.subjects = jobSubjects(jobId);
    this.publisher = new JetStreamPublisher(nc);
  }

  readonly keep = async (key: string, value: Uint8Array): Promise<void> => {
    await this.kv?.put(key, value).catch(() => {});
  };

  async recover(plan: RangePlan): Promise<Recovered> {
    return { completions: await recoverCompletions(this.nc, this.jsm, this.jobId), mirrored: await readKvMirror(this.nc, this.jobId, plan) };
  }

  async start(spec: JobSpec): Promise<void> {
    this.kv = await setupJobStreams(this.nc, this.jsm, spec);
  }

  publishWork(_item: WorkItem | undefined, data: Uint8Array, id: string): Promise<void> {
    return this.publisher.publish(this.subjects.workSubject, data, id);
  }

  async completions(): Promise<CompletionFeed> {
    const consumer = await jetstream(this.nc).consumers.get(this.subjects.doneStream, this.subjects.doneConsumer);
    // Messages, not completions: a batch message holds up to 256, so this buffers at most ~16,000.
    // expires: after a nats-server restart nats.js looks the consumer up again, and retries a
    // failed lookup (JetStream not back yet) after up to this long: 30 s by default.
    const messages = await consumer.consume({ max_messages: 64, expires: COMPLETIONS_EXPIRES_MS });
    return { messages, stop: () => messages.stop() };
  }

  onHeartbeat(handler: (data: Uint8Array) => void): void {
    this.subscriptions.push(this.nc.subscribe(`${this.subjects.heartbeat}.*`, { callback: (err, msg) => { if (!err) handler(msg.data); } }));
  }

  onEvent(handler: (data: Uint8Array) => void): void {
    this.subscriptions.push(this.nc.subscribe(this.subjects.events, { callback: (err, msg) => { if (!err) handler(msg.data); } }));
  }

  onMaxDeliveries(handler: (item: WorkItem | undefined, deliveries: number, data?: Uint8Array) => void): void {
    const s = this.subjects;
    this.subscriptions.push(
      this.nc.subscribe(`$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.${s.workStream}.${s.workConsumer}`, {
        callback: (err, msg) => {
          if (err) return;
          void (async () => {
            const adv = msg.json<{ stream_seq: number; deliveries: number }>();
            const stored = await this.jsm.streams.getMessage(s.workStream, { seq: adv.stream_seq }).catch(() => null);
            let item: WorkItem | undefined;
            try {
              item = stored ? decodeWorkItem(stored.data, this.jobId) : undefined;
            } catch {
              // not ours, or malformed: report with what there is
            }
            handler(item, adv.deliveries, stored?.data);
          })().catch(() => {});
        },
      }),
    );
  }

  async control(data: Uint8Array, key: 'stop' | 'streams' | 'rate'): Promise<void> {
    // In the bucket first, for agents not subscribed yet (they read it after subscribing).
    await this.kv?.put(key, data).catch(() => {});
    try {
      this.nc.publish(this.subjects.control, data);
    } catch {
      // The connection is closing (the job is over): nobody is left to tell.
      return;
    }
    await this.nc.flush().catch(() => {});
  }

  async settle(): Promise<void> {
    const consumer = await jetstream(this.nc).consumers.get(this.subjects.doneStream, this.subjects.doneConsumer).catch(() => undefined);
    for (let i = 0; i < 50 && consumer; i++) {
      const info = await consumer.info(false).catch(() => undefined);
      if (!info || (info.num_pending === 0 && info.num_ack_pending === 0)) break;
      await sleep(100);
    }
  }

  async close(journaled: boolean): Promise<{ after?: Promise<unknown> }> {
    for (const sub of this.subscriptions.splice(0)) sub.unsubscribe();
    this.publisher.close();
    await this.nc.close().catch(() => {});
    // Once every range is in the journal, the store holds nothing the journal lacks.
    return this.nats ? { after: this.nats.stop({ discard: journaled }).catch(() => {}) } : {};
  }
}

/** Starts (or joins) the job's NATS server and connects to it. */
export async function openNatsJobBus(o: NatsJobBusOptions): Promise<JobBus> {
  let nats: EmbeddedNats | undefined;
  let url = o.url;
  let token = o.token;
  if (!url) {
    nats = await startEmbeddedNats({ storeDir: join(o.jobDir, 'nats'), host: o.listen, advertiseHost: o.advertise, jobId: o.jobId });
    url = nats.url;
    token = nats.token;
  }
  const tls = nats?.tls;
  try {
    const nc = await connectBus({ url, token, tls, name: `ferry-coordinator-${o.jobId}` });
    const jsm = await jetstreamManager(nc);
    // A fresh job on an external server: nothing of an earlier run of the same id may leak in.
    if (o.fresh) await jsm.streams.delete(`KV_${jobSubjects(o.jobId).kvBucket}`).catch(() => false);
    return new NatsJobBus(o.jobId, nc, jsm, nats, { url, token, ...(tls ? { tls } : {}) });
  } catch (err) {
    await nats?.stop({ discard: false }).catch(() => {});
    throw err;
  }
}
