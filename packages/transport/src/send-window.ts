/**
 * A cap on the data in flight on one SSH channel we send on.
 *
 * OpenSSH's sshd gives each session channel a 2 MiB window and buffers what
 * arrives until the process behind the channel (the helper, sftp-server) reads
 * it. Its buffers compact by moving the unread bytes to the front as they are
 * consumed, so the cost of every packet grows with the backlog: with a full
 * window queued, sshd spends most of its time in memmove. On the 2-core test
 * machine a single stream ran at half the speed it reaches with a small
 * backlog, and 16 streams collapsed to a third (bench/README.md, "The remote
 * sshd's backlog"). Opt-in (--send-window, default 0): the cap also limits a
 * stream to cap / RTT.
 *
 * ssh2 sends while `channel.outgoing.window` (the peer's unused window) is
 * positive and adds each WINDOW_ADJUST to it, so leaving only `capBytes` of the
 * server's window visible keeps at most `capBytes` unread in the server, for
 * good: the part withheld is never used.
 *
 * The cap must stay above the point where the server re-opens its window.
 * OpenSSH sends WINDOW_ADJUST once more than three packets of the window are
 * used and something was consumed (channel_check_window), so anything above
 * three packets flows; other servers may wait until half the window is used,
 * where a small cap would stall the channel for good. The cap is therefore
 * applied only to OpenSSH servers, and only when it is at least four packets.
 */

/** What `limitSendWindow` did to a channel. */
export interface SendWindow {
  /** Bytes of the server's window the channel uses now. */
  capBytes: number;
  /** The server's window that was still unused when the cap was applied (SFTP's INIT has taken a few bytes). */
  serverBytes: number;
}

interface OutgoingSide {
  outgoing?: { window?: unknown; packetSize?: unknown };
}

/** Whether a server's software version string (from its SSH identification line) is OpenSSH. */
export function isOpenSshServer(software: string | undefined): boolean {
  return typeof software === 'string' && /^OpenSSH_\d/.test(software);
}

/** The server's software version from an ssh2 client (`OpenSSH_9.2p1 Debian-2+deb12u3`), when known. */
export function serverSoftware(client: object): string | undefined {
  const v = (client as { _remoteVer?: unknown })._remoteVer;
  return typeof v === 'string' ? v : undefined;
}

/**
 * Caps the window of a freshly opened ssh2 channel (exec or SFTP) at
 * `capBytes`. Returns what was applied, or undefined when the channel keeps the
 * server's whole window: cap 0, a server that is not OpenSSH, a cap under four
 * packets, a window already no larger, or an ssh2 without these fields.
 */
export function limitSendWindow(channel: object, software: string | undefined, capBytes: number): SendWindow | undefined {
  if (!(capBytes > 0) || !isOpenSshServer(software)) return undefined;
  const out = (channel as OutgoingSide).outgoing;
  if (!out || typeof out.window !== 'number' || typeof out.packetSize !== 'number') return undefined;
  const serverBytes = out.window;
  if (capBytes < 4 * out.packetSize || capBytes >= serverBytes) return undefined;
  out.window = capBytes;
  return { capBytes, serverBytes };
}
