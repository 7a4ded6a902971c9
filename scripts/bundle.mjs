// Bundles the built CLI (packages/*/dist, from `tsc -b`) into a few files
// under packages/cli/dist/bundle/, which bin/ferry runs.
//
// Why: Node 20's ESM loader costs ~3 ms per module, and a `ferry cp` loads
// ~170 of them (ferry's own and its dependencies'), ~40 before the login even
// starts. For a small file that is most of the wall time. Bundled, a command
// loads a handful of files; dynamic imports stay split (the early path of
// cli.ts still loads only what the login needs).
//
// What stays outside: packages with native or wasm parts, or that find files
// next to their own (ssh2, cpu-features, msgpackr, @node-rs/*, @napi-rs/*): they
// are found in node_modules at run time. The files the code finds by path
// stay at the same relative places: main.js (agents started by selfCommand)
// and local-hash-worker.js sit in bundle/, helper.py in ../remote/.
//
// Run after `tsc -b`: `npm run build` does both, and so do scripts/setup.mjs
// and the tests' global setup.
import { copyFileSync, mkdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const EXTERNAL = ['ssh2', 'cpu-features', 'msgpackr', 'msgpackr-extract', '@node-rs/*', '@napi-rs/*'];

/** Bundles the CLI of the checkout at `root`; returns the bundle's main.js. */
export async function bundle(root) {
  const { build } = await import(join(root, 'node_modules', 'esbuild', 'lib', 'main.js'));
  const cliDist = join(root, 'packages', 'cli', 'dist');
  const outdir = join(cliDist, 'bundle');
  rmSync(outdir, { recursive: true, force: true });
  await build({
    absWorkingDir: root,
    entryPoints: {
      main: join(cliDist, 'main.js'),
      'local-hash-worker': join(root, 'packages', 'coordinator', 'dist', 'local-hash-worker.js'),
    },
    outdir,
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: 'node20',
    external: EXTERNAL,
    chunkNames: 'chunk-[hash]',
    // Bundled CommonJS dependencies (commander, the NATS client's) call require().
    banner: { js: "import { createRequire as __ferryRequire } from 'node:module'; const require = __ferryRequire(import.meta.url);" },
    logLevel: 'warning',
  });
  // python-helper.ts reads ../remote/helper.py next to its own (bundled) file.
  mkdirSync(join(cliDist, 'remote'), { recursive: true });
  copyFileSync(join(root, 'packages', 'transport', 'remote', 'helper.py'), join(cliDist, 'remote', 'helper.py'));
  return join(outdir, 'main.js');
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  await bundle(resolve(dirname(fileURLToPath(import.meta.url)), '..'));
}
