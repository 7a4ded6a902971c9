/**
 * A set of non-negative integers kept as sorted, disjoint, non-adjacent
 * half-open runs [start, end). ferry uses it for "which range indices are done":
 * a finished million-range job is one run, not a million entries.
 */
export class IntervalSet {
  /** Flat [start0, end0, start1, end1, ...], sorted, disjoint and non-adjacent. */
  private runs: number[] = [];
  private total = 0;

  static from(runs: ReadonlyArray<readonly [number, number]>): IntervalSet {
    const set = new IntervalSet();
    for (const [s, e] of runs) set.addRange(s, e);
    return set;
  }

  /** Number of integers in the set. */
  get size(): number {
    return this.total;
  }

  /** Number of runs: the memory the set takes. */
  get runCount(): number {
    return this.runs.length / 2;
  }

  has(value: number): boolean {
    const i = this.findRun(value);
    return i >= 0 && value < this.runs[i * 2 + 1]!;
  }

  add(value: number): boolean {
    if (this.has(value)) return false;
    this.addRange(value, value + 1);
    return true;
  }

  /** Removes one value; returns whether it was there. */
  delete(value: number): boolean {
    if (!Number.isInteger(value)) return false;
    const i = this.findRun(value);
    if (i < 0) return false;
    const s = this.runs[i * 2]!;
    const e = this.runs[i * 2 + 1]!;
    if (value >= e) return false;
    const pieces: number[] = [];
    if (s < value) pieces.push(s, value);
    if (value + 1 < e) pieces.push(value + 1, e);
    this.runs.splice(i * 2, 2, ...pieces);
    this.total -= 1;
    return true;
  }

  /** Adds [start, end). */
  addRange(start: number, end: number): void {
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end < start) {
      throw new RangeError(`invalid interval [${start}, ${end})`);
    }
    if (start === end) return;
    const r = this.runs;
    // First run whose end >= start (touching or overlapping runs merge).
    let lo = 0;
    let hi = r.length / 2;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (r[mid * 2 + 1]! < start) lo = mid + 1;
      else hi = mid;
    }
    let j = lo;
    let newStart = start;
    let newEnd = end;
    let removed = 0;
    while (j < r.length / 2 && r[j * 2]! <= end) {
      newStart = Math.min(newStart, r[j * 2]!);
      newEnd = Math.max(newEnd, r[j * 2 + 1]!);
      removed += r[j * 2 + 1]! - r[j * 2]!;
      j++;
    }
    r.splice(lo * 2, (j - lo) * 2, newStart, newEnd);
    this.total += newEnd - newStart - removed;
  }

  /** Integers of [0, limit) that are not in the set, in ascending order. */
  *missing(limit: number): Generator<number> {
    let next = 0;
    for (let i = 0; i < this.runs.length && next < limit; i += 2) {
      const s = this.runs[i]!;
      for (let v = next; v < Math.min(s, limit); v++) yield v;
      next = Math.max(next, this.runs[i + 1]!);
    }
    for (let v = next; v < limit; v++) yield v;
  }

  /** The runs as [start, end) pairs. */
  toArray(): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    for (let i = 0; i < this.runs.length; i += 2) out.push([this.runs[i]!, this.runs[i + 1]!]);
    return out;
  }

  /** Index of the run with the greatest start <= value, or -1. */
  private findRun(value: number): number {
    let lo = 0;
    let hi = this.runs.length / 2 - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.runs[mid * 2]! <= value) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return found;
  }
}
