// The benchmark's command line: every option, its default, and the --help text. Parsing only;
// nothing here touches the machine.

import { parseArgs } from 'node:util';

export const serverNames = ['cdp-nbd', 'qemu-nbd', 'nbdkit'] as const;
export type ServerName = (typeof serverNames)[number];

export const prefillModes = ['buffered', 'direct'] as const;
export type PrefillMode = (typeof prefillModes)[number];

export const testIds = ['randwrite-4k', 'randread-4k', 'seqwrite-1m', 'seqread-1m', 'write-flush-qd1'] as const;
export type TestId = (typeof testIds)[number];

export const qemuAioModes = ['io_uring', 'threads'] as const;
export type QemuAioMode = (typeof qemuAioModes)[number];

/** How "direct" mode empties the page cache (page-cache.ts). */
export const cacheDropMethods = ['files', 'global'] as const;
export type CacheDropMethod = (typeof cacheDropMethods)[number];

export interface BenchOptions {
  help: boolean;
  servers: ServerName[];
  sizeBytes: number;
  runtimeSeconds: number;
  rampSeconds: number;
  rounds: number;
  prefillModes: PrefillMode[];
  tests: TestId[];
  quick: boolean;
  /** Relative to the repository root unless absolute. */
  workDirectory: string;
  /** Markdown file whose generated section is rewritten; undefined: print only. */
  reportPath: string | undefined;
  qemuAioMode: QemuAioMode;
  keepImages: boolean;
  cacheDropMethod: CacheDropMethod;
}

const defaults = {
  servers: 'cdp-nbd,qemu-nbd,nbdkit',
  size: '1G',
  runtimeSeconds: 8,
  rampSeconds: 2,
  rounds: 3,
  prefill: 'buffered,direct',
  tests: testIds.join(','),
  workDirectory: '.bench',
  reportPath: 'docs/BENCHMARKS.md',
  qemuAio: 'io_uring',
  cacheDrop: 'files',
} as const;

const quickDefaults = { runtimeSeconds: 3, rounds: 1 } as const;

export const helpText = `Usage: npm run bench [-- OPTIONS]
   or: node dist/tools/bench/run.js [OPTIONS]

Runs the same fio suite (fio's nbd engine, one job, one connection) against cdp-nbd, qemu-nbd
and nbdkit file in the same run, servers alternating, each serving its own fresh image on a unix
socket in the work folder; prints the results and rewrites the generated section of the report.

Tests: randwrite-4k (QD32), randread-4k (QD32), seqwrite-1m (QD8), seqread-1m (QD8),
       write-flush-qd1 (4k random write + FLUSH, QD1, fio --fsync=1)

Options:
  --servers LIST      servers to run, comma separated (default ${defaults.servers})
  --size SIZE         image size per server, e.g. 1G, 512M (default ${defaults.size})
  --runtime SECONDS   measured time per test (default ${defaults.runtimeSeconds}; --quick: ${quickDefaults.runtimeSeconds})
  --ramp SECONDS      unmeasured warm-up per test, fio --ramp_time (default ${defaults.rampSeconds})
  --rounds N          rounds; each round runs every test on every server (default ${defaults.rounds}; --quick: ${quickDefaults.rounds})
  --prefill MODES     prefill modes, comma separated: buffered, direct (default ${defaults.prefill};
                      --quick: the first one given)
  --tests LIST        subset of the tests, comma separated (default: all)
  --quick             smoke check: runtime ${quickDefaults.runtimeSeconds} s, ${quickDefaults.rounds} round, one prefill mode,
                      no report file unless --report is given
  --work-dir DIR      work folder for images, sockets, logs and raw fio output
                      (default ${defaults.workDirectory} under the repository root; keep it out of git)
  --report FILE       report to rewrite (default ${defaults.reportPath}, relative to the repository root)
  --no-report         print the tables only
  --qemu-aio MODE     qemu-nbd --aio mode: io_uring or threads (default ${defaults.qemuAio})
  --cache-drop HOW    how "direct" mode empties the page cache before each test: files (sync and
                      posix_fadvise DONTNEED on the servers' files only) or global (sync and
                      /proc/sys/vm/drop_caches, root only, disturbs everything else running)
                      (default ${defaults.cacheDrop})
  --keep-images       keep the images and cdp-nbd data folders in the work folder after the run
  -h, --help          this text

Prefill modes: every image is filled with the same random data through its server over NBD
(nbdcopy). "buffered" then measures with the page cache as the prefill left it (image cached,
partly dirty); "direct" ends the copy with a FLUSH, and before every test writes back and drops the servers'
files from the page cache, so each test starts from a cold, clean image, as after an O_DIRECT
prefill.
`;

export class UsageError extends Error {
  override name = 'UsageError';
}

export function parseBenchOptions(argv: string[]): BenchOptions {
  try {
    return interpretOptions(argv);
  } catch (error) {
    // parseArgs reports unknown options and missing values as TypeErrors with ERR_PARSE_ARGS_* codes.
    if (error instanceof TypeError && String((error as { code?: unknown }).code).startsWith('ERR_PARSE_ARGS')) {
      throw new UsageError(error.message);
    }
    throw error;
  }
}

function interpretOptions(argv: string[]): BenchOptions {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      help: { type: 'boolean', short: 'h', default: false },
      servers: { type: 'string' },
      size: { type: 'string' },
      runtime: { type: 'string' },
      ramp: { type: 'string' },
      rounds: { type: 'string' },
      prefill: { type: 'string' },
      tests: { type: 'string' },
      quick: { type: 'boolean', default: false },
      'work-dir': { type: 'string' },
      report: { type: 'string' },
      'no-report': { type: 'boolean', default: false },
      'qemu-aio': { type: 'string' },
      'keep-images': { type: 'boolean', default: false },
      'cache-drop': { type: 'string' },
    },
  });
  const quick = values.quick === true;
  const prefillModesGiven = parseList(values.prefill ?? defaults.prefill, prefillModes, '--prefill');
  const reportPath = chooseReportPath(values.report, values['no-report'] === true, quick);
  return {
    help: values.help === true,
    servers: parseList(values.servers ?? defaults.servers, serverNames, '--servers'),
    sizeBytes: parseSizeBytes(values.size ?? defaults.size),
    runtimeSeconds: parsePositiveInteger(values.runtime, quick ? quickDefaults.runtimeSeconds : defaults.runtimeSeconds, '--runtime'),
    rampSeconds: parseNonNegativeInteger(values.ramp, defaults.rampSeconds, '--ramp'),
    rounds: parsePositiveInteger(values.rounds, quick ? quickDefaults.rounds : defaults.rounds, '--rounds'),
    prefillModes: quick ? prefillModesGiven.slice(0, 1) : prefillModesGiven,
    tests: parseList(values.tests ?? defaults.tests, testIds, '--tests'),
    quick,
    workDirectory: values['work-dir'] ?? defaults.workDirectory,
    reportPath,
    qemuAioMode: parseList(values['qemu-aio'] ?? defaults.qemuAio, qemuAioModes, '--qemu-aio')[0]!,
    keepImages: values['keep-images'] === true,
    cacheDropMethod: parseList(values['cache-drop'] ?? defaults.cacheDrop, cacheDropMethods, '--cache-drop')[0]!,
  };
}

function chooseReportPath(given: string | undefined, noReport: boolean, quick: boolean): string | undefined {
  if (noReport) return undefined;
  if (given !== undefined) return given;
  return quick ? undefined : defaults.reportPath;
}

/** Comma-separated names, each one of `allowed`, no duplicates, at least one; order kept. */
function parseList<T extends string>(text: string, allowed: readonly T[], optionName: string): T[] {
  const items = text
    .split(',')
    .map((item) => item.trim())
    .filter((item) => item !== '');
  if (items.length === 0) throw new UsageError(`${optionName}: give at least one of ${allowed.join(', ')}`);
  for (const item of items) {
    if (!(allowed as readonly string[]).includes(item)) {
      throw new UsageError(`${optionName}: unknown "${item}"; choose from ${allowed.join(', ')}`);
    }
  }
  if (new Set(items).size !== items.length) throw new UsageError(`${optionName}: "${text}" names something twice`);
  return items as T[];
}

const sizeUnitBytes: Record<string, number> = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };

/** "1G", "1GiB", "512M", "1073741824": binary units; a multiple of 1 MiB. */
export function parseSizeBytes(text: string): number {
  const match = /^(\d+)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (match === null) throw new UsageError(`--size: cannot read "${text}" (try 1G or 512M)`);
  const sizeBytes = Number(match[1]) * sizeUnitBytes[match[2]!.toUpperCase()]!;
  if (sizeBytes < 64 * 1024 ** 2 || sizeBytes % 1024 ** 2 !== 0) {
    throw new UsageError(`--size: ${text} must be a multiple of 1 MiB and at least 64 MiB`);
  }
  return sizeBytes;
}

function parsePositiveInteger(text: string | undefined, fallback: number, optionName: string): number {
  const value = parseNonNegativeInteger(text, fallback, optionName);
  if (value === 0) throw new UsageError(`${optionName}: must be at least 1`);
  return value;
}

function parseNonNegativeInteger(text: string | undefined, fallback: number, optionName: string): number {
  if (text === undefined) return fallback;
  if (!/^\d+$/.test(text.trim())) throw new UsageError(`${optionName}: "${text}" is not a whole number`);
  return Number(text);
}
