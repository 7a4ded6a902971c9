import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

// What `bin/ferry` runs (scripts/bundle.mjs; the tests' global setup builds it).
const BUNDLE = fileURLToPath(new URL('../dist/bundle/', import.meta.url));

interface Chunk {
  readonly text: string;
  readonly imports: string[];
  readonly dynamic: string[];
}

function readBundle(): Map<string, Chunk> {
  const chunks = new Map<string, Chunk>();
  for (const name of readdirSync(BUNDLE).filter((f) => f.endsWith('.js'))) {
    const text = readFileSync(join(BUNDLE, name), 'utf8');
    const imports = [...text.matchAll(/^(?:import|export)\b[^;]*?from\s*"\.\/([^"]+)"|^import\s*"\.\/([^"]+)"/gms)].map((m) => (m[1] ?? m[2])!);
    const dynamic = [...text.matchAll(/\bimport\("\.\/([^"]+)"\)/g)].map((m) => m[1]!);
    chunks.set(name, { text, imports, dynamic });
  }
  return chunks;
}

/** The chunks that load with `start`: it and everything it imports statically. */
function staticClosure(chunks: Map<string, Chunk>, start: string): Set<string> {
  const seen = new Set<string>();
  const visit = (name: string) => {
    if (seen.has(name)) return;
    seen.add(name);
    for (const dep of chunks.get(name)?.imports ?? []) visit(dep);
  };
  visit(start);
  return seen;
}

/** The chunk holding a module: esbuild marks each module's code with a `// path` line. */
function chunkOf(chunks: Map<string, Chunk>, module: string): string {
  const found = [...chunks].filter(([, c]) => c.text.includes(`\n// ${module}\n`)).map(([name]) => name);
  expect(found, `${module} in the bundle`).toHaveLength(1);
  return found[0]!;
}

const loadsNats = (chunks: Map<string, Chunk>, names: Set<string>) => [...names].some((n) => chunks.get(n)!.text.includes('\n// node_modules/@nats-io/'));

describe('the bundle', () => {
  it('loads no NATS code with the coordinator: a one-agent copy runs without it', () => {
    const chunks = readBundle();
    const coordinator = staticClosure(chunks, chunkOf(chunks, 'packages/coordinator/dist/copy.js'));
    // The in-process agent comes with the coordinator.
    expect(coordinator.has(chunkOf(chunks, 'packages/agent/dist/agent.js'))).toBe(true);
    expect(loadsNats(chunks, coordinator)).toBe(false);
    // NATS is there, behind the dynamic imports of the jobs that use it.
    expect(loadsNats(chunks, staticClosure(chunks, chunkOf(chunks, 'packages/coordinator/dist/nats-job-bus.js')))).toBe(true);
    expect(loadsNats(chunks, staticClosure(chunks, chunkOf(chunks, 'packages/agent/dist/nats-agent-bus.js')))).toBe(true);
  });

  it('loads neither the coordinator nor NATS with the early connection', () => {
    const chunks = readBundle();
    const early = staticClosure(chunks, chunkOf(chunks, 'packages/coordinator/dist/early.js'));
    expect(early.has(chunkOf(chunks, 'packages/coordinator/dist/copy.js'))).toBe(false);
    expect(loadsNats(chunks, early)).toBe(false);
  });
});
