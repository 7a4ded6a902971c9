import { describe, expect, it } from 'vitest';
import { RandomPool, SlotRing, gcmPacketBytes, usePacketRing } from '../src/packet-ring.js';

describe('gcmPacketBytes', () => {
  it('pads length byte, payload and padding to whole 16-byte blocks with 4-19 bytes of padding, plus the tag', () => {
    for (let payload = 0; payload < 200; payload++) {
      const total = gcmPacketBytes(payload);
      const padding = total - 16 - 4 - 1 - payload;
      expect(padding).toBeGreaterThanOrEqual(4);
      expect(padding).toBeLessThan(20);
      expect((total - 16 - 4) % 16).toBe(0);
    }
    // A full channel-data packet: 32 KiB of data behind a 9-byte header.
    expect(gcmPacketBytes(32768 + 9)).toBe(4 + 32784 + 16);
  });
});

describe('SlotRing', () => {
  it('hands out slots in order and reuses the slab once they are released', () => {
    const ring = new SlotRing(100);
    const a = ring.take(40)!;
    const b = ring.take(40)!;
    expect(a.buf.byteOffset - ring.slab.byteOffset).toBe(0);
    expect(b.buf.byteOffset - ring.slab.byteOffset).toBe(40);
    expect(a.buf.buffer).toBe(ring.slab.buffer);
    expect(ring.take(40)).toBeUndefined(); // 20 left at the end, 0 at the front
    ring.release(a.slot);
    const c = ring.take(40)!; // wraps to the front
    expect(c.buf.byteOffset - ring.slab.byteOffset).toBe(0);
    expect(ring.busy).toBe(80);
    ring.release(b.slot);
    ring.release(c.slot);
    expect(ring.busy).toBe(0);
    expect(ring.take(100)!.buf.length).toBe(100);
  });

  it('frees nothing until the oldest slot is released, whatever order releases come in', () => {
    const ring = new SlotRing(90);
    const a = ring.take(30)!;
    const b = ring.take(30)!;
    const c = ring.take(30)!;
    ring.release(b.slot);
    ring.release(c.slot);
    expect(ring.busy).toBe(90);
    expect(ring.take(1)).toBeUndefined();
    ring.release(a.slot);
    expect(ring.busy).toBe(0);
  });

  it('never overlaps a slot in use after wrapping', () => {
    const ring = new SlotRing(100);
    const a = ring.take(30)!;
    const b = ring.take(50)!;
    ring.release(a.slot);
    const c = ring.take(25)!; // front: [0, 25) while b holds [30, 80)
    expect(c.buf.byteOffset - ring.slab.byteOffset).toBe(0);
    expect(ring.take(10)).toBeUndefined(); // [25, 30) is too small, [80, 100) is behind the wrap
    expect(ring.take(5)!.buf.byteOffset - ring.slab.byteOffset).toBe(25);
    expect(ring.take(200)).toBeUndefined();
    void b;
  });
});

describe('RandomPool', () => {
  it('hands out each random byte once, refilling when the pool runs out', () => {
    const pool = new RandomPool(64);
    const out = Buffer.alloc(19 * 40);
    for (let i = 0; i < 40; i++) pool.fill(out, 19 * i, 19); // crosses many refills
    const seen = new Set<string>();
    for (let i = 0; i < 40; i++) seen.add(out.subarray(19 * i, 19 * i + 19).toString('hex'));
    expect(seen.size).toBe(40); // no run of padding repeats another
    expect(new Set(out).size).toBeGreaterThan(200); // bytes of all kinds, not a constant fill
  });
});

describe('usePacketRing', () => {
  it('changes nothing on a client without the expected internals', () => {
    const client = { _protocol: { _packetRW: { write: { alloc: () => Buffer.alloc(1) } } }, _sock: { write: () => true } };
    const before = client._protocol._packetRW.write.alloc;
    expect(usePacketRing(client)).toBeUndefined(); // its writer is not ssh2's PacketWriter
    expect(client._protocol._packetRW.write.alloc).toBe(before);
    expect(usePacketRing({})).toBeUndefined();
  });
});
