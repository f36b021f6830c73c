// `cdp-nbd retention show|set VOLUME`: a volume's retention policy (docs/formats/retention.md) on
// the running appliance, read and changed over the API. `set` changes only what is given (GET,
// change, PUT); the appliance checks the result and answers nonsense with the reason. `show` also
// tells where history stands (the lifecycle's figures). The same options, given to `serve`,
// change the default volume's policy (retentionChangesOf).

import { parseArgs } from 'node:util';
import {
  calendarTierPeriods,
  changeRetentionPolicy,
  defaultRetentionPolicy,
  retentionChangesAreEmpty,
  type RetentionPolicy,
  type RetentionPolicyChanges,
  type TierEvery,
} from '../storage/index.js';
import type { RetentionStatusJson } from '../api/retention-status.js';
import { actionUsage, apiClientOf, apiOptions, apiOptionsUsage } from './api-client.js';
import { describeDuration, describeSpan, durationExamples, formatDuration, parseDuration } from './durations.js';
import { formatBytes, parseSize } from './sizes.js';

/** The policy options of `retention set` and `serve`. */
export const retentionOptions = {
  'keep-all': { type: 'string' },
  hourly: { type: 'string' },
  daily: { type: 'string' },
  weekly: { type: 'string' },
  monthly: { type: 'string' },
  yearly: { type: 'string' },
  'no-tiers': { type: 'boolean', default: false },
  'max-history': { type: 'string' },
  reserve: { type: 'string' },
  'required-window': { type: 'string' },
} as const;

type RetentionOptionValues = { [name in keyof typeof retentionOptions]?: string | boolean | undefined };

const defaults = defaultRetentionPolicy(0);
const defaultKeepOf = (every: TierEvery): string => {
  const tier = defaults.tiers.find((candidate) => candidate.every === every);
  return tier === undefined ? 'none' : formatDuration(tier.keepSeconds);
};

export const retentionOptionsUsage = `  --keep-all DURATION     keep every write, to the microsecond, for this long (default ${formatDuration(defaults.keepAllSeconds)})
  --hourly DURATION       then keep a point at the top of every hour for this long (default ${defaultKeepOf('hourly')})
  --daily DURATION        a point at every midnight for this long (default ${defaultKeepOf('daily')})
  --weekly DURATION       a point every Monday at 00:00 for this long (default ${defaultKeepOf('weekly')})
  --monthly DURATION      a point on the first of every month for this long (default ${defaultKeepOf('monthly')})
  --yearly DURATION       a point every 1 January for this long (default ${defaultKeepOf('yearly')})
                          (a tier option given "none" or 0 drops that tier; times are UTC)
  --no-tiers              drop every tier (the tier options given add theirs back)
  --max-history SIZE      cap on the bytes history takes on disk (default: 80% of the file
                          system's free space when the volume is made)
  --reserve PERCENT%|SIZE free space the file system keeps: 5% or 10G (default ${'percent' in defaults.reserve ? `${defaults.reserve.percent}%` : formatBytes(defaults.reserve.bytes)})
  --required-window DURATION
                          warn when less than this much history can be recovered (default
                          ${formatDuration(defaults.requiredWindowSeconds)}; 0: never)
DURATION is ${durationExamples}.
SIZE is bytes or 512M, 100G, 1T.`;

const retentionUsage = `cdp-nbd retention: a volume's retention policy (talks to a running appliance)

Usage:
  cdp-nbd retention show VOLUME [--json]
  cdp-nbd retention set VOLUME [options] [--json]

set changes only what is given; the rest of the policy stays. Each tier keeps its points for its
duration counted back from now, so a tier lasts longer than --keep-all and than the finer tier
before it. Options of set:
${retentionOptionsUsage}

Both take ${apiOptionsUsage}. show needs a read token, set an admin token.`;

/** The changes the options ask for; throws Error naming the option and what it takes. */
export function retentionChangesOf(values: RetentionOptionValues): RetentionPolicyChanges {
  const given = (option: keyof typeof retentionOptions): string | undefined => values[option] as string | undefined;
  const duration = (option: keyof typeof retentionOptions): number | undefined => parsedOption(option, given(option), parseDuration);
  const tiers = calendarTierPeriods.flatMap((every) => {
    const text = given(every); // each calendar period is the name of its option
    if (text === undefined) return [];
    const keepSeconds = text.trim() === 'none' ? 0 : duration(every)!;
    return [{ every, keepSeconds: keepSeconds === 0 ? null : keepSeconds }];
  });
  const changes: RetentionPolicyChanges = {
    keepAllSeconds: duration('keep-all'),
    clearTiers: values['no-tiers'] === true,
    tiers,
    maxHistoryBytes: parsedOption('max-history', given('max-history'), parseSize),
    reserve: parsedOption('reserve', given('reserve'), parseReserve),
    requiredWindowSeconds: duration('required-window'),
  };
  return Object.fromEntries(Object.entries(changes).filter(([, value]) => value !== undefined)) as RetentionPolicyChanges;
}

function parsedOption<T>(option: string, text: string | undefined, parse: (text: string) => T): T | undefined {
  if (text === undefined) return undefined;
  try {
    return parse(text);
  } catch (error) {
    throw new Error(`--${option}: ${error instanceof Error ? error.message : String(error)}`);
  }
}

function parseReserve(text: string): RetentionPolicy['reserve'] {
  const percent = /^(\d+(?:\.\d+)?)\s*%$/.exec(text.trim());
  return percent === null ? { bytes: parseSize(text) } : { percent: Number(percent[1]) };
}

/** The policy in a few lines for people. */
export function describeRetentionPolicy(policy: RetentionPolicy): string[] {
  const tiers = policy.tiers.map((tier) =>
    typeof tier.every === 'number' ? `a point every ${describeDuration(tier.every)} for ${describeDuration(tier.keepSeconds)}` : `${tier.every} points for ${describeDuration(tier.keepSeconds)}`,
  );
  const continuous = policy.keepAllSeconds > 0 ? `keep every write for ${describeDuration(policy.keepAllSeconds)}` : 'keep no continuous history';
  const kept = tiers.length === 0 ? `${continuous}, nothing older` : `${continuous}, then ${tiers.join(', ')}`;
  const reserve = 'percent' in policy.reserve ? `${policy.reserve.percent}% of the file system` : formatBytes(policy.reserve.bytes);
  const required =
    policy.requiredWindowSeconds > 0 ? `warn when less than ${describeDuration(policy.requiredWindowSeconds)} of history can be recovered` : 'no required window';
  return [`${kept};`, `history capped at ${formatBytes(policy.maxHistoryBytes)}; keep ${reserve} free;`, required];
}

/** Where a volume's history stands, in a few lines for people. */
export function describeRetentionStatus(status: RetentionStatusJson): string[] {
  const { historyBytes: bytes, fileSystem, statistics } = status;
  const tiers = status.tiers.map((tier) => `${typeof tier.every === 'number' ? `points every ${describeDuration(tier.every)}` : `${tier.every} points`} from ${tier.startTime}`);
  return [
    `oldest recoverable instant ${status.oldestRecoverableTime}: a protected window of ${describeSpan(status.protectionWindowSeconds)};`,
    `every write kept from ${status.continuousFromTime}${tiers.length === 0 ? '' : `; ${tiers.join('; ')}`};`,
    `history takes ${formatBytes(bytes.totalBytes)} of its ${formatBytes(status.maxHistoryBytes)} cap (log ${formatBytes(bytes.logBytes)}, packs ${formatBytes(bytes.packBytes)}, base image ${formatBytes(bytes.baseBytes)}, index ${formatBytes(bytes.indexBytes)});`,
    `the file system has ${formatBytes(fileSystem.freeBytes)} free of ${formatBytes(fileSystem.sizeBytes)}, ${formatBytes(fileSystem.reserveBytes)} of it kept in reserve;`,
    `at the current rate (${formatBytes(status.logBytesPerSecond)}/s of log) the policy would keep about ${formatBytes(status.projectedHistoryBytes)};`,
    `reclaimed ${formatBytes(statistics.reclaimedBytes)} so far: ${statistics.packs} packs, ${statistics.merges} merges, ${statistics.folds} folds, ${statistics.segmentsDeleted} log segments deleted; ` +
      `expiry took ${statistics.expirySeconds.toFixed(1)} s, compaction ${statistics.compactionSeconds.toFixed(1)} s; ${statistics.operationFailures} failures`,
    ...(status.underPressure ? ['space pressure: the oldest history is being expired early'] : []),
    ...status.degradedReasons.map((reason) => `degraded: ${reason}`),
  ];
}

export async function runRetention(argv: string[]): Promise<number> {
  const [action, ...rest] = argv;
  if (action !== 'show' && action !== 'set') return actionUsage('retention', action, 'show or set?', retentionUsage);
  const { values, positionals } = parseRetentionArguments(action, rest);
  if (values.help) {
    process.stdout.write(`${retentionUsage}\n`);
    return 0;
  }
  const [volume, ...extra] = positionals;
  if (volume === undefined || extra.length > 0) {
    process.stderr.write(`cdp-nbd retention ${action}: give one VOLUME${extra.length > 0 ? ` (not also ${extra.join(' ')})` : ''}\n\n${retentionUsage}\n`);
    return 2;
  }
  const changes = retentionChangesOf(values);
  if (action === 'set' && retentionChangesAreEmpty(changes)) throw new Error('retention set: nothing to change (cdp-nbd retention --help lists the options)');
  const client = apiClientOf(values);
  const route = `/api/v1/volumes/${encodeURIComponent(volume)}`;
  let retention: { policy: RetentionPolicy } & Partial<RetentionStatusJson>;
  if (action === 'show') {
    retention = (await client.request<{ retention: { policy: RetentionPolicy } & Partial<RetentionStatusJson> }>('GET', route)).retention;
  } else {
    const current = await client.request<RetentionPolicy>('GET', `${route}/retention`);
    retention = { policy: await client.request<RetentionPolicy>('PUT', `${route}/retention`, changeRetentionPolicy(current, changes)) };
  }
  const status = retention.oldestRecoverableTime === undefined ? [] : ['now:', ...describeRetentionStatus(retention as RetentionStatusJson).map((line) => `  ${line}`)];
  const text = [`retention of ${volume}:`, ...describeRetentionPolicy(retention.policy).map((line) => `  ${line}`), ...status].join('\n');
  process.stdout.write(values.json ? `${JSON.stringify(retention, null, 2)}\n` : `${text}\n`);
  return 0;
}

/** Options of `show` (connection only) or `set` (and the policy's); an unknown one is refused by name. */
function parseRetentionArguments(action: 'show' | 'set', args: string[]) {
  try {
    return parseArgs({ args, allowPositionals: true, options: { ...apiOptions, ...(action === 'set' ? retentionOptions : {}) } });
  } catch (error) {
    const unknown = /Unknown option '([^']+)'/.exec(error instanceof Error ? error.message : '');
    if (unknown === null) throw error;
    const hint = action === 'show' && unknown[1]!.replace(/^-+/, '') in retentionOptions ? `; ${unknown[1]} is an option of retention set` : '';
    throw new Error(`retention ${action}: unknown option ${unknown[1]}${hint} (cdp-nbd retention --help lists the options)`);
  }
}
