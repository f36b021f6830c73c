// Instants as people write them: RFC 3339 with up to nanosecond digits (microseconds are kept),
// or Unix microseconds. "2026-11-25T14:03:07.123456Z", "2026-11-25T15:03:07+01:00", "1795615387123456".

import type { InstantSpecification } from '../storage/index.js';
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
