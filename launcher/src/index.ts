/**
 * @ferry/launcher: starting agents, locally, over ssh, with srun or mpirun.
 * Depends on @ferry/core only.
 *
 * ```ts
 * const agents = await new SrunLauncher({ nodes: 4, agentsPerNode: 2 }).launch({ count: 8, command: ['ferry', 'agent', '--job', id, '--nats', url], env: {}, secretEnv: { FERRY_NATS_TOKEN: token } });
 * const exits = await agents.exited;
 * ```
 */
export { LocalLauncher } from './local.js';
export type { LocalLauncherOptions } from './local.js';
export { WarmAgents } from './warm.js';
export type { WarmSpec } from './warm.js';
export type { StartOptions, WrapCommand } from './process-group.js';
export { SshLauncher } from './ssh.js';
export type { SshLauncherOptions } from './ssh.js';
export { SrunLauncher } from './srun.js';
export type { SrunLauncherOptions } from './srun.js';
export { MpirunLauncher, detectMpiStyle } from './mpirun.js';
export type { MpirunLauncherOptions, MpiStyle } from './mpirun.js';
export { rankFromEnv } from './rank.js';
export type { RankInfo } from './rank.js';
export { StderrTail, shellQuote } from './process-group.js';
export type { AgentExit, LaunchSpec, LaunchedAgents, Launcher } from './types.js';
