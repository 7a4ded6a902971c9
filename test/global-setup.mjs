// Integration tests run the built `ferry`, bundled as bin/ferry runs it; build
// and bundle it once before they start (about two seconds when up to date). Then serve the run's lanes
// (test/fixtures/lanes.mjs; vitest.config.ts says what they are for).
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { bundle } from '../scripts/bundle.mjs';
import { startLanes } from './fixtures/lanes.mjs';

export default async function setup(project) {
  const root = fileURLToPath(new URL('..', import.meta.url));
  execFileSync(process.execPath, [fileURLToPath(new URL('../node_modules/typescript/bin/tsc', import.meta.url)), '-b'], { cwd: root, stdio: 'inherit' });
  await bundle(root);
  const lanes = await startLanes();
  project.provide('laneSocket', lanes.path);
  return () => lanes.stop();
}
