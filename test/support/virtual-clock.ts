// A wall clock a test can move forward: Date.now and performance.now (which record timestamps,
// the retention engine and the index's cuts read) run at the real pace plus an offset the test
// advances, so seconds of retention policy pass in a few milliseconds. Timers are not affected.

export interface VirtualClock {
  /** Move the clock forward by this many milliseconds. */
  advanceMs(ms: number): void;
  /** Microseconds since the epoch, as record timestamps count them (storage/clock.ts). */
  nowMicros(): number;
  restore(): void;
}

export function installVirtualClock(): VirtualClock {
  const realDateNow = Date.now;
  const realPerformanceNow = performance.now.bind(performance);
  let offsetMs = 0;
  Date.now = () => realDateNow() + Math.floor(offsetMs);
  performance.now = () => realPerformanceNow() + offsetMs;
  return {
    advanceMs(ms: number): void {
      if (!(ms >= 0)) throw new TypeError('the virtual clock only moves forward');
      offsetMs += ms;
    },
    nowMicros: () => Math.floor((performance.timeOrigin + performance.now()) * 1000),
    restore(): void {
      Date.now = realDateNow;
      performance.now = realPerformanceNow;
    },
  };
}
