// A volume's retention policy (docs/formats/retention.md): how long every write is kept, which
// coarser points in time are kept after that (tiers, in the style of sanoid's hourly, daily and
// monthly snapshots), how many bytes history may take, and how much free space the file system
// keeps. Pure: what is retained at a given moment is computed here; nothing here does I/O.

export const retentionFormatVersion = 1;

/** The calendar periods a tier may have (UTC), finest first. */
export const calendarTierPeriods = ['hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const;

/** A tier's period: a calendar unit (UTC), or a fixed number of seconds aligned to the epoch. */
export type TierEvery = (typeof calendarTierPeriods)[number] | number;

export interface RetentionTier {
  /** One point is kept at every boundary of this period ... */
  every: TierEvery;
  /** ... for this long, counted back from now. */
  keepSeconds: number;
}

export interface RetentionPolicy {
  /** Every write is kept, to the microsecond, for this long (counted back from now). */
  keepAllSeconds: number;
  /** Coarser points kept after that, finest period first. */
  tiers: RetentionTier[];
  /** Cap on the bytes the volume's history takes on disk (log, packs, base image, index). */
  maxHistoryBytes: number;
  /** Free space the file system always keeps: a share of its size, or a number of bytes. */
  reserve: { percent: number } | { bytes: number };
  /** An alert (and /health degraded) when expiry makes the protected window shorter than this; 0: none. */
  requiredWindowSeconds: number;
}

export const retentionLimits = {
  /** Longest duration anywhere in a policy: 100 years. */
  durationSecondsMax: 100 * 365 * 86_400,
  /** Most tiers in a policy. */
  tierCountMax: 8,
  /** Shortest fixed tier period. */
  tierPeriodSecondsMin: 1,
  /** Most points all tiers together can keep (keepSeconds / period, summed): bounds the coarse index. */
  tierPointCountMax: 4096,
  /** Largest reserve share of the file system. */
  reservePercentMax: 50,
  /** Smallest history cap. */
  maxHistoryBytesMin: 64 * 1024 * 1024,
} as const;

const hourSeconds = 3600;
const daySeconds = 86_400;

/** Nominal length of a period in seconds (months as 30 days, years as 365: for ordering and counts only). */
export function nominalPeriodSeconds(every: TierEvery): number {
  if (typeof every === 'number') return every;
  return { hourly: hourSeconds, daily: daySeconds, weekly: 7 * daySeconds, monthly: 30 * daySeconds, yearly: 365 * daySeconds }[every];
}

/** The policy a new volume gets: every write for 24 h, hourly points for 7 days, daily for 30. */
export function defaultRetentionPolicy(fileSystemFreeBytes: number): RetentionPolicy {
  return {
    keepAllSeconds: daySeconds,
    tiers: [
      { every: 'hourly', keepSeconds: 7 * daySeconds },
      { every: 'daily', keepSeconds: 30 * daySeconds },
    ],
    maxHistoryBytes: Math.max(retentionLimits.maxHistoryBytesMin, Math.floor(fileSystemFreeBytes * 0.8)),
    reserve: { percent: 5 },
    requiredWindowSeconds: daySeconds,
  };
}

/** Why a policy is nonsense, in words for people; null when it is sound. */
export function validateRetentionPolicy(policy: RetentionPolicy): string | null {
  const durationProblem = (name: string, seconds: number, allowZero: boolean): string | null => {
    if (!Number.isSafeInteger(seconds) || seconds < 0) return `${name} must be a whole, non-negative number of seconds`;
    if (!allowZero && seconds === 0) return `${name} must be longer than 0`;
    if (seconds > retentionLimits.durationSecondsMax) return `${name} must be at most 100 years`;
    return null;
  };
  const keepAllProblem = durationProblem('keepAllSeconds', policy.keepAllSeconds, true);
  if (keepAllProblem !== null) return keepAllProblem;
  if (policy.tiers.length > retentionLimits.tierCountMax) return `a policy has at most ${retentionLimits.tierCountMax} tiers`;
  let previous: RetentionTier | null = null;
  let pointCount = 0;
  for (const [position, tier] of policy.tiers.entries()) {
    const name = `tier ${position + 1} (${describeEvery(tier.every)})`;
    if (typeof tier.every === 'number' && (!Number.isSafeInteger(tier.every) || tier.every < retentionLimits.tierPeriodSecondsMin || tier.every > 366 * daySeconds)) {
      return `${name}: a fixed period is a whole number of seconds from 1 to 366 days`;
    }
    const keepProblem = durationProblem(`${name} keepSeconds`, tier.keepSeconds, false);
    if (keepProblem !== null) return keepProblem;
    const periodSeconds = nominalPeriodSeconds(tier.every);
    if (tier.keepSeconds < periodSeconds) return `${name}: kept for ${tier.keepSeconds} s, shorter than its own period`;
    if (tier.keepSeconds <= policy.keepAllSeconds) return `${name}: kept for ${tier.keepSeconds} s, not longer than keepAllSeconds (${policy.keepAllSeconds} s), so it keeps nothing`;
    if (previous !== null) {
      if (periodSeconds <= nominalPeriodSeconds(previous.every)) return `${name}: tiers go from finer to coarser periods`;
      if (tier.keepSeconds <= previous.keepSeconds) return `${name}: kept for ${tier.keepSeconds} s, not longer than the finer tier before it (${previous.keepSeconds} s)`;
    }
    pointCount += Math.ceil(tier.keepSeconds / periodSeconds);
    previous = tier;
  }
  if (pointCount > retentionLimits.tierPointCountMax) return `the tiers keep ${pointCount} points; at most ${retentionLimits.tierPointCountMax}`;
  if (!Number.isSafeInteger(policy.maxHistoryBytes) || policy.maxHistoryBytes < retentionLimits.maxHistoryBytesMin) {
    return `maxHistoryBytes must be a whole number of at least ${retentionLimits.maxHistoryBytesMin} bytes`;
  }
  if ('percent' in policy.reserve) {
    const { percent } = policy.reserve;
    if (!Number.isFinite(percent) || percent < 0 || percent > retentionLimits.reservePercentMax) return `the reserve is 0 to ${retentionLimits.reservePercentMax}% of the file system`;
  } else if (!Number.isSafeInteger(policy.reserve.bytes) || policy.reserve.bytes < 0) {
    return 'the reserve is a whole, non-negative number of bytes';
  }
  const requiredProblem = durationProblem('requiredWindowSeconds', policy.requiredWindowSeconds, true);
  if (requiredProblem !== null) return requiredProblem;
  if (policy.requiredWindowSeconds > retainedSecondsMax(policy)) {
    return `requiredWindowSeconds (${policy.requiredWindowSeconds} s) is longer than the policy keeps anything (${retainedSecondsMax(policy)} s)`;
  }
  return null;
}

/** How far back the policy keeps anything at all. */
export function retainedSecondsMax(policy: RetentionPolicy): number {
  return Math.max(policy.keepAllSeconds, ...policy.tiers.map((tier) => tier.keepSeconds));
}

export function describeEvery(every: TierEvery): string {
  return typeof every === 'number' ? `every ${every} s` : every;
}

/** Reserve in bytes on a file system of the given size. */
export function reserveBytes(policy: RetentionPolicy, fileSystemSizeBytes: number): number {
  return 'percent' in policy.reserve ? Math.ceil((fileSystemSizeBytes * policy.reserve.percent) / 100) : policy.reserve.bytes;
}

// ---- what is retained at a moment ----

/** A point a tier keeps: the volume as it was at `micros` (a boundary of the tier's period). */
export interface TierPoint {
  micros: number;
  /** Index of the coarsest tier this point is a boundary of (its grade: coarser points merge later). */
  tier: number;
}

export interface RetainedTimes {
  /** Every instant from here to now is kept. */
  continuousFromMicros: number;
  /** Tier points older than continuousFromMicros, oldest first, each once. */
  points: TierPoint[];
  /** Where each tier's points begin (oldest point it may keep), finest tier first. */
  tierStartsMicros: number[];
}

/** What the policy keeps at `nowMicros` (before snapshots, holds and space pressure are applied). */
export function retainedTimes(policy: RetentionPolicy, nowMicros: number): RetainedTimes {
  const continuousFromMicros = nowMicros - policy.keepAllSeconds * 1_000_000;
  const byMicros = new Map<number, number>();
  const tierStartsMicros: number[] = [];
  policy.tiers.forEach((tier, tierIndex) => {
    const fromMicros = nowMicros - tier.keepSeconds * 1_000_000;
    tierStartsMicros.push(fromMicros);
    for (const micros of boundariesBetween(tier.every, fromMicros, continuousFromMicros)) {
      byMicros.set(micros, Math.max(byMicros.get(micros) ?? 0, tierIndex));
    }
  });
  const points = [...byMicros.entries()].map(([micros, tier]) => ({ micros, tier })).sort((left, right) => left.micros - right.micros);
  return { continuousFromMicros, points, tierStartsMicros };
}

/** Boundaries of the period in [fromMicros, toMicros), oldest first. */
export function boundariesBetween(every: TierEvery, fromMicros: number, toMicros: number): number[] {
  const boundaries: number[] = [];
  for (let micros = boundaryAtOrAfter(every, fromMicros); micros < toMicros; micros = boundaryAfter(every, micros)) boundaries.push(micros);
  return boundaries;
}

/** The first boundary of the period at or after `micros`. */
export function boundaryAtOrAfter(every: TierEvery, micros: number): number {
  const before = boundaryAtOrBefore(every, micros);
  return before === micros ? before : boundaryAfter(every, before);
}

/** The last boundary of the period at or before `micros`. */
export function boundaryAtOrBefore(every: TierEvery, micros: number): number {
  if (typeof every === 'number' || every === 'hourly' || every === 'daily' || every === 'weekly') {
    const { periodMicros, offsetMicros } = fixedPeriod(every);
    return Math.floor((micros - offsetMicros) / periodMicros) * periodMicros + offsetMicros;
  }
  const date = new Date(Math.floor(micros / 1000));
  const start = every === 'monthly' ? Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), 1) : Date.UTC(date.getUTCFullYear(), 0, 1);
  return start * 1000;
}

/** The boundary after the boundary `micros`. */
export function boundaryAfter(every: TierEvery, micros: number): number {
  if (typeof every === 'number' || every === 'hourly' || every === 'daily' || every === 'weekly') return micros + fixedPeriod(every).periodMicros;
  const date = new Date(Math.floor(micros / 1000));
  const next = every === 'monthly' ? Date.UTC(date.getUTCFullYear(), date.getUTCMonth() + 1, 1) : Date.UTC(date.getUTCFullYear() + 1, 0, 1);
  return next * 1000;
}

/** Fixed periods are aligned to the epoch; weeks start on Monday (the epoch was a Thursday). */
function fixedPeriod(every: number | 'hourly' | 'daily' | 'weekly'): { periodMicros: number; offsetMicros: number } {
  if (typeof every === 'number') return { periodMicros: every * 1_000_000, offsetMicros: 0 };
  if (every === 'weekly') return { periodMicros: 7 * daySeconds * 1_000_000, offsetMicros: 4 * daySeconds * 1_000_000 };
  return { periodMicros: (every === 'hourly' ? hourSeconds : daySeconds) * 1_000_000, offsetMicros: 0 };
}

/**
 * The finest tier period, for cutting level-0 windows at its boundaries, so that every tier point
 * is the end of a window. Null without tiers.
 */
export function finestTierEvery(policy: RetentionPolicy): TierEvery | null {
  return policy.tiers[0]?.every ?? null;
}
