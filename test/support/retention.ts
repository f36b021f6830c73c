// Retention seen from outside, for the tests that prove it with real clients: the engine's figures
// from GET /api/v1/volumes/:volume, and an instant checked against a copy saved when it was now
// (exported read-only over the API, compared by qemu-img, the export deleted again).

import { apiRequest } from './api.js';
import type { Appliance } from './appliance.js';
import { run } from './tools.js';

/** The lifecycle's figures under `retention` of GET /api/v1/volumes/:volume (api/retention-status.ts). */
export interface RetentionFigures {
  oldestRecoverableMicros: number;
  protectionWindowSeconds: number;
  keptPointCount: number;
  intervalCount: number;
  historyBytes: { logBytes: number; packBytes: number; baseBytes: number; indexBytes: number; totalBytes: number };
  maxHistoryBytes: number;
  fileSystem: { sizeBytes: number; freeBytes: number; reserveBytes: number };
  underPressure: boolean;
  degradedReasons: string[];
  statistics: { reclaimedBytes: number; packs: number; merges: number; folds: number; segmentsDeleted: number; operationFailures: number; lastFailure: string | null };
}

export async function retentionFigures(appliance: Appliance, volume = 'vol0'): Promise<RetentionFigures> {
  const response = await apiRequest(appliance, 'GET', `/api/v1/volumes/${volume}`);
  if (response.status !== 200) throw new Error(`GET /api/v1/volumes/${volume}: ${response.status} ${JSON.stringify(response.json)}`);
  const figures = response.json.retention as Partial<RetentionFigures> | undefined;
  if (figures?.oldestRecoverableMicros === undefined) throw new Error(`GET /api/v1/volumes/${volume} reports no retention figures`);
  return figures as RetentionFigures;
}

/** An instant as POST /api/v1/exports names it. */
export type Instant = { snapshot: string } | { at: string | number } | { sequence: number };

export type InstantCheck =
  | { outcome: 'equal' }
  | { outcome: 'differs'; detail: string }
  | { outcome: 'expired'; details: ExpiredDetails }
  | { outcome: 'refused'; detail: string };

export interface ExpiredDetails {
  nearest: { before: { sequence: number; micros: number } | null; after: { sequence: number; micros: number } | null };
  oldestSequence: number;
}

/** Export the instant read-only, compare it with the saved copy (qemu-img compare), delete the export. */
export async function checkInstant(appliance: Appliance, instant: Instant, copyPath: string, volume = 'vol0'): Promise<InstantCheck> {
  const created = await apiRequest(appliance, 'POST', '/api/v1/exports', { volume, ...instant });
  const error = created.json.error as { code: string; details?: ExpiredDetails } | undefined;
  if (created.status === 410 && error?.code === 'expired' && error.details !== undefined) return { outcome: 'expired', details: error.details };
  if (created.status !== 201) return { outcome: 'refused', detail: `${created.status} ${JSON.stringify(created.json)}` };
  const compared = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', copyPath, created.json.uri as string], { timeoutMs: 300_000 });
  // qemu-img has gone, but the server may not have seen its disconnect yet: force.
  const deleted = await apiRequest(appliance, 'DELETE', `/api/v1/exports/${encodeURIComponent(created.json.name as string)}?force=true`);
  if (deleted.status !== 204) return { outcome: 'refused', detail: `the export could not be deleted: ${deleted.status} ${JSON.stringify(deleted.json)}` };
  if (compared.code === 0) return { outcome: 'equal' };
  return { outcome: 'differs', detail: `qemu-img compare exit ${compared.code}: ${compared.stdout.trim()} ${compared.stderr.trim()}` };
}

/** Wait until `condition` holds, polling; false if the deadline passed first (the caller asserts). */
export async function waitFor(condition: () => Promise<boolean>, deadlineMs: number, pollMs = 500): Promise<boolean> {
  const endMs = performance.now() + deadlineMs;
  for (;;) {
    if (await condition()) return true;
    if (performance.now() > endMs) return false;
    await new Promise((resolve) => setTimeout(resolve, pollMs));
  }
}
