// Instants as people write them: RFC 3339 with up to nanosecond digits (microseconds are kept),
// or Unix microseconds. "2026-11-25T14:03:07.123456Z", "2026-11-25T15:03:07+01:00", "1795615387123456".
// Also the answer to an instant the retention policy no longer keeps, in words and RFC 3339.

import { StorageError, formatMicros, type InstantSpecification } from '../storage/index.js';
import { ApplianceError } from './errors.js';

const rfc3339 = /^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$/;

/** Microseconds since the Unix epoch, or an EINVAL ApplianceError explaining the accepted forms. */
export function parseInstant(text: string | number): number {
  if (typeof text === 'number') {
    if (Number.isSafeInteger(text) && text >= 0) return text;
    throw invalid(String(text));
  }
  const trimmed = text.trim();
  if (/^\d{1,16}$/.test(trimmed)) return Number(trimmed);
  const match = rfc3339.exec(trimmed);
  if (match === null) throw invalid(text);
  const [, date, time, fraction = '', zone] = match;
  const seconds = Date.parse(`${date}T${time}${zone!.toUpperCase()}`);
  if (Number.isNaN(seconds)) throw invalid(text);
  const micros = Number(`${fraction}000000`.slice(0, 6));
  return (seconds / 1000) * 1_000_000 + micros;
}

function invalid(text: string): ApplianceError {
  return new ApplianceError(
    'EINVAL',
    `"${text}" is not an instant: use RFC 3339 with microseconds (2026-11-25T14:03:07.123456Z) or Unix microseconds`,
  );
}

/** The instant a request names with exactly one of at, snapshot or sequence. */
export function instantOf(request: { at?: string | number | undefined; snapshot?: string | undefined; sequence?: number | undefined }): InstantSpecification {
  const chosen = [request.at, request.snapshot, request.sequence].filter((value) => value !== undefined);
  if (chosen.length !== 1) throw new ApplianceError('EINVAL', 'give exactly one of at, snapshot or sequence');
  if (request.snapshot !== undefined) return { snapshot: request.snapshot };
  if (request.sequence !== undefined) return { sequence: request.sequence };
  return { micros: parseInstant(request.at!) };
}

/** A kept instant next to an expired one, as the API gives it. */
export interface KeptInstant {
  sequence: number;
  micros: number;
  time: string;
}

/**
 * An EEXPIRED error of storage, told in words for the instant as it was asked for, with the nearest
 * kept instants' times in RFC 3339 (details.nearest.before/after); any other error unchanged.
 */
export function explainExpired(error: unknown, volume: string, instant: InstantSpecification): unknown {
  if (!(error instanceof StorageError) || error.code !== 'EEXPIRED') return error;
  const nearest = (error.details?.['nearest'] ?? {}) as { before?: { sequence: number; micros: number } | null; after?: { sequence: number; micros: number } | null };
  const kept = (point: { sequence: number; micros: number } | null | undefined): KeptInstant | null =>
    point === null || point === undefined ? null : { sequence: point.sequence, micros: point.micros, time: formatMicros(point.micros) };
  const before = kept(nearest.before);
  const after = kept(nearest.after);
  const named = [before, after].flatMap((point) => (point === null ? [] : [`${point.time} (sequence ${point.sequence})`]));
  const nearestWords = named.length === 2 ? `the nearest kept instants are ${named[0]} and ${named[1]}` : named.length === 1 ? `the nearest kept instant is ${named[0]}` : 'no instant near it is kept';
  return new StorageError('EEXPIRED', `${describeInstant(instant)} of volume ${volume} is no longer kept by its retention policy; ${nearestWords}`, {
    cause: error,
    details: { ...error.details, nearest: { before, after } },
  });
}

function describeInstant(instant: InstantSpecification): string {
  if ('snapshot' in instant) return `snapshot ${instant.snapshot}`;
  if ('sequence' in instant) return `sequence ${instant.sequence}`;
  return formatMicros(instant.micros);
}

/** A snapshot's expiry time (µs; 0: never) from an RFC 3339 time (null: never) or seconds from now; undefined when neither is given. */
export function snapshotExpiryOf(request: { expiresAt?: string | null | undefined; expiresInSeconds?: number | undefined }): number | undefined {
  if (request.expiresAt !== undefined && request.expiresInSeconds !== undefined) throw new ApplianceError('EINVAL', 'give expiresAt or expiresInSeconds, not both');
  if (request.expiresInSeconds !== undefined) return Date.now() * 1000 + request.expiresInSeconds * 1_000_000;
  if (request.expiresAt === null) return 0;
  return request.expiresAt === undefined ? undefined : parseInstant(request.expiresAt);
}
