import { randomBytes } from 'node:crypto';
import { statfs } from 'node:fs/promises';
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BufferPool, DIRECT_ALIGNMENT, FileWriter, LOCAL_DISK_FILESYSTEMS, LOCAL_DISK_FILESYSTEM_NAMES, allocAligned, directIoFits, hashBytes, isAligned, openDirect } from '../src/index.js';

const EXT4_MAGIC = 0xef53;

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ferry-direct-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A FileHandle stand-in for the O_DIRECT handle: records each write and read, then does it on `real`. */
function recordingHandle(real: FileHandle, fail?: string): { fh: FileHandle; writes: Array<[number, number]>; reads: Array<[number, number]>; closed: () => boolean } {
  const writes: Array<[number, number]> = [];
  const reads: Array<[number, number]> = [];
  let closed = false;
  const fh = {
    write: async (data: Uint8Array, offset: number, length: number, position: number) => {
      if (fail) throw Object.assign(new Error(`${fail}: refused`), { code: fail });
      writes.push([position, length]);
      return real.write(data, offset, length, position);
    },
    read: async (buf: Buffer, offset: number, length: number, position: number) => {
      if (fail) throw Object.assign(new Error(`${fail}: refused`), { code: fail });
      reads.push([position, length]);
      return real.read(buf, offset, length, position);
    },
    close: async () => {
      closed = true;
    },
  } as unknown as FileHandle;
  return { fh, writes, reads, closed: () => closed };
}

/** A file in the test's directory holding `data`, and a FileWriter over it whose direct handle records (or refuses with `fail`). */
async function writerOver(data: Buffer, fail?: string): Promise<{ fh: FileHandle; direct: ReturnType<typeof recordingHandle>; w: FileWriter }> {
  const path = join(dir, 'f.bin');
  await writeFile(path, data);
  const fh = await open(path, 'r+');
  const direct = recordingHandle(fh, fail);
  return { fh, direct, w: new FileWriter(fh, direct.fh) };
}

describe('allocAligned', () => {
  it('hands out page-aligned, separate buffers of the asked size', () => {
    const bufs = allocAligned(5, 1024 * 1024 + 12)!;
    expect(bufs).toHaveLength(5);
    for (const [i, b] of bufs.entries()) {
      expect(b.length).toBe(1024 * 1024 + 12);
      expect(isAligned(b)).toBe(true);
      b.fill(i + 1);
    }
    // Writing one does not touch its neighbours (the stride rounds up to a page).
    for (const [i, b] of bufs.entries()) expect(b.every((x) => x === i + 1)).toBe(true);
  });

  it('knows an ordinary or offset buffer is not aligned', () => {
    const [b] = allocAligned(1, 8192)!;
    expect(isAligned(b!.subarray(DIRECT_ALIGNMENT))).toBe(true);
    expect(isAligned(b!.subarray(512))).toBe(false);
    expect(isAligned(Buffer.allocUnsafeSlow(8192))).toBe(false);
  });

  it('makes an aligned BufferPool on request', () => {
    expect(new BufferPool(4096, 2, { aligned: true }).aligned).toBe(true);
    expect(new BufferPool(4096, 2).aligned).toBe(false);
  });
});

describe('FileWriter', () => {
  it('writes the aligned part through the direct handle and the tail through the page cache', async () => {
    const path = join(dir, 'f.bin');
    await writeFile(path, Buffer.alloc(0));
    const fh = await open(path, 'r+');
    const d = recordingHandle(fh);
    const w = new FileWriter(fh, d.fh);
    const [buf] = allocAligned(1, 3 * DIRECT_ALIGNMENT)!;
    const data = randomBytes(2 * DIRECT_ALIGNMENT + 100);
    data.copy(buf!);
    await w.write(buf!, data.length, DIRECT_ALIGNMENT);
    expect(d.writes).toEqual([[DIRECT_ALIGNMENT, 2 * DIRECT_ALIGNMENT]]);
    expect(w.direct).toBe(true);
    await w.close();
    expect(d.closed()).toBe(true);
    await fh.close();
    const back = await readFile(path);
    expect(back.subarray(DIRECT_ALIGNMENT).equals(data)).toBe(true);
  });

  it('writes unaligned buffers, positions and short lengths through the page cache', async () => {
    const path = join(dir, 'f.bin');
    await writeFile(path, Buffer.alloc(4 * DIRECT_ALIGNMENT));
    const fh = await open(path, 'r+');
    const d = recordingHandle(fh);
    const w = new FileWriter(fh, d.fh);
    const [aligned] = allocAligned(1, 2 * DIRECT_ALIGNMENT)!;
    aligned!.fill(1);
    await w.write(aligned!, DIRECT_ALIGNMENT, 512); // position not aligned
    await w.write(Buffer.alloc(DIRECT_ALIGNMENT, 2), DIRECT_ALIGNMENT, 2 * DIRECT_ALIGNMENT); // ordinary buffer
    await w.write(aligned!, 100, 3 * DIRECT_ALIGNMENT); // shorter than a page
    expect(d.writes).toEqual([]);
    await fh.close();
    const back = await readFile(path);
    expect(back.subarray(512, 512 + DIRECT_ALIGNMENT).every((x) => x === 1)).toBe(true);
    expect(back.subarray(2 * DIRECT_ALIGNMENT, 3 * DIRECT_ALIGNMENT).every((x) => x === 2)).toBe(true);
  });

  it('falls back to the page cache for good when the file system refuses a direct write', async () => {
    const path = join(dir, 'f.bin');
    await writeFile(path, Buffer.alloc(0));
    const fh = await open(path, 'r+');
    const d = recordingHandle(fh, 'EINVAL');
    const w = new FileWriter(fh, d.fh);
    const [buf] = allocAligned(1, DIRECT_ALIGNMENT)!;
    buf!.fill(7);
    await w.write(buf!, DIRECT_ALIGNMENT, 0);
    expect(w.direct).toBe(false);
    expect(w.fallbackReason).toMatch(/EINVAL/);
    expect(d.closed()).toBe(true);
    await fh.close();
    expect((await readFile(path)).every((x) => x === 7)).toBe(true);
  });

  it('passes other errors of a direct write on', async () => {
    const path = join(dir, 'f.bin');
    await writeFile(path, Buffer.alloc(0));
    const fh = await open(path, 'r+');
    const w = new FileWriter(fh, recordingHandle(fh, 'ENOSPC').fh);
    const [buf] = allocAligned(1, DIRECT_ALIGNMENT)!;
    await expect(w.write(buf!, DIRECT_ALIGNMENT, 0)).rejects.toMatchObject({ code: 'ENOSPC' });
    expect(w.direct).toBe(true);
    await fh.close();
  });

  it('reads back the aligned part through the direct handle and the rest through the page cache, up to the end of the file', async () => {
    const data = randomBytes(3 * DIRECT_ALIGNMENT + 100);
    const { fh, direct: d, w } = await writerOver(data);
    const [buf] = allocAligned(1, 4 * DIRECT_ALIGNMENT)!;
    // Aligned head directly, the 100-byte tail through fh.
    expect(await w.readStored(buf!, 2 * DIRECT_ALIGNMENT + 100, DIRECT_ALIGNMENT)).toBe(2 * DIRECT_ALIGNMENT + 100);
    expect(buf!.subarray(0, 2 * DIRECT_ALIGNMENT + 100).equals(data.subarray(DIRECT_ALIGNMENT))).toBe(true);
    expect(d.reads).toEqual([[DIRECT_ALIGNMENT, 2 * DIRECT_ALIGNMENT]]);
    // Past the end of the file: what there is, and no further read.
    d.reads.length = 0;
    expect(await w.readStored(buf!, 4 * DIRECT_ALIGNMENT, 0)).toBe(data.length);
    expect(buf!.subarray(0, data.length).equals(data)).toBe(true);
    expect(d.reads).toEqual([[0, 4 * DIRECT_ALIGNMENT]]);
    // An unaligned position or an ordinary buffer: all through the page cache.
    d.reads.length = 0;
    const plain = Buffer.alloc(DIRECT_ALIGNMENT);
    expect(await w.readStored(plain, DIRECT_ALIGNMENT, 0)).toBe(DIRECT_ALIGNMENT);
    expect(await w.readStored(buf!, DIRECT_ALIGNMENT, 512)).toBe(DIRECT_ALIGNMENT);
    expect(d.reads).toEqual([]);
    expect(buf!.subarray(0, DIRECT_ALIGNMENT).equals(data.subarray(512, 512 + DIRECT_ALIGNMENT))).toBe(true);
    await fh.close();
  });

  it('reads back through the page cache when the direct handle refuses (EINVAL)', async () => {
    const data = randomBytes(2 * DIRECT_ALIGNMENT);
    const { fh, w } = await writerOver(data, 'EINVAL');
    const [buf] = allocAligned(1, 2 * DIRECT_ALIGNMENT)!;
    expect(await w.readStored(buf!, 2 * DIRECT_ALIGNMENT, 0)).toBe(2 * DIRECT_ALIGNMENT);
    expect(buf!.equals(data)).toBe(true);
    await fh.close();
  });

  it('hashes a range as stored through a buffer smaller than it, and a file that ends early short', async () => {
    const data = randomBytes(5 * DIRECT_ALIGNMENT + 7);
    const { fh, direct: d, w } = await writerOver(data);
    // A buffer of two pages and a bit: read in steps of two pages.
    const [buf] = allocAligned(1, 2 * DIRECT_ALIGNMENT + 12)!;
    expect(await w.hashStored(buf!, DIRECT_ALIGNMENT, 4 * DIRECT_ALIGNMENT + 7, 'xxh3')).toBe(hashBytes('xxh3', data.subarray(DIRECT_ALIGNMENT)));
    expect(d.reads).toEqual([
      [DIRECT_ALIGNMENT, 2 * DIRECT_ALIGNMENT],
      [3 * DIRECT_ALIGNMENT, 2 * DIRECT_ALIGNMENT],
    ]);
    expect(await w.hashStored(buf!, 0, 8 * DIRECT_ALIGNMENT, 'sha256')).toBe(hashBytes('sha256', data));
    await fh.close();
  });

  it('says why a file cannot be opened for direct writing', async () => {
    const missing = join(dir, 'missing.bin');
    const opened = await openDirect(missing);
    expect(opened).toEqual({ reason: `${missing} cannot be opened with O_DIRECT: ENOENT` });
  });

  it('writes a file through a real O_DIRECT handle where the file system has one', async () => {
    const path = join(dir, 'f.bin');
    await writeFile(path, Buffer.alloc(0));
    const opened = await openDirect(path);
    // ext4 (the test machines' /tmp) has direct I/O; elsewhere the reason must name the file.
    if ((await statfs(dir)).type === EXT4_MAGIC) expect(opened).toHaveProperty('fh');
    if (!('fh' in opened)) {
      expect(opened.reason).toContain(path);
      return;
    }
    // The handle really is O_DIRECT: the kernel refuses an unaligned buffer.
    await expect(opened.fh.write(Buffer.allocUnsafeSlow(DIRECT_ALIGNMENT + 1).subarray(1), 0, DIRECT_ALIGNMENT, 0)).rejects.toMatchObject({ code: 'EINVAL' });
    const fh = await open(path, 'r+');
    const w = new FileWriter(fh, opened.fh);
    const bufs = allocAligned(3, 1024 * 1024)!;
    const data = randomBytes(3 * 1024 * 1024 - 4000);
    const writes: Array<Promise<void>> = [];
    for (let i = 0; i < 3; i++) {
      const n = data.copy(bufs[i]!, 0, i * 1024 * 1024, Math.min(data.length, (i + 1) * 1024 * 1024));
      writes.push(w.write(bufs[i]!, n, i * 1024 * 1024));
    }
    await Promise.all(writes);
    expect(w.direct).toBe(true);
    await fh.sync();
    // Read back through the same O_DIRECT handle (which refuses anything unaligned).
    const [back] = allocAligned(1, 1024 * 1024)!;
    for (let i = 0; i < 3; i++) {
      const n = await w.readStored(back!, 1024 * 1024, i * 1024 * 1024);
      expect(back!.subarray(0, n).equals(data.subarray(i * 1024 * 1024, i * 1024 * 1024 + n))).toBe(true);
    }
    await w.close();
    await fh.close();
    expect((await readFile(path)).equals(data)).toBe(true);
  });
});

describe('directIoFits (--direct-io by default)', () => {
  it('writes around the page cache on local disk file systems only', () => {
    expect(directIoFits(0xef53)).toEqual({ direct: true, fs: 'ext4' });
    expect(directIoFits(0x58465342)).toEqual({ direct: true, fs: 'xfs' });
    expect(directIoFits(0x9123683e)).toEqual({ direct: true, fs: 'btrfs' });
    // NFS, Lustre, GPFS, tmpfs: through the page cache, saying why.
    for (const type of [0x6969, 0x0bd00bd0, 0x47504653, 0x01021994]) {
      const fits = directIoFits(type);
      expect(fits.direct).toBe(false);
      expect(fits).toMatchObject({ reason: `its file system (statfs type 0x${type.toString(16)}) is not a local disk file system ferry writes around the page cache by default (ext4, xfs, btrfs, f2fs); --direct-io forces it` });
    }
  });

  it('names the same file systems for the python helper, which reads /proc/self/mountinfo', () => {
    expect(new Set(LOCAL_DISK_FILESYSTEM_NAMES)).toEqual(new Set(['ext2', 'ext3', ...LOCAL_DISK_FILESYSTEMS.values()]));
  });
});
