// `npm run bench`: runs the fio suite against cdp-nbd, qemu-nbd and nbdkit in the same run,
// servers alternating over several rounds, in both prefill modes, and writes the results to
// docs/BENCHMARKS.md (its generated section) and stdout. Method: shared/BENCHMARKING.md.

import { existsSync, mkdirSync, readFileSync, statfsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { commonFioArguments, fioSuite, headlineValue, runFioTest, testFioArguments, type FioTest, type FioTiming } from './fio-suite.js';
import { busyFraction, describeMachine, describeToolVersions, loadAverages, readCpuTimes, readDirtyBytes } from './machine.js';
import { helpText, parseBenchOptions, UsageError, type BenchOptions, type CacheDropMethod, type PrefillMode, type ServerName } from './options.js';
import {
  checkCacheDropMethod,
  ensureRandomDataFile,
  forgetPageCache,
  prefillThroughNbd,
  residentBytes,
  syncFileSystems,
} from './page-cache.js';
import { hasCommand, installCleanupHandlers, interruptingSignal, removeOnExit } from './processes.js';
import { formatDuration, renderReportSection, renderResultTables, writeReportSection } from './report.js';
import type { ModeResult, RunRecord, Sample, ServerModeReport } from './results.js';
import {
  cdpNbdCliPath,
  describeExit,
  describeServer,
  killLeftoverServer,
  prepareFreshStorage,
  removeStorage,
  startServer,
  storageBytes,
  type RunningServer,
  type ServerContext,
  type ServerSpec,
} from './servers.js';

const idleWindowMs = 300;
/** CPU ticks (normally 10 ms each) all servers together may use in an idle window. */
const idleTicksMax = 1;
const idleWaitMsMax = 20_000;
const settleNoteSeconds = 2;
/** Per-test time beyond ramp + runtime (fio start, settling, page-cache work), for the estimate. */
const testOverheadSecondsEstimate = 1.2;
/** Free space wanted at the start beyond the images and the random data: cdp-nbd's write log grows with every write. */
const workSpaceMarginBytes = 20 * 1024 ** 3;
/** Free space always left on the work folder's file system (it is shared with other work). */
const workSpaceReserveBytes = 4 * 1024 ** 3;

function progress(line: string): void {
  process.stderr.write(`${line}\n`);
}

interface BenchContext {
  options: BenchOptions;
  repositoryRoot: string;
  workDirectory: string;
  workFreeBytesAtStart: number;
  randomDataPath: string;
  cacheDropMethod: CacheDropMethod;
  timing: FioTiming;
  specs: ServerSpec[];
  notes: string[];
  /** The most free space one test has consumed so far (cdp-nbd's log grows; peers write in place). */
  largestTestSpaceBytes: number;
}

/** The folder with cdp-nbd's package.json, found upwards from this file (dist/ or source). */
function findRepositoryRoot(): string {
  let directory = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = path.join(directory, 'package.json');
    if (existsSync(candidate) && (JSON.parse(readFileSync(candidate, 'utf8')) as { name?: string }).name === 'cdp-nbd') return directory;
    const parent = path.dirname(directory);
    if (parent === directory) throw new Error('cannot find the cdp-nbd repository root above tools/bench');
    directory = parent;
  }
}

/** How this run was started, as a user would type it. */
function describeCommandLine(repositoryRoot: string): string {
  const quoted = process.argv.slice(2).map((arg) => (/^[\w.,=/:+-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", "'\\''")}'`));
  if (process.env.npm_lifecycle_event === 'bench') return ['npm run bench', ...(quoted.length > 0 ? ['--', ...quoted] : [])].join(' ');
  const script = path.relative(repositoryRoot, process.argv[1] ?? 'dist/tools/bench/run.js');
  const runner = script.endsWith('.ts') ? 'npx tsx' : 'node';
  return [runner, script, ...quoted].join(' ');
}

const packageOfTool: Record<string, string> = {
  fio: 'fio',
  nbdcopy: 'libnbd-bin',
  nbdinfo: 'libnbd-bin',
  'qemu-nbd': 'qemu-utils',
  nbdkit: 'nbdkit',
  fincore: 'util-linux',
  findmnt: 'util-linux',
};

function checkPrerequisites(options: BenchOptions, repositoryRoot: string): void {
  const tools = ['fio', 'nbdcopy', 'nbdinfo', 'fincore', 'findmnt', ...options.servers.filter((name) => name !== 'cdp-nbd')];
  const missing = tools.filter((tool) => !hasCommand(tool));
  if (missing.length > 0) {
    throw new UsageError(`missing tools: ${missing.map((tool) => `${tool} (Debian package ${packageOfTool[tool] ?? tool})`).join(', ')}`);
  }
  if (options.servers.includes('cdp-nbd') && !existsSync(cdpNbdCliPath(repositoryRoot))) {
    throw new UsageError(
      `cdp-nbd is not built (${path.relative(repositoryRoot, cdpNbdCliPath(repositoryRoot))} is missing): ` +
        'run `npm run build`, or benchmark the peers alone with --servers qemu-nbd,nbdkit',
    );
  }
}

function rotate<T>(items: readonly T[], by: number): T[] {
  const shift = by % items.length;
  return [...items.slice(shift), ...items.slice(0, shift)];
}

/** Shows paths inside the repository relative to it, and node as `node`. */
function relativeToRepository(text: string, repositoryRoot: string): string {
  return text.replaceAll(process.execPath, 'node').replaceAll(`${repositoryRoot}/`, '');
}

// ---------------------------------------------------------------- one test on one server

interface Settling {
  settleSeconds: number;
  /** Share of the machine's CPU busy during the last (idle) window: other work, kernel writeback. */
  machineBusyFraction: number;
}

/** Waits until every server has been idle for a window. */
async function waitUntilIdle(servers: RunningServer[]): Promise<Settling> {
  const startedMs = Date.now();
  const serverTicks = () => servers.reduce((sum, server) => sum + (server.cpuTicks() ?? 0), 0);
  let previousTicks = serverTicks();
  let previousCpu = readCpuTimes();
  let machineBusyFraction = 0;
  while (Date.now() - startedMs < idleWaitMsMax) {
    await sleep(idleWindowMs);
    const ticks = serverTicks();
    const cpu = readCpuTimes();
    machineBusyFraction = busyFraction(previousCpu, cpu);
    if (ticks - previousTicks <= idleTicksMax) break;
    previousTicks = ticks;
    previousCpu = cpu;
  }
  return { settleSeconds: (Date.now() - startedMs) / 1000, machineBusyFraction };
}

interface ModeState {
  mode: PrefillMode;
  servers: RunningServer[];
  peakRssBytes: Map<ServerName, number>;
}

function notePeakRss(state: ModeState, server: RunningServer): void {
  const peakRssBytes = server.memoryUse()?.peakRssBytes;
  if (peakRssBytes === undefined || Number.isNaN(peakRssBytes)) return;
  state.peakRssBytes.set(server.spec.name, Math.max(state.peakRssBytes.get(server.spec.name) ?? 0, peakRssBytes));
}

/**
 * Stops the run before the disk fills: the next test may consume as much space as the hungriest
 * test so far, and a reserve stays free. Returns the free bytes now.
 */
function checkSpaceForNextTest(context: BenchContext, server: RunningServer): number {
  const free = freeBytes(context.workDirectory);
  const neededBytes = context.largestTestSpaceBytes + workSpaceReserveBytes;
  if (free < neededBytes) {
    const gibibytes = (bytes: number) => `${(bytes / 1024 ** 3).toFixed(1)} GiB`;
    const cdpSpec = context.specs.find((spec) => spec.name === 'cdp-nbd');
    const logNote = cdpSpec === undefined ? '' : ` (cdp-nbd logs every write; its data folder takes ${gibibytes(storageBytes(cdpSpec))})`;
    throw new Error(
      `stopping before ${server.spec.name}'s next test: ${gibibytes(free)} free in ${context.workDirectory}, and one test has ` +
        `used up to ${gibibytes(context.largestTestSpaceBytes)}${logNote}. Free some space, or use a shorter --runtime or fewer --rounds.`,
    );
  }
  return free;
}

async function measureSample(context: BenchContext, state: ModeState, fioTest: FioTest, server: RunningServer, round: number): Promise<Sample> {
  if (state.mode === 'direct') {
    await forgetPageCache(context.cacheDropMethod, state.servers.map((each) => each.spec.storageDirectory));
  }
  if (!server.isAlive()) {
    throw new Error(`${server.spec.name} died (${describeExit(await server.exited)}); log ${server.logPath}:\n${server.logTail()}`);
  }
  const freeBytesBefore = checkSpaceForNextTest(context, server);
  const imageResidentBytesAtStart = await residentBytes(server.spec.imagePath);
  const loadAverageOneMinuteAtStart = loadAverages()[0];
  const startedAt = new Date().toISOString();
  const outputPath = path.join(context.workDirectory, 'fio', `${state.mode}-r${round}-${fioTest.id}-${server.spec.name}.json`);
  const measurement = await runFioTest(fioTest, server.spec.uri, context.timing, outputPath);
  notePeakRss(state, server);
  const { settleSeconds, machineBusyFraction } = await waitUntilIdle(state.servers);
  const dirtyBytesAfter = readDirtyBytes();
  context.largestTestSpaceBytes = Math.max(context.largestTestSpaceBytes, freeBytesBefore - freeBytes(context.workDirectory));
  if (settleSeconds >= settleNoteSeconds) {
    context.notes.push(`${state.mode} round ${round}: the servers took ${settleSeconds.toFixed(1)} s to go idle after ${fioTest.id} on ${server.spec.name}.`);
  }
  const sample: Sample = {
    mode: state.mode,
    round,
    testId: fioTest.id,
    server: server.spec.name,
    measurement,
    imageResidentBytesAtStart,
    settleSeconds,
    machineBusyFractionAfter: machineBusyFraction,
    dirtyBytesAfter,
    loadAverageOneMinuteAtStart,
    startedAt,
  };
  progress(describeSample(sample, fioTest, context.options.rounds));
  return sample;
}

function describeSample(sample: Sample, fioTest: FioTest, roundCount: number): string {
  const figure = headlineValue(fioTest, sample.measurement).toFixed(0);
  const cached = sample.imageResidentBytesAtStart === undefined ? '?' : `${(sample.imageResidentBytesAtStart / 2 ** 20).toFixed(0)} MiB`;
  const p99 = (sample.measurement.latencyMicrosP99 / 1000).toFixed(2);
  return (
    `  [${sample.mode} ${sample.round}/${roundCount}] ${fioTest.id.padEnd(15)} ${sample.server.padEnd(8)} ` +
    `${figure.padStart(7)} ${fioTest.unit.padEnd(7)} p99 ${p99} ms  (cached ${cached}, load ${sample.loadAverageOneMinuteAtStart.toFixed(2)})`
  );
}

// ---------------------------------------------------------------- one prefill mode

/** Starts every server on a fresh image; each joins `state.servers` as soon as it runs. */
async function startServers(context: BenchContext, state: ModeState): Promise<void> {
  for (const spec of context.specs) {
    prepareFreshStorage(spec, context.options.sizeBytes);
    if (!context.options.keepImages) removeOnExit(spec.storageDirectory);
    const logPath = path.join(context.workDirectory, 'logs', `${spec.name}-${state.mode}.log`);
    state.servers.push(await startServer(spec, context.options.sizeBytes, logPath));
  }
}

async function prefillAll(context: BenchContext, mode: PrefillMode, servers: RunningServer[]): Promise<Map<ServerName, number>> {
  const prefillSeconds = new Map<ServerName, number>();
  for (const server of servers) {
    const seconds = await prefillThroughNbd(context.randomDataPath, server.spec.uri, mode === 'direct');
    prefillSeconds.set(server.spec.name, seconds);
    progress(`  prefilled ${server.spec.name} in ${seconds.toFixed(1)} s`);
  }
  return prefillSeconds;
}

async function runRounds(context: BenchContext, state: ModeState): Promise<Sample[]> {
  const samples: Sample[] = [];
  const tests = fioSuite.filter((fioTest) => context.options.tests.includes(fioTest.id));
  for (let roundIndex = 0; roundIndex < context.options.rounds; roundIndex++) {
    const order = rotate(state.servers, roundIndex);
    for (const fioTest of tests) {
      for (const server of order) samples.push(await measureSample(context, state, fioTest, server, roundIndex + 1));
    }
  }
  return samples;
}

async function stopServers(context: BenchContext, state: ModeState, prefillSeconds: Map<ServerName, number>): Promise<ServerModeReport[]> {
  const reports: ServerModeReport[] = [];
  for (const server of state.servers) {
    notePeakRss(state, server);
    const stop = await server.stop();
    if (!stop.cleanExit) {
      const how = stop.exitedEarly ? 'had already exited' : `did not exit cleanly on SIGTERM (${describeExit(stop)})`;
      context.notes.push(`${state.mode}: ${server.spec.name} ${how}; log ${path.relative(context.repositoryRoot, server.logPath)}.`);
    }
    const peakRssBytes = state.peakRssBytes.get(server.spec.name);
    const storageBytesAtEnd = storageBytes(server.spec);
    reports.push({ server: server.spec.name, prefillSeconds: prefillSeconds.get(server.spec.name) ?? NaN, peakRssBytes, storageBytesAtEnd, stop });
  }
  return reports;
}

/** In buffered mode the image should be cached at every test start; say when it was not. */
function noteColdImages(context: BenchContext, mode: PrefillMode, samples: Sample[]): void {
  if (mode !== 'buffered') return;
  const residentBytesMin = 0.9 * context.options.sizeBytes;
  const cold = samples.filter((sample) => (sample.imageResidentBytesAtStart ?? Infinity) < residentBytesMin);
  if (cold.length === 0) return;
  const which = cold.map((sample) => `${sample.server} ${sample.testId} r${sample.round}`).join(', ');
  context.notes.push(`buffered: ${cold.length} test(s) started with less than 90% of the image in the page cache (${which}).`);
}

async function runPrefillMode(context: BenchContext, mode: PrefillMode): Promise<ModeResult> {
  const startedMs = Date.now();
  progress(`prefill mode "${mode}": starting ${context.specs.map((spec) => spec.name).join(', ')} on fresh images`);
  await syncFileSystems();
  const state: ModeState = { mode, servers: [], peakRssBytes: new Map() };
  let prefillSeconds = new Map<ServerName, number>();
  let samples: Sample[] = [];
  let failure: unknown;
  try {
    await startServers(context, state);
    prefillSeconds = await prefillAll(context, mode, state.servers);
    samples = await runRounds(context, state);
  } catch (error) {
    failure = error;
  }
  noteColdImages(context, mode, samples);
  const reports = await stopServers(context, state, prefillSeconds);
  if (!context.options.keepImages) context.specs.forEach(removeStorage);
  if (failure !== undefined) throw failure;
  return { mode, samples, servers: reports, durationSeconds: (Date.now() - startedMs) / 1000 };
}

// ---------------------------------------------------------------- the run

function freeBytes(directory: string): number {
  const stats = statfsSync(directory);
  return stats.bavail * stats.bsize;
}

function estimateSeconds(options: BenchOptions): number {
  const testCount = options.prefillModes.length * options.rounds * options.tests.length * options.servers.length;
  return testCount * (options.rampSeconds + options.runtimeSeconds + testOverheadSecondsEstimate);
}

async function prepareContext(options: BenchOptions, repositoryRoot: string): Promise<BenchContext> {
  const workDirectory = path.resolve(repositoryRoot, options.workDirectory);
  mkdirSync(path.join(workDirectory, 'fio'), { recursive: true });
  const serverContext: ServerContext = { repositoryRoot, workDirectory, sizeBytes: options.sizeBytes, qemuAioMode: options.qemuAioMode };
  const specs = options.servers.map((name) => describeServer(name, serverContext));
  for (const spec of specs) {
    if (killLeftoverServer(spec, workDirectory)) progress(`killed a ${spec.name} left running by an earlier run`);
  }
  const workFreeBytesAtStart = freeBytes(workDirectory);
  const neededBytes = (options.servers.length + 1) * options.sizeBytes + workSpaceMarginBytes;
  if (workFreeBytesAtStart < neededBytes) {
    throw new Error(`${workDirectory} has ${workFreeBytesAtStart} bytes free; the run needs at least ${neededBytes} (images, random data, cdp-nbd's log)`);
  }
  const randomDataPath = path.join(workDirectory, `random-${options.sizeBytes}.bin`);
  progress(`making ${options.sizeBytes} bytes of random prefill data in ${path.relative(repositoryRoot, randomDataPath)}`);
  ensureRandomDataFile(randomDataPath, options.sizeBytes);
  const cacheDropMethod = options.cacheDropMethod;
  if (options.prefillModes.includes('direct')) await checkCacheDropMethod(cacheDropMethod);
  const timing = { runtimeSeconds: options.runtimeSeconds, rampSeconds: options.rampSeconds };
  return { options, repositoryRoot, workDirectory, workFreeBytesAtStart, randomDataPath, cacheDropMethod, timing, specs, notes: [], largestTestSpaceBytes: 0 };
}

function buildRecord(context: BenchContext, startedAt: Date, loadAverageAtStart: [number, number, number], modes: ModeResult[]): RunRecord {
  const { options, repositoryRoot, workDirectory } = context;
  const serverCommands = Object.fromEntries(
    context.specs.map((spec) => [spec.name, relativeToRepository([spec.command, ...spec.args].join(' '), repositoryRoot)]),
  );
  const fioTestArguments = Object.fromEntries(fioSuite.map((fioTest) => [fioTest.id, testFioArguments(fioTest)]));
  const workRelative = path.relative(repositoryRoot, workDirectory);
  return {
    startedAt: startedAt.toISOString(),
    durationSeconds: (Date.now() - startedAt.getTime()) / 1000,
    command: describeCommandLine(repositoryRoot),
    options,
    workDirectoryShown: workRelative.startsWith('..') ? workDirectory : `${workRelative}/`,
    machine: describeMachine(workDirectory),
    workFreeBytesAtStart: context.workFreeBytesAtStart,
    versions: describeToolVersions(repositoryRoot),
    serverCommands,
    fioCommonArguments: commonFioArguments(context.timing),
    fioTestArguments,
    cacheDropMethod: context.cacheDropMethod,
    loadAverageAtStart,
    loadAverageAtEnd: loadAverages(),
    modes,
    notes: context.notes,
  };
}

function saveRecord(context: BenchContext, record: RunRecord): string {
  const recordPath = path.join(context.workDirectory, `results-${record.startedAt.replaceAll(':', '-').slice(0, 19)}.json`);
  writeFileSync(recordPath, `${JSON.stringify(record, null, 2)}\n`);
  return recordPath;
}

async function main(): Promise<void> {
  const options = parseBenchOptions(process.argv.slice(2));
  if (options.help) {
    process.stdout.write(helpText);
    return;
  }
  const repositoryRoot = findRepositoryRoot();
  checkPrerequisites(options, repositoryRoot);
  installCleanupHandlers(progress);
  const startedAt = new Date();
  const loadAverageAtStart = loadAverages();
  const context = await prepareContext(options, repositoryRoot);
  progress(
    `servers ${options.servers.join(', ')}; prefill modes ${options.prefillModes.join(', ')}; ${options.rounds} round(s); ` +
      `direct mode empties the page cache by: ${context.cacheDropMethod}; about ${formatDuration(estimateSeconds(options))} of tests`,
  );
  const modes: ModeResult[] = [];
  for (const mode of options.prefillModes) modes.push(await runPrefillMode(context, mode));
  const record = buildRecord(context, startedAt, loadAverageAtStart, modes);
  const recordPath = saveRecord(context, record);
  process.stdout.write(`\n${renderResultTables(record, '##')}\n\n`);
  for (const note of record.notes) process.stdout.write(`note: ${note}\n`);
  if (options.reportPath !== undefined) {
    const reportPath = path.resolve(repositoryRoot, options.reportPath);
    writeReportSection(reportPath, renderReportSection(record));
    progress(`wrote ${path.relative(repositoryRoot, reportPath)}`);
  }
  progress(`raw results: ${path.relative(repositoryRoot, recordPath)}; the run took ${formatDuration(record.durationSeconds)}`);
}

main().catch((error: unknown) => {
  if (interruptingSignal() !== undefined) return;
  if (error instanceof UsageError) {
    process.stderr.write(`bench: ${error.message}\n(see --help)\n`);
    process.exitCode = 2;
    return;
  }
  // Programmer mistakes get their stack; failures of the run (a server died, the disk is full) are told plainly.
  const isBug = error instanceof TypeError || error instanceof RangeError || error instanceof ReferenceError;
  const text = error instanceof Error ? (isBug ? (error.stack ?? error.message) : error.message) : String(error);
  process.stderr.write(`bench: ${text}\n`);
  process.exitCode = 1;
});
