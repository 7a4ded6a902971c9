/**
 * Reused memory for the SSH packets a connection sends.
 *
 * ssh2 gives every outgoing packet a fresh Buffer (about 32 KiB for channel
 * data), encrypts it in place and hands it to the socket. At a few hundred MB/s
 * that is thousands of ArrayBuffers a second; in ferry's processes (a live heap
 * of some 10 MB: NATS, the coordinator, the journal) V8 answered the stream of
 * external memory with a full mark-compact every 25 MB sent, and collecting
 * took a fifth of the sending process's CPU (bench/README.md, "Packets without
 * garbage"). Packets cut from one slab per connection, reused once the socket
 * has taken them, leave nothing to collect.
 *
 * A slot is in use from the moment ssh2 asks for a packet until the socket's
 * write callback: the kernel has the bytes then, or the write failed and the
 * connection is gone. Writes complete in order, so slots are freed from the
 * oldest. When the slab is full (the socket is backed up by more than a
 * slab's worth) a packet gets a fresh buffer as before.
 *
 * Only for the cipher whose packet layout is known here and which encrypts the
 * packet in place and writes that same buffer: aes-gcm with ssh2's native
 * binding (ferry's default cipher). Other ciphers, compression, or an ssh2
 * without these internals keep ssh2's own allocation.
 */
import { randomFillSync } from 'node:crypto';

/** aes-gcm: packets are padded to 16-byte blocks (the 4-byte length not counted) and carry a 16-byte tag. */
const GCM_BLOCK = 16;
const GCM_TAG = 16;
const MIN_PADDING = 4;

/** The size of a whole aes-gcm packet with its tag, for `payloadBytes` of payload. */
export function gcmPacketBytes(payloadBytes: number): number {
  let padding = GCM_BLOCK - ((1 + payloadBytes) % GCM_BLOCK);
  if (padding < MIN_PADDING) padding += GCM_BLOCK;
  return 4 + 1 + payloadBytes + padding + GCM_TAG;
}

/**
 * Random bytes drawn in bulk: one `randomFillSync` per pool instead of one per
 * packet for its 4-19 bytes of padding (that call was 11% of the sending
 * thread's time in a loopback push, twice the encryption's). Every byte handed
 * out is fresh; none is used twice.
 */
export class RandomPool {
  private readonly pool: Buffer;
  private at: number;

  constructor(bytes = 64 * 1024) {
    this.pool = Buffer.allocUnsafe(bytes);
    this.at = bytes;
  }

  /** Fills `target[start, start + n)` with random bytes; `n` must not exceed the pool's size. */
  fill(target: Buffer, start: number, n: number): void {
    if (this.at + n > this.pool.length) {
      randomFillSync(this.pool);
      this.at = 0;
    }
    this.pool.copy(target, start, this.at, this.at + n);
    this.at += n;
  }
}

interface Slot {
  start: number;
  end: number;
  released: boolean;
}

/**
 * A slab handed out in order as slots and taken back in order: a slot is
 * reused only once it and every slot before it have been released.
 */
export class SlotRing {
  readonly slab: Buffer;
  private readonly inUse: Slot[] = [];
  private head = 0;

  constructor(bytes: number) {
    this.slab = Buffer.allocUnsafe(bytes);
  }

  /** Bytes in slots not yet reusable. */
  get busy(): number {
    return this.inUse.reduce((sum, s) => sum + s.end - s.start, 0);
  }

  /** A slot of `n` bytes, or undefined when the free part of the slab has no room for it. */
  take(n: number): { buf: Buffer; slot: Slot } | undefined {
    const size = this.slab.length;
    if (n > size) return undefined;
    let start: number;
    if (this.inUse.length === 0) {
      start = 0;
    } else {
      const oldest = this.inUse[0]!.start;
      if (this.head > oldest) {
        // Free: [head, size) and [0, oldest).
        if (this.head + n <= size) start = this.head;
        else if (n <= oldest) start = 0;
        else return undefined;
      } else {
        // Wrapped: free is [head, oldest).
        if (this.head + n <= oldest) start = this.head;
        else return undefined;
      }
    }
    const slot: Slot = { start, end: start + n, released: false };
    this.inUse.push(slot);
    this.head = slot.end;
    return { buf: this.slab.subarray(start, slot.end), slot };
  }

  release(slot: Slot): void {
    slot.released = true;
    while (this.inUse.length > 0 && this.inUse[0]!.released) this.inUse.shift();
    if (this.inUse.length === 0) this.head = 0;
  }
}

/** What a connection's packets came from (for tests and the benchmark notes). */
export interface PacketRingStats {
  /** Packets cut from the slab. */
  ring: number;
  /** Packets that got a fresh buffer because the slab was full. */
  fresh: number;
}

interface PacketWriterLike {
  constructor?: { name?: string };
  alloc?: unknown;
}

interface Ssh2Internals {
  _protocol?: {
    _kexinit?: unknown;
    _cipher?: { constructor?: { name?: string } };
    _packetRW?: { write?: PacketWriterLike };
  };
  _sock?: { write?: unknown };
}

/** ssh2's writer without compression, whose alloc() returns the very packet that is sent. */
function isPlainWriter(writer: PacketWriterLike | undefined): writer is PacketWriterLike & { alloc: (this: unknown, payloadBytes: number, force?: boolean) => Buffer } {
  return writer !== undefined && writer.constructor?.name === 'PacketWriter' && typeof writer.alloc === 'function';
}

export const DEFAULT_PACKET_RING_BYTES = 4 * 1024 * 1024;

const statsOf = new WeakMap<object, PacketRingStats>();

/** The counters of a client's packet ring, if it has one. */
export function packetRingStats(client: object): PacketRingStats | undefined {
  return statsOf.get(client);
}

/**
 * Makes an ssh2 client that finished its handshake take its outgoing aes-gcm
 * packets from a slab of `bytes`. Returns the counters, or undefined when the
 * client's internals are not the expected ones (nothing is changed then).
 */
export function usePacketRing(client: object, bytes = DEFAULT_PACKET_RING_BYTES): PacketRingStats | undefined {
  const proto = (client as Ssh2Internals)._protocol;
  const sock = (client as Ssh2Internals)._sock;
  const rw = proto?._packetRW;
  if (!proto || !sock || !rw || !isPlainWriter(rw.write) || typeof sock.write !== 'function') return undefined;
  const ring = new SlotRing(bytes);
  const random = new RandomPool();
  const stats: PacketRingStats = { ring: 0, fresh: 0 };
  const sockWrite = sock.write as (this: unknown, data: unknown, ...rest: unknown[]) => boolean;
  /** The slot handed out last and not yet seen by the socket. */
  let unsent: { buf: Buffer; slot: Slot } | undefined;

  const wrap = (writer: PacketWriterLike | undefined): void => {
    if (!isPlainWriter(writer)) return;
    const ownAlloc = writer.alloc;
    writer.alloc = function (this: unknown, payloadBytes: number, force?: boolean): Buffer {
      if (unsent) {
        // ssh2 sends a packet in the same call that allocates it: one not written by now never
        // will be (the cipher was freed, the socket closed), and nothing refers to it.
        ring.release(unsent.slot);
        unsent = undefined;
      }
      if ((proto._kexinit === undefined || force === true) && proto._cipher?.constructor?.name === 'AESGCMCipherBinding') {
        const total = gcmPacketBytes(payloadBytes);
        const taken = ring.take(total);
        if (taken) {
          const packet = taken.buf;
          const padding = total - GCM_TAG - 5 - payloadBytes;
          packet.writeUInt32BE(total - GCM_TAG - 4, 0);
          packet[4] = padding;
          random.fill(packet, 5 + payloadBytes, padding);
          unsent = taken;
          stats.ring++;
          return packet;
        }
        stats.fresh++;
      }
      return ownAlloc.call(this, payloadBytes, force);
    };
  };
  // Every key exchange installs a new writer (kex.js): wrap each one as it is set.
  let writer: PacketWriterLike | undefined = rw.write;
  wrap(writer);
  Object.defineProperty(rw, 'write', {
    configurable: true,
    enumerable: true,
    get: () => writer,
    set: (next: PacketWriterLike) => {
      writer = next;
      wrap(next);
    },
  });

  sock.write = function (this: unknown, data: unknown, ...rest: unknown[]): boolean {
    if (unsent && data === unsent.buf && rest.length === 0) {
      const { slot } = unsent;
      unsent = undefined;
      return sockWrite.call(this, data, () => ring.release(slot));
    }
    return sockWrite.call(this, data, ...rest);
  };
  statsOf.set(client, stats);
  return stats;
}
