/**
 * How busy an agent and its node are, for the stream tuner (core's tuner.ts):
 * the share of one core this process used, and how many of the node's cores
 * were idle, since the last sample. An agent that uses little CPU on a node
 * with cores to spare is waiting on its streams, not on its CPU.
 */
import { cpus } from 'node:os';

function idleMs(): number {
  let idle = 0;
  for (const c of cpus()) idle += c.times.idle;
  return idle;
}

export class LoadMeter {
  private at = performance.now();
  private cpu = process.cpuUsage();
  private idle = idleMs();

  sample(): { utilization: number; idleCores: number } {
    const at = performance.now();
    const cpu = process.cpuUsage();
    const idle = idleMs();
    const wallMs = Math.max(1, at - this.at);
    const usedMs = (cpu.user - this.cpu.user + cpu.system - this.cpu.system) / 1000;
    const out = { utilization: Math.min(1, usedMs / wallMs), idleCores: Math.max(0, (idle - this.idle) / wallMs) };
    this.at = at;
    this.cpu = cpu;
    this.idle = idle;
    return out;
  }
}
