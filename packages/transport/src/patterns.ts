/**
 * OpenSSH's patterns (ssh_config(5) PATTERNS, known_hosts host fields): `*`
 * matches any run of characters, `?` exactly one; a list is comma-separated and
 * an entry starting with `!` negates: a negated match rejects the list whatever
 * else matches.
 */

/** Glob match with `*` and `?` only; case-sensitive (lower-case both sides first where OpenSSH does). */
export function matchPattern(str: string, pat: string): boolean {
  let s = 0;
  let p = 0;
  let starP = -1;
  let starS = 0;
  while (s < str.length) {
    if (p < pat.length && (pat[p] === '?' || pat[p] === str[s])) {
      s++;
      p++;
    } else if (p < pat.length && pat[p] === '*') {
      starP = p++;
      starS = s;
    } else if (starP !== -1) {
      p = starP + 1;
      s = ++starS;
    } else {
      return false;
    }
  }
  while (p < pat.length && pat[p] === '*') p++;
  return p === pat.length;
}

/**
 * OpenSSH's match_pattern_list: true when some entry of the list matches and
 * no negated one does. `ignoreCase` as for host names (the list is lower-cased,
 * as OpenSSH does; `str` must be lower-case already for that to help).
 */
export function matchPatternList(str: string, patterns: readonly string[], ignoreCase = false): boolean {
  const subject = ignoreCase ? str.toLowerCase() : str;
  let matched = false;
  for (const raw of patterns) {
    const negated = raw.startsWith('!');
    let pat = negated ? raw.slice(1) : raw;
    if (ignoreCase) pat = pat.toLowerCase();
    if (!matchPattern(subject, pat)) continue;
    if (negated) return false;
    matched = true;
  }
  return matched;
}
