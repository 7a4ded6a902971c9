/**
 * The job journal on disk: append-only, group-committed (GroupCommit, below),
 * replayed with a torn tail cut off before appending resumes.
 */
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { encodeRecord, pwriteAll, replayJournal } from '@ferry/core';
import type { JournalRecord, ReplayResult } from '@ferry/core';

/**
 * Appends to a file at a known end, group-committed: what is queued while a
 * write and its fsync run goes out together in the next one, so a thousand
 * records cost a few fsyncs, not a thousand. After a failure every append fails.
 */
export class GroupCommit {
  private queue: Array<{ data: Buffer; resolve: () => void; reject: (err: unknown) => void }> = [];
  private writing: Promise<void> | undefined;
  private failed: unknown;

  constructor(
    private readonly fh: FileHandle,
    private position: number,
  ) {}

  /** Resolves once `data` is on stable storage. */
  append(data: Buffer): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ data, resolve, reject });
      this.writing ??= this.drain();
    });
  }

  private async drain(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0);
        const data = Buffer.concat(batch.map((b) => b.data));
        try {
          await pwriteAll(this.fh, data, data.length, this.position);
          this.position += data.length;
          await this.fh.sync();
          for (const b of batch) b.resolve();
        } catch (err) {
          this.failed = err;
          for (const b of [...batch, ...this.queue.splice(0)]) b.reject(err);
        }
      }
    } finally {
      this.writing = undefined;
    }
  }

  /** Waits for what is queued. */
  async settle(): Promise<void> {
    while (this.writing) await this.writing;
  }
}

export class JournalFile {
  private readonly writer: GroupCommit;

  private constructor(
    private readonly fh: FileHandle,
    position: number,
    readonly path: string,
  ) {
    this.writer = new GroupCommit(fh, position);
  }

  /** Opens (creating if needed) and replays the journal; a torn tail is truncated away. */
  static async open(path: string): Promise<{ journal: JournalFile; replay: ReplayResult }> {
    const fh = await open(path, 'a+', 0o600);
    try {
      const data = await fh.readFile();
      const replay = replayJournal(data);
      if (replay.tornTail) {
        await fh.truncate(replay.validBytes);
        await fh.sync();
      }
      return { journal: new JournalFile(fh, replay.validBytes, path), replay };
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  /** Resolves once the record is on stable storage. */
  append(record: JournalRecord): Promise<void> {
    return this.writer.append(encodeRecord(record));
  }

  async close(): Promise<void> {
    await this.writer.settle();
    await this.fh.close();
  }
}
