/**
 * V8 flags every ferry process starts with: `bin/ferry` passes them to node,
 * and so does `selfCommand()` for the agents ferry starts itself
 * (packages/cli/test/node-flags.test.ts keeps the two in step).
 *
 * `--initial-heap-size=64`: a pull receives every byte through ssh2, and Node
 * gives each socket read a fresh buffer. With ferry's small heap (~9 MB after
 * loading NATS) V8 kept the old generation's limit only ~12 MB above it, less
 * than the young generation may hold, so it started incremental marking over
 * and over: 50-60 mark-compacts per GiB received, 1 with a 64 MB initial heap.
 * A 4 GiB loopback pull (2 streams) moved 1.20x the bytes per second on 0.77x
 * the CPU (bench/README.md, "The pull's garbage collector"). The cost is the
 * garbage held until the rarer collections: none at 2 streams, ~35 MiB of
 * peak RSS in a 16-stream pull (~290 against ~257 MiB, before a pull's pool
 * shrank: see poolBuffers() in @ferry/agent), nothing in pushes.
 * V8 reads the flag only when the heap is set up, so it cannot be set from
 * inside the process, and Node does not accept it in NODE_OPTIONS.
 */
export const NODE_FLAGS: readonly string[] = ['--initial-heap-size=64'];
