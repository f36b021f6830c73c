// What happens in the appliance, for the events websocket and the console: a typed bus. The
// history lifecycle's alerts (storage/retention/lifecycle.ts) join it as they are, with the time.

import { EventEmitter } from 'node:events';
import type { LifecycleEvent, RetentionPolicy } from '../storage/index.js';

export type ApplianceEvent =
  | { type: 'write-rate'; volume: string; writesPerSecond: number; bytesPerSecond: number; micros: number }
  | { type: 'snapshot-created'; volume: string; name: string; sequence: number; micros: number; note: string; pinned: boolean; expiresMicros: number | null }
  | { type: 'snapshot-updated'; volume: string; name: string; pinned: boolean; expiresMicros: number | null; micros: number }
  | { type: 'snapshot-deleted'; volume: string; name: string; micros: number }
  | { type: 'volume-created'; volume: string; sizeBytes: number; micros: number }
  | { type: 'volume-deleted'; volume: string; micros: number }
  /** A volume failed to open (at start or when created): it is not exported, the others serve. */
  | { type: 'volume-failed'; volume: string; error: string; micros: number }
  | { type: 'retention-changed'; volume: string; policy: RetentionPolicy; micros: number }
  | { type: 'export-created'; name: string; volume: string; sequence: number | null; writable: boolean; micros: number }
  | { type: 'export-deleted'; name: string; micros: number }
  | { type: 'client-connected'; export: string; connection: number; remote: string; micros: number }
  | { type: 'client-disconnected'; export: string; connection: number; remote: string; micros: number }
  /** An export's allowlist turned a client away (server/access.ts). */
  | { type: 'access-refused'; export: string; connection: number; remote: string; certificate: string | null; reason: string; micros: number }
  | { type: 'job-started'; id: string; kind: string; volume: string; micros: number }
  | {
      type: 'job-progress';
      id: string;
      kind: string;
      volume: string;
      phase: string;
      doneBytes: number;
      totalBytes: number;
      rateBytesPerSecond: number;
      etaSeconds: number | null;
      micros: number;
    }
  | { type: 'job-finished'; id: string; kind: string; volume: string; state: string; error: string | null; micros: number }
  /** history-usage, protection-window-short/-restored, history-expired, lifecycle-failed, snapshot-expired. */
  | (LifecycleEvent & { micros: number });

export class ApplianceEvents {
  private readonly emitter = new EventEmitter();

  constructor() {
    this.emitter.setMaxListeners(1000); // one per websocket client; the server bounds its connections
  }

  emit(event: ApplianceEvent): void {
    this.emitter.emit('event', event);
  }

  subscribe(listener: (event: ApplianceEvent) => void): () => void {
    this.emitter.on('event', listener);
    return () => this.emitter.off('event', listener);
  }
}

export function nowMicros(): number {
  return Math.floor((performance.timeOrigin + performance.now()) * 1000);
}
