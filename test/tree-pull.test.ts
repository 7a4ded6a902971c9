/**
 * `ferry cp -r host:DIR LOCAL` (a tree pull) against a real sshd, through
 * ferry serve, the python helper (no node on the remote host) and SFTP: the
 * tree arrives identical with -p; a rerun fetches nothing; a changed remote
 * file alone comes again; a local obstacle fails alone with exit 72. And
 * WALK and READ_BATCH spoken frame by frame to both helpers, with their bounds.
 */
import { spawn } from 'node:child_process';
import { appendFile, mkdir, readFile, readdir, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_BATCH_BODY_BYTES, PROTOCOL_VERSION, createHasher, encodeControl } from '@ferry/core';
import type { DecodedFrame } from '@ferry/core';
import { FrameDecoder } from '@ferry/core';
import { pythonHelperCommand, pythonHelperScript } from '../packages/transport/src/python-helper.js';
import { startSshd } from './fixtures/sshd.mjs';
import type { Sshd } from './fixtures/sshd.mjs';
import { on, tempFilesUnder, treeArgs } from './tree-helpers.js';
import { CLI, killStrays, parseEvents, REMOTE_CMD, runFerry, tempDir } from './helpers.js';
// A plain ES module of the benchmarks (no types).
import { compareTrees, generateTree } from '../bench/tree-lib.mjs';

const MiB = 1024 * 1024;

let sshd: Sshd;
let bare: Sshd;
let work: { path: string; remove(): Promise<void> };
let src: string;

function common(server: Sshd, extra: string[] = []): string[] {
  return treeArgs(server, join(work.path, 'state'), extra);
}

function at(server: Sshd, path: string): string {
  return on(server, path);
}

beforeAll(async () => {
  sshd = await startSshd();
  bare = await startSshd({ without: ['node'] });
  work = await tempDir('ferry-pull-');
  src = join(work.path, 'remote-project');
  await generateTree(src, { files: 150, big: 1, bigBytes: 3 * MiB, seed: 41, medianBytes: 4096 });
  await appendFile(join(src, 'notes.txt'), 'first line\n');
}, 60_000);

afterAll(async () => {
  if (work) await killStrays(work.path);
  await sshd?.stop();
  await bare?.stop();
  await work?.remove();
});

describe('ferry cp -r (pull)', () => {
  it.each([
    ['helper', () => sshd, ['--remote-cmd', REMOTE_CMD]],
    // Files striped as copies of their own are tested in helper mode; here the sparse file goes in a batch (faster).
    ['python', () => bare, ['--stripe-files-over', '128MiB']],
    // SFTP tells no hard links apart (no inode numbers): compared without them below.
    ['sftp', () => sshd, ['--mode', 'sftp', '--stripe-files-over', '128MiB']],
  ] as const)('copies the tree exactly with -p (%s mode)', async (mode, server, flags) => {
    const dst = join(work.path, `pulled-${mode}`);
    await mkdir(dst);
    const r = await runFerry(['cp', '-r', '-p', ...common(server(), [...flags]), at(server(), src), dst + '/']);
    expect(r.stderr).not.toMatch(/error/);
    expect(r.code).toBe(0);
    const done = parseEvents(r.stdout).find((e) => e.type === 'tree.done')!;
    expect(done).toMatchObject({ mode, failed: 0, resumedFiles: 0 });
    expect(done.files as number).toBeGreaterThan(100);
    // An existing directory receives the tree under the source's name, as scp -r.
    const diff = await compareTrees(src, join(dst, 'remote-project'));
    const differences = diff.differences as Record<string, unknown>;
    if (mode === 'sftp') {
      // Each further name arrives as a file of its own there, and holes are not known.
      for (const [k, v] of Object.entries(differences)) if (!/link|sparse|alloc|hole|ino/i.test(`${k} ${JSON.stringify(v)}`)) expect({ [k]: v }).toEqual({});
    } else {
      expect(differences).toEqual({});
      expect(diff.same).toBe(true);
    }
    expect(await tempFilesUnder(join(dst, 'remote-project'))).toEqual([]);
  }, 120_000);

  it('fetches nothing again on a rerun, then a changed remote file alone', async () => {
    const dst = join(work.path, 'pulled-rerun');
    const args = ['cp', '-r', '-p', ...common(sshd, ['--remote-cmd', REMOTE_CMD]), at(sshd, src), dst];
    const first = await runFerry(args);
    expect(first.code).toBe(0);
    const firstDone = parseEvents(first.stdout).find((e) => e.type === 'tree.done')!;
    // A destination that did not exist becomes the copy itself.
    expect((await compareTrees(src, dst)).same).toBe(true);
    const again = await runFerry(args);
    expect(again.code).toBe(0);
    expect(parseEvents(again.stdout).find((e) => e.type === 'tree.done')).toMatchObject({ files: 0, bytes: 0, resumedFiles: (firstDone.files as number) + (firstDone.symlinks as number) });
    const path = join(src, 'notes.txt');
    await appendFile(path, 'one more line\n');
    const t = new Date(Date.UTC(2026, 5, 1));
    await utimes(path, t, t);
    const third = await runFerry(args);
    expect(third.code).toBe(0);
    expect(parseEvents(third.stdout).find((e) => e.type === 'tree.done')).toMatchObject({ files: 1, bytes: 25 });
    expect((await compareTrees(src, dst)).same).toBe(true);
  }, 120_000);

  it('lists an entry it cannot write here, copies the rest, and exits 72; never writes through a local link', async () => {
    const tree = join(work.path, 'pull-partial');
    await mkdir(join(tree, 'sub'), { recursive: true });
    await mkdir(join(tree, 'linked'));
    for (const name of ['a.txt', 'b.txt', 'sub/c.txt', 'linked/d.txt']) await appendFile(join(tree, name), `${name}\n`);
    const into = join(work.path, 'pulled-partial');
    const dst = join(into, 'pull-partial');
    await mkdir(join(dst, 'b.txt'), { recursive: true });
    // A link where a directory goes: the directory fails, and nothing is written through the link.
    const elsewhere = join(work.path, 'elsewhere');
    await mkdir(elsewhere);
    await symlink(elsewhere, join(dst, 'linked'));
    const r = await runFerry(['cp', '-r', ...common(sshd, ['--remote-cmd', REMOTE_CMD]), at(sshd, tree), into]);
    expect(r.code).toBe(72);
    const events = parseEvents(r.stdout);
    expect(events.filter((e) => e.type === 'file.failed').map((e) => e.path).sort()).toEqual(['b.txt', 'linked', 'linked/d.txt']);
    expect(events.find((e) => e.type === 'tree.done')).toMatchObject({ files: 2, failed: 3 });
    expect(await readdir(elsewhere)).toEqual([]);
    expect(await readFile(join(dst, 'a.txt'), 'utf8')).toBe('a.txt\n');
    expect(await readFile(join(dst, 'sub/c.txt'), 'utf8')).toBe('sub/c.txt\n');
    expect((await stat(join(dst, 'b.txt'))).isDirectory()).toBe(true);
    await rm(join(dst, 'b.txt'), { recursive: true });
    await rm(join(dst, 'linked'));
    const again = await runFerry(['cp', '-r', ...common(sshd, ['--remote-cmd', REMOTE_CMD]), at(sshd, tree), into]);
    expect(again.code).toBe(0);
    expect(parseEvents(again.stdout).find((e) => e.type === 'tree.done')).toMatchObject({ files: 2, resumedFiles: 2, failed: 0 });
    expect(await readFile(join(dst, 'linked/d.txt'), 'utf8')).toBe('linked/d.txt\n');
  }, 120_000);
});

/** A helper spoken to in raw frames: `ferry serve`, or the python helper. */
function helper(kind: 'serve' | 'python') {
  const script = kind === 'python' ? pythonHelperScript() : undefined;
  const child = script
    ? spawn('sh', ['-c', pythonHelperCommand(script.length)], { env: { PATH: '/usr/bin:/bin' }, stdio: ['pipe', 'pipe', 'pipe'] })
    : spawn(process.execPath, [CLI, 'serve'], { stdio: ['pipe', 'pipe', 'pipe'] });
  const frames: DecodedFrame[] = [];
  let wake: (() => void) | undefined;
  const data = new Map<number, Buffer[]>();
  const decoder = new FrameDecoder((f) => {
    if (f.type === 'DATA') {
      const list = data.get(f.id) ?? [];
      list.push(Buffer.from(f.chunk));
      data.set(f.id, list);
    } else if (f.type === 'ZEROS') {
      const list = data.get(f.id) ?? [];
      list.push(Buffer.alloc(f.body.length));
      data.set(f.id, list);
    } else frames.push(f);
    wake?.();
  }, 'client');
  child.stdout.on('data', (c: Buffer) => decoder.push(c));
  if (script) child.stdin.write(script);
  child.stdin.write(encodeControl('HELLO', 1, { version: PROTOCOL_VERSION, software: 'test', capabilities: [] }));
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  /** Frames with `id` (ENTRIES, then the OK or ERROR that ends them). */
  const answer = async (id: number): Promise<DecodedFrame[]> => {
    for (;;) {
      const mine = frames.filter((f) => f.id === id);
      if (mine.some((f) => f.type === 'OK' || f.type === 'ERROR')) return mine;
      await new Promise<void>((r) => (wake = r));
    }
  };
  return { send: (b: Buffer) => child.stdin.write(b), answer, bytes: (id: number) => Buffer.concat(data.get(id) ?? []), end: () => child.stdin.end(), exited, kill: () => child.kill() };
}

describe.each(['serve', 'python'] as const)('WALK and READ_BATCH in %s', (kind) => {
  it('walk a tree in ENTRIES frames, parents first, hard links by inode, and read files back to back with their hashes', async () => {
    const dir = join(work.path, `wire-${kind}`);
    await mkdir(join(dir, 'sub'), { recursive: true });
    await writeFile(join(dir, 'a'), 'hello');
    await writeFile(join(dir, 'sub', 'z'), Buffer.alloc(3 * MiB));
    await symlink('a', join(dir, 'l'));
    const { link } = await import('node:fs/promises');
    await link(join(dir, 'a'), join(dir, 'sub', 'h'));
    const h = helper(kind);
    try {
      expect((await h.answer(1))[0]).toMatchObject({ type: 'OK', body: { hello: { capabilities: expect.arrayContaining(['tree-read']) } } });
      h.send(encodeControl('WALK', 2, { root: dir }));
      const walked = await h.answer(2);
      expect(walked.at(-1)).toMatchObject({ type: 'OK' });
      const items = walked.filter((f) => f.type === 'ENTRIES').flatMap((f) => (f as Extract<DecodedFrame, { type: 'ENTRIES' }>).body.items) as Array<Record<string, unknown>>;
      expect(items.map((i) => i.path)).toEqual(expect.arrayContaining(['', 'a', 'l', 'sub', 'sub/z', 'sub/h']));
      expect(items).toHaveLength(6);
      expect(items.findIndex((i) => i.path === 'sub')).toBeLessThan(items.findIndex((i) => i.path === 'sub/z'));
      expect(items.find((i) => i.path === 'l')).toMatchObject({ kind: 'symlink', target: 'a' });
      const names = ['a', 'sub/h'].map((p) => items.find((i) => i.path === p)!);
      expect(names.map((n) => n.kind).sort()).toEqual(['file', 'hardlink']);
      expect(names.find((n) => n.kind === 'hardlink')!.target).toBe(names.find((n) => n.kind === 'file')!.path);
      // The second entry shrank since it was listed (listed as 7 bytes): padded, failed alone.
      h.send(encodeControl('READ_BATCH', 3, { algorithm: 'sha256', entries: [{ path: join(dir, 'a'), size: 5 }, { path: join(dir, 'a'), size: 7 }, { path: join(dir, 'sub', 'z'), size: 3 * MiB }, { path: join(dir, 'l'), size: 1 }] }));
      const read = await h.answer(3);
      const ok = read.at(-1) as Extract<DecodedFrame, { type: 'OK' }>;
      const sha = createHasher('sha256');
      sha.update(Buffer.from('hello'));
      const zeros = createHasher('sha256');
      zeros.update(Buffer.alloc(3 * MiB));
      expect(ok.body.results).toEqual([
        { ok: true, hash: sha.digest() },
        { ok: false, error: expect.objectContaining({ code: 'SOURCE_CHANGED' }) },
        { ok: true, hash: zeros.digest() },
        // A link at a file's name is not followed.
        { ok: false, error: expect.objectContaining({ code: 'SOURCE_CHANGED' }) },
      ]);
      const bytes = h.bytes(3);
      expect(bytes.length).toBe(5 + 7 + 3 * MiB + 1);
      expect(bytes.subarray(0, 5).toString()).toBe('hello');
      // Hashes only (ferry check, sync --compare checksum): the same results, no byte sent.
      if (kind === 'serve') {
        expect((await h.answer(1))[0]).toMatchObject({ body: { hello: { capabilities: expect.arrayContaining(['read-batch-hash-only']) } } });
        h.send(encodeControl('READ_BATCH', 4, { algorithm: 'sha256', hashOnly: true, entries: [{ path: join(dir, 'a'), size: 5 }, { path: join(dir, 'a'), size: 7 }, { path: join(dir, 'sub', 'z'), size: 3 * MiB }, { path: join(dir, 'l'), size: 1 }] }));
        expect(((await h.answer(4)).at(-1) as Extract<DecodedFrame, { type: 'OK' }>).body.results).toEqual(ok.body.results);
        expect(h.bytes(4).length).toBe(0);
      }
      h.end();
      expect(await h.exited).toBe(0);
    } finally {
      h.kill();
    }
  });

  // ferry serve's capability alone: the python helper walks without hashing (its WALK takes no `hash`).
  if (kind === 'serve') it('hashes each regular file up to hashMaxBytes as it walks, when WALK asks (walk-hash)', async () => {
    const dir = join(work.path, `walk-hash-${kind}`);
    await mkdir(join(dir, 'sub'), { recursive: true });
    await writeFile(join(dir, 'a'), 'hello');
    await writeFile(join(dir, 'empty'), '');
    await writeFile(join(dir, 'sub', 'edge'), Buffer.alloc(4096, 7));
    await writeFile(join(dir, 'sub', 'big'), Buffer.alloc(4097, 7));
    await symlink('a', join(dir, 'l'));
    const { link } = await import('node:fs/promises');
    await link(join(dir, 'a'), join(dir, 'sub', 'h'));
    const h = helper(kind);
    try {
      expect((await h.answer(1))[0]).toMatchObject({ type: 'OK', body: { hello: { capabilities: expect.arrayContaining(['walk-hash']) } } });
      h.send(encodeControl('WALK', 2, { root: dir, hash: 'xxh3', hashMaxBytes: 4096 }));
      const walked = await h.answer(2);
      expect(walked.at(-1)).toMatchObject({ type: 'OK' });
      const items = walked.filter((f) => f.type === 'ENTRIES').flatMap((f) => (f as Extract<DecodedFrame, { type: 'ENTRIES' }>).body.items) as Array<Record<string, unknown>>;
      const hashOf = (path: string) => items.find((i) => i.path === path)?.hash;
      const xxh3 = (data: Buffer) => {
        const x = createHasher('xxh3');
        x.update(data);
        return x.digest();
      };
      // The first name of the linked file carries the hash; its further name (a hardlink), the link, directories and the file past the limit do not.
      const first = items.find((i) => (i.path === 'a' || i.path === 'sub/h') && i.kind === 'file')!;
      expect(first.hash).toBe(xxh3(Buffer.from('hello')));
      expect(hashOf('empty')).toBe(xxh3(Buffer.alloc(0)));
      expect(hashOf('sub/edge')).toBe(xxh3(Buffer.alloc(4096, 7)));
      for (const p of ['sub/big', 'l', 'sub', '']) expect(hashOf(p), p).toBeUndefined();
      expect(items.filter((i) => i.hash !== undefined)).toHaveLength(3);
      // Without `hash`, no entry has one.
      h.send(encodeControl('WALK', 3, { root: dir }));
      const plain = (await h.answer(3)).filter((f) => f.type === 'ENTRIES').flatMap((f) => (f as Extract<DecodedFrame, { type: 'ENTRIES' }>).body.items) as Array<Record<string, unknown>>;
      expect(plain.filter((i) => i.hash !== undefined)).toEqual([]);
      // A limit past MAX_WALK_HASH_BYTES ends the session.
      h.send(encodeControl('WALK', 4, { root: dir, hash: 'xxh3', hashMaxBytes: 2 * MiB }));
      expect((await h.answer(0))[0]).toMatchObject({ type: 'ERROR', body: { code: 'PROTOCOL', message: expect.stringContaining('WALK.hashMaxBytes must be an integer from 0 to') } });
      await h.exited;
    } finally {
      h.kill();
    }
  });

  it('ends the session with PROTOCOL on a READ_BATCH over its bounds or a relative WALK root', async () => {
    const h = helper(kind);
    try {
      await h.answer(1);
      h.send(encodeControl('WALK', 2, { root: 'relative' }));
      expect((await h.answer(0))[0]).toMatchObject({ type: 'ERROR', body: { code: 'PROTOCOL', message: 'helper protocol: WALK.root must be an absolute path' } });
      await h.exited;
    } finally {
      h.kill();
    }
    const h2 = helper(kind);
    try {
      await h2.answer(1);
      h2.send(encodeControl('READ_BATCH', 2, { algorithm: 'sha256', entries: Array.from({ length: 4097 }, () => ({ path: '/a', size: 1 })) }));
      expect((await h2.answer(0))[0]).toMatchObject({ type: 'ERROR', body: { code: 'PROTOCOL', message: 'helper protocol: READ_BATCH.4097 entries exceed 4096' } });
      await h2.exited;
    } finally {
      h2.kill();
    }
    const h3 = helper(kind);
    try {
      await h3.answer(1);
      const header = Buffer.alloc(12);
      header.writeUInt8(17, 0);
      header.writeUInt32BE(2, 4);
      header.writeUInt32BE(MAX_BATCH_BODY_BYTES + 1, 8);
      h3.send(header);
      expect((await h3.answer(0))[0]).toMatchObject({ type: 'ERROR', body: { code: 'PROTOCOL', message: 'helper protocol: READ_BATCH frame body of 1048577 bytes exceeds 1048576' } });
      await h3.exited;
    } finally {
      h3.kill();
    }
  });
});
