import { describe, expect, it } from 'vitest';
import { isOpenSshServer, limitSendWindow, serverSoftware } from '../src/send-window.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const OPENSSH = 'OpenSSH_9.2p1 Debian-2+deb12u3';

/** What ssh2 keeps of a channel's sending side. */
function channel(window = 2 * MiB, packetSize = 32 * KiB): { outgoing: { window: number; packetSize: number } } {
  return { outgoing: { window, packetSize } };
}

describe('limitSendWindow', () => {
  it("leaves only the cap of an OpenSSH server's window visible to ssh2", () => {
    const ch = channel();
    expect(limitSendWindow(ch, OPENSSH, 512 * KiB)).toEqual({ capBytes: 512 * KiB, serverBytes: 2 * MiB });
    expect(ch.outgoing.window).toBe(512 * KiB);
  });

  it('accepts exactly four packets, refuses fewer (OpenSSH re-opens the window only after three)', () => {
    const four = channel();
    expect(limitSendWindow(four, OPENSSH, 128 * KiB)?.capBytes).toBe(128 * KiB);
    const less = channel();
    expect(limitSendWindow(less, OPENSSH, 128 * KiB - 1)).toBeUndefined();
    expect(less.outgoing.window).toBe(2 * MiB);
    const bigPackets = channel(2 * MiB, 256 * KiB);
    expect(limitSendWindow(bigPackets, OPENSSH, 512 * KiB)).toBeUndefined();
  });

  it('leaves the window whole for other servers, cap 0, and caps no smaller than the window', () => {
    for (const [software, cap, window] of [
      ['dropbear_2022.83', 512 * KiB, 2 * MiB],
      ['SSH2_Node', 512 * KiB, 2 * MiB],
      [undefined, 512 * KiB, 2 * MiB],
      [OPENSSH, 0, 2 * MiB],
      [OPENSSH, 2 * MiB, 2 * MiB],
      [OPENSSH, 512 * KiB, 256 * KiB],
    ] as const) {
      const ch = channel(window);
      expect(limitSendWindow(ch, software, cap)).toBeUndefined();
      expect(ch.outgoing.window).toBe(window);
    }
  });

  it('does nothing to a channel without the fields it relies on', () => {
    expect(limitSendWindow({}, OPENSSH, 512 * KiB)).toBeUndefined();
    expect(limitSendWindow({ outgoing: { window: '2097152', packetSize: 32768 } }, OPENSSH, 512 * KiB)).toBeUndefined();
  });
});

describe('server software', () => {
  it('recognises OpenSSH by its version string', () => {
    expect(isOpenSshServer(OPENSSH)).toBe(true);
    expect(isOpenSshServer('OpenSSH_for_Windows_8.1')).toBe(false);
    expect(isOpenSshServer('OpenSSH')).toBe(false);
    expect(isOpenSshServer(undefined)).toBe(false);
  });

  it("reads ssh2's record of the server's version", () => {
    expect(serverSoftware({ _remoteVer: OPENSSH })).toBe(OPENSSH);
    expect(serverSoftware({})).toBeUndefined();
  });
});
