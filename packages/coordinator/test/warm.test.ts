import { describe, expect, it } from 'vitest';
import { warmHint } from '../src/warm.js';

describe('warmHint', () => {
  const hosts = [
    { host: 'dtn1', port: 22, user: 'u' },
    { host: 'dtn2', port: 2222, user: 'u' },
  ];
  const ssh = { knownHostsFile: '/k', identityFiles: ['/id'], connectTimeoutMs: 20_000 };
  const options = { streams: 3, maxConnectionsPerHost: 0, mode: 'auto' as const, remoteCommand: 'ferry serve', windowBytes: 8 << 20 };

  it('lists the host of every slot of the agent, as the agent will use them', () => {
    const hint = warmHint(1, hosts, ssh, options);
    // Agent 1 owns global slots 3, 4, 5: hosts 1, 0, 1.
    expect(hint.connections.map((c) => c.host.host)).toEqual(['dtn2', 'dtn1', 'dtn2']);
    expect(hint).toMatchObject({ ssh, mode: 'auto', remoteCommand: 'ferry serve', windowBytes: 8 << 20 });
  });

  it('leaves out slots a per-host cap keeps idle, and staggers later waves', () => {
    expect(warmHint(1, hosts, ssh, { ...options, maxConnectionsPerHost: 2 }).connections.map((c) => c.host.host)).toEqual(['dtn2']);
    expect(warmHint(3, hosts, ssh, options).connections.map((c) => c.delayMs)).toEqual([500, 500, 500]);
  });

  it('opens nothing ahead for slots beyond the work item count (they connect only if work reaches them)', () => {
    // 4 work items, 3 streams per agent: agent 0 has slots 0-2, agent 1 only slot 3.
    expect(warmHint(0, hosts, ssh, options, 4).connections).toHaveLength(3);
    expect(warmHint(1, hosts, ssh, options, 4).connections.map((c) => c.host.host)).toEqual(['dtn2']);
    expect(warmHint(2, hosts, ssh, options, 4).connections).toEqual([]);
  });
});
