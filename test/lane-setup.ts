/**
 * Runs before each test file (setupFiles in vitest.config.ts): waits for the
 * file's lane, so that no two files of one lane run at once, and gives it back
 * after the file's last afterAll (hooks registered here run after the file's own).
 */
import { connect } from 'node:net';
import { afterAll, inject } from 'vitest';

declare module 'vitest' {
  export interface ProvidedContext {
    /** The lane server's socket (test/fixtures/lanes.mjs, started by test/global-setup.mjs). */
    laneSocket: string;
    /** The lane of this file's project. */
    lane: string;
  }
}

const lane = inject('lane');
const socket = connect(inject('laneSocket'));
await new Promise<void>((resolve, reject) => {
  socket.once('error', reject);
  socket.once('close', () => reject(new Error(`the lane server closed before it gave this file the ${lane} lane`)));
  socket.once('data', () => resolve());
  socket.write(`${lane}\n`);
});
afterAll(() => {
  socket.destroy();
});
