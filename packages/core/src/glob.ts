/**
 * Remote globs as scp's remote shell expands them (`ferry cp 'host:/data/run*' .`),
 * without a shell: `*`, `?` and `[...]` (`[!...]`, `[^...]`, ranges, a
 * backslash quoting the next character) in path components, matched against
 * directory listings; a leading `.` is matched only by a pattern that starts
 * with one, as in sh. Nothing else a shell would do (`$(...)`, `~`, braces,
 * variables) is done: those characters match themselves.
 *
 * The listing is passed in (serve reads directories, SFTP mode asks
 * readdir), so this module does no I/O.
 *
 * ```ts
 * const paths = await expandGlob('/data/run*', { list: (d) => readdir(d).catch(() => undefined), exists });
 * ```
 */

/** Most names one pattern may match (each becomes a source of its own). */
export const MAX_GLOB_MATCHES = 4096;

/** Whether `component` holds a character a pattern gives meaning to. */
function isPattern(component: string): boolean {
  for (let i = 0; i < component.length; i++) {
    const c = component[i];
    if (c === '\\') i++;
    else if (c === '*' || c === '?') return true;
    else if (c === '[' && classEnd(component, i) > 0) return true;
  }
  return false;
}

/** Whether the path (a remote source's path) is a pattern: one of its components is. */
export function hasGlob(path: string): boolean {
  return path.split('/').some(isPattern);
}

/** Index of the `]` closing the class that opens at `open`, or -1 (then `[` is a plain character). */
function classEnd(p: string, open: number): number {
  let i = open + 1;
  if (p[i] === '!' || p[i] === '^') i++;
  // A `]` first in the class is one of its characters.
  if (p[i] === ']') i++;
  for (; i < p.length; i++) {
    if (p[i] === '\\') i++;
    else if (p[i] === ']') return i;
  }
  return -1;
}

function classMatches(p: string, open: number, end: number, c: string): boolean {
  let i = open + 1;
  let negate = false;
  if (p[i] === '!' || p[i] === '^') {
    negate = true;
    i++;
  }
  let hit = false;
  while (i < end) {
    let lo = p[i]!;
    if (lo === '\\' && i + 1 < end) lo = p[++i]!;
    if (p[i + 1] === '-' && i + 2 < end) {
      let hi = p[i + 2]!;
      let step = 3;
      if (hi === '\\' && i + 3 < end) {
        hi = p[i + 3]!;
        step = 4;
      }
      if (c >= lo && c <= hi) hit = true;
      i += step;
    } else {
      if (c === lo) hit = true;
      i++;
    }
  }
  return hit !== negate;
}

/** Whether `name` (one path component) matches the pattern `p` (one component). */
export function matchName(name: string, p: string): boolean {
  // sh: a leading dot is never matched by *, ? or a class.
  if (name.startsWith('.') && !p.startsWith('.') && !p.startsWith('\\.')) return false;
  return matchFrom(name, 0, p, 0);
}

function matchFrom(s: string, si: number, p: string, pi: number): boolean {
  // Iterative with one backtrack point for the last *: linear enough for names.
  let star = -1;
  let starS = 0;
  while (si < s.length) {
    const c = p[pi];
    if (c === '*') {
      star = pi++;
      starS = si;
      continue;
    }
    if (c === '?') {
      si++;
      pi++;
      continue;
    }
    if (c === '[') {
      const end = classEnd(p, pi);
      if (end > 0) {
        if (classMatches(p, pi, end, s[si]!)) {
          si++;
          pi = end + 1;
          continue;
        }
      } else if (s[si] === '[') {
        si++;
        pi++;
        continue;
      }
    } else if (c === '\\' && pi + 1 < p.length) {
      if (s[si] === p[pi + 1]) {
        si++;
        pi += 2;
        continue;
      }
    } else if (c !== undefined && c === s[si]) {
      si++;
      pi++;
      continue;
    }
    if (star < 0) return false;
    pi = star + 1;
    si = ++starS;
  }
  while (p[pi] === '*') pi++;
  return pi === p.length;
}

/** A pattern component without its quoting: what it names when it has no pattern character. */
function unquote(component: string): string {
  return component.replace(/\\(.)/g, '$1');
}

export interface GlobIo {
  /** Names in directory `dir` (without . and ..), or undefined when it cannot be listed (not a directory, gone, no permission). */
  list(dir: string): Promise<string[] | undefined>;
  /** Whether anything is at `path` (lstat). */
  exists(path: string): Promise<boolean>;
}

/**
 * The paths an absolute `pattern` matches, sorted as sh sorts them (by
 * code point here); none when nothing matches. More than MAX_GLOB_MATCHES
 * is a RangeError.
 */
export async function expandGlob(pattern: string, io: GlobIo): Promise<string[]> {
  if (!pattern.startsWith('/')) throw new RangeError(`a glob pattern must be an absolute path, got ${pattern}`);
  const parts = pattern.split('/').filter((c) => c !== '');
  let found: string[] = ['/'];
  const join = (dir: string, name: string) => (dir === '/' ? `/${name}` : `${dir}/${name}`);
  let literalTail = false;
  for (const part of parts) {
    const next: string[] = [];
    if (!isPattern(part)) {
      for (const d of found) next.push(join(d, unquote(part)));
      literalTail = true;
    } else {
      literalTail = false;
      for (const d of found) {
        const names = await io.list(d);
        if (!names) continue;
        for (const n of names) {
          if (!matchName(n, part)) continue;
          next.push(join(d, n));
          if (next.length > MAX_GLOB_MATCHES) throw new RangeError(`${pattern} matches more than ${MAX_GLOB_MATCHES} names`);
        }
      }
    }
    found = next;
    if (found.length === 0) return [];
  }
  if (literalTail) {
    const kept: string[] = [];
    for (const p of found) if (await io.exists(p)) kept.push(p);
    found = kept;
  }
  return found.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}
