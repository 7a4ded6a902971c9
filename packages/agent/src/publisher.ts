/**
 * Pipelined JetStream publishing for the control plane's per-range messages
 * (the coordinator's work items, the agents' completions and acks).
 *
 * nats.js's `js.publish()` and `JsMsg.ackAck()` go through its request
 * machinery: a request object, a timer, a deferred and, when the request
 * completes, an Error object built only to reject an already settled promise;
 * together about three times the CPU of the publish itself. Here every publish
 * of one connection shares one reply subscription (`<inbox>.<n>`) and one
 * timeout sweep; what is awaited is the same: the server's answer (a PubAck once
 * the stream has stored the message, or the reply to an ack).
 */
import { createInbox, headers } from '@nats-io/transport-node';
import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';

interface Waiter {
  at: number;
  resolve: (msg: Msg) => void;
  reject: (err: Error) => void;
}

export class PublishError extends Error {
  override readonly name = 'PublishError';
}

const decoder = new TextDecoder();

/**
 * The outcome of a JetStream publish from its answer: undefined when the
 * stream stored the message (or already had it: a duplicate msgID), else why not.
 */
export function pubAckError(data: Uint8Array, status?: number): string | undefined {
  if (status === 503) return 'no stream takes this subject (no responders)';
  if (data.length === 0) return status ? `status ${status} instead of a publish acknowledgement` : 'empty publish acknowledgement';
  let ack: { stream?: unknown; error?: { description?: string; code?: number } };
  try {
    ack = JSON.parse(decoder.decode(data)) as typeof ack;
  } catch {
    return 'malformed publish acknowledgement';
  }
  if (ack.error) return `${ack.error.description ?? 'error'}${ack.error.code ? ` (${ack.error.code})` : ''}`;
  if (typeof ack.stream !== 'string') return 'publish acknowledgement names no stream';
  return undefined;
}

export class JetStreamPublisher {
  private readonly prefix = createInbox();
  private seq = 0;
  private readonly waiting = new Map<number, Waiter>();
  private readonly sub: Subscription;
  private readonly sweep: NodeJS.Timeout;

  constructor(
    private readonly nc: NatsConnection,
    private readonly timeoutMs = 10_000,
  ) {
    this.sub = nc.subscribe(`${this.prefix}.*`, {
      callback: (err, msg) => {
        if (err) return;
        const id = Number(msg.subject.slice(this.prefix.length + 1));
        const w = this.waiting.get(id);
        if (!w) return; // timed out already
        this.waiting.delete(id);
        w.resolve(msg);
      },
    });
    // Waiters are in the map in the order they were sent: the oldest expire first.
    this.sweep = setInterval(() => {
      const limit = Date.now() - this.timeoutMs;
      for (const [id, w] of this.waiting) {
        if (w.at > limit) break;
        this.waiting.delete(id);
        w.reject(new PublishError(`no answer from NATS within ${this.timeoutMs / 1000} s`));
      }
    }, Math.min(1000, this.timeoutMs));
    this.sweep.unref();
  }

  /** Messages sent and not answered yet. */
  get inFlight(): number {
    return this.waiting.size;
  }

  /** Sends `data` to `subject` with a reply subject; resolves with the answer. */
  request(subject: string, data: Uint8Array, msgID?: string): Promise<Msg> {
    return new Promise<Msg>((resolve, reject) => {
      const id = ++this.seq;
      let h;
      if (msgID !== undefined) {
        h = headers();
        h.set('Nats-Msg-Id', msgID);
      }
      try {
        this.nc.publish(subject, data, { reply: `${this.prefix}.${id}`, ...(h ? { headers: h } : {}) });
      } catch (err) {
        reject(err instanceof Error ? err : new PublishError(String(err)));
        return;
      }
      this.waiting.set(id, { at: Date.now(), resolve, reject });
    });
  }

  /**
   * Publishes to a stream's subject; resolves once the stream has stored the
   * message (or had it already: same `msgID` within its duplicate window).
   */
  async publish(subject: string, data: Uint8Array, msgID?: string): Promise<void> {
    const answer = await this.request(subject, data, msgID);
    const why = pubAckError(answer.data, answer.headers?.code);
    if (why) throw new PublishError(`JetStream did not store the message on ${subject}: ${why}`);
  }

  /**
   * Rejects what is unanswered now (its callers retry at once): after the
   * connection came back from a server restart, whose answers to what was sent
   * before will never come, instead of after the timeout.
   */
  abandonWaiting(why: string): void {
    for (const w of this.waiting.values()) w.reject(new PublishError(why));
    this.waiting.clear();
  }

  /** Stops: whatever is still unanswered is rejected. */
  close(): void {
    clearInterval(this.sweep);
    this.sub.unsubscribe();
    for (const w of this.waiting.values()) w.reject(new PublishError('publisher closed'));
    this.waiting.clear();
  }
}
