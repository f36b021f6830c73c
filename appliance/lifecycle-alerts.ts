// The history lifecycle's events (storage/retention/lifecycle.ts) as alerts: each goes to the
// events websocket as it is, with the time, and to the log, at warn when an administrator should
// act (history at 90% or more of its cap or of the disk, a protected window shorter than required,
// a failed pass) and at info otherwise.

import { formatMicros, type LifecycleEvent, type Volume } from '../storage/index.js';
import type { Logger } from '../server/index.js';
import { nowMicros, type ApplianceEvents } from './events.js';

/** History usage (percent of the cap or of the disk) from which the alert is a warning. */
const usageWarnPercent = 90;

export function watchLifecycle(volume: Volume, events: ApplianceEvents, log: Logger): void {
  volume.history?.lifecycle.onEvent((event) => {
    events.emit({ ...event, micros: nowMicros() });
    const { level, message } = describeLifecycleEvent(event);
    log[level](event, message);
  });
}

export function describeLifecycleEvent(event: LifecycleEvent): { level: 'info' | 'warn'; message: string } {
  switch (event.type) {
    case 'history-usage':
      return {
        level: event.percent >= usageWarnPercent ? 'warn' : 'info',
        message: `history of volume ${event.volume} reached ${event.percent}% of its cap or of the disk; the oldest history goes first past the cap`,
      };
    case 'protection-window-short':
      return { level: 'warn', message: `volume ${event.volume} can be recovered only ${event.windowSeconds} s back, less than the required ${event.requiredSeconds} s` };
    case 'protection-window-restored':
      return { level: 'info', message: `volume ${event.volume} can be recovered ${event.windowSeconds} s back again (required: ${event.requiredSeconds} s)` };
    case 'history-expired':
      return {
        level: 'info',
        message: `history of volume ${event.volume} before ${formatMicros(event.horizonMicros)} expired (${event.reason === 'space' ? 'to make room' : 'by its retention policy'})`,
      };
    case 'lifecycle-failed':
      return { level: 'warn', message: `the history lifecycle of volume ${event.volume} failed: ${event.message}` };
    case 'snapshot-expired':
      return { level: 'info', message: `snapshot ${event.name} of volume ${event.volume} reached its expiry time and was deleted` };
  }
}
