/**
 * The bounded fuzz run of the decoders that take bytes from others (the helper's
 * frames, the NATS messages, the journal): scripts/fuzz-lib.mjs makes the inputs
 * and says what must hold; `node scripts/fuzz.mjs --seconds 600` is the long run.
 * The seed is fixed (FERRY_FUZZ_SEED overrides it) and a failure names it and the
 * input, for the script to play again.
 */
import { describe, expect, it } from 'vitest';
import * as core from '@ferry/core';

type RunFuzz = (c: typeof core, o: { seed: number; inputs: number; seconds: number }) => { inputs: number; frames: number; seconds: number };
// A plain ES module of the repository's scripts, shared with scripts/fuzz.mjs.
const { runFuzz } = (await import('../../../scripts/fuzz-lib.mjs' as string)) as { runFuzz: RunFuzz };

const SEED = Number(process.env.FERRY_FUZZ_SEED ?? 20261207);
const INPUTS = 40_000;

describe('decoders under fuzzing', () => {
  it(`take ${INPUTS} made-up and mutated inputs (seed ${SEED}) without a crash, a non-PROTOCOL error or non-plain data`, () => {
    const stats = runFuzz(core, { seed: SEED, inputs: INPUTS, seconds: 25 });
    // The time cap is a safety on a crowded machine; normally every input runs.
    expect(stats.inputs).toBeGreaterThan(INPUTS / 4);
    expect(stats.frames).toBeGreaterThan(0);
  }, 60_000);
});
