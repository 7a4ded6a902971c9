import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { VERSION } from '../src/index.js';
import { selfCommand } from '../src/actions.js';
import { NODE_FLAGS } from '../src/node-flags.js';

const BIN = fileURLToPath(new URL('../../../bin/ferry', import.meta.url));

describe("ferry's node flags", () => {
  it('bin/ferry starts node with NODE_FLAGS', async () => {
    const script = await readFile(BIN, 'utf8');
    const exec = script.split('\n').find((line) => line.startsWith('exec node '));
    expect(exec).toBe(`exec node ${NODE_FLAGS.join(' ')} "$here/../packages/cli/dist/bundle/main.js" "$@"`);
  });

  it('this node accepts them: bin/ferry runs', async () => {
    const { stdout } = await promisify(execFile)('sh', [BIN, '--version']);
    expect(stdout.trim()).toContain(VERSION);
  });

  it('agents that ferry starts itself get them too', () => {
    const argv = selfCommand();
    expect(argv[0]).toBe(process.execPath);
    expect(argv.slice(1, 1 + NODE_FLAGS.length)).toEqual([...NODE_FLAGS]);
    expect(argv[argv.length - 1]).toMatch(/main\.js$/);
  });
});
