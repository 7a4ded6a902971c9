/**
 * The lifecycle of a single-file job, and of a tree entry, lives in modules
 * named after its stages (issue 31), each function short enough to read at
 * once. Parsed with the TypeScript compiler API: no code is run.
 */
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

/** Lines a function may span, its signature and closing brace included. */
const MAX_FUNCTION_LINES = 80;

const src = (name: string) => fileURLToPath(new URL(`../src/${name}`, import.meta.url));

/** The stages of a single-file job and the modules that hold them (docs/architecture.md has the same table). */
const STAGES: Array<{ stage: string; module: string; main: string }> = [
  { stage: 'prepare', module: 'prepare.ts', main: 'prepareCopy' },
  { stage: 'plan', module: 'file-plan.ts', main: 'planFileJob' },
  { stage: 'publish', module: 'publish.ts', main: 'publishPlan' },
  { stage: 'publish (agents)', module: 'launch.ts', main: 'launchAgents' },
  { stage: 'collect and journal', module: 'collect.ts', main: 'collectCompletions' },
  { stage: 'collect (agent reports, progress)', module: 'collect-reports.ts', main: 'watchAgentReports' },
  { stage: 'finalize', module: 'file-finalize.ts', main: 'finalizeFile' },
];

/**
 * A tree entry's stages and the modules that hold them (docs/architecture.md
 * has the same table); tree-copy.ts's TreeRun wires them. The walk's reading
 * is serve's walk.ts, the cutting into steps core's tree-plan.ts.
 */
const TREE_STAGES: Array<{ stage: string; module: string; main: string }> = [
  { stage: 'prepare', module: 'tree-target.ts', main: 'prepareTreePush' },
  { stage: 'prepare (the job, its journal)', module: 'tree-job.ts', main: 'openTreeJob' },
  { stage: 'walk', module: 'tree-walk.ts', main: 'walkSource' },
  { stage: 'plan', module: 'tree-plan.ts', main: 'TreePlan.publish' },
  { stage: 'publish', module: 'tree-send.ts', main: 'TreeOutbox.send' },
  { stage: 'publish (a pull)', module: 'tree-fetch.ts', main: 'pullTransfer' },
  { stage: 'publish (big files)', module: 'tree-huge.ts', main: 'copyHugeFiles' },
  { stage: 'collect and journal', module: 'tree-collect.ts', main: 'collectBatch' },
  { stage: 'collect and journal (the journal)', module: 'tree-journal.ts', main: 'TreeJournal.append' },
  { stage: 'finalize', module: 'tree-finalize.ts', main: 'finalizeTree' },
];

/**
 * copy.ts (the orchestrator), the modules split out of it, the tree's
 * orchestrator and its stage modules: the ones held to the limit.
 * tree-agents.ts is not yet (AgentBatches.start is the next to cut).
 */
const CHECKED = [
  'copy.ts', 'file-context.ts', 'file-plan.ts', 'file-status.ts', 'publish.ts', 'launch.ts', 'collect.ts', 'collect-reports.ts', 'file-finalize.ts',
  'tree-copy.ts', 'tree-context.ts', 'tree-target.ts', 'tree-job.ts', 'tree-walk.ts', 'tree-plan.ts', 'tree-sync.ts', 'tree-send.ts', 'tree-fetch.ts', 'tree-collect.ts', 'tree-journal.ts', 'tree-huge.ts', 'tree-finalize.ts', 'tree-meta.ts',
];

interface FunctionSpan {
  name: string;
  line: number;
  lines: number;
}

/** A readable name for a function-like node: `f`, `Class.method`, `x` of `const x = () => ...`. */
function nameOf(node: ts.Node, file: ts.SourceFile): string {
  const own = (node as { name?: ts.Node }).name;
  const owner = ts.isClassLike(node.parent) && node.parent.name ? `${node.parent.name.text}.` : '';
  if (own) return owner + own.getText(file);
  if (ts.isConstructorDeclaration(node)) return `${owner}constructor`;
  const parent = node.parent;
  if ((ts.isVariableDeclaration(parent) || ts.isPropertyDeclaration(parent) || ts.isPropertyAssignment(parent)) && parent.name) {
    const holder = ts.isPropertyDeclaration(parent) && ts.isClassLike(parent.parent) && parent.parent.name ? `${parent.parent.name.text}.` : '';
    return holder + parent.name.getText(file);
  }
  return '(anonymous)';
}

/** Every function, method, constructor, accessor and arrow function in `text`, with how many lines it spans. */
function functionSpans(text: string, fileName = 'file.ts'): FunctionSpan[] {
  const file = ts.createSourceFile(fileName, text, ts.ScriptTarget.ES2022, true, ts.ScriptKind.TS);
  const spans: FunctionSpan[] = [];
  const visit = (node: ts.Node) => {
    if (ts.isFunctionLike(node) && (node as ts.FunctionLikeDeclaration).body !== undefined) {
      const first = file.getLineAndCharacterOfPosition(node.getStart(file)).line;
      const last = file.getLineAndCharacterOfPosition(node.getEnd()).line;
      spans.push({ name: nameOf(node, file), line: first + 1, lines: last - first + 1 });
    }
    ts.forEachChild(node, visit);
  };
  visit(file);
  return spans;
}

/** The functions of `text` longer than `limit` lines, as `name (line N): M lines`. */
function tooLong(text: string, limit: number): string[] {
  return functionSpans(text)
    .filter((f) => f.lines > limit)
    .map((f) => `${f.name} (line ${f.line}): ${f.lines} lines`);
}

/** The names `text` exports without declaring them (`export { f } from './x.js'`). */
function reExports(text: string): string[] {
  const file = ts.createSourceFile('file.ts', text, ts.ScriptTarget.ES2022, true, ts.ScriptKind.TS);
  return file.statements.flatMap((s) => (ts.isExportDeclaration(s) && s.exportClause && ts.isNamedExports(s.exportClause) ? s.exportClause.elements.map((e) => e.name.text) : []));
}

/** The function-like node of `text` named `fn` as nameOf names it (`f`, `Class.method`). */
function findFunction(file: ts.SourceFile, fn: string): ts.Node | undefined {
  let found: ts.Node | undefined;
  const visit = (node: ts.Node) => {
    if (found) return;
    if (ts.isFunctionLike(node) && (node as ts.FunctionLikeDeclaration).body !== undefined && nameOf(node, file) === fn) found = node;
    else ts.forEachChild(node, visit);
  };
  visit(file);
  return found;
}

/** The names of the functions a function's body calls (by identifier or method name), in source order. */
function callsIn(text: string, fn: string): string[] {
  const file = ts.createSourceFile('file.ts', text, ts.ScriptTarget.ES2022, true, ts.ScriptKind.TS);
  const decl = findFunction(file, fn);
  const calls: string[] = [];
  const visit = (node: ts.Node) => {
    if (ts.isCallExpression(node) || ts.isNewExpression(node)) {
      const callee = node.expression;
      if (ts.isIdentifier(callee)) calls.push(callee.text);
      else if (ts.isPropertyAccessExpression(callee)) calls.push(callee.name.text);
    }
    ts.forEachChild(node, visit);
  };
  if (decl) visit(decl);
  return calls;
}

/** Checks each stage's module exists and holds (or re-exports) its main function. */
function expectStageModules(stages: ReadonlyArray<{ module: string; main: string }>): void {
  for (const { module, main } of stages) {
    expect(existsSync(src(module)), `${module} is missing`).toBe(true);
    const text = readFileSync(src(module), 'utf8');
    const names = [...functionSpans(text).map((f) => f.name), ...reExports(text)];
    expect(names, `${module} has no ${main}`).toContain(main);
  }
}

/** Checks that `fn` of the module `module` calls each of `stages`, in that order. */
function expectOrder(module: string, fn: string, stages: string[]): void {
  const calls = callsIn(readFileSync(src(module), 'utf8'), fn);
  for (const stage of stages) expect(calls, `${fn} does not call ${stage}`).toContain(stage);
  expect(stages.map((stage) => calls.indexOf(stage)).every((at, i, all) => i === 0 || at > all[i - 1]!), `${fn} calls ${stages.join(', ')} out of order`).toBe(true);
}

describe("a single-file job's stages", () => {
  it('live in modules named after them, each holding its main function', () => {
    expectStageModules(STAGES);
  });

  it(`are functions of at most ${MAX_FUNCTION_LINES} lines, in copy.ts, every module split out of it, tree-copy.ts and the tree's stage modules`, () => {
    const long = CHECKED.flatMap((name) => tooLong(readFileSync(src(name), 'utf8'), MAX_FUNCTION_LINES).map((f) => `${name}: ${f}`));
    expect(long).toEqual([]);
  });

  it('are what runCopy and transfer call, in the order of the lifecycle', () => {
    expectOrder('copy.ts', 'runCopy', ['prepare', 'planFileJob', 'reuseDestination', 'transfer', 'finalizeFile']);
    expectOrder('copy.ts', 'transfer', ['openJobBus', 'recoverCompletions', 'watchAgentReports', 'collectCompletions', 'publishPlan', 'launchAgents', 'stopAgents']);
  });
});

describe("a tree entry's stages", () => {
  it('live in modules named after them, each holding its main function', () => {
    expectStageModules(TREE_STAGES);
  });

  it('are what runTree and TreeRun call, in the order of the lifecycle', () => {
    expectOrder('tree-copy.ts', 'runTree', ['prepareTreePush', 'openTreeJob', 'copyTree', 'treeSummaryOf']);
    expectOrder('tree-copy.ts', 'TreeRun.copy', ['walkAndPlan', 'close', 'copyHugeFiles', 'finalizeTree']);
    expectOrder('tree-copy.ts', 'TreeRun.walkAndPlan', ['plannerFor', 'walkSource', 'admit', 'publish', 'makeDirs']);
    expectOrder('tree-finalize.ts', 'finalizeTree', ['setAttributes', 'makeHardLinks', 'deleteExtraneous', 'finishDirectories']);
  });
});

describe('the function length check', () => {
  const body = (n: number) => Array.from({ length: n - 2 }, (_, i) => `  x += ${i};`).join('\n');

  it('counts a function from its signature to its closing brace', () => {
    const text = `let x = 0;\nexport async function f(): Promise<void> {\n${body(5)}\n}\n`;
    expect(functionSpans(text)).toEqual([{ name: 'f', line: 2, lines: 5 }]);
  });

  it('reports a function, a method and an arrow function one line over the limit, and not one at it', () => {
    const text = [
      'let x = 0;',
      `function atLimit() {\n${body(MAX_FUNCTION_LINES)}\n}`,
      `function over() {\n${body(MAX_FUNCTION_LINES + 1)}\n}`,
      `class Job {\n  run() {\n${body(MAX_FUNCTION_LINES + 1)}\n  }\n  readonly tick = () => {\n${body(MAX_FUNCTION_LINES + 1)}\n  };\n}`,
      `const handle = async () => {\n${body(MAX_FUNCTION_LINES + 1)}\n};`,
    ].join('\n');
    expect(tooLong(text, MAX_FUNCTION_LINES).map((f) => f.replace(/ \(line \d+\)/, ''))).toEqual([
      `over: ${MAX_FUNCTION_LINES + 1} lines`,
      `Job.run: ${MAX_FUNCTION_LINES + 1} lines`,
      `Job.tick: ${MAX_FUNCTION_LINES + 1} lines`,
      `handle: ${MAX_FUNCTION_LINES + 1} lines`,
    ]);
  });
});
