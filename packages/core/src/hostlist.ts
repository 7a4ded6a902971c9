/**
 * Slurm hostlist expressions: `dtn[1-4]`, `node[01-16,20]`, `rack[1-2]-n[1-3]`,
 * and comma-separated lists of them (`dtn1,dtn2`). Zero padding of the lower
 * bound is kept (`node[08-10]` -> node08 node09 node10).
 */
import { FerryError } from './errors.js';

const MAX_HOSTS = 65_536;

function expandRanges(body: string, whole: string): string[] {
  const out: string[] = [];
  for (const part of body.split(',')) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!m) throw new FerryError('USAGE', `bad range '${part}' in host list '${whole}': use forms like node[1-4,7] or node[01-16]`);
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    if (hi < lo) throw new FerryError('USAGE', `bad range '${part}' in host list '${whole}': ${hi} is below ${lo}`);
    if (hi - lo + 1 > MAX_HOSTS) throw new FerryError('USAGE', `host list '${whole}' names more than ${MAX_HOSTS} hosts`);
    const width = m[1]!.length > 1 && m[1]!.startsWith('0') ? m[1]!.length : 0;
    for (let i = lo; i <= hi; i++) out.push(String(i).padStart(width, '0'));
  }
  return out;
}

/** Splits on commas that are not inside brackets. */
function splitTop(text: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '[') depth++;
    else if (c === ']') depth--;
    else if (c === ',' && depth === 0) {
      parts.push(text.slice(start, i));
      start = i + 1;
    }
    if (depth < 0) throw new FerryError('USAGE', `unbalanced ']' in host list '${text}'`);
  }
  if (depth !== 0) throw new FerryError('USAGE', `unbalanced '[' in host list '${text}'`);
  parts.push(text.slice(start));
  return parts;
}

function expandOne(expr: string, whole: string): string[] {
  const open = expr.indexOf('[');
  if (open < 0) return [expr];
  const close = expr.indexOf(']', open);
  const prefix = expr.slice(0, open);
  const rest = expandOne(expr.slice(close + 1), whole);
  const out: string[] = [];
  for (const n of expandRanges(expr.slice(open + 1, close), whole)) for (const r of rest) out.push(prefix + n + r);
  return out;
}

/** Expands a hostlist expression into host names, in order, without duplicates. */
export function expandHostlist(text: string): string[] {
  const hosts: string[] = [];
  for (const part of splitTop(text.trim())) {
    if (part.trim() === '') throw new FerryError('USAGE', `empty host name in host list '${text}'`);
    for (const h of expandOne(part.trim(), text)) if (!hosts.includes(h)) hosts.push(h);
    if (hosts.length > MAX_HOSTS) throw new FerryError('USAGE', `host list '${text}' names more than ${MAX_HOSTS} hosts`);
  }
  return hosts;
}
