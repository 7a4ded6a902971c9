/**
 * @ferry/cli: the `ferry` command as a function, for tests and embedding.
 *
 * ```ts
 * const code = await runCli(['cp', 'big.h5', 'dtn:/in/'], io);
 * ```
 */
export { createCli, runCli, VERSION } from './cli.js';
export type { CliIo } from './cli.js';
export { createRenderer, formatSummary, progressLine } from './render.js';
export type { Output, Renderer } from './render.js';
