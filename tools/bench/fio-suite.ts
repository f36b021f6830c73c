// The fio suite: five single-job tests through fio's nbd engine (one libnbd connection per job,
// no FUA; durable writes measured at QD1 with --fsync=1, shared/BENCHMARKING.md), their exact
// fio options, and the reading of fio's JSON output.

import { readFileSync } from 'node:fs';
import type { TestId } from './options.js';
import { runCommand } from './processes.js';

export type Direction = 'read' | 'write';

export interface FioTest {
  id: TestId;
  title: string;
  rw: 'randwrite' | 'randread' | 'write' | 'read';
  blockSize: '4k' | '1M';
  blockSizeBytes: number;
  iodepth: number;
  /** fio --fsync=N: a FLUSH after every N writes. */
  fsyncEvery: number | undefined;
  direction: Direction;
  /** The headline figure: IOPS, MiB/s, or write+FLUSH pairs per second. */
  unit: 'IOPS' | 'MiB/s' | 'pairs/s';
}

export const fioSuite: readonly FioTest[] = [
  test('randwrite-4k', '4k random write, QD32', 'randwrite', '4k', 32, undefined, 'IOPS'),
  test('randread-4k', '4k random read, QD32', 'randread', '4k', 32, undefined, 'IOPS'),
  test('seqwrite-1m', '1 MiB sequential write, QD8', 'write', '1M', 8, undefined, 'MiB/s'),
  test('seqread-1m', '1 MiB sequential read, QD8', 'read', '1M', 8, undefined, 'MiB/s'),
  test('write-flush-qd1', '4k random write + FLUSH, QD1', 'randwrite', '4k', 1, 1, 'pairs/s'),
];

function test(
  id: TestId,
  title: string,
  rw: FioTest['rw'],
  blockSize: FioTest['blockSize'],
  iodepth: number,
  fsyncEvery: number | undefined,
  unit: FioTest['unit'],
): FioTest {
  const blockSizeBytes = blockSize === '4k' ? 4096 : 1024 * 1024;
  const direction = rw.endsWith('read') ? 'read' : 'write';
  return { id, title, rw, blockSize, blockSizeBytes, iodepth, fsyncEvery, direction, unit };
}

export interface FioTiming {
  runtimeSeconds: number;
  rampSeconds: number;
}

/** Options every test shares, as given to fio (the URI is per server). */
export function commonFioArguments(timing: FioTiming): string[] {
  return [
    '--ioengine=nbd',
    '--numjobs=1',
    '--time_based=1',
    `--runtime=${timing.runtimeSeconds}`,
    `--ramp_time=${timing.rampSeconds}`,
    '--percentile_list=50:99',
    '--output-format=json',
  ];
}

/** Options that make one test what it is. */
export function testFioArguments(fioTest: FioTest): string[] {
  const fsync = fioTest.fsyncEvery === undefined ? [] : [`--fsync=${fioTest.fsyncEvery}`];
  return [`--name=${fioTest.id}`, `--rw=${fioTest.rw}`, `--bs=${fioTest.blockSize}`, `--iodepth=${fioTest.iodepth}`, ...fsync];
}

export function fioArguments(fioTest: FioTest, uri: string, timing: FioTiming, outputPath: string): string[] {
  // fio reads an engine's own options (--uri) only after --ioengine has chosen the engine.
  return [...testFioArguments(fioTest), ...commonFioArguments(timing), `--uri=${uri}`, `--output=${outputPath}`];
}

export interface FioMeasurement {
  iops: number;
  bandwidthBytesPerSecond: number;
  ioCount: number;
  /** Completion latency of the test's reads or writes. */
  latencyMicrosP50: number;
  latencyMicrosP99: number;
  /** For --fsync tests: latency of the FLUSH requests. */
  flushLatencyMicrosP50: number | undefined;
  flushLatencyMicrosP99: number | undefined;
}

/** The test's headline figure, in its unit. */
export function headlineValue(fioTest: FioTest, measurement: FioMeasurement): number {
  return fioTest.unit === 'MiB/s' ? measurement.bandwidthBytesPerSecond / (1024 * 1024) : measurement.iops;
}

export async function runFioTest(fioTest: FioTest, uri: string, timing: FioTiming, outputPath: string): Promise<FioMeasurement> {
  const timeoutMs = (timing.rampSeconds + timing.runtimeSeconds + 120) * 1000;
  const result = await runCommand('fio', fioArguments(fioTest, uri, timing, outputPath), timeoutMs);
  if (result.exitCode !== 0) {
    throw new Error(`fio ${fioTest.id} on ${uri} failed (${result.exitCode ?? result.signal}):\n${result.stderr.trim()}`);
  }
  return parseFioOutput(readFileSync(outputPath, 'utf8'), fioTest);
}

interface FioLatency {
  percentile?: Record<string, number>;
}

interface FioDirectionResult {
  iops: number;
  bw_bytes: number;
  total_ios: number;
  clat_ns: FioLatency;
}

interface FioJob {
  jobname: string;
  error: number;
  read: FioDirectionResult;
  write: FioDirectionResult;
  sync?: { total_ios: number; lat_ns: FioLatency };
}

/** fio's JSON (it may print other lines before it, e.g. "fio: connected to NBD server"). */
export function parseFioOutput(text: string, fioTest: FioTest): FioMeasurement {
  const jsonStart = text.indexOf('{');
  if (jsonStart < 0) throw new Error(`fio ${fioTest.id}: no JSON in its output`);
  const report = JSON.parse(text.slice(jsonStart)) as { jobs?: FioJob[] };
  const job = report.jobs?.[0];
  if (job === undefined || report.jobs!.length !== 1) throw new Error(`fio ${fioTest.id}: expected one job in the output`);
  if (job.error !== 0) throw new Error(`fio ${fioTest.id}: job error ${job.error}`);
  const result = job[fioTest.direction];
  if (result.total_ios <= 0) throw new Error(`fio ${fioTest.id}: no ${fioTest.direction}s completed`);
  const flush = fioTest.fsyncEvery === undefined ? undefined : job.sync?.lat_ns;
  if (fioTest.fsyncEvery !== undefined && (job.sync?.total_ios ?? 0) <= 0) throw new Error(`fio ${fioTest.id}: no FLUSHes were sent`);
  return {
    iops: result.iops,
    bandwidthBytesPerSecond: result.bw_bytes,
    ioCount: result.total_ios,
    latencyMicrosP50: percentileMicros(result.clat_ns, '50.000000'),
    latencyMicrosP99: percentileMicros(result.clat_ns, '99.000000'),
    flushLatencyMicrosP50: flush === undefined ? undefined : percentileMicros(flush, '50.000000'),
    flushLatencyMicrosP99: flush === undefined ? undefined : percentileMicros(flush, '99.000000'),
  };
}

function percentileMicros(latency: FioLatency, key: string): number {
  const nanoseconds = latency.percentile?.[key];
  if (nanoseconds === undefined) throw new Error(`fio output lacks the ${key} percentile`);
  return nanoseconds / 1000;
}
