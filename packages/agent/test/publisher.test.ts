import { describe, expect, it } from 'vitest';
import type { NatsConnection } from '@nats-io/transport-node';
import { JetStreamPublisher, PublishError } from '../src/publisher.js';

/** A connection that takes publishes and never answers (a server that went away). */
function silentConnection(): { nc: NatsConnection; sent: string[] } {
  const sent: string[] = [];
  const nc = {
    subscribe: () => ({ unsubscribe: () => {} }),
    publish: (subject: string) => void sent.push(subject),
  } as unknown as NatsConnection;
  return { nc, sent };
}

describe('the JetStream publisher', () => {
  it('rejects what is unanswered when told the connection came back, so that its callers store it again at once', async () => {
    const { nc, sent } = silentConnection();
    const publisher = new JetStreamPublisher(nc, 60_000);
    const first = publisher.publish('done', new Uint8Array([1]));
    const second = publisher.publish('done', new Uint8Array([2]), 'id-2');
    expect(sent).toEqual(['done', 'done']);
    expect(publisher.inFlight).toBe(2);
    publisher.abandonWaiting('the connection to NATS was made again before an answer came');
    await expect(first).rejects.toBeInstanceOf(PublishError);
    await expect(second).rejects.toThrow('the connection to NATS was made again before an answer came');
    expect(publisher.inFlight).toBe(0);
    publisher.close();
  });
});
