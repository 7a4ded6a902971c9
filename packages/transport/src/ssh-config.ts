/**
 * ssh_config(5) as ssh reads it: which directives apply to a host.
 *
 * The text is parsed by the `ssh-config` package (quoting, `=` separators,
 * comments, Host and Match sections). Its own `compute()` is not used: it
 * forgets which file and line a value came from (warnings must name them),
 * does not follow Include, runs `Match exec` through a shell and
 * CanonicalDomains through nslookup, and its `?` matches zero characters. What
 * is here follows OpenSSH 9's readconf.c instead:
 *
 * - files are read in order (the user's, then the system's; or the one -F
 *   names), each starting in effect, and a directive's first value wins;
 *   IdentityFile and CertificateFile add up;
 * - `Host` patterns match the host as written, case-sensitively; `Match host`
 *   matches the HostName set so far (`%h` expanded) case-insensitively; `!`
 *   negates; Match `all`, `host`, `originalhost`, `user`, `localuser`,
 *   `canonical` and `final` are evaluated (`final` re-reads the files with the
 *   resolved host name, as ssh's final pass does); other criteria (`exec`,
 *   `localnetwork`, `tagged`, ...) cannot be, and make their block not match;
 * - Include expands `~` and globs, relative to ~/.ssh (user files) or
 *   /etc/ssh (system files); an included file starts in effect when its
 *   Include line is, and the block around it is restored after it;
 * - the user's files must be owned by the user or root and writable by no one
 *   else, or ssh refuses them, and so does ferry.
 *
 * Evaluation is pure (text in, settings out); loadSshConfig does the reading.
 */
import { lstat, readFile, readdir } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import SSHConfig, { LineType } from 'ssh-config';
import type { Line } from 'ssh-config';
import { FerryError } from '@ferry/core';
import { matchPattern, matchPatternList } from './patterns.js';

/** Where a line was written: `file` and its 1-based `line`. */
export interface ConfigPlace {
  file: string;
  line: number;
  /** From the system-wide file (or one it includes), not the user's. */
  system?: boolean;
}

export interface MatchCriterion {
  /** Lower-case, without `!`: all, host, user, exec, ... */
  name: string;
  negated: boolean;
  /** The criterion's argument; absent for all, canonical, final. */
  arg?: string;
}

export type ConfigItem =
  | ({ type: 'directive'; keyword: string; name: string; args: string[] } & ConfigPlace)
  | ({ type: 'host'; patterns: string[] } & ConfigPlace)
  | ({ type: 'match'; criteria: MatchCriterion[] } & ConfigPlace)
  | ({ type: 'include'; patterns: string[]; files: ConfigFile[] } & ConfigPlace);

export interface ConfigFile {
  path: string;
  items: ConfigItem[];
}

/** The configuration files of one run, in the order ssh reads them, Includes expanded. */
export interface SshConfig {
  files: ConfigFile[];
}

export const EMPTY_SSH_CONFIG: SshConfig = { files: [] };

/** A directive's value as it applies to a host, and where it was written. */
export interface ConfigSetting extends ConfigPlace {
  /** As written in the file (for messages). */
  name: string;
  args: string[];
}

export interface HostConfig {
  /** The first value of each directive that applies, by lower-case keyword. */
  readonly values: ReadonlyMap<string, ConfigSetting>;
  /** IdentityFile and CertificateFile: every value that applies, in order, without repeats. */
  readonly lists: ReadonlyMap<string, ConfigSetting[]>;
  /** Match criteria that cannot be evaluated here (their blocks were taken as not matching). */
  readonly unevaluated: ConfigSetting[];
  /** The host name after HostName, `%h` expanded, lower-case (what ssh connects to and checks host keys for). */
  readonly hostName: string;
}

/** Directives whose values add up instead of the first one winning. */
const CUMULATIVE = new Set(['identityfile', 'certificatefile']);
/** ProxyCommand and ProxyJump exclude each other: whichever comes first wins. */
const PROXY = new Set(['proxycommand', 'proxyjump']);
const MAX_INCLUDE_DEPTH = 16;

function newlines(s: string): number {
  let n = 0;
  for (let i = s.indexOf('\n'); i !== -1; i = s.indexOf('\n', i + 1)) n++;
  return n;
}

function argsOf(value: string | Array<{ val: string }>): string[] {
  if (typeof value === 'string') return value === '' ? [] : [value];
  return value.map((v) => v.val);
}

/**
 * Parses one file's text into items, with line numbers. Include lines are
 * left unexpanded (`files` empty); loadSshConfig fills them in.
 */
export function parseSshConfig(text: string, file: string, system = false): ConfigItem[] {
  let parsed: SSHConfig;
  try {
    parsed = SSHConfig.parse(text);
  } catch (err) {
    throw new FerryError('USAGE', `cannot read ssh config ${file}: ${(err as Error).message}: fix the file (ssh would refuse it too)`, { path: file, cause: err });
  }
  const items: ConfigItem[] = [];
  // The parser keeps every blank and line break in the lines' before/after text,
  // so counting them in order gives each directive's line.
  let lineBreaks = 0;
  const place = (): ConfigPlace => (system ? { file, line: lineBreaks + 1, system } : { file, line: lineBreaks + 1 });
  const walk = (lines: readonly Line[]) => {
    for (const l of lines) {
      lineBreaks += newlines(l.before);
      if (l.type === LineType.DIRECTIVE && l.param !== '') {
        const keyword = l.param.toLowerCase();
        const args = argsOf(l.value);
        if ('criteria' in l) {
          const criteria: MatchCriterion[] = [];
          for (const [key, value] of Object.entries(l.criteria)) {
            const negated = key.startsWith('!');
            const name = (negated ? key.slice(1) : key).toLowerCase();
            const arg = typeof value === 'string' ? value : undefined;
            criteria.push(arg === undefined ? { name, negated } : { name, negated, arg });
          }
          items.push({ type: 'match', criteria, ...place() });
        } else if (keyword === 'host') {
          items.push({ type: 'host', patterns: args, ...place() });
        } else if (keyword === 'include') {
          items.push({ type: 'include', patterns: args, files: [], ...place() });
        } else {
          items.push({ type: 'directive', keyword, name: l.param, args, ...place() });
        }
      }
      lineBreaks += newlines(l.after);
      if ('config' in l) walk(l.config);
    }
  };
  walk(parsed);
  return items;
}

/** What loadSshConfig reads through (tests pass files from memory). */
export interface SshConfigIo {
  /** The file's text, or undefined when it does not exist. */
  readFile(path: string): Promise<string | undefined>;
  /** Owner and mode, or undefined when it does not exist. */
  stat(path: string): Promise<{ uid: number; mode: number; isFile: boolean } | undefined>;
  /** Names in a directory, or undefined when it is not one. */
  readdir(path: string): Promise<string[] | undefined>;
}

const nodeIo: SshConfigIo = {
  async readFile(path) {
    try {
      return await readFile(path, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
      throw new FerryError('USAGE', `cannot read ssh config ${path} (${code ?? (err as Error).message}): check its permissions`, { path, cause: err });
    }
  },
  async stat(path) {
    try {
      const st = await lstat(path);
      return { uid: st.uid, mode: st.mode, isFile: st.isFile() };
    } catch {
      return undefined;
    }
  },
  async readdir(path) {
    try {
      return await readdir(path);
    } catch {
      return undefined;
    }
  },
};

export interface ConfigSource {
  path: string;
  /** The system-wide file: its Includes are relative to systemDir. */
  system: boolean;
  /** -F: a missing file is an error, not an absent one. */
  required?: boolean;
  /** ~/.ssh/config: ssh refuses it when others could have written it. */
  checkPermissions?: boolean;
}

export interface LoadContext {
  home: string;
  uid: number;
  /** /etc/ssh, where the system's relative Includes point. */
  systemDir: string;
}

/** Reads the configuration files in order, following Include. A file that does not exist is skipped, unless required. */
export async function loadSshConfig(sources: readonly ConfigSource[], ctx: LoadContext, io: SshConfigIo = nodeIo): Promise<SshConfig> {
  const files: ConfigFile[] = [];
  for (const source of sources) {
    const file = await loadFile(source.path, source.system, source.checkPermissions === true, ctx, io, 0);
    if (file) files.push(file);
    else if (source.required) throw new FerryError('USAGE', `ssh config file ${source.path} (-F) does not exist: check the path, or give -F none for no configuration`, { path: source.path });
  }
  return { files };
}

async function loadFile(path: string, system: boolean, checkPermissions: boolean, ctx: LoadContext, io: SshConfigIo, depth: number): Promise<ConfigFile | undefined> {
  if (checkPermissions) {
    const st = await io.stat(path);
    if (st === undefined) return undefined;
    if ((st.uid !== 0 && st.uid !== ctx.uid) || (st.mode & 0o022) !== 0) {
      throw new FerryError(
        'USAGE',
        `bad owner or permissions on ${path}: ssh refuses a configuration file someone else could change, and so does ferry: it must be owned by you (or root) and writable by you alone (chmod go-w ${path})`,
        { path },
      );
    }
    if (!st.isFile) return undefined;
  }
  const text = await io.readFile(path);
  if (text === undefined) return undefined;
  const items = parseSshConfig(text, path, system);
  for (const item of items) {
    if (item.type !== 'include') continue;
    if (depth >= MAX_INCLUDE_DEPTH) throw new FerryError('USAGE', `ssh config ${item.file} line ${item.line}: Include nested more than ${MAX_INCLUDE_DEPTH} deep (does it include itself?)`, { path: item.file });
    for (const pattern of item.patterns) {
      let p = pattern === '~' ? ctx.home : pattern.startsWith('~/') ? join(ctx.home, pattern.slice(2)) : pattern;
      if (!isAbsolute(p)) p = system ? join(ctx.systemDir, p) : join(ctx.home, '.ssh', p);
      for (const match of await glob(p, io)) {
        const included = await loadFile(match, system, true, ctx, io, depth + 1);
        if (included) item.files.push(included);
      }
    }
  }
  return { path, items };
}

/** glob(3) with `*` and `?`, as Include needs it: matches in sorted order; a leading dot only by a pattern's own. */
async function glob(pattern: string, io: SshConfigIo): Promise<string[]> {
  if (!/[*?]/.test(pattern)) return [pattern];
  const parts = pattern.split('/');
  let found = [parts[0] === '' ? '/' : parts[0]!];
  for (const part of parts.slice(1)) {
    if (part === '') continue;
    const next: string[] = [];
    for (const dir of found) {
      if (!/[*?]/.test(part)) {
        next.push(join(dir, part));
        continue;
      }
      for (const name of ((await io.readdir(dir)) ?? []).sort()) {
        if (name.startsWith('.') && !part.startsWith('.')) continue;
        if (matchPattern(name, part)) next.push(join(dir, name));
      }
    }
    found = next;
  }
  return found.sort();
}

export interface HostQuery {
  /** The host as the user wrote it. */
  host: string;
  /** The user the location gave (it wins over User, and is what `Match user` sees). */
  user?: string | undefined;
  /** The local user (`Match localuser`, and `Match user` when no user is set). */
  localUser: string;
}

/** `%h` and `%%` in HostName, the only tokens ssh allows there. */
export function expandHostName(value: string, host: string, where: ConfigPlace): string {
  return value.replace(/%(.)/g, (_, c: string) => {
    if (c === '%') return '%';
    if (c === 'h') return host;
    throw new FerryError('USAGE', `ssh config ${where.file} line ${where.line}: HostName may use %h and %% only, got %${c}`, { path: where.file });
  });
}

/** Which directives of `config` apply to the host, as ssh works them out. */
export function evaluateSshConfig(config: SshConfig, query: HostQuery): HostConfig {
  const values = new Map<string, ConfigSetting>();
  const lists = new Map<string, ConfigSetting[]>();
  const unevaluated: ConfigSetting[] = [];
  let user = query.user;
  let hostNameSetting: ConfigSetting | undefined;
  let wantFinal = false;
  let finalPass = false;
  let resolvedHost = query.host.toLowerCase();

  const hostForMatch = (): string => {
    if (finalPass) return resolvedHost;
    return hostNameSetting ? expandHostName(hostNameSetting.args[0]!, query.host, hostNameSetting) : query.host;
  };

  const evalMatch = (item: Extract<ConfigItem, { type: 'match' }>): boolean => {
    let result = true;
    for (const c of item.criteria) {
      let r: boolean;
      const list = (c.arg ?? '').split(',');
      switch (c.name) {
        case 'all':
          r = true;
          break;
        case 'final':
          wantFinal = true;
          r = finalPass;
          break;
        case 'canonical':
          r = finalPass;
          break;
        case 'host':
          r = matchPatternList(hostForMatch().toLowerCase(), list, true);
          break;
        case 'originalhost':
          r = matchPatternList(query.host.toLowerCase(), list, true);
          break;
        case 'user':
          r = matchPatternList(user ?? query.localUser, list);
          break;
        case 'localuser':
          r = matchPatternList(query.localUser, list);
          break;
        default: {
          const name = `Match ${c.negated ? '!' : ''}${c.name}`;
          if (!unevaluated.some((u) => u.name === name && u.file === item.file && u.line === item.line)) {
            unevaluated.push({ name, args: c.arg === undefined ? [] : [c.arg], file: item.file, line: item.line, ...(item.system ? { system: true } : {}) });
          }
          // Cannot be evaluated here: the whole block is taken as not matching.
          return false;
        }
      }
      if (r === c.negated) result = false;
    }
    return result;
  };

  const apply = (item: Extract<ConfigItem, { type: 'directive' }>) => {
    const setting: ConfigSetting = { name: item.name, args: item.args, file: item.file, line: item.line, ...(item.system ? { system: true } : {}) };
    if (CUMULATIVE.has(item.keyword)) {
      const list = lists.get(item.keyword) ?? [];
      if (!list.some((s) => s.args[0] === item.args[0])) list.push(setting);
      lists.set(item.keyword, list);
      return;
    }
    if (PROXY.has(item.keyword) && (values.has('proxycommand') || values.has('proxyjump'))) return;
    if (values.has(item.keyword) || (item.keyword === 'hostname' && finalPass)) return;
    if (item.args.length === 0) throw new FerryError('USAGE', `ssh config ${item.file} line ${item.line}: ${item.name} has no value: give one or remove the line`, { path: item.file });
    values.set(item.keyword, setting);
    if (item.keyword === 'hostname') hostNameSetting = setting;
    if (item.keyword === 'user' && user === undefined) user = item.args[0];
  };

  const walk = (items: readonly ConfigItem[], neverMatch: boolean) => {
    let active = !neverMatch;
    for (const item of items) {
      switch (item.type) {
        case 'host':
          active = !neverMatch && matchPatternList(finalPass ? resolvedHost : query.host, item.patterns);
          break;
        case 'match':
          active = !neverMatch && evalMatch(item);
          break;
        case 'include':
          for (const f of item.files) walk(f.items, !active);
          break;
        case 'directive':
          if (active) apply(item);
          break;
      }
    }
  };

  for (const f of config.files) walk(f.items, false);
  if (hostNameSetting) resolvedHost = expandHostName(hostNameSetting.args[0]!, query.host, hostNameSetting).toLowerCase();
  if (wantFinal) {
    // ssh fixes the host name before its final pass: a HostName met there no longer counts.
    finalPass = true;
    for (const f of config.files) walk(f.items, false);
  }
  return { values, lists, unevaluated, hostName: resolvedHost };
}
