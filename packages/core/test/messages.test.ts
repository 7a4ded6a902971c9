import { describe, expect, it } from 'vitest';
import {
  FerryError,
  MESSAGE_VERSION,
  decodeAgentEvent,
  COMPLETIONS_PER_MESSAGE,
  decodeCompletion,
  decodeCompletions,
  decodeControl,
  decodeHeartbeat,
  decodeJobSpec,
  decodeWorkItem,
  encode,
  encodeMessage,
  jobSubjects,
  makeCompletionBatch,
  makeWorkItem,
  makeWorkRun,
  planRanges,
  rangeAt,
  rangesPerWorkItem,
  splitWorkItem,
  workItemCount,
  workItemId,
  workItemsOf,
} from '@ferry/core';
import type { AgentEvent, Completion, ControlMessage, Heartbeat, JobSpec, WorkItem } from '@ferry/core';

const JOB = 'c0ffee01';

const workItem: WorkItem = { v: MESSAGE_VERSION, job: JOB, range: 256, offset: 2 ** 32, length: 16 * 2 ** 20, attempt: 2 };
const completion: Completion = {
  v: MESSAGE_VERSION,
  job: JOB,
  range: 256,
  attempt: 2,
  offset: 2 ** 32,
  length: 16 * 2 ** 20,
  srcHash: '0440216782466d91',
  dstHash: '0440216782466d91',
  durable: true,
  agent: 'agent-1',
  remoteHost: 'dtn01',
  startedAt: 1_700_000_000_000,
  finishedAt: 1_700_000_000_500,
};
const heartbeat: Heartbeat = {
  v: MESSAGE_VERSION,
  job: JOB,
  agent: 'agent-1',
  node: 'node7',
  pid: 4242,
  bytes: 6 * 2 ** 30,
  rangesDone: 300,
  inFlight: 2,
  errors: 0,
  at: 1_700_000_000_000,
};
const control: ControlMessage = { v: MESSAGE_VERSION, job: JOB, type: 'cancel', reason: 'user pressed ^C' };
const agentEvent: AgentEvent = {
  v: MESSAGE_VERSION,
  job: JOB,
  type: 'agent.error',
  agent: 'agent-2',
  node: 'node8',
  error: { code: 'SSH_AUTH_FAILED', message: 'no key accepted', host: 'dtn01' },
  fatal: true,
};
const jobSpec: JobSpec = {
  v: MESSAGE_VERSION,
  jobId: JOB,
  direction: 'push',
  mode: 'helper',
  localPath: '/data/big.bin',
  remotePath: '/scratch/.big.bin.ferry-part',
  remoteHosts: [{ host: 'dtn01', port: 22, user: 'alice' }],
  remoteCommand: 'ferry serve',
  fileBytes: 6 * 2 ** 30 + 1,
  rangeBytes: 16 * 2 ** 20,
  rangeCount: 385,
  hash: 'xxh3',
  streams: 2,
  windowBytes: 8 * 2 ** 20,
  ackWaitMs: 30_000,
  ssh: { knownHostsFile: '/home/alice/.ssh/known_hosts', identityFiles: ['/home/alice/.ssh/id_ed25519'], connectTimeoutMs: 20_000 },
  createdAt: 1_700_000_000_000,
};

type Decoder = (data: Uint8Array, job?: string) => unknown;

const kinds: Array<{ what: string; decode: Decoder; sample: Record<string, unknown>; required: string[] }> = [
  { what: 'work item', decode: decodeWorkItem, sample: { ...workItem }, required: ['job', 'range', 'offset', 'length', 'attempt'] },
  { what: 'completion', decode: decodeCompletion, sample: { ...completion }, required: ['job', 'range', 'attempt', 'srcHash', 'dstHash', 'agent'] },
  // decodeCompletions takes a single completion as decodeCompletion does.
  { what: 'completion', decode: decodeCompletions, sample: { ...completion }, required: ['job', 'range', 'attempt', 'srcHash', 'dstHash', 'agent'] },
  { what: 'heartbeat', decode: decodeHeartbeat, sample: { ...heartbeat }, required: ['job', 'agent', 'bytes'] },
  { what: 'control', decode: decodeControl, sample: { ...control }, required: ['job', 'type'] },
  { what: 'agent event', decode: decodeAgentEvent, sample: { ...agentEvent }, required: ['job', 'type', 'agent'] },
  {
    what: 'job spec',
    decode: decodeJobSpec,
    sample: { ...jobSpec },
    required: ['jobId', 'direction', 'mode', 'localPath', 'remotePath', 'remoteHosts', 'rangeBytes'],
  },
];

function protocolMessage(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(FerryError);
    expect((err as FerryError).code).toBe('PROTOCOL');
    return (err as FerryError).message;
  }
  throw new Error('expected a PROTOCOL error, nothing was thrown');
}

function without(obj: Record<string, unknown>, key: string): Record<string, unknown> {
  const copy = { ...obj };
  delete copy[key];
  return copy;
}

describe('job subjects', () => {
  it('derives every stream, subject, consumer and bucket name from the job id', () => {
    expect(jobSubjects('c0ffee01')).toEqual({
      workStream: 'FERRY_WORK_c0ffee01',
      workSubject: 'ferry.c0ffee01.work',
      workConsumer: 'agents',
      doneStream: 'FERRY_DONE_c0ffee01',
      doneSubject: 'ferry.c0ffee01.done',
      doneConsumer: 'coordinator',
      heartbeat: 'ferry.c0ffee01.hb',
      control: 'ferry.c0ffee01.control',
      events: 'ferry.c0ffee01.events',
      kvBucket: 'ferry_c0ffee01',
    });
  });

  it('accepts lowercase hex ids of 4 to 64 digits', () => {
    expect(jobSubjects('abcd').kvBucket).toBe('ferry_abcd');
    expect(jobSubjects('f'.repeat(64)).workSubject).toBe(`ferry.${'f'.repeat(64)}.work`);
  });

  it.each([
    ['too short', 'abc'],
    ['too long', 'a'.repeat(65)],
    ['uppercase', 'ABCD'],
    ['not hex', 'wxyz'],
    ['a subject wildcard', 'ab.*'],
    ['empty', ''],
  ])('rejects a job id that is %s with a USAGE error', (_what, id) => {
    try {
      jobSubjects(id);
      throw new Error('expected a USAGE error');
    } catch (err) {
      expect(err).toBeInstanceOf(FerryError);
      expect((err as FerryError).code).toBe('USAGE');
      expect((err as FerryError).message).toBe(`job id must be lowercase hex, got '${id}'`);
    }
  });
});

describe('work items', () => {
  it('uses message version 5 (a tree spec may be a pull\'s: an agent of version 4 would push its batches back)', () => {
    expect(MESSAGE_VERSION).toBe(5);
  });

  it('builds a first-attempt work item from a planned range', () => {
    const plan = planRanges(6 * 2 ** 30 + 1);
    expect(makeWorkItem(JOB, rangeAt(plan, 384))).toEqual({ v: MESSAGE_VERSION, job: JOB, range: 384, offset: 6 * 2 ** 30, length: 1, attempt: 0 });
  });

  it('builds a re-send with the given attempt number', () => {
    expect(makeWorkItem(JOB, { index: 3, offset: 48 * 2 ** 20, length: 16 * 2 ** 20 }, 2)).toEqual({
      v: MESSAGE_VERSION,
      job: JOB,
      range: 3,
      offset: 50331648,
      length: 16777216,
      attempt: 2,
    });
  });

  it('names a work item by job, range and attempt', () => {
    expect(workItemId(workItem)).toBe('c0ffee01:256:2');
    expect(workItemId({ job: 'abcd', range: 0, attempt: 0 })).toBe('abcd:0:0');
  });
});

describe('message round trips', () => {
  it('round-trips a work item with an offset above 2^32', () => {
    expect(decodeWorkItem(encodeMessage(workItem), JOB)).toEqual(workItem);
  });

  it('round-trips a completion, with and without an error', () => {
    expect(decodeCompletion(encodeMessage(completion), JOB)).toEqual(completion);
    const failed: Completion = { ...completion, error: { code: 'DEST_NO_SPACE', message: 'full', path: '/scratch', errno: 'ENOSPC' } };
    expect(decodeCompletion(encodeMessage(failed), JOB)).toEqual(failed);
  });

  it('round-trips a heartbeat, a control message, an agent event and a job spec', () => {
    expect(decodeHeartbeat(encodeMessage(heartbeat), JOB)).toEqual(heartbeat);
    expect(decodeControl(encodeMessage(control), JOB)).toEqual(control);
    expect(decodeAgentEvent(encodeMessage(agentEvent), JOB)).toEqual(agentEvent);
    expect(decodeJobSpec(encodeMessage(jobSpec), JOB)).toEqual(jobSpec);
  });

  it('round-trips an agent.started event and a stop message without a reason', () => {
    const started: AgentEvent = { v: MESSAGE_VERSION, job: JOB, type: 'agent.started', agent: 'a', node: 'n', pid: 1 };
    expect(decodeAgentEvent(encodeMessage(started))).toEqual(started);
    const stop: ControlMessage = { v: MESSAGE_VERSION, job: JOB, type: 'stop' };
    expect(decodeControl(encodeMessage(stop))).toEqual(stop);
  });

  it('decodes without checking the job when no job is given', () => {
    expect(decodeWorkItem(encodeMessage({ ...workItem, job: 'beef' }))).toEqual({ ...workItem, job: 'beef' });
  });
});

describe('message decoders reject bad messages with PROTOCOL errors', () => {
  it.each(kinds.map((k) => [k.what, k] as const))('rejects a %s of another version', (what, kind) => {
    expect(protocolMessage(() => kind.decode(encode({ ...kind.sample, v: 1 }), JOB))).toBe(
      `${what} message has version 1, this ferry speaks 5: run the same ferry version everywhere`,
    );
  });

  it.each(kinds.map((k) => [k.what, k] as const))('rejects a %s without a version', (what, kind) => {
    expect(protocolMessage(() => kind.decode(encode(without(kind.sample, 'v'))))).toBe(
      `${what} message has version undefined, this ferry speaks 5: run the same ferry version everywhere`,
    );
  });

  it.each(kinds.map((k) => [k.what, k] as const))('rejects a %s whose version is the text "5"', (what, kind) => {
    expect(protocolMessage(() => kind.decode(encode({ ...kind.sample, v: '5' })))).toBe(
      `${what} message has version 5, this ferry speaks 5: run the same ferry version everywhere`,
    );
  });

  it.each(kinds.map((k) => [k.what, k] as const))('rejects a %s of another job', (what, kind) => {
    expect(protocolMessage(() => kind.decode(encode(kind.sample), 'deadbeef'))).toBe(`${what} message belongs to job c0ffee01, not deadbeef`);
  });

  const missing = kinds.flatMap((k) => k.required.map((field) => [k.what, field, k] as const));
  it.each(missing)("rejects a %s that lacks '%s'", (what, field, kind) => {
    expect(protocolMessage(() => kind.decode(encode(without(kind.sample, field))))).toBe(`${what} message lacks '${field}'`);
  });

  it.each(missing)("rejects a %s whose '%s' is nil", (what, field, kind) => {
    expect(protocolMessage(() => kind.decode(encode({ ...kind.sample, [field]: null })))).toBe(`${what} message lacks '${field}'`);
  });

  it.each(kinds.map((k) => [k.what, k] as const))('rejects a %s that is not a map', (what, kind) => {
    expect(protocolMessage(() => kind.decode(encode(42)))).toBe(`${what} message is not a map`);
    expect(protocolMessage(() => kind.decode(encode(null)))).toBe(`${what} message is not a map`);
    expect(protocolMessage(() => kind.decode(encode('x')))).toBe(`${what} message is not a map`);
  });

  it.each(kinds.map((k) => [k.what, k] as const))('rejects a %s that is not valid msgpack', (what, kind) => {
    expect(protocolMessage(() => kind.decode(Buffer.from([0x81])))).toBe(`${what} message is not valid msgpack: data ends inside a msgpack map of 1 entries (at byte 1)`);
  });

  it('checks the version before the fields', () => {
    expect(protocolMessage(() => decodeWorkItem(encode({ v: 1 })))).toBe(
      'work item message has version 1, this ferry speaks 5: run the same ferry version everywhere',
    );
  });

  it('rejects an array in place of a message', () => {
    expect(protocolMessage(() => decodeHeartbeat(encode([1, JOB])))).toBe('heartbeat message is not a map');
  });
});

describe('completion batches', () => {
  const batchOf = (n: number): Completion[] => Array.from({ length: n }, (_, i) => ({ ...completion, range: i, offset: i * 16 * 2 ** 20 }));

  it('decodes a single completion as a list of one', () => {
    expect(decodeCompletions(encodeMessage(completion), JOB)).toEqual([completion]);
  });

  it("round-trips a full batch well within NATS's default 1 MiB payload", () => {
    const list = batchOf(COMPLETIONS_PER_MESSAGE).map((c) => ({ ...c, agent: 'a-long-node-name.cluster.example.org-123456-7', remoteHost: 'dtn-01.remote-site.example.org:2222' }));
    const data = encodeMessage(makeCompletionBatch(JOB, list));
    expect(data.length).toBeLessThan(256 * 1024);
    expect(decodeCompletions(data, JOB)).toEqual(list);
  });

  it('rejects a batch of another job or version', () => {
    expect(protocolMessage(() => decodeCompletions(encodeMessage(makeCompletionBatch(JOB, batchOf(2))), 'deadbeef'))).toBe(
      'completion batch message belongs to job c0ffee01, not deadbeef',
    );
    expect(protocolMessage(() => decodeCompletions(encode({ ...makeCompletionBatch(JOB, batchOf(2)), v: 1 }), JOB))).toBe(
      'completion batch message has version 1, this ferry speaks 5: run the same ferry version everywhere',
    );
  });

  it('rejects the whole batch when one entry is malformed or of another job', () => {
    const list: unknown[] = batchOf(3);
    list[1] = without(completion, 'dstHash');
    expect(protocolMessage(() => decodeCompletions(encode({ v: MESSAGE_VERSION, job: JOB, completions: list }), JOB))).toBe("completion message lacks 'dstHash'");
    list[1] = { ...completion, job: 'deadbeef' };
    expect(protocolMessage(() => decodeCompletions(encode({ v: MESSAGE_VERSION, job: JOB, completions: list }), JOB))).toBe('completion message belongs to job deadbeef, not c0ffee01');
    list[1] = 7;
    expect(protocolMessage(() => decodeCompletions(encode({ v: MESSAGE_VERSION, job: JOB, completions: list }), JOB))).toBe('completion message is not a map');
  });

  it('rejects a batch whose completions are not a list', () => {
    expect(protocolMessage(() => decodeCompletions(encode({ v: MESSAGE_VERSION, job: JOB, completions: { 0: completion } }), JOB))).toBe(
      'completion batch message has no list of completions',
    );
  });
});

describe('work items carrying runs of ranges', () => {
  const MiB = 2 ** 20;

  it('carries up to 16 MiB and 16 ranges in one item', () => {
    expect(rangesPerWorkItem(16 * MiB)).toBe(1);
    expect(rangesPerWorkItem(64 * MiB)).toBe(1);
    expect(rangesPerWorkItem(1024 * MiB)).toBe(1);
    expect(rangesPerWorkItem(MiB)).toBe(16);
    expect(rangesPerWorkItem(2 * MiB)).toBe(8);
    expect(rangesPerWorkItem(5 * MiB)).toBe(3);
    expect(rangesPerWorkItem(8 * MiB)).toBe(2);
    expect(rangesPerWorkItem(4096)).toBe(16);
    expect(rangesPerWorkItem(0)).toBe(1);
    expect(rangesPerWorkItem(Number.NaN)).toBe(1);
  });

  it('builds a run over consecutive ranges, the last one short, and splits it back', () => {
    const plan = planRanges(10 * MiB + 5, MiB);
    const ranges = [8, 9, 10].map((i) => rangeAt(plan, i));
    const run = makeWorkRun(JOB, ranges);
    expect(run).toEqual({ v: MESSAGE_VERSION, job: JOB, range: 8, offset: 8 * MiB, length: 2 * MiB + 5, attempt: 0, count: 3 });
    expect(decodeWorkItem(encodeMessage(run), JOB)).toEqual(run);
    expect(splitWorkItem(run, MiB)).toEqual(ranges.map((r) => makeWorkItem(JOB, r)));
  });

  it('makes a single range an ordinary item, which splits into itself', () => {
    const plan = planRanges(10 * MiB, MiB);
    const one = makeWorkRun(JOB, [rangeAt(plan, 4)], 3);
    expect(one).toEqual(makeWorkItem(JOB, rangeAt(plan, 4), 3));
    expect(one.count).toBeUndefined();
    expect(splitWorkItem(one, MiB)).toEqual([one]);
    expect(() => makeWorkRun(JOB, [])).toThrow(FerryError);
  });

  it('rejects a run that does not fit the plan as malformed', () => {
    const run = makeWorkRun(JOB, [0, 1, 2].map((i) => rangeAt(planRanges(8 * MiB, MiB), i)));
    const bad = [
      { ...run, offset: run.offset + 1 },
      { ...run, length: 2 * MiB },
      { ...run, length: 3 * MiB + 1 },
      { ...run, count: 2.5 },
      { ...run, count: 0 },
      { ...run, count: 17, length: 17 * MiB },
    ];
    for (const item of bad) expect(protocolMessage(() => splitWorkItem(item, MiB))).toContain('does not fit ranges of 1048576 bytes');
  });
});

describe('workItemsOf', () => {
  const MiB = 2 ** 20;
  const summary = (items: Iterable<WorkItem>) => [...items].map((w) => `${w.range}${w.count ? `+${w.count}` : ''}@${w.attempt}`);

  it('groups consecutive first attempts in runs of rangesPerWorkItem, the last run short', () => {
    const plan = planRanges(40 * MiB, 4 * MiB); // 10 ranges, 4 per item
    expect(summary(workItemsOf(JOB, plan, [...Array(10).keys()], () => 0))).toEqual(['0+4@0', '4+4@0', '8+2@0']);
  });

  it('breaks runs at gaps and sends re-sends alone', () => {
    const plan = planRanges(40 * MiB, 4 * MiB);
    const attempts = new Map([[5, 2]]);
    expect(summary(workItemsOf(JOB, plan, [0, 1, 3, 4, 5, 6, 7, 9], (i) => attempts.get(i) ?? 0))).toEqual(['0+2@0', '3+2@0', '5@2', '6+2@0', '9@0']);
  });

  it('counts the work items of a plan as workItemCount does', () => {
    for (const [bytes, rangeBytes] of [[40 * MiB, 4 * MiB], [100 * MiB + 1, MiB], [64 * MiB, 16 * MiB], [MiB, MiB], [0, MiB]] as const) {
      const plan = planRanges(bytes, rangeBytes);
      expect(workItemCount(plan.count, plan.rangeBytes), `${bytes} in ${rangeBytes}`).toBe([...workItemsOf(JOB, plan, [...Array(plan.count).keys()], () => 0)].length);
    }
  });

  it('sends ranges of 16 MiB and more one per item', () => {
    const plan = planRanges(64 * MiB, 16 * MiB);
    expect(summary(workItemsOf(JOB, plan, [0, 1, 2, 3], () => 0))).toEqual(['0@0', '1@0', '2@0', '3@0']);
  });

  it('covers every range exactly once, split back by the plan', () => {
    const plan = planRanges(100 * MiB + 12_345, MiB);
    const items = [...workItemsOf(JOB, plan, [...Array(plan.count).keys()], () => 0)];
    expect(items.length).toBe(Math.ceil(plan.count / 16));
    expect(items.flatMap((w) => splitWorkItem(w, plan.rangeBytes))).toEqual([...Array(plan.count).keys()].map((i) => makeWorkItem(JOB, rangeAt(plan, i))));
  });
});
