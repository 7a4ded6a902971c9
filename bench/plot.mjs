// Plots of benchmark results: throughput against SSH connections for each tool,
// rendered to SVG with Vega-Lite (no browser, no canvas).
//
//   node bench/plot.mjs bench/results/loopback.json     # writes bench/results/loopback.svg
//
// run.mjs calls plotThroughput() after a scenario; this file also runs alone to
// redraw a plot from a committed .json.
import { readFile, writeFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import * as vega from 'vega';
import { compile } from 'vega-lite';
import { sshDdStreams } from './common.mjs';

/** Connections a configuration uses: agents x streams for ferry, N for ssh-dd:N, 1 for the other peers. */
export function connectionsOf(tool) {
  const dd = sshDdStreams(tool);
  if (dd !== undefined) return dd;
  if (!tool.startsWith('ferry')) return 1;
  const flag = (short, long, fallback) => {
    const m = new RegExp(`(?:^|\\s)(?:${short}|${long})\\s+(\\d+)`).exec(tool);
    return m ? Number(m[1]) : fallback;
  };
  return flag('-a', '--agents', 2) * flag('-s', '--streams', 2);
}

/** The series a configuration belongs to: the peer's name (ssh-dd for every N), or ferry with its transport and mode. */
export function seriesOf(tool) {
  if (tool.startsWith('ssh-dd:')) return 'ssh-dd';
  if (!tool.startsWith('ferry')) return tool;
  const transport = /--transport\s+openssh/.test(tool) ? 'openssh' : 'ssh2';
  const mode = /--mode\s+sftp/.test(tool) ? 'sftp' : 'helper';
  return `ferry ${mode}/${transport}`;
}

/**
 * The Vega-Lite spec: median MB/s (points, min-max as error bars) against connections,
 * one colour per series, one panel per direction. Rows may carry `series` and `connections`.
 */
export function throughputSpec(summary, title) {
  const values = summary
    .filter((s) => Number.isFinite(s.medianMBps))
    // A row may say what its tool did (first-contact reads ferry's own report), else its name tells.
    .map((s) => ({ tool: s.tool, series: s.series ?? seriesOf(s.tool), connections: s.connections ?? connectionsOf(s.tool), direction: s.direction, median: s.medianMBps, min: s.minMBps, max: s.maxMBps }));
  const x = { field: 'connections', type: 'quantitative', title: 'SSH connections (agents x streams)', scale: { type: 'log', base: 2 }, axis: { values: [1, 2, 4, 8, 16] } };
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title,
    data: { values },
    facet: { column: { field: 'direction', type: 'nominal', title: null } },
    spec: {
      width: 360,
      height: 240,
      layer: [
        { mark: { type: 'rule' }, encoding: { x, y: { field: 'min', type: 'quantitative' }, y2: { field: 'max' }, color: { field: 'series', type: 'nominal' } } },
        { mark: { type: 'line', point: true }, encoding: { x, y: { field: 'median', type: 'quantitative', title: 'MB/s (median; bars: min-max)' }, color: { field: 'series', type: 'nominal', title: null }, tooltip: [{ field: 'tool' }, { field: 'median', format: '.0f' }] } },
      ],
    },
  };
}

export async function renderSvg(vlSpec) {
  const view = new vega.View(vega.parse(compile(vlSpec).spec), { renderer: 'none' });
  const svg = await view.toSVG();
  view.finalize();
  return svg;
}

/** Writes `<out>.svg` next to the scenario's .json: throughput against connections. */
export async function plotThroughput(summary, title, svgPath) {
  await writeFile(svgPath, await renderSvg(throughputSpec(summary, title)));
  return svgPath;
}

if (import.meta.url === pathToFileURL(resolve(process.argv[1] ?? '')).href) {
  const file = process.argv[2];
  if (!file) {
    process.stderr.write('usage: node bench/plot.mjs bench/results/<scenario>.json\n');
    process.exit(2);
  }
  const json = JSON.parse(await readFile(file, 'utf8'));
  for (const row of json.summary) row.direction ??= 'push';
  const out = file.replace(/\.json$/, '.svg');
  await plotThroughput(json.summary, `${json.scenario}: ${json.options?.size ? `${(json.options.size / 2 ** 30).toFixed(1)} GiB, ` : ''}${json.date ?? ''}`, out);
  process.stdout.write(`${out}\n`);
}
