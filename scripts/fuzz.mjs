#!/usr/bin/env node
// The long fuzz run of the decoders that take bytes from others (scripts/fuzz-lib.mjs says what
// it feeds them and what must hold), against the built packages (npm run build first).
//
//   node scripts/fuzz.mjs [--seconds 600] [--seed N] [--inputs N]
//
// Without --seed a random one is taken and printed; a failure prints the seed and the input
// number, and `--seed S --inputs N+1` plays the run again up to it. Exits 1 on a failure.
import { parseArgs } from 'node:util';
import { runFuzz } from './fuzz-lib.mjs';

const { values } = parseArgs({ options: { seconds: { type: 'string', default: '600' }, seed: { type: 'string' }, inputs: { type: 'string' } } });
const seed = values.seed === undefined ? Math.floor(Math.random() * 2 ** 32) : Number(values.seed);
const seconds = Number(values.seconds);
const inputs = values.inputs === undefined ? Infinity : Number(values.inputs);
if (!Number.isInteger(seed) || seed < 0 || !(seconds > 0) || !(inputs > 0)) {
  console.error('usage: node scripts/fuzz.mjs [--seconds 600] [--seed N] [--inputs N]');
  process.exit(2);
}
const core = await import('../packages/core/dist/index.js');
console.log(`fuzz: seed ${seed}, up to ${seconds} s${inputs === Infinity ? '' : ` or ${inputs} inputs`}`);
try {
  const stats = runFuzz(core, { seed, seconds, inputs, onProgress: (n, s) => console.log(`fuzz: ${n} inputs in ${s.toFixed(0)} s`) });
  console.log(`fuzz: ${stats.inputs} inputs in ${stats.seconds.toFixed(1)} s (${stats.frames} frames and ${stats.messages} messages decoded), no failure (seed ${seed})`);
} catch (err) {
  console.error(err.message);
  process.exit(1);
}
