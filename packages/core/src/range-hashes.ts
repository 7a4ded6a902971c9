/**
 * The hash of each range of a job, kept in binary: a million xxh3 digests take
 * 8 MB. As strings they would take far more than their 16 characters: a string
 * decoded from a message can keep the whole message's text alive (about 400
 * bytes per range was measured for completions), which made a million-range
 * coordinator grow by hundreds of MiB.
 */
import type { HashAlgorithm } from './hash.js';

const DIGEST_BYTES: Record<HashAlgorithm, number> = { xxh3: 8, sha256: 32, crc32: 4 };

export class RangeHashes {
  private readonly width: number;
  private readonly digests: Buffer;
  private readonly present: Uint8Array;
  private readonly pattern: RegExp;
  /** Digests that are not the algorithm's lowercase hex (never from ferry itself), as given. */
  private readonly odd = new Map<number, string>();
  private stored = 0;

  constructor(
    readonly count: number,
    algorithm: HashAlgorithm,
  ) {
    this.width = DIGEST_BYTES[algorithm];
    this.digests = Buffer.alloc(count * this.width);
    this.present = new Uint8Array(count);
    this.pattern = new RegExp(`^[0-9a-f]{${this.width * 2}}$`);
  }

  /** Ranges with a hash. */
  get size(): number {
    return this.stored;
  }

  private check(index: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.count) throw new RangeError(`range index ${index} outside 0..${this.count - 1}`);
  }

  set(index: number, hex: string): void {
    this.check(index);
    if (!this.present[index]) this.stored++;
    this.present[index] = 1;
    if (this.pattern.test(hex)) {
      this.digests.write(hex, index * this.width, this.width, 'hex');
      this.odd.delete(index);
    } else {
      this.odd.set(index, `${hex}`);
    }
  }

  get(index: number): string | undefined {
    this.check(index);
    if (!this.present[index]) return undefined;
    return this.odd.get(index) ?? this.digests.toString('hex', index * this.width, (index + 1) * this.width);
  }

  has(index: number): boolean {
    this.check(index);
    return this.present[index] === 1;
  }

  delete(index: number): boolean {
    this.check(index);
    if (!this.present[index]) return false;
    this.present[index] = 0;
    this.odd.delete(index);
    this.stored--;
    return true;
  }

  /** Hashes of ranges [start, end) (clamped to the plan), '' where a range has none. */
  slice(start: number, end: number): string[] {
    const out: string[] = [];
    for (let i = Math.max(0, start); i < Math.min(end, this.count); i++) out.push(this.get(i) ?? '');
    return out;
  }

  /** Every range's hash in order, '' where a range has none. */
  *values(): Generator<string> {
    for (let i = 0; i < this.count; i++) yield this.get(i) ?? '';
  }

  /** As an array, null where a range has none (what JSON.stringify makes of it). */
  toJSON(): Array<string | null> {
    const out = new Array<string | null>(this.count);
    for (let i = 0; i < this.count; i++) out[i] = this.get(i) ?? null;
    return out;
  }
}
