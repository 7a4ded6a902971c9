/**
 * Client side of the helper protocol (see @ferry/core protocol.ts): requests
 * multiplexed by id over one byte stream, typically an SSH exec channel running
 * `ferry serve`, or the stdin/stdout of an `ssh host ferry serve` subprocess.
 */
import type { Readable, Writable } from 'node:stream';
import {
  FRAME_HEADER_BYTES,
  FerryError,
  FrameDecoder,
  FrameType,
  PROTOCOL_VERSION,
  ZERO_CHUNK,
  batchBody,
  destinationError,
  encodeControl,
  sourceError,
  writeHeader,
} from '@ferry/core';
import type { BatchEntry, BatchEntryResult, EntryMeta, ExactXattrs, ControlFrame, DecodedFrame, ErrorBody, HashAlgorithm, OkBody, OpenPolicy, ReadBatchEntry, StatResult, WalkBody, WireWalkItem } from '@ferry/core';

export interface HelperStreams {
  input: Writable;
  output: Readable;
  stderr?: Readable;
  /** Ends the session (closes the channel or kills the subprocess). */
  close(): void;
}

interface Pending {
  resolve(body: OkBody): void;
  reject(err: FerryError): void;
  onData?: (chunk: Buffer, zero: boolean) => void;
  /** A WALK's items, frame by frame. */
  onItems?: (items: WireWalkItem[]) => void;
  /** Bytes received in DATA frames of a READ. */
  received: number;
}

/** A BATCH being sent: its files' bytes in entry order, then COMMIT; `answer` settles with the helper's results. */
/** A batch's DATA frames carry up to this many bytes of its small files, packed back to back. */
export const BATCH_PACK_BYTES = 256 * 1024;

export interface BatchWrite {
  /**
   * Sends `data` (copied: the caller may reuse it once this resolves), packed
   * with the next files' bytes into DATA frames of up to BATCH_PACK_BYTES.
   * Resolves when more may be sent.
   */
  data(data: Buffer): Promise<void>;
  /** Sends a run of `length` zeros (at most 1 MiB) as a ZEROS frame. */
  zeros(length: number): Promise<void>;
  /** Sends COMMIT with the source's hash of each entry (null for non-files). */
  commit(srcHashes: Array<string | null>): Promise<void>;
  /** The helper's answer to the COMMIT, or its error for the whole batch (sending then fails too). */
  readonly answer: Promise<BatchEntryResult[]>;
  /** Set once the helper has failed the batch: nothing more is worth sending. */
  readonly failed: boolean;
}

/** A range being written: DATA frames, then the helper's answer. */
export interface RangeWrite {
  /** Bytes the caller must leave free in front of the data in each buffer. */
  readonly headroom: number;
  /**
   * Sends `buf[start, end)`; requires start >= headroom. `done` is called when
   * `buf` may be reused. Resolves when more may be sent (backpressure).
   */
  write(buf: Buffer, start: number, end: number, done: () => void): Promise<void>;
  /** Sends a run of `length` zero bytes without their bytes, where the transport can (helper mode), or skips it (SFTP: see zerosUnchecked). */
  zeros?(length: number): Promise<void>;
  /**
   * Set where zeros() writes nothing at all (SFTP): the run keeps what the
   * file holds there, a hole in a file sized at creation. The hash end()
   * reads back proves it; an attempt after a failed one writes its zeros
   * (the helper's ZEROS instead check the destination reads as zeros).
   */
  readonly zerosUnchecked?: boolean;
  /** Resolves with the destination's hash once every byte is written. */
  end(): Promise<{ bytes: number; hash: string }>;
  /** Rejected as soon as the destination reports an error. */
  readonly failed: Promise<never>;
}

export class HelperClient {
  private readonly decoder: FrameDecoder;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closedError: FerryError | undefined;
  private stderrTail = '';
  private drainWaiters: Array<() => void> = [];
  readonly label: string;
  hello: OkBody['hello'];

  constructor(private readonly streams: HelperStreams, label: string) {
    this.label = label;
    this.decoder = new FrameDecoder((frame) => this.onFrame(frame), 'client');
    streams.output.on('data', (chunk: Buffer) => {
      try {
        this.decoder.push(chunk);
      } catch (err) {
        this.shutdown(err instanceof FerryError ? err : new FerryError('PROTOCOL', String(err), { host: label }));
        streams.close();
      }
    });
    streams.stderr?.on('data', (chunk: Buffer) => {
      this.stderrTail = (this.stderrTail + chunk.toString('utf8')).slice(-2000);
    });
    const onEnd = () => this.shutdown(this.lostError());
    streams.output.on('end', onEnd);
    streams.output.on('close', onEnd);
    streams.output.on('error', (err: Error) => this.shutdown(new FerryError('CONNECTION_LOST', `connection to ${label} failed: ${err.message}`, { host: label, cause: err })));
    streams.input.on('error', () => {});
    streams.input.on('drain', () => {
      const waiters = this.drainWaiters;
      this.drainWaiters = [];
      for (const w of waiters) w();
    });
  }

  /** What the remote side printed on stderr (for error messages). */
  get stderr(): string {
    return this.stderrTail.trim();
  }

  get closed(): boolean {
    return this.closedError !== undefined;
  }

  private lostError(): FerryError {
    const tail = this.stderr;
    return new FerryError('CONNECTION_LOST', `helper session on ${this.label} ended${tail ? `: ${tail}` : ''}`, { host: this.label });
  }

  private shutdown(err: FerryError): void {
    if (this.closedError) return;
    this.closedError = err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of waiters) w();
  }

  close(): void {
    this.shutdown(new FerryError('CONNECTION_LOST', `helper session on ${this.label} closed`, { host: this.label }));
    this.streams.close();
  }

  private onFrame(frame: DecodedFrame): void {
    const p = this.pending.get(frame.id);
    if (!p) {
      if (frame.type === 'ERROR' && frame.id === 0) this.shutdown(this.errorFrom(frame.body));
      return; // answers to requests abandoned after a failure
    }
    switch (frame.type) {
      case 'DATA':
        p.received += frame.chunk.length;
        p.onData?.(frame.chunk, false);
        return;
      case 'ZEROS':
        p.received += frame.body.length;
        p.onData?.(ZERO_CHUNK.subarray(0, frame.body.length), true);
        return;
      case 'ENTRIES':
        if (!p.onItems) break;
        p.onItems(frame.body.items);
        return;
      case 'OK':
        this.pending.delete(frame.id);
        p.resolve(frame.body);
        return;
      case 'ERROR':
        this.pending.delete(frame.id);
        p.reject(this.errorFrom(frame.body));
        return;
      default:
    }
    this.shutdown(new FerryError('PROTOCOL', `helper on ${this.label} sent an unexpected ${frame.type} frame`, { host: this.label }));
    this.streams.close();
  }

  /** The helper names paths only; messages here name them as host:path. */
  private errorFrom(body: ErrorBody): FerryError {
    // ferry's Python helper leaves the wording of file errors to core, so the texts live in one place.
    if (this.hello?.software.startsWith('ferry-python') && body.errno && body.path) {
      const cause = Object.assign(new Error(body.message), { code: body.errno });
      const where = { host: body.host ?? this.label, path: body.path };
      if (body.code.startsWith('SOURCE_')) return sourceError(cause, where);
      if (body.code.startsWith('DEST_')) return destinationError(cause, where);
    }
    let message = body.message;
    if (body.path && !message.includes(`${this.label}:`)) message = message.split(body.path).join(`${this.label}:${body.path}`);
    return FerryError.fromData({ ...body, message, host: body.host ?? this.label });
  }

  private send(buf: Buffer, done?: () => void): Promise<void> {
    if (this.closedError) {
      done?.();
      return Promise.reject(this.closedError);
    }
    const ok = this.streams.input.write(buf, done ? () => done() : undefined);
    if (ok) return Promise.resolve();
    return new Promise<void>((resolve) => this.drainWaiters.push(resolve));
  }

  private request(frame: Exclude<ControlFrame, { type: 'OK' | 'ERROR' | 'ENTRIES' }>['type'], body: object, onData?: (chunk: Buffer, zero: boolean) => void, onItems?: (items: WireWalkItem[]) => void): { id: number; reply: Promise<OkBody> } {
    const id = this.nextId;
    this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
    const reply = new Promise<OkBody>((resolve, reject) => {
      if (this.closedError) return reject(this.closedError);
      const pending: Pending = { resolve, reject, received: 0 };
      if (onData) pending.onData = onData;
      if (onItems) pending.onItems = onItems;
      this.pending.set(id, pending);
    });
    this.send(encodeControl(frame as never, id, body as never)).catch(() => {});
    return { id, reply };
  }

  /** `hub`: ask the helper to take other sessions on a socket too (its path is then in `hello.hub`). */
  /** `hubKey`: ask the helper to take this client's other connections too, joins proving this key (core's hub-auth.ts). */
  async handshake(timeoutMs: number, hubKey?: Buffer): Promise<void> {
    const { reply } = this.request('HELLO', { version: PROTOCOL_VERSION, software: 'ferry', capabilities: ['write', 'read', 'hash'], ...(hubKey ? { hub: true, hubKey: hubKey.toString('hex') } : {}) });
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const e = new FerryError('HELPER_UNAVAILABLE', `no answer from the helper on ${this.label} within ${timeoutMs / 1000}s`, { host: this.label });
        helloTimeouts.add(e);
        reject(e);
      }, timeoutMs);
    });
    try {
      const ok = await Promise.race([reply, timeout]);
      if (!ok.hello || ok.hello.version !== PROTOCOL_VERSION) {
        throw new FerryError('HELPER_UNAVAILABLE', `helper on ${this.label} speaks protocol ${ok.hello?.version ?? '?'}, this ferry speaks ${PROTOCOL_VERSION}: install the same ferry version there`, { host: this.label });
      }
      this.hello = ok.hello;
    } finally {
      clearTimeout(timer);
    }
  }

  async open(
    path: string,
    policy: OpenPolicy,
    extra: { size?: number; mode?: number; direct?: boolean | 'auto'; exclusive?: boolean } = {},
  ): Promise<{ handle: number; size: number; direct?: boolean; directReason?: string; pipesReason?: string; stat?: StatResult }> {
    const body: Record<string, unknown> = { path, policy, ...extra };
    const ok = await this.request('OPEN', body).reply;
    const out: { handle: number; size: number; direct?: boolean; directReason?: string; pipesReason?: string; stat?: StatResult } = { handle: ok.handle!, size: ok.size ?? 0 };
    if (ok.stat !== undefined) out.stat = ok.stat;
    if (typeof ok.direct === 'boolean') out.direct = ok.direct;
    if (typeof ok.directReason === 'string') out.directReason = ok.directReason;
    if (typeof ok.pipesReason === 'string') out.pipesReason = ok.pipesReason;
    return out;
  }

  async stat(path: string): Promise<StatResult> {
    return (await this.request('STAT', { path }).reply).stat!;
  }

  async fsync(handle: number): Promise<void> {
    await this.request('FSYNC', { handle }).reply;
  }

  async closeFile(handle: number): Promise<void> {
    await this.request('CLOSE', { handle }).reply;
  }

  /** `target`: a path, or (helpers with `safe-files`) an open handle, set through fchmod and futimes. */
  /** GLOB (capability `tree-meta`): the paths an absolute pattern matches on the helper's side. */
  async glob(pattern: string): Promise<string[]> {
    return (await this.request('GLOB', { pattern }).reply).paths ?? [];
  }

  async setstat(target: string | { handle: number }, attrs: { mode?: number; mtimeMs?: number; atimeMs?: number; size?: number; xattrsExact?: ExactXattrs } & EntryMeta): Promise<void> {
    await this.request('SETSTAT', { ...(typeof target === 'string' ? { path: target } : target), ...attrs }).reply;
  }

  /** `handle` (helpers with `safe-files`): the helper checks `from` is that file before and `to` after. */
  async rename(from: string, to: string, handle?: number): Promise<void> {
    await this.request('RENAME', { from, to, ...(handle === undefined ? {} : { handle }) }).reply;
  }

  /** Removes a file or link (`dir`: an empty directory); one already gone is no error. */
  async unlink(path: string, dir = false): Promise<void> {
    await this.request('UNLINK', { path, ...(dir ? { dir } : {}) }).reply;
  }

  async hash(handle: number, offset: number, length: number, algorithm: HashAlgorithm): Promise<string> {
    return (await this.request('HASH', { handle, offset, length, algorithm }).reply).hash!;
  }

  /** COPY_RANGE (capability `copy-range`): [offset, offset + length) of the file at `from` into `handle` at the same offset, on the helper's host; resolves with the hash of the bytes copied. */
  async copyRange(handle: number, from: string, offset: number, length: number, algorithm: HashAlgorithm): Promise<string> {
    return (await this.request('COPY_RANGE', { from, handle, offset, length, algorithm }).reply).hash!;
  }

  /** Starts a range write: a WRITE frame now, DATA frames through the returned writer. */
  writeRange(handle: number, offset: number, length: number, algorithm: HashAlgorithm): RangeWrite {
    const { id, reply } = this.request('WRITE', { handle, offset, length, algorithm });
    let sent = 0;
    const failed = reply.then(
      () => new Promise<never>(() => {}),
      (err: unknown) => Promise.reject(err),
    );
    failed.catch(() => {});
    let error: unknown;
    reply.catch((err: unknown) => {
      error = err;
    });
    return {
      headroom: FRAME_HEADER_BYTES,
      failed,
      write: (buf, start, end, done) => {
        if (error !== undefined) {
          done();
          return Promise.reject(error);
        }
        if (start < FRAME_HEADER_BYTES) throw new RangeError('no headroom for the frame header');
        sent += end - start;
        if (sent > length) throw new RangeError(`range write overruns its length ${length}`);
        writeHeader(buf, start - FRAME_HEADER_BYTES, FrameType.DATA, id, end - start);
        return this.send(buf.subarray(start - FRAME_HEADER_BYTES, end), done);
      },
      zeros: (n) => {
        if (error !== undefined) return Promise.reject(error);
        sent += n;
        if (sent > length) throw new RangeError(`range write overruns its length ${length}`);
        return this.send(encodeControl('ZEROS', id, { length: n }));
      },
      end: async () => {
        const ok = await reply;
        return { bytes: ok.bytes ?? 0, hash: ok.hash! };
      },
    };
  }

  /**
   * Starts a BATCH (capability `batch`): the frame now, its bytes and COMMIT
   * through the returned writer. A batch's bytes are its files' back to back,
   * so a DATA frame may end in the middle of one file and go on with the
   * next: small files are packed into one frame, which costs one buffer and
   * one channel write per BATCH_PACK_BYTES instead of per file (the channel's
   * writes, their packets and the allocations were a fifth of a 20,000-file
   * push's CPU).
   */
  writeBatch(entries: readonly BatchEntry[], algorithm: HashAlgorithm): BatchWrite {
    const { id, reply } = this.request('BATCH', batchBody(algorithm, entries));
    let error: unknown;
    const answer = reply.then((ok) => {
      if (!Array.isArray(ok.results) || ok.results.length !== entries.length) {
        throw new FerryError('PROTOCOL', `the helper on ${this.label} answered a batch of ${entries.length} entries with ${ok.results?.length ?? 'no'} results`, { host: this.label });
      }
      return ok.results;
    });
    answer.catch((err: unknown) => {
      error = err;
    });
    const check = () => {
      if (error !== undefined) throw error;
    };
    // The frame being filled: its header's room, then `fill` bytes. Never reused once sent (the channel may hold it).
    let pack: Buffer | undefined;
    let fill = 0;
    const flush = (): Promise<void> => {
      if (!pack || fill === 0) return Promise.resolve();
      writeHeader(pack, 0, FrameType.DATA, id, fill);
      const frame = pack.subarray(0, FRAME_HEADER_BYTES + fill);
      pack = undefined;
      fill = 0;
      return this.send(frame);
    };
    return {
      answer,
      get failed() {
        return error !== undefined;
      },
      data: async (data) => {
        check();
        if (fill + data.length > BATCH_PACK_BYTES) await flush();
        if (data.length >= BATCH_PACK_BYTES) {
          // A big piece goes as its own frame (copied: the source may reuse its buffer once this resolves).
          const buf = Buffer.allocUnsafe(FRAME_HEADER_BYTES + data.length);
          writeHeader(buf, 0, FrameType.DATA, id, data.length);
          data.copy(buf, FRAME_HEADER_BYTES);
          return this.send(buf);
        }
        pack ??= Buffer.allocUnsafe(FRAME_HEADER_BYTES + BATCH_PACK_BYTES);
        data.copy(pack, FRAME_HEADER_BYTES + fill);
        fill += data.length;
        if (fill === BATCH_PACK_BYTES) return flush();
      },
      zeros: async (length) => {
        check();
        await flush();
        return this.send(encodeControl('ZEROS', id, { length }));
      },
      commit: async (srcHashes) => {
        check();
        await flush();
        return this.send(encodeControl('COMMIT', id, { srcHashes }));
      },
    };
  }

  /**
   * Reads a range; `onData` gets each piece as it arrives (a view valid only
   * during the call; `zero` marks a run of zeros sent as a ZEROS frame).
   */
  readRange(handle: number, offset: number, length: number, algorithm: HashAlgorithm, onData: (chunk: Buffer, zero: boolean) => void): { id: number; done: Promise<{ bytes: number; hash: string }> } {
    const { id, reply } = this.request('READ', { handle, offset, length, algorithm }, onData);
    return { id, done: reply.then((ok) => ({ bytes: ok.bytes ?? 0, hash: ok.hash! })) };
  }

  /** Starts a WALK (capability `tree-read`): `onItems` gets each ENTRIES frame's items; `done` settles with the OK. */
  walk(root: string, onItems: (items: WireWalkItem[]) => void, wanted: Omit<WalkBody, 'root'> = {}): { id: number; done: Promise<void> } {
    const { id, reply } = this.request('WALK', { root, ...wanted }, undefined, onItems);
    return { id, done: reply.then(() => undefined) };
  }

  /**
   * Starts a READ_BATCH (capability `tree-read`): `onData` gets the files'
   * bytes back to back, as readRange's does; `done` settles with a result per file.
   */
  readBatch(entries: readonly ReadBatchEntry[], algorithm: HashAlgorithm, onData: (chunk: Buffer, zero: boolean) => void, hashOnly = false): { id: number; done: Promise<BatchEntryResult[]> } {
    const { id, reply } = this.request('READ_BATCH', { algorithm, entries: entries.map((e) => ({ path: e.path, size: e.size })), ...(hashOnly ? { hashOnly } : {}) }, onData);
    const done = reply.then((ok) => {
      if (!Array.isArray(ok.results) || ok.results.length !== entries.length) {
        throw new FerryError('PROTOCOL', `the helper on ${this.label} answered a read batch of ${entries.length} files with ${ok.results?.length ?? 'no'} results`, { host: this.label });
      }
      return ok.results;
    });
    return { id, done };
  }

  /** Gives up on a request: it fails with `err` now, and what still arrives for it is dropped. */
  abandon(id: number, err: FerryError): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    p.reject(err);
  }

  /** Stops reading from the remote (SSH flow control then holds the sender). */
  pause(): void {
    this.streams.output.pause();
  }

  resume(): void {
    this.streams.output.resume();
  }
}

/** The handshake timeouts (HelperClient.handshake), told apart from a helper that answered wrongly. */
const helloTimeouts = new WeakSet<object>();
/** Helper starts that timed out with no exit status and nothing on stderr (slowStart()). */
const slowStarts = new WeakSet<object>();

export function isHelloTimeout(err: unknown): boolean {
  return typeof err === 'object' && err !== null && helloTimeouts.has(err);
}

/**
 * The error for a helper that was started but neither answered nor exited nor
 * said anything within the timeout: most likely a slow remote side (heavy
 * shell start-up files, many logins at once, a loaded host), which another
 * attempt may not meet. Agents retry it (isSlowHelperStart); the coordinator,
 * whose connection is the first, reports it.
 */
export function slowStart(command: string, label: string, timeoutMs: number, cause: unknown): FerryError {
  const e = new FerryError(
    'HELPER_UNAVAILABLE',
    `'${command}' on ${label} started but did not answer within ${timeoutMs / 1000}s, without exiting or a word on stderr: the remote side is slow to start (shell start-up files in ~/.bashrc, many logins at once, a loaded host), or --remote-cmd does not run ferry serve`,
    { host: label, cause },
  );
  slowStarts.add(e);
  return e;
}

export function isSlowHelperStart(err: unknown): boolean {
  return typeof err === 'object' && err !== null && slowStarts.has(err);
}
