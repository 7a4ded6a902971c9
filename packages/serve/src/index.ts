/**
 * @ferry/serve: the remote helper. `ferry serve` runs `serve({ input: stdin, output: stdout })`.
 *
 * ```ts
 * await serve({ input: process.stdin, output: new net.Socket({ fd: 1, readable: false }) });
 * ```
 */
export { MAX_GATHERING, MAX_OPEN_WRITES, serve, statOf } from './serve.js';
export { reusedBufferInput } from './input.js';
export { JOIN_TIMEOUT_MS, MAX_HUB_SESSIONS, openHub, privateDirProblem, socketBase } from './hub.js';
export { growPipes, PIPE_BYTES } from './pipes.js';
export type { Hub, HubOptions } from './hub.js';
export type { ServeMemory, ServeOptions } from './serve.js';
export { walkTree } from './walk.js';
export type { WalkError, WalkItem, WalkOptions } from './walk.js';
export { BatchWriter, applyEntries, discardTemp, makeDirectory, placeHardlink, placeSymlink, randomTempName, syncDirectory } from './batch.js';
export { applyPathMeta, groupName, readMeta, runsAsRoot, setModeTimesAt, userName } from './meta.js';
export type { MetaWanted, ModeTimesTarget } from './meta.js';
export { globPaths } from './glob.js';
