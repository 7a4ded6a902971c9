/**
 * The collect-and-journal stage of a single-file job: the agents' range
 * completions, checked against what this run handed out, journaled (a
 * completion is acked once its record is on disk), and a range whose hashes
 * differ sent again, up to --max-resends. On a resume, also what an earlier
 * run's control plane holds that its journal lacks. (collect-reports.ts takes
 * the agents' other reports: progress, errors, stalls.)
 */
import { FerryError, completionRejection, decodeCompletions, rangeAt, toFerryError } from '@ferry/core';
import type { Completion, RangeExpectation } from '@ferry/core';
import { rangeBytesOf } from './file-context.js';
import type { Run, TransferContext } from './file-context.js';
import type { CompletionFeed, CompletionMessage, JobBus } from './job-bus.js';
import { KV_HASH_BLOCK } from './job-bus.js';
import { publishWork } from './publish.js';

/** Rejected completions logged one by one, at most. */
const MAX_REJECTIONS_SHOWN = 20;
/** What range hashes look like, whatever the algorithm (crc32: 8 hex digits, xxh3: 16, sha256: 64). */
const HASH_HEX = /^[0-9a-f]{8,64}$/;
/** Completions being journaled at once, at most (their records share fsyncs). */
const COMPLETIONS_IN_FLIGHT = 4096;

/** Marks a completed range done and journals it. */
async function journalRange(ctx: TransferContext, c: Completion): Promise<void> {
  const { state, journal } = ctx;
  state.done.add(c.range);
  state.hashes.set(c.range, c.srcHash);
  await journal.append({ t: 'range', range: c.range, attempt: c.attempt, hash: c.srcHash, bytes: c.length, durable: true, agent: c.agent, host: c.remoteHost, at: Date.now() });
}

/**
 * Completions an earlier run stored but did not journal (its coordinator died first),
 * and ranges only its KV mirror has (it lags the journal by a second).
 */
export async function recoverCompletions(ctx: TransferContext, bus: JobBus): Promise<void> {
  const { plan, state, journal } = ctx;
  const { completions, mirrored } = await bus.recover(plan);
  let recovered = 0;
  for (const c of completions) {
    if (c.error || !c.durable || c.srcHash !== c.dstHash || !Number.isInteger(c.range) || c.range < 0 || c.range >= plan.count || state.done.has(c.range)) continue;
    // Its claims must match the plan's range (issue #30): a forged one would mark it done without data.
    const r = rangeAt(plan, c.range);
    if (c.offset !== r.offset || c.length !== r.length || typeof c.srcHash !== 'string' || !HASH_HEX.test(c.srcHash)) continue;
    await journalRange(ctx, c);
    recovered++;
  }
  for (const [range, hash] of mirrored) {
    if (state.done.has(range)) continue;
    state.done.add(range);
    state.hashes.set(range, hash);
    await journal.append({ t: 'range', range, attempt: 0, hash, bytes: rangeAt(plan, range).length, durable: true, agent: 'kv-mirror', host: '', at: Date.now() });
    recovered++;
  }
  if (recovered > 0) {
    ctx.emit({ type: 'log', message: `recovered ${recovered} ranges an earlier run completed but had not journaled` });
    state.resumedBytes = rangeBytesOf(plan, state.done) - state.reusedBytes;
  }
}

/** Takes one completion: rejected, failed, sent again on a hash mismatch, or journaled as done. */
class Collector {
  private rejectedClaims = 0;
  private readonly expectation: RangeExpectation;

  constructor(
    private readonly ctx: TransferContext,
    private readonly run: Run,
  ) {
    const { plan, state } = ctx;
    this.expectation = {
      plan,
      isDone: (range) => state.done.has(range),
      isPublished: (range) => run.published[range] === 1,
      attemptOf: (range) => state.attempts.get(range) ?? 0,
      isKnownAgent: (agent) => run.knownAgents.has(agent),
    };
  }

  readonly handle = async (c: Completion): Promise<void> => {
    // A completion's claims must match a range this coordinator has outstanding (issue #30):
    // anyone who can write to the bus could otherwise mark ranges done without their data.
    const rejection = completionRejection(c, this.expectation, HASH_HEX);
    if (rejection !== undefined) return this.rejected(c, rejection);
    if (c.error) {
      this.run.outcome.fail(FerryError.fromData({ ...c.error, range: c.range }));
      return;
    }
    if (c.srcHash !== c.dstHash) return this.mismatched(c);
    if (!c.durable || this.ctx.state.done.has(c.range)) return;
    await this.durable(c);
  };

  private async rejected(c: Completion, rejection: NonNullable<ReturnType<typeof completionRejection>>): Promise<void> {
    const { ctx, run } = this;
    // A duplicate (an item redelivered after a lost ack, an older attempt) changes nothing.
    if (rejection.kind === 'stale') return;
    this.rejectedClaims++;
    if (this.rejectedClaims <= MAX_REJECTIONS_SHOWN) ctx.emit({ type: 'warning', message: `ignoring a completion from agent '${String(c.agent).slice(0, 80)}': ${rejection.reason}${this.rejectedClaims === MAX_REJECTIONS_SHOWN ? ' (further ones are not shown)' : ''}` });
    if (rejection.kind === 'forged') return;
    // The range is still outstanding, and its real completion could be this one (from an
    // agent not heard of yet): it is done again rather than lost.
    const attempt = (ctx.state.attempts.get(c.range) ?? 0) + 1;
    ctx.state.attempts.set(c.range, attempt);
    await ctx.journal.append({ t: 'resend', range: c.range, attempt, reason: 'completion from an agent not of this job', at: Date.now() });
    await publishWork(ctx, run, [c.range], () => attempt);
  }

  /** Source and destination hashes differ: the range is sent again, or the job fails after --max-resends. */
  private async mismatched(c: Completion): Promise<void> {
    const { ctx, run } = this;
    const { state } = ctx;
    const current = state.attempts.get(c.range) ?? 0;
    // What differed: the bytes as they arrived (transit), or as the storage gave them back (--verify).
    const found = c.readBack === true ? `destination ${c.dstHash} as read back from storage` : `destination ${c.dstHash}`;
    // Whatever attempt it was, its bytes may be the last ones written: the range is suspect again.
    const wasDone = state.done.delete(c.range);
    if (wasDone) state.hashes.delete(c.range);
    else if (c.attempt < current) return; // a newer attempt is already on its way
    if (current >= ctx.options.maxResends) {
      run.outcome.fail(
        new FerryError(
          'VERIFY_FAILED',
          `range ${c.range} (bytes ${c.offset}-${c.offset + c.length}) failed verification ${current + 1} time${current === 0 ? '' : 's'} via ${c.remoteHost} (source ${c.srcHash}, ${found}): check memory, disks and network of ${c.agent} and ${c.remoteHost}`,
          { range: c.range, host: c.remoteHost },
        ),
      );
      return;
    }
    const attempt = current + 1;
    state.attempts.set(c.range, attempt);
    state.resends++;
    ctx.emit({ type: 'range.resend', range: c.range, attempt, reason: `hash mismatch (source ${c.srcHash}, ${found}) via ${c.agent}` });
    await ctx.journal.append({ t: 'resend', range: c.range, attempt, reason: c.readBack === true ? 'hash mismatch on reading back' : 'hash mismatch', at: Date.now() });
    await publishWork(ctx, run, [c.range], () => attempt);
  }

  /** A range made durable with matching hashes: journaled and counted; the last one ends the transfer. */
  private async durable(c: Completion): Promise<void> {
    const { ctx, run } = this;
    const { state } = ctx;
    await journalRange(ctx, c);
    state.movedBytes += c.length;
    state.rangesSent++;
    run.hostBytes.set(c.remoteHost, (run.hostBytes.get(c.remoteHost) ?? 0) + c.length);
    // Per host, one entry per second of durable ranges (not one per range: there may be thousands a second).
    const recent = run.hostRecent.get(c.remoteHost) ?? [];
    const last = recent.at(-1);
    const at = Date.now();
    if (last && at - last.at < 1000) last.bytes += c.length;
    else recent.push({ at, bytes: c.length });
    run.hostRecent.set(c.remoteHost, recent);
    run.dirtyBlocks.add(Math.floor(c.range / KV_HASH_BLOCK));
    ctx.emit({ type: 'range.done', range: c.range, bytes: c.length, agent: c.agent, host: c.remoteHost, hash: c.srcHash, seconds: (c.finishedAt - c.startedAt) / 1000, finishedAt: c.finishedAt });
    if (state.done.size === ctx.plan.count) run.outcome.succeed();
  }
}

/**
 * Starts taking completions; the promise ends once the feed is stopped and every
 * completion taken is handled. Completions are handled in arrival order, but not
 * one at a time: each one's decisions (done, re-send) are taken at once and its
 * journal record queued, and the next one is taken while the record is written,
 * so the journal's group commit writes many records per fsync. A completion's
 * message is acked once its record is on disk.
 */
export async function collectCompletions(ctx: TransferContext, run: Run): Promise<{ feed: CompletionFeed; consuming: Promise<void> }> {
  const feed = await run.bus.completions();
  run.cleanup.push(() => feed.stop());
  const { handle } = new Collector(ctx, run);
  /** A completion that could not be handled: a malformed one is skipped (and acked), anything else fails the job. */
  const unhandled = (m: CompletionMessage, err: unknown) => {
    if (err instanceof FerryError && err.code === 'PROTOCOL') {
      ctx.emit({ type: 'log', message: `ignoring a malformed completion: ${err.message}` });
      m.ack();
    } else run.outcome.fail(toFerryError(err));
  };
  const consuming = (async () => {
    // Messages being handled, oldest first, with how many completions each carries.
    const window: Array<{ done: Promise<void>; count: number }> = [];
    let inWindow = 0;
    try {
      for await (const m of feed.messages) {
        let cs: Completion[];
        try {
          cs = decodeCompletions(m.data, ctx.prep.jobId);
        } catch (err) {
          unhandled(m, err);
          continue;
        }
        // A batch message is acked once every one of its completions is handled.
        const done = cs.length === 1 ? handle(cs[0]!) : Promise.all(cs.map(handle));
        window.push({ done: done.then(() => m.ack(), (err: unknown) => unhandled(m, err)), count: cs.length });
        inWindow += cs.length;
        while (inWindow >= COMPLETIONS_IN_FLIGHT) {
          const oldest = window.shift()!;
          await oldest.done;
          inWindow -= oldest.count;
        }
      }
    } catch (err) {
      run.outcome.fail(toFerryError(err));
    } finally {
      await Promise.all(window.map((w) => w.done));
    }
  })();
  return { feed, consuming };
}
