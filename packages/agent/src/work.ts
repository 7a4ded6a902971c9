/**
 * Work as a worker sees it: one range at a time. A JetStream work item may
 * carry a run of consecutive ranges (core's rangesPerWorkItem); here it becomes
 * one part per range, which share the message: the message is acked once every
 * part is, and given back (nak) as soon as any part is.
 */
import type { WorkItem } from '@ferry/core';

/** What a part needs of the JetStream message behind it. */
export interface WorkMessage {
  ack(): void;
  nak(delayMs?: number): void;
  term(reason?: string): void;
  working(): void;
  readonly info: { readonly deliveryCount: number };
}

/** One range of work. */
export interface WorkPart {
  readonly item: WorkItem;
  /** How often the message behind it has been handed out. */
  readonly deliveries: number;
  /** The range is done (stored as durable, or its failure reported). */
  ack(): void;
  /** The range goes back: the whole message is handed out again (after `delayMs`). */
  nak(delayMs?: number): void;
  /**
   * The range is settled elsewhere (reported as a mismatch the coordinator
   * re-sends, or as failed, or malformed): a single range's message is
   * terminated; in a run it counts as done.
   */
  term(reason?: string): void;
  /** Keeps the message from being handed out again while the range is worked on. */
  working(): void;
  /** True once the message went back (a nak of any of its parts): it will be handed out again whole. */
  readonly givenBack: boolean;
}

/** working() reaches the server at most this often per message (several parts of one run call it). */
const WORKING_EVERY_MS = 1000;

export function workParts(msg: WorkMessage, items: readonly WorkItem[]): WorkPart[] {
  if (items.length === 0) return [];
  let open = items.length;
  let settled = false;
  let givenBack = false;
  let lastWorking = 0;
  const done = () => {
    if (settled) return;
    if (--open === 0) {
      settled = true;
      msg.ack();
    }
  };
  const single = items.length === 1;
  return items.map((item) => {
    let finished = false;
    const once = (fn: () => void) => () => {
      if (finished) return;
      finished = true;
      fn();
    };
    return {
      item,
      get deliveries() {
        return msg.info.deliveryCount;
      },
      get givenBack() {
        return givenBack;
      },
      ack: once(done),
      nak(delayMs?: number) {
        if (finished) return;
        finished = true;
        if (settled) return;
        settled = true;
        givenBack = true;
        msg.nak(delayMs);
      },
      term(reason?: string) {
        if (finished) return;
        if (single && !settled) {
          finished = true;
          settled = true;
          msg.term(reason);
          return;
        }
        once(done)();
      },
      working() {
        if (finished || settled) return;
        const now = Date.now();
        if (now - lastWorking < WORKING_EVERY_MS) return;
        lastWorking = now;
        msg.working();
      },
    };
  });
}

/**
 * Whether the job's work queue has run dry, as far as this agent can tell.
 * Every JetStream delivery says how many messages the consumer had left
 * undelivered behind it (`info.pending`). A worker with written ranges that
 * wait for an fsync first waits a moment for more work, so that one fsync
 * covers several ranges; once a delivery left nothing behind, no more work is
 * on its way and the wait ends at once. (Work may still come: a range another
 * agent gives back, or a re-send. It is moved and made durable like any other;
 * only the batching of fsyncs is lost.)
 */
export class QueueWatch {
  private left = Number.POSITIVE_INFINITY;
  private readonly waiters = new Set<() => void>();

  /** A work item arrived with `pending` messages left behind it. */
  delivered(pending: number): void {
    this.left = pending;
    if (!this.drained) return;
    for (const wake of this.waiters) wake();
    this.waiters.clear();
  }

  /** The last delivery left nothing behind it. */
  get drained(): boolean {
    return this.left === 0;
  }

  /**
   * Resolves after `ms`, or as soon as the queue is drained (at once if it is
   * already); `cancel` drops the timer when the wait is no longer needed.
   */
  quiet(ms: number): { done: Promise<void>; cancel(): void } {
    if (this.drained) return { done: Promise.resolve(), cancel: () => {} };
    let timer: NodeJS.Timeout | undefined;
    let wake!: () => void;
    const done = new Promise<void>((resolve) => {
      wake = () => {
        clearTimeout(timer);
        this.waiters.delete(wake);
        resolve();
      };
      timer = setTimeout(wake, ms);
      this.waiters.add(wake);
    });
    return { done, cancel: wake };
  }
}
