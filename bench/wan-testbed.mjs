// The wan testbed: an emulated long fat network between two network namespaces, with a
// throwaway sshd in one of them. Used by the `wan` scenario (one file) and by `tree --wan`.
//
//   const bed = await openWanTestbed({ linkMbit: 2000, streamMbit: 200, sshdDir, sshdConfig, log });
//   try {
//     spawn(...bed.inClient, 'scp', ..., `${bed.sshd.user}@${bed.host}:/dst`);   // in the client namespace
//     const before = bed.classBytes(); ...; bed.bucketsUsed(before, bed.classBytes());
//     await bed.settle();        // after each run: nothing of it left in either namespace
//   } finally {
//     await bed.close();         // sshd, processes, veths, bridge, namespaces
//   }
//
// A client namespace (the tools) and a server namespace (the sshd, test/fixtures/sshd.mjs) hang
// off a private bridge. netem is absent on these machines, so the link is emulated by its effect,
// not its delay (/work/shared/TESTBED.md): the client's egress goes through htb with one class
// per bucket of TCP source ports, each capped at the per-stream rate that RTT and windows would
// impose on one TCP stream, all under a parent class with the link's total rate. Opening checks
// the caps with plain TCP and fails when they do not hold.
//
// Everything is named after fixed prefixes, so opening removes the leftovers of a crashed run;
// nothing else on the machine is touched. On SIGINT or SIGTERM the testbed tears itself down
// synchronously (beside bench/run.mjs's own handler, which knows nothing of it); standalone (no
// other handler), it then exits 130.
import { spawn, execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { netnsPids } from '../test/fixtures/cluster.mjs';
import { startSshd } from '../test/fixtures/sshd.mjs';
import { fmt, readText, sh, waitForIdle, which } from './common.mjs';

export const NS_C = 'fwan-c'; // client namespace; its host-side veth has the same name
export const NS_S = 'fwan-s'; // server namespace (sshd)
const BRIDGE = 'fwanbr0';
const SUBNET = '10.77.50';
const BRIDGE_IP = `${SUBNET}.1`; // the host's address on the bridge (startSshd checks readiness from here)
export const CLIENT_IP = `${SUBNET}.10`;
export const SERVER_IP = `${SUBNET}.20`;
const NETNS_DIR = '/var/run/netns';
// One htb class per bucket of source ports (low 6 bits), as in TESTBED.md. The client's ephemeral
// ports are confined to one aligned block of BUCKETS ports, so two concurrent connections never
// share a bucket (with the full default range, 16 streams in 64 buckets collide 85% of the time).
export const BUCKETS = 64;
export const PORT_BASE = 32768; // a multiple of BUCKETS
const CHECK_PORT = 5201;
/** Runs a command in the client namespace: put in front of its argv. */
export const inClient = ['nsenter', `--net=${join(NETNS_DIR, NS_C)}`];

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** Blocks the thread (used only while tearing down from a signal handler, which must not await). */
const sleepSync = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

// ---------------------------------------------------------------------------
// Namespaces and shaping.

function pidAlive(pid) {
  const s = readText(`/proc/${pid}/stat`);
  return s !== undefined && s.slice(s.lastIndexOf(')') + 2, s.lastIndexOf(')') + 3) !== 'Z';
}
function killSync(pids, graceMs) {
  const signal = (sig) => pids.forEach((p) => {
    try {
      process.kill(p, sig);
    } catch {
      // gone
    }
  });
  signal('SIGTERM');
  for (const deadline = Date.now() + graceMs; pids.some(pidAlive) && Date.now() < deadline; ) sleepSync(25);
  signal('SIGKILL');
  for (const deadline = Date.now() + 3000; pids.some(pidAlive) && Date.now() < deadline; ) sleepSync(25);
}
function run(cmd, args) {
  try {
    execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
  } catch (err) {
    throw new Error(`${cmd} ${args.join(' ')}: ${(err.stderr ?? err.message).trim()}`);
  }
}

/** htb burst: 10 ms at the rate, at least 64 KiB (one GSO packet must fit). */
const burst = (mbit) => `${Math.max(64, Math.ceil((mbit * 1e6) / 8 / 100 / 1024))}k`;

/**
 * The shaping on one end's egress. An htb parent class with the link's total rate; under it one
 * class per bucket of ports (matched by `portField`: sport on the client, dport on the server)
 * with ceil = the per-stream cap. The buckets' own guaranteed rate is the link's share
 * (link / BUCKETS), not the stream cap: htb never holds back a class sending below its own rate,
 * so 16 classes of `rate 200mbit` under a 2 Gbit/s parent would let 3.2 Gbit/s through.
 */
function shape(ns, portField, linkMbit, streamMbit) {
  const tc = (...args) => run('tc', ['-n', ns, ...args]);
  tc('qdisc', 'replace', 'dev', 'eth0', 'root', 'handle', '1:', 'htb');
  tc('class', 'add', 'dev', 'eth0', 'parent', '1:', 'classid', '1:1', 'htb', 'rate', `${linkMbit}mbit`, 'ceil', `${linkMbit}mbit`, 'burst', burst(linkMbit), 'cburst', burst(linkMbit), 'quantum', '65536');
  const share = `${Math.floor((linkMbit * 1000) / BUCKETS)}kbit`;
  for (let i = 0; i < BUCKETS; i++) {
    const id = `1:${(0x100 + i).toString(16)}`;
    tc('class', 'add', 'dev', 'eth0', 'parent', '1:1', 'classid', id, 'htb', 'rate', share, 'ceil', `${streamMbit}mbit`, 'burst', burst(streamMbit), 'cburst', burst(streamMbit), 'quantum', '65536');
    tc('filter', 'add', 'dev', 'eth0', 'parent', '1:', 'protocol', 'ip', 'prio', '1', 'u32', 'match', 'ip', portField, String(i), `0x${(BUCKETS - 1).toString(16)}`, 'flowid', id); // tc reads the mask as hex
  }
}

/** Bytes sent so far by each bucket class on the client's egress (`side` 'server': the server's, by the client's port). */
function classBytes(side = 'client') {
  const text = sh('tc', ['-n', side === 'server' ? NS_S : NS_C, '-s', 'class', 'show', 'dev', 'eth0']);
  const out = {};
  for (const m of text.matchAll(/class htb (1:[0-9a-f]+) [^\n]*\n\s*Sent (\d+) bytes/g)) out[m[1]] = Number(m[2]);
  return out;
}

function buildNetwork(linkMbit, streamMbit) {
  run('ip', ['link', 'add', BRIDGE, 'type', 'bridge']);
  run('ip', ['addr', 'add', `${BRIDGE_IP}/24`, 'dev', BRIDGE]);
  run('ip', ['link', 'set', BRIDGE, 'up']);
  for (const [ns, ip] of [
    [NS_C, CLIENT_IP],
    [NS_S, SERVER_IP],
  ]) {
    run('ip', ['netns', 'add', ns]);
    run('ip', ['link', 'add', ns, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
    run('ip', ['link', 'set', ns, 'master', BRIDGE]);
    run('ip', ['link', 'set', ns, 'up']);
    run('ip', ['-n', ns, 'addr', 'add', `${ip}/24`, 'dev', 'eth0']);
    run('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
    run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']); // ferry's nats-server listens on 127.0.0.1
  }
  // Per-namespace sysctls: the client's connections get ports from one aligned block of BUCKETS
  // (distinct buckets), and may reuse a port whose last connection to the sshd is in TIME_WAIT.
  run('nsenter', [`--net=${join(NETNS_DIR, NS_C)}`, 'sysctl', '-q', '-w', `net.ipv4.ip_local_port_range=${PORT_BASE} ${PORT_BASE + BUCKETS - 1}`, 'net.ipv4.tcp_tw_reuse=1']);
  // Push data leaves the client by its source port; the server's replies (ACKs) and any data it
  // sends leave by the client's port as destination: the same caps both ways.
  shape(NS_C, 'sport', linkMbit, streamMbit);
  shape(NS_S, 'dport', linkMbit, streamMbit);
}

// ---------------------------------------------------------------------------
// The quick check of the shaping: plain TCP, no ssh, n streams for a few seconds.

const SINK = `const net=require('net');const [host,port,n]=process.argv.slice(1);let done=0,total=0,first=0,last=0;const per=[];
net.createServer((s)=>{let b=0;s.on('data',(d)=>{const t=performance.now();if(!first)first=t;last=t;b+=d.length;total+=d.length});
s.on('error',()=>{});s.on('close',()=>{per.push(b);if(++done===Number(n)){console.log(JSON.stringify({bytes:total,seconds:(last-first)/1000,perConnection:per}));process.exit(0)}})})
.listen(Number(port),host,()=>console.log('listening'));`;
const SOURCE = `const net=require('net');const [host,port,n,ms]=process.argv.slice(1);const buf=Buffer.alloc(1<<20);let stop=false;const socks=[];
setTimeout(()=>{stop=true;for(const s of socks)s.end()},Number(ms));
for(let i=0;i<Number(n);i++){const s=net.connect(Number(port),host,()=>{const pump=()=>{while(!stop&&s.write(buf));if(!stop)s.once('drain',pump)};pump()});
s.on('error',(e)=>{console.error(e.message);process.exit(1)});socks.push(s)}`;

async function checkShaping(streams, seconds) {
  const nsenter = (ns) => ['nsenter', `--net=${join(NETNS_DIR, ns)}`];
  const sink = spawn(nsenter(NS_S)[0], [...nsenter(NS_S).slice(1), process.execPath, '-e', SINK, SERVER_IP, String(CHECK_PORT), String(streams)], { stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    let out = '';
    sink.stdout.on('data', (d) => (out += d));
    for (const deadline = Date.now() + 10_000; !out.includes('listening'); await sleep(20)) {
      if (sink.exitCode !== null || Date.now() > deadline) throw new Error('shaping check: the sink did not start');
    }
    const before = classBytes();
    const source = spawn(nsenter(NS_C)[0], [...nsenter(NS_C).slice(1), process.execPath, '-e', SOURCE, SERVER_IP, String(CHECK_PORT), String(streams), String(seconds * 1000)], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    source.stderr.on('data', (d) => (err += d));
    const sinkDone = new Promise((r) => sink.once('close', r));
    const killer = setTimeout(() => {
      source.kill('SIGKILL');
      sink.kill('SIGKILL');
    }, (seconds + 30) * 1000);
    await Promise.all([new Promise((r) => source.once('close', r)), sinkDone]);
    clearTimeout(killer);
    const line = out.split('\n').find((l) => l.startsWith('{'));
    if (!line) throw new Error(`shaping check with ${streams} stream(s) failed: ${err.trim() || 'no result from the sink'}`);
    const r = JSON.parse(line);
    const after = classBytes();
    const buckets = Object.keys(after).filter((k) => k !== '1:1' && after[k] - (before[k] ?? 0) > 1e6).length;
    return { streams, seconds: r.seconds, MBps: r.bytes / 1e6 / r.seconds, perConnectionMB: r.perConnection.map((b) => Math.round(b / 1e5) / 10), buckets };
  } finally {
    if (sink.exitCode === null) sink.kill('SIGKILL');
  }
}

// ---------------------------------------------------------------------------
// Teardown.

/** Synchronous steps the user of the testbed adds (killing its measured command, removing its work directory); run first. */
const teardownSteps = [];
/**
 * Removes everything the testbed makes: the steps its user added, the processes in its
 * namespaces (the measured tool, ferry's agents and nats-server, ssh, sshd and its sessions), the
 * veths (with their qdiscs), the bridge and the namespaces. Synchronous and idempotent: it also
 * runs from the signal handler, which must not await.
 */
function teardownSync() {
  while (teardownSteps.length > 0) {
    try {
      teardownSteps.pop()();
    } catch {
      // a step that fails must not keep the namespaces alive
    }
  }
  const pids = [NS_C, NS_S].flatMap(netnsPids);
  if (pids.length > 0) killSync(pids, 2000);
  for (const dev of [NS_C, NS_S, BRIDGE]) if (existsSync(`/sys/class/net/${dev}`)) sh('ip', ['link', 'del', dev]);
  for (const ns of [NS_C, NS_S]) if (existsSync(join(NETNS_DIR, ns))) sh('ip', ['netns', 'del', ns]);
}
/** Removes whatever a crashed run of the testbed left (its names are fixed); what opening does first. */
export const removeWanTestbed = () => teardownSync();

let logSignal = () => {};
function onSignal(sig) {
  logSignal(`${sig}: tearing down the wan testbed`);
  teardownSync();
  if (process.listenerCount(sig) === 1) process.exit(130); // standalone; under run.mjs its handler exits
}

/** Whether the tools the testbed needs are here, and we may use them; throws a message that says what to do. */
function checkHost() {
  if (process.getuid?.() !== 0) throw new Error('the wan testbed builds network namespaces: run it as root');
  for (const bin of ['ip', 'tc', 'nsenter', 'sysctl']) if (!which(bin) && !existsSync(`/usr/sbin/${bin}`) && !existsSync(`/sbin/${bin}`)) throw new Error(`${bin} not found (apt-get install -y iproute2 util-linux procps)`);
}

/**
 * Builds the testbed: namespaces, bridge, veths and shaping; checks the shaping with plain TCP (1
 * stream, then enough to fill the link; a cap that does not hold is an error, a check that falls
 * short a warning: a busy machine); starts an sshd in the server namespace on SERVER_IP:22 with
 * its files in `sshdDir` and `sshdConfig` added to its configuration. Options: linkMbit,
 * streamMbit, sshdDir, sshdConfig ([]), log, checkSeconds (4: each measurement of the check),
 * idleWaitMs (30000: before each, at most this long for 3 idle seconds). On any failure on the
 * way everything is removed again. Returns the testbed: see the functions below.
 */
export async function openWanTestbed({ linkMbit, streamMbit, sshdDir, sshdConfig = [], log, checkSeconds = 4, idleWaitMs = 30_000 }) {
  if (!(linkMbit > 0) || !(streamMbit > 0) || streamMbit > linkMbit) throw new Error('--link-mbit and --stream-mbit: positive, stream <= link');
  checkHost();
  logSignal = log;
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, onSignal);
  const linkMBps = linkMbit / 8;
  const streamMBps = streamMbit / 8;
  let sshd;
  let closed = false;
  const check = [];
  const warnings = [];
  try {
    teardownSync(); // leftovers of a crashed run (same names)
    buildNetwork(linkMbit, streamMbit);
    log(`namespaces ${NS_C} (${CLIENT_IP}) and ${NS_S} (${SERVER_IP}): link ${linkMbit} Mbit/s, ${streamMbit} Mbit/s per TCP stream (${BUCKETS} port buckets)`);

    // The quick check: plain TCP, one stream and 16 (or as many as fill the link), through the shaping.
    const many = Math.min(BUCKETS, Math.max(16, Math.ceil(linkMbit / streamMbit)));
    for (const n of [1, many]) {
      if (idleWaitMs > 0) await waitForIdle({ quietSeconds: 3, maxMs: idleWaitMs, log });
      const c = await checkShaping(n, checkSeconds);
      c.expectedMBps = Math.min(linkMBps, n * streamMBps);
      c.ratio = c.MBps / c.expectedMBps;
      check.push(c);
      log(`shaping check, ${n} TCP stream(s): ${fmt(c.MBps, 1)} MB/s of payload = ${fmt(c.ratio * 100)}% of ${fmt(c.expectedMBps)} MB/s (${c.buckets} bucket(s) used)`);
    }
    for (const c of check) {
      // TCP/IP headers take ~4.5% of each 1514-byte frame: payload above the cap means no shaping.
      if (c.buckets !== c.streams) throw new Error(`shaping check: ${c.streams} stream(s) used ${c.buckets} port bucket(s): the per-stream classes do not work here`);
      if (c.ratio > 1.02) throw new Error(`shaping check: ${c.streams} stream(s) moved ${fmt(c.MBps, 1)} MB/s, more than the ${fmt(c.expectedMBps)} MB/s cap: the shaping does not work here`);
      if (c.ratio < 0.85) warnings.push(`${c.streams} TCP stream(s) reached only ${fmt(c.ratio * 100)}% of ${fmt(c.expectedMBps)} MB/s in the shaping check (machine busy?)`);
    }
    for (const w of warnings) log(`warning: ${w}`);

    sshd = await startSshd({ dir: sshdDir, netns: NS_S, listen: SERVER_IP, port: 22, extraConfig: sshdConfig });
    log(`sshd in ${NS_S} on ${SERVER_IP}:22 (pid ${sshd.pid})`);
    return {
      sshd,
      host: SERVER_IP,
      port: 22,
      inClient,
      linkMbit,
      streamMbit,
      linkMBps,
      streamMBps,
      /** The shaping check's measurements, and its warnings (a busy machine). */
      check,
      warnings,
      /** One line for a result file: how the link is shaped. */
      shapingText: `htb on both ends' egress, parent ${linkMbit} Mbit/s, ${BUCKETS} classes by the low 6 bits of the client's port (ceil ${streamMbit} Mbit/s, guaranteed ${fmt(linkMbit / BUCKETS, 2)} Mbit/s each); the client's ephemeral ports are confined to ${PORT_BASE}-${PORT_BASE + BUCKETS - 1}, so every connection has a bucket of its own`,
      checkText: check.map((c) => `${c.streams} stream(s), ${c.seconds.toFixed(1)} s: ${fmt(c.MBps, 1)} MB/s of payload = ${fmt(c.ratio * 100)}% of ${fmt(c.expectedMBps)} MB/s, ${c.buckets} bucket(s)`).join('; '),
      /** Bytes the client (`side` 'server': the server) has put on the link so far, frames with their headers: what the host end of its veth received. */
      wireBytes: (side = 'client') => Number(readText(`/sys/class/net/${side === 'server' ? NS_S : NS_C}/statistics/rx_bytes`)) || 0,
      classBytes,
      /** MB each bucket carried between two classBytes() readings, for the buckets that carried more than 1 MB: the TCP streams that carried data. */
      bucketMB: (before, after) =>
        Object.fromEntries(
          Object.keys(after)
            .filter((k) => k !== '1:1' && after[k] - (before[k] ?? 0) > 1e6)
            .map((k) => [k, Math.round((after[k] - (before[k] ?? 0)) / 1e5) / 10]),
        ),
      /** After a run: waits (at most 10 s) until its processes are gone from both namespaces (the sshd daemon stays); kills what remains and returns their command lines. */
      settle: async () => {
        const ours = () => [...netnsPids(NS_C), ...netnsPids(NS_S).filter((p) => p !== sshd.pid)].filter(pidAlive);
        for (const deadline = Date.now() + 10_000; ours().length > 0 && Date.now() < deadline; ) await sleep(100);
        const left = ours();
        if (left.length === 0) return [];
        const names = left.map((p) => (readText(`/proc/${p}/cmdline`) ?? '').split('\0').slice(0, 3).join(' '));
        killSync(left, 1000);
        return names;
      },
      /** Adds a synchronous step to the teardown (also on a signal), run before the namespaces go. */
      onTeardown: (fn) => void teardownSteps.push(fn),
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }

  async function close() {
    if (closed) return;
    closed = true;
    await sshd?.stop({ keepDir: true }).catch(() => {});
    teardownSync();
    for (const sig of ['SIGINT', 'SIGTERM']) process.off(sig, onSignal);
  }
}
