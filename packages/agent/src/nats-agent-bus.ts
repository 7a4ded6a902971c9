/**
 * The agent's control plane over NATS JetStream: the spec from the job's KV
 * bucket, work from the job's shared durable pull consumer, completions
 * published to its completions stream (waiting for the stream's ack),
 * heartbeats, events and control on plain subjects.
 */
import { jetstream } from '@nats-io/jetstream';
import type { Consumer, ConsumerMessages } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import type { KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { FerryError, checkSpecDigest, decodeJobSpec, encodeMessage, jobSubjects, toFerryError } from '@ferry/core';
import type { AgentEvent, Heartbeat, JobSpec, NatsClientTls } from '@ferry/core';
import type { AgentBus, WorkDelivery, WorkFetch } from './agent-bus.js';
import { connectBus } from './bus.js';
import { JetStreamPublisher } from './publisher.js';

export interface NatsAgentBusOptions {
  jobId: string;
  url: string;
  token: string | undefined;
  /** The job's NATS credential beyond loopback. */
  tls?: NatsClientTls | undefined;
  /** SHA-256 of the spec the coordinator stored (FERRY_JOB_SPEC_SHA256, the rendezvous file): any other spec is refused. */
  specSha256?: string | undefined;
  /** Connection name, e.g. `ferry-agent-<id>`. */
  name: string;
  /** The event that tells the coordinator why this agent could not join (published before the error is thrown). */
  failureEvent: (err: FerryError) => AgentEvent;
}

class NatsAgentBus implements AgentBus {
  private readonly subjects;
  private readonly publisher: JetStreamPublisher;
  private disconnected: number | undefined;

  constructor(
    private readonly nc: NatsConnection,
    private readonly kv: KV,
    private readonly consumer: Consumer,
    readonly spec: JobSpec,
  ) {
    this.subjects = jobSubjects(spec.jobId);
    const publisher = new JetStreamPublisher(nc);
    this.publisher = publisher;
    void (async () => {
      for await (const status of nc.status()) {
        if (status.type === 'disconnect') this.disconnected ??= Date.now();
        else if (status.type === 'reconnect') {
          this.disconnected = undefined;
          // Results stored meanwhile went to a server that is gone (or came back without answering): store them again now, not after the timeout.
          publisher.abandonWaiting('the connection to NATS was made again before an answer came');
        }
      }
    })().catch(() => {});
  }

  async fetchWork(expiresMs: number): Promise<WorkFetch> {
    const messages: ConsumerMessages = await this.consumer.fetch({ max_messages: 1, expires: expiresMs });
    return { messages: messages as AsyncIterable<WorkDelivery>, stop: () => messages.stop() };
  }

  storeCompletions(data: Uint8Array): Promise<void> {
    return this.publisher.publish(this.subjects.doneSubject, data);
  }

  publishEvent(event: AgentEvent): void {
    this.tell(this.subjects.events, encodeMessage(event));
  }

  publishHeartbeat(heartbeat: Heartbeat): void {
    this.tell(`${this.subjects.heartbeat}.${heartbeat.agent}`, encodeMessage(heartbeat));
  }

  /** Fire and forget: once the connection is closing (the agent is leaving), nobody is listening. */
  private tell(subject: string, data: Uint8Array): void {
    try {
      this.nc.publish(subject, data);
    } catch {
      // closed
    }
  }

  async listenControl(onControl: (data: Uint8Array) => void): Promise<void> {
    this.nc.subscribe(this.subjects.control, {
      callback: (err, msg) => {
        if (!err) onControl(msg.data);
      },
    });
    // A stop or stream count sent before this agent subscribed (a short job, an agent that
    // started late) is also in the job's bucket: read them once the subscription is in place.
    await this.nc.flush();
    for (const key of ['streams', 'rate', 'stop']) {
      const said = await this.kv.get(key);
      if (said && said.operation === 'PUT' && said.length > 0) onControl(said.value);
    }
  }

  disconnectedSince(): number | undefined {
    return this.disconnected;
  }

  async flush(): Promise<void> {
    await this.nc.flush();
  }

  async close(): Promise<void> {
    this.publisher.close();
    await this.nc.drain().catch(() => {});
  }
}

/** Connects to the job's NATS server and reads its spec. */
export async function openNatsAgentBus(options: NatsAgentBusOptions): Promise<AgentBus> {
  const nc = await connectBus({ url: options.url, token: options.token, tls: options.tls, name: options.name });
  try {
    const subjects = jobSubjects(options.jobId);
    const kv = await new Kvm(nc).open(subjects.kvBucket);
    const entry = await kv.get('spec');
    if (!entry || entry.length === 0) throw new FerryError('PROTOCOL', `job ${options.jobId} has no spec in NATS: is the coordinator running?`);
    checkSpecDigest(entry.value, options.specSha256, options.jobId);
    const spec = decodeJobSpec(entry.value, options.jobId);
    const consumer = await jetstream(nc).consumers.get(subjects.workStream, subjects.workConsumer);
    return new NatsAgentBus(nc, kv, consumer, spec);
  } catch (err) {
    const e = toFerryError(err);
    nc.publish(jobSubjects(options.jobId).events, encodeMessage(options.failureEvent(e)));
    await nc.drain().catch(() => {});
    throw e;
  }
}
