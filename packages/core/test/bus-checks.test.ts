import { describe, expect, it } from 'vitest';
import {
  FerryError,
  MESSAGE_VERSION,
  agentExecOf,
  checkControl,
  checkJobSpec,
  checkSpecDigest,
  checkSpecExec,
  checkedWorkItem,
  completionRejection,
  decodeAgentExec,
  defaultAgentExec,
  encodeAgentExec,
  encodeMessage,
  planRanges,
  specDigest,
} from '../src/index.js';
import type { Completion, ControlMessage, JobSpec, RangeExpectation, WorkItem } from '../src/index.js';

const MiB = 1024 * 1024;

function spec(over: Partial<JobSpec> = {}): JobSpec {
  return {
    v: MESSAGE_VERSION,
    jobId: 'abcd1234',
    direction: 'push',
    mode: 'helper',
    localPath: '/data/src.bin',
    remotePath: '/dst/.src.bin.part',
    remoteHosts: [{ host: 'dtn1', port: 22, user: 'alice' }],
    remoteCommand: 'ferry serve',
    fileBytes: 10 * MiB + 1,
    rangeBytes: MiB,
    rangeCount: 11,
    hash: 'xxh3',
    streams: 4,
    windowBytes: 8 * MiB,
    connectionBytesPerSec: 0,
    maxConnectionsPerHost: 0,
    agentCount: 2,
    ackWaitMs: 30_000,
    maxDeliver: 10,
    durableEveryRanges: 4,
    durableIntervalMs: 5000,
    ssh: { knownHostsFile: '/home/alice/.ssh/known_hosts', identityFiles: [], connectTimeoutMs: 20_000, transport: 'ssh2', sshCommand: ['ssh'] },
    createdAt: 0,
    ...over,
  };
}

function thrown(fn: () => void): FerryError {
  try {
    fn();
  } catch (err) {
    if (err instanceof FerryError) return err;
    throw err;
  }
  throw new Error('did not throw');
}

describe('a job spec an agent acts on', () => {
  it('passes as the coordinator writes it', () => {
    expect(() => checkJobSpec(spec())).not.toThrow();
    expect(() => checkJobSpec(spec({ fileBytes: 0, rangeCount: 1 }))).not.toThrow();
  });

  it('is refused with the field named when a type or bound is off', () => {
    const cases: Array<[Partial<JobSpec>, string]> = [
      [{ direction: 'sideways' as never }, "job spec field 'direction' must be push or pull, got \"sideways\""],
      [{ streams: 100_000 }, "job spec field 'streams' must be 1 to 64, got 100000"],
      [{ rangeCount: 3 }, "job spec field 'rangeCount' must be 11 (fileBytes / rangeBytes), got 3"],
      [{ remoteHosts: [{ host: '-oProxyCommand=touch /tmp/x', port: 22, user: 'a' }] }, "job spec field 'remoteHosts[0].host' must be a host name"],
      [{ remoteHosts: [{ host: 'dtn1', port: 22, user: '-F/tmp/cfg' }] }, "job spec field 'remoteHosts[0].user' must be a user name"],
      [{ remoteHosts: [] }, "job spec field 'remoteHosts' must be a list of 1 to 256 hosts"],
      [{ windowBytes: -1 }, "job spec field 'windowBytes' must be a size of 1 byte to 1 GiB, got -1"],
      [{ discard: 'yes' as never }, "job spec field 'discard' must be true or false"],
      [{ tree: 1 as never }, "job spec field 'tree' must be true or false"],
      [{ treeRootIno: -5 }, "job spec field 'treeRootIno' must be an inode number, got -5"],
      [{ localPath: 'a\0b' }, "job spec field 'localPath' must be a path"],
      [{ ssh: { ...spec().ssh, sshCommand: [] } }, "job spec field 'ssh.sshCommand' must be a program and its arguments, got []"],
    ];
    for (const [over, message] of cases) {
      const e = thrown(() => checkJobSpec(spec(over)));
      expect(e.code).toBe('PROTOCOL');
      expect(e.message).toContain(message);
    }
  });
});

describe('what an agent runs', () => {
  it('comes from its environment, with ferry\'s defaults when none is set', () => {
    expect(decodeAgentExec(undefined)).toEqual(defaultAgentExec());
    const exec = { transport: 'openssh' as const, sshCommand: ['/usr/bin/ssh', '-q'], configFile: '/home/alice/.ssh/hpc', remoteCommand: '/opt/ferry/bin/ferry serve' };
    expect(decodeAgentExec(encodeAgentExec(exec))).toEqual(exec);
    const e = thrown(() => decodeAgentExec('{"transport":"telnet","sshCommand":["ssh"],"remoteCommand":"x"}'));
    expect(e.code).toBe('USAGE');
    expect(e.message).toMatch(/^FERRY_AGENT_EXEC must be the JSON the coordinator sets/);
  });

  it('must be what the spec asks for, or the agent refuses the job, naming the difference', () => {
    const own = agentExecOf(spec());
    expect(() => checkSpecExec(spec(), own)).not.toThrow();
    const rewritten = spec({ ssh: { ...spec().ssh, transport: 'openssh', sshCommand: ['touch', '/tmp/pwned'] } });
    const e = thrown(() => checkSpecExec(rewritten, own));
    expect(e.code).toBe('PROTOCOL');
    expect(e.message).toBe(
      "refusing the job spec in NATS: it asks for --transport openssh, this agent was started with ssh2; and ssh command 'touch /tmp/pwned', this agent was started with 'ssh'. An agent runs only what its own command line and environment say: start agents through the coordinator's launcher, or with the same --transport, --ssh-cmd, -F and --remote-cmd as the copy",
    );
    expect(thrown(() => checkSpecExec(spec({ remoteCommand: 'touch /tmp/pwned' }), own)).message).toContain("remote command 'touch /tmp/pwned', this agent was started with 'ferry serve'");
    expect(thrown(() => checkSpecExec(spec({ ssh: { ...spec().ssh, configFile: '/tmp/evil_config' } }), own)).message).toContain('ssh -F /tmp/evil_config, this agent was started with (none given)');
  });

  it('refuses a stored spec whose digest is not the one its launcher gave', () => {
    const stored = encodeMessage(spec());
    expect(() => checkSpecDigest(stored, specDigest(stored), 'abcd1234')).not.toThrow();
    expect(() => checkSpecDigest(stored, undefined, 'abcd1234')).not.toThrow();
    const other = encodeMessage(spec({ localPath: '/home/alice/.ssh/id_ed25519' }));
    const e = thrown(() => checkSpecDigest(other, specDigest(stored), 'abcd1234'));
    expect(e.code).toBe('PROTOCOL');
    expect(e.message).toMatch(/^refusing the job spec of job abcd1234 in NATS: it is not the one the coordinator wrote/);
  });
});

describe('control messages', () => {
  const control = (c: Record<string, unknown>) => ({ v: MESSAGE_VERSION, job: 'abcd1234', ...c }) as unknown as ControlMessage;
  it('are acted on only within bounds', () => {
    expect(() => checkControl(control({ type: 'stop', reason: 'job done' }), 4)).not.toThrow();
    expect(() => checkControl(control({ type: 'streams', streams: 4 }), 4)).not.toThrow();
    expect(thrown(() => checkControl(control({ type: 'streams', streams: 5 }), 4)).message).toBe("control 'streams' needs a whole number from 1 to 4, got 5");
    expect(thrown(() => checkControl(control({ type: 'rate', connectionBytesPerSec: Infinity }), 4)).message).toBe("control 'rate' needs a positive whole number of bytes per second, got Infinity");
    expect(thrown(() => checkControl(control({ type: 'exec', argv: ['sh'] }), 4)).message).toBe("unknown control message type 'exec'");
  });
});

describe('a completion\'s claims', () => {
  const plan = planRanges(10 * MiB + 1, MiB);
  const expectation = (over: Partial<RangeExpectation> = {}): RangeExpectation => ({
    plan,
    isDone: (r) => r === 0,
    isPublished: (r) => r < 10,
    attemptOf: (r) => (r === 5 ? 2 : 0),
    isKnownAgent: (a) => a === 'node1-r1',
    ...over,
  });
  const claim = (over: Partial<Completion> = {}): Completion => ({
    v: MESSAGE_VERSION,
    job: 'abcd1234',
    range: 3,
    attempt: 0,
    offset: 3 * MiB,
    length: MiB,
    srcHash: '0123456789abcdef',
    dstHash: '0123456789abcdef',
    durable: true,
    agent: 'node1-r1',
    remoteHost: 'dtn1',
    startedAt: 0,
    finishedAt: 1,
    ...over,
  });
  const HEX = /^[0-9a-f]{8,64}$/;

  it('are taken when they match a range handed out and not done, of the attempt sent last', () => {
    expect(completionRejection(claim(), expectation(), HEX)).toBeUndefined();
    expect(completionRejection(claim({ range: 5, offset: 5 * MiB, attempt: 2 }), expectation(), HEX)).toBeUndefined();
    // A mismatch of an older attempt is still news (the coordinator ignores it itself).
    expect(completionRejection(claim({ range: 5, offset: 5 * MiB, attempt: 1, dstHash: 'ffffffffffffffff' }), expectation(), HEX)).toBeUndefined();
  });

  it('are refused when they do not match what the coordinator asked for', () => {
    const cases: Array<[Partial<Completion>, string]> = [
      [{ range: 11, offset: 11 * MiB }, 'range 11 is not one of the job\'s 11 ranges'],
      [{ range: -1 }, 'range -1 is not one of the job\'s 11 ranges'],
      [{ length: 2 * MiB }, `range 3 is bytes ${3 * MiB}-${4 * MiB}, the completion claims ${3 * MiB}-${5 * MiB}`],
      [{ offset: 0 }, `range 3 is bytes ${3 * MiB}-${4 * MiB}, the completion claims 0-${MiB}`],
      [{ range: 10, offset: 10 * MiB, length: 1 }, 'range 10 has not been handed out yet'],
      [{ attempt: 1 }, 'attempt 1 of range 3 was never sent (the last was 0)'],
      [{ attempt: 1, error: { code: 'DEST_NO_SPACE', message: 'disk full' } }, 'attempt 1 of range 3 was never sent (the last was 0)'],
      [{ srcHash: 'zz', dstHash: 'zz' }, "the hashes are not of the job's form"],
    ];
    for (const [over, reason] of cases) expect(completionRejection(claim(over), expectation(), HEX)).toEqual({ kind: 'forged', reason });
  });

  it('of a range done already or an older attempt change nothing, and those of an unknown agent are not taken', () => {
    expect(completionRejection(claim({ range: 0, offset: 0 }), expectation(), HEX)).toEqual({ kind: 'stale', reason: 'range 0 is done already' });
    expect(completionRejection(claim({ range: 5, offset: 5 * MiB, attempt: 1 }), expectation(), HEX)).toEqual({ kind: 'stale', reason: 'attempt 1 of range 5 is not outstanding (attempt 2 is)' });
    expect(completionRejection(claim({ agent: 'mallory' }), expectation(), HEX)).toEqual({ kind: 'unknown agent', reason: "agent 'mallory' is not one of this job's agents" });
  });
});

describe('work items an agent moves', () => {
  const s = spec({ fileBytes: 40 * MiB + 5, rangeBytes: MiB, rangeCount: 41 });
  const item = (over: Record<string, unknown>) => ({ v: MESSAGE_VERSION, job: 'abcd1234', range: 2, offset: 2 * MiB, length: MiB, attempt: 0, ...over }) as unknown as WorkItem;

  it('are split into the plan\'s ranges when every number is the plan\'s', () => {
    expect(checkedWorkItem(item({}), s)).toEqual([item({})]);
    expect(checkedWorkItem(item({ range: 32, offset: 32 * MiB, length: 8 * MiB + 5, count: 9 }), s).map((w) => [w.range, w.offset, w.length])).toEqual(
      Array.from({ length: 9 }, (_, i) => [32 + i, (32 + i) * MiB, i === 8 ? 5 : MiB]),
    );
  });

  it('are refused when a number is not a whole number or not the plan\'s', () => {
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ offset: '0; touch /tmp/pwned;' }, "work item for range 2 has offset 0; touch /tmp/pwned; and length 1048576, not whole numbers"],
      [{ length: 1.5 }, `work item for range 2 has offset ${2 * MiB} and length 1.5, not whole numbers`],
      [{ range: 41, offset: 41 * MiB }, "work item of 1 ranges from range 41 is not within the job's 41 ranges"],
      [{ range: 40, offset: 40 * MiB, count: 2, length: 6 }, "work item of 2 ranges from range 40 is not within the job's 41 ranges"],
      [{ attempt: -1 }, 'work item for range 2 has attempt -1, not a whole number'],
      [{ length: 7 }, `work item for range 2 says bytes ${2 * MiB}-${2 * MiB + 7}, the job's range is ${2 * MiB}-${3 * MiB}`],
      [{ offset: 0 }, `work item for range 2 says bytes 0-${MiB}, the job's range is ${2 * MiB}-${3 * MiB}`],
    ];
    for (const [over, message] of cases) {
      const e = thrown(() => checkedWorkItem(item(over), s));
      expect(e.code).toBe('PROTOCOL');
      expect(e.message).toBe(message);
    }
  });
});
