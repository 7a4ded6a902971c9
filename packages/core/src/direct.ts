/**
 * Direct I/O for the destination file (`ferry cp --direct-io`).
 *
 * A buffered write copies into the page cache and, on a machine whose free
 * memory goes back to the hypervisor, faults every fresh page in from the
 * host: on the benchmark VM that cost 3 s of system CPU per GB, and ext4 holds
 * the file's inode lock for all of it, so one destination file took one
 * writer at a time. O_DIRECT writes go from the buffer to the device: no page
 * cache, no fault, and the data is on the device when the write returns.
 *
 * O_DIRECT needs the buffer's address, the file position and the length to be
 * multiples of the device's block size. Node has no aligned allocation, but a
 * WebAssembly.Memory is page-aligned (V8 maps it with its page allocator), so
 * `allocAligned` carves buffers out of one and remembers which ArrayBuffers
 * are such memories; `FileWriter` writes through a second, O_DIRECT handle
 * only what is aligned (a file's unaligned tail, an unaligned buffer, a file
 * system that refuses O_DIRECT all go through the page cache), so `--direct-io`
 * changes speed, never the bytes.
 */
import { constants } from 'node:fs';
import { open, statfs } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { destinationError, errnoOf } from './errors.js';
import { createHasher } from './hash.js';
import type { HashAlgorithm } from './hash.js';
import type { BufferPool } from './pool.js';
import { ensureZeroed, pwriteAll } from './pwrite.js';
import { SerialQueue } from './serial.js';

/** Alignment of address, position and length for an O_DIRECT write: a page, which covers 512- and 4096-byte sectors. */
export const DIRECT_ALIGNMENT = 4096;

/**
 * Whether the destination is written with O_DIRECT: always (`--direct-io`),
 * never (`--no-direct-io`), or `auto` (the default): where it sits on a local
 * disk file system (LOCAL_DISK_FILESYSTEMS), through the page cache elsewhere.
 */
export type DirectIoChoice = 'auto' | 'on' | 'off';

/**
 * File systems on a local block device, by statfs f_type, that take ferry's
 * aligned 1 MiB O_DIRECT writes well: `auto` writes around the page cache
 * there. Not network or parallel file systems (NFS, Lustre, GPFS, CephFS,
 * BeeGFS): there a direct write is a synchronous round trip to a server, which
 * the client's write-behind would have overlapped; nor tmpfs (no device) or
 * unknown ones.
 */
export const LOCAL_DISK_FILESYSTEMS: ReadonlyMap<number, string> = new Map([
  [0xef53, 'ext4'],
  [0x58465342, 'xfs'],
  [0x9123683e, 'btrfs'],
  [0xf2f52010, 'f2fs'],
]);

/** The same file systems as /proc/self/mountinfo names them (ext2 and ext3 share ext4's f_type). */
export const LOCAL_DISK_FILESYSTEM_NAMES: readonly string[] = ['ext2', 'ext3', 'ext4', 'xfs', 'btrfs', 'f2fs'];

/**
 * For `auto`: whether to write a file on a file system of statfs type
 * `fsType` with O_DIRECT, and if not, why not (for -v).
 */
export function directIoFits(fsType: number): { direct: true; fs: string } | { direct: false; reason: string } {
  const fs = LOCAL_DISK_FILESYSTEMS.get(fsType >>> 0);
  if (fs) return { direct: true, fs };
  return { direct: false, reason: `its file system (statfs type 0x${(fsType >>> 0).toString(16)}) is not a local disk file system ferry writes around the page cache by default (${[...new Set(LOCAL_DISK_FILESYSTEMS.values())].join(', ')}); --direct-io forces it` };
}

const WASM_PAGE = 65536;

/** The part of the WebAssembly API used here (TypeScript's node lib does not declare it). */
declare const WebAssembly: { Memory: new (descriptor: { initial: number; maximum?: number }) => { readonly buffer: ArrayBuffer } };

/** ArrayBuffers whose first byte is page-aligned (WebAssembly memories made by allocAligned). */
const alignedMemories = new WeakSet<ArrayBufferLike>();

/**
 * `count` buffers of `bytes` each, every one starting on a DIRECT_ALIGNMENT
 * boundary, or undefined when no WebAssembly memory could be had (a tight
 * `ulimit -v`): the caller then uses ordinary buffers and writes buffered.
 */
export function allocAligned(count: number, bytes: number): Buffer[] | undefined {
  const stride = Math.ceil(bytes / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT;
  const pages = Math.ceil((stride * count) / WASM_PAGE);
  let memory: { readonly buffer: ArrayBuffer };
  try {
    memory = new WebAssembly.Memory({ initial: pages, maximum: pages });
  } catch {
    return undefined;
  }
  alignedMemories.add(memory.buffer);
  const out: Buffer[] = [];
  for (let i = 0; i < count; i++) out.push(Buffer.from(memory.buffer, i * stride, bytes));
  return out;
}

/** Whether `buf` starts on a DIRECT_ALIGNMENT boundary of memory (only buffers of allocAligned are known to). */
export function isAligned(buf: Uint8Array): boolean {
  return alignedMemories.has(buf.buffer) && buf.byteOffset % DIRECT_ALIGNMENT === 0;
}

/**
 * Opens `path` a second time with O_DIRECT for writing (and reading back,
 * `FileWriter.readStored`), or says why not.
 * Local file systems that refuse O_DIRECT (tmpfs before Linux 6.6, some FUSE
 * file systems) fail the open with EINVAL.
 */
export async function openDirect(path: string, opened?: FileHandle): Promise<{ fh: FileHandle } | { reason: string }> {
  if (constants.O_DIRECT === undefined) return { reason: 'this platform has no O_DIRECT' };
  try {
    if (opened) return await reopenDirect(opened);
    return { fh: await open(path, constants.O_RDWR | constants.O_DIRECT) };
  } catch (err) {
    const errno = errnoOf(err);
    if (errno === 'EINVAL') return { reason: `the file system of ${path} does not support direct I/O (O_DIRECT: EINVAL)` };
    return { reason: `${path} cannot be opened with O_DIRECT: ${errno ?? (err as Error).message}` };
  }
}

/**
 * openDirect for `--direct-io` (`true`) or its default (`auto`: only where the
 * file sits on a local disk file system, directIoFits), or why not.
 */
export async function openDirectAuto(path: string, choice: true | 'auto', opened?: FileHandle): Promise<{ fh: FileHandle } | { reason: string }> {
  if (choice === 'auto') {
    let type: number;
    try {
      type = (await statfs(opened ? `/proc/self/fd/${opened.fd}` : path)).type;
    } catch (err) {
      return { reason: `the file system of ${path} cannot be told (statfs: ${errnoOf(err) ?? (err as Error).message})` };
    }
    const fits = directIoFits(type);
    if (!fits.direct) return { reason: fits.reason };
  }
  return openDirect(path, opened);
}

/**
 * `opened`'s file a second time, with O_DIRECT, through /proc/self/fd: the
 * open file itself, not whatever its name points at by now (another user may
 * have swapped it). The new handle is checked to be the same inode.
 */
async function reopenDirect(opened: FileHandle): Promise<{ fh: FileHandle } | { reason: string }> {
  const fh = await open(`/proc/self/fd/${opened.fd}`, constants.O_RDWR | constants.O_DIRECT);
  const [a, b] = await Promise.all([opened.stat(), fh.stat()]);
  if (a.ino !== b.ino || a.dev !== b.dev) {
    await fh.close();
    return { reason: 'the file reopened through /proc/self/fd was not the same file' };
  }
  return { fh };
}

/**
 * The writes of one open destination file, one at a time (see SerialQueue),
 * through `direct` where the write is aligned and through `fh` otherwise.
 * A direct write the file system refuses (EINVAL) is done again through `fh`,
 * and direct writing stops for this file.
 */
export class FileWriter {
  private readonly queue = new SerialQueue();
  private directFh: FileHandle | undefined;
  /** Why direct writing stopped, once it has (for diagnostics). */
  fallbackReason: string | undefined;

  constructor(
    readonly fh: FileHandle,
    direct?: FileHandle,
  ) {
    this.directFh = direct;
  }

  /** Whether aligned writes still go around the page cache. */
  get direct(): boolean {
    return this.directFh !== undefined;
  }

  /** Writes `length` bytes of `data` (from its start) at `position`. */
  write(data: Uint8Array, length: number, position: number): Promise<void> {
    return this.queue.run(() => this.put(data, length, position));
  }

  /** Makes `length` bytes at `position` read as zeros (see ensureZeroed), through the page cache. */
  zero(scratch: Buffer, length: number, position: number): Promise<void> {
    return this.queue.run(() => ensureZeroed(this.fh, scratch, length, position));
  }

  /**
   * Reads up to `length` bytes at `position` into `buf` (from its start) as the
   * storage holds them (`--verify`): the aligned part through the O_DIRECT
   * handle, so they come from the device and fill no page cache, the rest
   * through `fh`. Fewer bytes only at the end of the file.
   */
  async readStored(buf: Buffer, length: number, position: number): Promise<number> {
    const d = this.directFh;
    const head = length - (length % DIRECT_ALIGNMENT);
    let n = 0;
    if (d !== undefined && head > 0 && position % DIRECT_ALIGNMENT === 0 && isAligned(buf)) {
      try {
        // One read: O_DIRECT returns fewer bytes only at the end of the file.
        n = (await d.read(buf, 0, head, position)).bytesRead;
      } catch (err) {
        if (errnoOf(err) !== 'EINVAL') throw err;
      }
      if (n > 0 && n < head) return n;
    }
    while (n < length) {
      const { bytesRead } = await this.fh.read(buf, n, length - n, position + n);
      if (bytesRead === 0) break;
      n += bytesRead;
    }
    return n;
  }

  /**
   * The hash of [offset, offset + length) as the storage holds it (`--verify`),
   * read back through `buf` with readStored. A file that ends early hashes
   * short, and so differs.
   */
  async hashStored(buf: Buffer, offset: number, length: number, algorithm: HashAlgorithm): Promise<string> {
    const hasher = createHasher(algorithm);
    const step = buf.length - (buf.length % DIRECT_ALIGNMENT);
    for (let at = 0; at < length; ) {
      const n = await this.readStored(buf, Math.min(step, length - at), offset + at);
      if (n === 0) break;
      hasher.update(buf.subarray(0, n));
      at += n;
    }
    return hasher.digest();
  }

  /** Closes the O_DIRECT handle; `fh` belongs to the caller. */
  async close(): Promise<void> {
    const d = this.directFh;
    this.directFh = undefined;
    await d?.close();
  }

  private async put(data: Uint8Array, length: number, position: number): Promise<void> {
    const d = this.directFh;
    const head = length - (length % DIRECT_ALIGNMENT);
    if (d === undefined || head === 0 || position % DIRECT_ALIGNMENT !== 0 || !isAligned(data)) {
      await pwriteAll(this.fh, data, length, position);
      return;
    }
    try {
      await pwriteAll(d, data, head, position);
    } catch (err) {
      if (errnoOf(err) !== 'EINVAL') throw err;
      this.fallbackReason = `the file system refused a direct write (EINVAL): writing through the page cache`;
      this.directFh = undefined;
      await d.close().catch(() => {});
      await pwriteAll(this.fh, data, length, position);
      return;
    }
    if (head < length) await pwriteAll(this.fh, data.subarray(head), length - head, position + head);
  }
}

/**
 * `--verify`: FileWriter.hashStored of [offset, offset + length) through one
 * buffer of `pool`; a failure is the destination's, naming `path`. The helper
 * (a push) and the pulling agent both read back this way.
 */
export async function hashStoredThrough(writer: FileWriter, pool: BufferPool, path: string, offset: number, length: number, algorithm: HashAlgorithm): Promise<string> {
  const buf = await pool.acquire();
  try {
    return await writer.hashStored(buf, offset, length, algorithm);
  } catch (err) {
    throw destinationError(err, { path });
  } finally {
    pool.release(buf);
  }
}
