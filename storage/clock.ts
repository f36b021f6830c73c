// Microsecond timestamps for log records: wall-clock based, but never going backwards within a
// volume, even if the system clock is stepped back (records stay in time order).

export class MicrosecondClock {
  private lastMicros: number;

  constructor(notBeforeMicros = 0) {
    this.lastMicros = notBeforeMicros;
  }

  /** Wall-clock microseconds since the Unix epoch, at least the previous value returned. */
  now(): number {
    const wallMicros = Math.floor((performance.timeOrigin + performance.now()) * 1000);
    if (wallMicros > this.lastMicros) this.lastMicros = wallMicros;
    return this.lastMicros;
  }

  /** Raise the floor, e.g. to the newest timestamp found in the log at recovery. */
  advanceTo(micros: number): void {
    if (micros > this.lastMicros) this.lastMicros = micros;
  }
}

/** RFC 3339 text with microseconds, UTC, for people and logs. */
export function formatMicros(micros: number): string {
  const millis = Math.floor(micros / 1000);
  const iso = new Date(millis).toISOString(); // 2026-11-25T14:03:07.123Z
  const fraction = String(micros % 1_000_000).padStart(6, '0');
  return `${iso.slice(0, 19)}.${fraction}Z`;
}
