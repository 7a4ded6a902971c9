/**
 * @ferry/launcher: starting agents. Depends on @ferry/core only.
 *
 * ```ts
 * const agents = await new LocalLauncher().launch({ count: 4, command: [process.execPath, cli, 'agent', '--job', id], env: { FERRY_NATS_TOKEN: token } });
 * const exits = await agents.exited;
 * ```
 */
export { LocalLauncher } from './local.js';
export type { AgentExit, LaunchSpec, LaunchedAgents, Launcher } from './types.js';
