// Durations as people write them on a command line: 30s, 15m, 24h, 7d, 8w, 6M, 2y (M is 30 days,
// y is 365 days, as in the retention policy's nominal periods; a bare number is seconds), and
// durations written back for people.

const unitSeconds = { s: 1, m: 60, h: 3600, d: 86_400, w: 7 * 86_400, M: 30 * 86_400, y: 365 * 86_400 } as const;
type Unit = keyof typeof unitSeconds;

const unitWords: Record<Unit, [string, string]> = {
  s: ['s', 's'],
  m: ['min', 'min'],
  h: ['h', 'h'],
  d: ['day', 'days'],
  w: ['week', 'weeks'],
  M: ['month', 'months'],
  y: ['year', 'years'],
};

export const durationExamples = '30s, 15m, 24h, 7d, 8w, 6M, 2y (M is 30 days, y 365 days; a bare number is seconds)';

/** Whole seconds; throws Error with the forms accepted. */
export function parseDuration(text: string): number {
  const match = /^(\d+)\s*([smhdwMy]?)$/.exec(text.trim());
  if (match === null) throw new Error(`"${text}" is not a duration (examples: ${durationExamples})`);
  const seconds = Number(match[1]) * unitSeconds[(match[2] || 's') as Unit];
  if (!Number.isSafeInteger(seconds)) throw new Error(`duration "${text}" is too long`);
  return seconds;
}

/**
 * The largest unit the duration is a whole number of, preferring the ones people say: months
 * only from 60 days, weeks only from 14 days and days only from 2 days (24 h stays 24 h, 30 days
 * stays 30 days, 7 days stays 7 days).
 */
function unitOf(seconds: number): Unit {
  const whole = (unit: Unit): boolean => seconds % unitSeconds[unit] === 0;
  if (seconds === 0) return 's';
  if (whole('y')) return 'y';
  if (whole('M') && seconds >= 60 * 86_400) return 'M';
  if (whole('w') && seconds >= 14 * 86_400 && !whole('M')) return 'w';
  if (whole('d') && seconds >= 2 * 86_400) return 'd';
  if (whole('h')) return 'h';
  if (whole('m')) return 'm';
  return 's';
}

/** `24h`, `7d`, `6M`: the form parseDuration reads. */
export function formatDuration(seconds: number): string {
  const unit = unitOf(seconds);
  return `${seconds / unitSeconds[unit]}${unit}`;
}

/** `24 h`, `7 days`, `6 months`: for sentences. */
export function describeDuration(seconds: number): string {
  const unit = unitOf(seconds);
  const count = seconds / unitSeconds[unit];
  return `${count} ${unitWords[unit][count === 1 ? 0 : 1]}`;
}

/** A span of time for people, rounded: `45 s`, `12 min`, `5.3 h`, `3.2 days`. */
export function describeSpan(seconds: number): string {
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 2 * 3600) return `${Math.round(seconds / 60)} min`;
  if (seconds < 2 * 86_400) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86_400).toFixed(1)} days`;
}
