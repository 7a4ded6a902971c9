/**
 * Pairing two walks of trees that should be copies of each other, for
 * `ferry check`: entries come from both sides in whatever order each walk
 * finds them; an entry waits until the other side reports the same tree path
 * (or the walks end), and the pair is decided at once where metadata is
 * enough, or handed back to be compared by content.
 *
 * Only unpaired entries are held: two walks of similar trees that run side
 * by side pair most entries soon after they come, but a side that walks far
 * ahead of the other (or a tree only on one side) is held whole.
 *
 * ```ts
 * const m = new TreeMatcher({ sizeOnly: false });
 * for (const o of m.add('src', item)) report(o);   // as items come, from either side
 * for (const o of m.finish()) report(o);           // the entries only one side had
 * ```
 */
import type { TreeEntry, WalkItem } from './tree-plan.js';

/** What a check says of one tree path. */
export type CheckStatus =
  /** Present on both sides and the same (kind, size, content or link target). */
  | 'same'
  /** Present on both sides and not the same. */
  | 'differ'
  /** In the source only (`+`). */
  | 'missing-on-dst'
  /** In the destination only (`-`). */
  | 'missing-on-src'
  /** Could not be compared: unreadable, vanished, a name that is not UTF-8 (`!`). */
  | 'error';

/** The one-character marks of `rclone check --combined`. */
export const CHECK_MARKS: Readonly<Record<CheckStatus, string>> = { same: '=', differ: '*', 'missing-on-dst': '+', 'missing-on-src': '-', error: '!' };

export type CheckSideName = 'src' | 'dst';

/** A pair (or a lone entry) decided, or a pair of files whose content is to be compared. */
export type MatchOutcome =
  | { readonly path: string; readonly status: CheckStatus; readonly reason?: string }
  | { readonly path: string; readonly compare: { readonly size: number; readonly srcHash?: string; readonly dstHash?: string } };

export interface MatchOptions {
  /** Files of the same size count as the same; their content is not compared. */
  readonly sizeOnly: boolean;
}

type Pending = { entry: TreeEntry } | { error: { code: string; message: string } };

const other = (side: CheckSideName): CheckSideName => (side === 'src' ? 'dst' : 'src');

export class TreeMatcher {
  private readonly waiting: Record<CheckSideName, Map<string, Pending>> = { src: new Map(), dst: new Map() };
  /** Sizes of files with more than one name, per side: a further name comes as a `hardlink` without a size. */
  private readonly linkedSizes: Record<CheckSideName, Map<string, number>> = { src: new Map(), dst: new Map() };

  constructor(private readonly options: MatchOptions) {}

  /** Entries waiting for the other side, per side. */
  get held(): { src: number; dst: number } {
    return { src: this.waiting.src.size, dst: this.waiting.dst.size };
  }

  /** One item of one side's walk: what it decides (nothing while it waits for the other side). */
  add(side: CheckSideName, item: WalkItem): MatchOutcome[] {
    const path = 'error' in item ? item.path : item.entry.path;
    const mine: Pending = 'error' in item ? { error: item.error } : { entry: this.asFile(side, item.entry) };
    const theirs = this.waiting[other(side)].get(path);
    if (theirs === undefined) {
      const earlier = this.waiting[side].get(path);
      // A second item for one path: a directory listed, then found unreadable. The error wins.
      if (earlier !== undefined) {
        if ('error' in mine) this.waiting[side].set(path, mine);
        return [];
      }
      this.waiting[side].set(path, mine);
      return [];
    }
    this.waiting[other(side)].delete(path);
    const [src, dst] = side === 'src' ? [mine, theirs] : [theirs, mine];
    // Two root directories are what was asked about, not an entry of the trees.
    if (path === '' && 'entry' in src && 'entry' in dst && src.entry.kind === 'dir' && dst.entry.kind === 'dir') return [];
    return [this.decide(path, src, dst)];
  }

  /** Both walks have ended: every entry still waiting is on one side only (or an error). */
  finish(): MatchOutcome[] {
    const out: MatchOutcome[] = [];
    for (const side of ['src', 'dst'] as const) {
      for (const [path, p] of this.waiting[side]) {
        if ('error' in p) out.push({ path, status: 'error', reason: `${side === 'src' ? 'source' : 'destination'}: ${p.error.message}` });
        else out.push({ path, status: side === 'src' ? 'missing-on-dst' : 'missing-on-src' });
      }
      this.waiting[side].clear();
    }
    return out;
  }

  /** A further name of a file, compared as the file (the first name each side found may differ). */
  private asFile(side: CheckSideName, entry: TreeEntry): TreeEntry {
    if (entry.kind === 'file' && entry.nlink > 1) this.linkedSizes[side].set(entry.path, entry.size);
    if (entry.kind !== 'hardlink') return entry;
    const size = this.linkedSizes[side].get(entry.target ?? '');
    if (size === undefined) return entry;
    this.linkedSizes[side].set(entry.path, size);
    return { ...entry, kind: 'file', size };
  }

  private decide(path: string, src: Pending, dst: Pending): MatchOutcome {
    if ('error' in src) return { path, status: 'error', reason: `source: ${src.error.message}` };
    if ('error' in dst) return { path, status: 'error', reason: `destination: ${dst.error.message}` };
    return compareEntries(path, src.entry, dst.entry, this.options);
  }
}

const KIND_NAMES: Readonly<Record<TreeEntry['kind'], string>> = { file: 'a file', dir: 'a directory', symlink: 'a symbolic link', hardlink: 'a hard link', special: 'a special file' };

/** Two entries at one tree path, by metadata: decided, or files of one size whose content decides. */
export function compareEntries(path: string, src: TreeEntry, dst: TreeEntry, options: MatchOptions): MatchOutcome {
  if (src.kind === 'hardlink' || dst.kind === 'hardlink') {
    return { path, status: 'error', reason: `a further name of a file whose first name (${src.kind === 'hardlink' ? src.target : dst.target}) was not seen first` };
  }
  if (src.kind !== dst.kind) return { path, status: 'differ', reason: `${KIND_NAMES[src.kind]} in the source, ${KIND_NAMES[dst.kind]} in the destination` };
  switch (src.kind) {
    case 'symlink':
      return src.target === dst.target ? { path, status: 'same' } : { path, status: 'differ', reason: `link to ${src.target ?? ''} in the source, to ${dst.target ?? ''} in the destination` };
    case 'file':
      if (src.size !== dst.size) return { path, status: 'differ', reason: `${src.size} bytes in the source, ${dst.size} in the destination` };
      if (options.sizeOnly || src.size === 0) return { path, status: 'same' };
      // A remote walk may have hashed a small file already (WalkBody's `hash`): the caller hashes only what is missing.
      return { path, compare: { size: src.size, ...(src.hash === undefined ? {} : { srcHash: src.hash }), ...(dst.hash === undefined ? {} : { dstHash: dst.hash }) } };
    default:
      // Directories by presence; fifos, sockets and devices by kind (they have no content).
      return { path, status: 'same' };
  }
}
