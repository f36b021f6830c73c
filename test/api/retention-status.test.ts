// The history lifecycle's surface through app.inject() on a real appliance (real volumes, real
// LevelDB, the lifecycle running on its own clock):
//
//   - every figure GET /volumes/:volume reports under retention is there and plausible, and the
//     timeline's regions, the metrics and /health agree with them;
//   - snapshots pinned and expiring over the API, nonsense refused with readable 400s, and an
//     expiry time that passes deletes the snapshot;
//   - an instant between tier points, once packed, is refused with 410 expired and the kept
//     instants around it; an export holds its instant until it is deleted, and restores and
//     verifications hold theirs only while they run (also when they fail to start);
//   - a history cap it cannot meet puts the volume under space pressure: /health says degraded
//     with the reasons, history expires for space, alerts go to the events and to the log.
//
// Waits are for conditions, with generous deadlines (the lifecycle passes every 5 s).

import fs from 'node:fs';
import crypto from 'node:crypto';
import t from 'tap';
import type { FastifyInstance } from 'fastify';
import type { RetentionStatusJson } from '../../api/retention-status.js';
import type { ApplianceEvent } from '../../appliance/events.js';
import { parseInstant } from '../../appliance/instant.js';
import { silentLogger } from '../../server/index.js';
import { MiB, StorageError, formatMicros, type RetentionPolicy, type Volume } from '../../storage/index.js';
import { call, errorCode, startApi } from '../support/api-app.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { waitFor } from '../support/wait.js';

const second = 1_000_000;

type Retention = RetentionStatusJson & { policy: RetentionPolicy };

async function retentionOf(app: FastifyInstance, volume = 'vol0'): Promise<Retention> {
  return ((await call(app, 'GET', `/api/v1/volumes/${volume}`)).json() as { retention: Retention }).retention;
}

/** Metric samples by name and labels: `cdp_history_bytes{volume="vol0",part="log"}` -> value. */
async function metricsOf(app: FastifyInstance): Promise<Map<string, number>> {
  const body = (await call(app, 'GET', '/metrics')).body;
  return new Map(
    body
      .split('\n')
      .filter((line) => line !== '' && !line.startsWith('#'))
      .map((line) => [line.slice(0, line.lastIndexOf(' ')), Number(line.slice(line.lastIndexOf(' ') + 1))] as const),
  );
}

t.test('the lifecycle figures: present and plausible, in the volume, the timeline, the metrics and /health', async (t) => {
  const { app, appliance } = await startApi(t);
  const volume = await appliance.store.openVolume('vol0');
  const createdMicros = volume.config.createdMicros;
  for (let index = 0; index < 8; index++) await volume.write(index * MiB, crypto.randomBytes(MiB), { fua: true });
  // The write rate is sampled at most once a second: ask until a sample has seen the writes.
  const retention = await waitFor('a write rate', async () => {
    const shown = await retentionOf(app);
    return shown.logBytesPerSecond > 0 ? shown : undefined;
  });
  const nowMicros = Date.now() * 1000;
  const { policy } = retention;
  t.same(policy, (await call(app, 'GET', '/api/v1/volumes/vol0/retention')).json(), 'the policy in force');

  t.equal(retention.oldestRecoverableMicros, createdMicros, 'nothing expired yet: the oldest recoverable instant is the volume as created');
  t.equal(retention.oldestRecoverableTime, formatMicros(createdMicros), 'and in RFC 3339');
  t.ok(retention.protectionWindowSeconds >= 0 && retention.protectionWindowSeconds <= (nowMicros - createdMicros) / second + 1, `a protected window since creation (${retention.protectionWindowSeconds} s)`);
  t.equal(retention.continuousFromMicros, createdMicros, 'every write is kept since creation (keep-all reaches further back)');
  t.equal(parseInstant(retention.continuousFromTime), retention.continuousFromMicros);
  t.same(
    retention.tiers.map((tier) => [tier.every, tier.keepSeconds]),
    policy.tiers.map((tier) => [tier.every, tier.keepSeconds]),
    'one span per tier of the policy',
  );
  for (const tier of retention.tiers) {
    t.ok(tier.startMicros >= createdMicros && tier.startMicros <= tier.endMicros && tier.endMicros <= retention.continuousFromMicros, `tier ${tier.every} lies between creation and the continuous region`);
    t.equal(parseInstant(tier.startTime), tier.startMicros);
    t.equal(parseInstant(tier.endTime), tier.endMicros);
  }
  const bytes = retention.historyBytes;
  t.equal(bytes.totalBytes, bytes.logBytes + bytes.packBytes + bytes.baseBytes + bytes.indexBytes, 'the total is the sum of the parts');
  t.ok(bytes.logBytes >= 8 * MiB, `the log holds the 8 MiB written (${bytes.logBytes})`);
  t.ok(bytes.indexBytes > 0, 'the index takes some bytes');
  t.same([bytes.packBytes, bytes.baseBytes], [0, 0], 'nothing packed or folded yet');
  t.equal(retention.maxHistoryBytes, policy.maxHistoryBytes, 'the cap is the policy\'s');
  const { fileSystem } = retention;
  t.ok(fileSystem.freeBytes > 0 && fileSystem.freeBytes <= fileSystem.sizeBytes, 'free space within the file system');
  t.equal(fileSystem.reserveBytes, Math.ceil(fileSystem.sizeBytes * 0.05), 'the reserve is 5% of it');
  t.ok(retention.projectedHistoryBytes >= volume.sizeBytes + retention.logBytesPerSecond * policy.keepAllSeconds, 'the projection keeps at least keep-all at this rate, and a base image');
  t.equal(retention.underPressure, false);
  t.same(retention.degradedReasons, []);
  t.same(
    retention.statistics,
    { reclaimedBytes: 0, packs: 0, merges: 0, folds: 0, segmentsDeleted: 0, expirySeconds: 0, compactionSeconds: 0, operationFailures: 0, failedPassesInARow: 0, lastFailure: null },
    'nothing done yet, and every statistic listed',
  );

  const timeline = (await call(app, 'GET', '/api/v1/volumes/vol0/timeline?buckets=4')).json() as { retention: Retention; buckets: Array<{ packed: boolean; writes: number }> };
  t.equal(timeline.retention.oldestRecoverableMicros, createdMicros, 'the timeline gives the oldest recoverable instant');
  t.same(
    timeline.retention.tiers.map((tier) => [tier.every, tier.startMicros]),
    retention.tiers.map((tier) => [tier.every, tier.startMicros]),
    'and where each tier starts',
  );
  t.same(
    timeline.buckets.map((bucket) => bucket.packed),
    [false, false, false, false],
    'nothing packed',
  );

  const metrics = await metricsOf(app);
  for (const part of ['log', 'packs', 'base', 'index']) t.ok(metrics.has(`cdp_history_bytes{volume="vol0",part="${part}"}`), `cdp_history_bytes part ${part}`);
  t.ok(metrics.get('cdp_history_bytes{volume="vol0",part="log"}')! >= 8 * MiB, 'the log part');
  t.equal(metrics.get('cdp_history_max_bytes{volume="vol0"}'), policy.maxHistoryBytes);
  t.equal(metrics.get('cdp_history_oldest_timestamp_seconds{volume="vol0"}'), createdMicros / second);
  t.ok(metrics.get('cdp_protection_window_seconds{volume="vol0"}')! >= retention.protectionWindowSeconds, 'the protected window');
  t.ok(metrics.get('cdp_filesystem_free_bytes{volume="vol0"}')! > 0);
  t.ok(metrics.get('cdp_history_projected_bytes{volume="vol0"}')! >= volume.sizeBytes);
  for (const counter of [
    'cdp_history_reclaimed_bytes_total',
    'cdp_history_expiry_seconds_total',
    'cdp_history_expiry_operations_total',
    'cdp_history_compaction_seconds_total',
    'cdp_history_compaction_operations_total',
    'cdp_history_segments_deleted_total',
    'cdp_history_lifecycle_failures_total',
  ]) {
    t.equal(metrics.get(`${counter}{volume="vol0"}`), 0, `${counter} is there, 0 so far`);
  }

  const health = await call(app, 'GET', '/health', undefined, false);
  t.equal(health.statusCode, 200);
  t.match(health.json(), { status: 'ok', reasons: [], volumes: [{ name: 'vol0', degradedReasons: [] }] });
});

t.test('snapshots: pinned and expiring, changed, refused in words, deleted when their time comes', async (t) => {
  const { app, appliance } = await startApi(t);
  const events: ApplianceEvent[] = [];
  t.teardown(appliance.events.subscribe((event) => events.push(event)));
  const base = '/api/v1/volumes/vol0/snapshots';
  const startedMicros = Date.now() * 1000;
  const kept = await call(app, 'POST', base, { name: 'kept', note: 'a week', pinned: true, expiresInSeconds: 7 * 86_400 });
  t.equal(kept.statusCode, 201, kept.body);
  const keptJson = kept.json() as { pinned: boolean; expiresMicros: number; expiresTime: string };
  t.equal(keptJson.pinned, true);
  t.ok(Math.abs(keptJson.expiresMicros - (startedMicros + 7 * 86_400 * second)) < 60 * second, 'expires in a week');
  t.equal(parseInstant(keptJson.expiresTime), keptJson.expiresMicros, 'expiresTime is the same instant');
  const plain = (await call(app, 'POST', base, { name: 'plain' })).json();
  t.match(plain, { name: 'plain', pinned: false, expiresMicros: null, expiresTime: null }, 'by default: not pinned, kept until deleted');
  t.match(events.find((event) => event.type === 'snapshot-created' && event.name === 'kept'), { pinned: true, expiresMicros: keptJson.expiresMicros });

  const at = '2099-01-02T03:04:05.123456Z';
  t.match((await call(app, 'PATCH', `${base}/plain`, { pinned: true, expiresAt: at })).json(), { pinned: true, expiresMicros: parseInstant(at), expiresTime: at });
  t.match(events.find((event) => event.type === 'snapshot-updated'), { volume: 'vol0', name: 'plain', pinned: true, expiresMicros: parseInstant(at) }, 'an event tells the console');
  t.match((await call(app, 'PATCH', `${base}/plain`, { expiresAt: null })).json(), { pinned: true, expiresMicros: null }, 'null: kept until deleted; the pin stays');
  t.match((await call(app, 'PATCH', `${base}/kept`, { pinned: false })).json(), { pinned: false, expiresMicros: keptJson.expiresMicros }, 'unpinned; the expiry stays');
  const listed = (await call(app, 'GET', base)).json() as { snapshots: Array<{ name: string; pinned: boolean; expiresMicros: number | null }> };
  t.same(
    listed.snapshots.map((snapshot) => [snapshot.name, snapshot.pinned, snapshot.expiresMicros]),
    [
      ['kept', false, keptJson.expiresMicros],
      ['plain', true, null],
    ],
    'the list shows pins and expiries',
  );

  const refused: Array<[string, 'POST' | 'PATCH', string, unknown, number, RegExp]> = [
    ['both expiries', 'POST', base, { name: 'x', expiresAt: at, expiresInSeconds: 60 }, 400, /^give expiresAt or expiresInSeconds, not both$/],
    ['an expiry that is no instant', 'POST', base, { name: 'x', expiresAt: 'tomorrow' }, 400, /^"tomorrow" is not an instant: use RFC 3339/],
    ['an expiry in the past', 'POST', base, { name: 'x', expiresAt: '2020-01-01T00:00:00Z' }, 400, /^the expiry time 2020-01-01T00:00:00.000000Z has already passed$/],
    ['an expiry of 0 s', 'POST', base, { name: 'x', expiresInSeconds: 0 }, 400, /^expiresInSeconds must be at least 1$/],
    ['a pin that is not true or false', 'POST', base, { name: 'x', pinned: 'yes' }, 400, /^pinned must be true or false$/],
    ['an unknown field', 'POST', base, { name: 'x', keep: 'forever' }, 400, /^keep is not a field here \(the fields are name, note, pinned, expiresAt, expiresInSeconds\)$/],
    ['an empty change', 'PATCH', `${base}/plain`, {}, 400, /^the body is empty: give at least one of pinned, expiresAt, expiresInSeconds$/],
    ['a change of the note', 'PATCH', `${base}/plain`, { note: 'no' }, 400, /^note is not a field here/],
    ['an unknown snapshot', 'PATCH', `${base}/nope`, { pinned: true }, 404, /^volume vol0 has no snapshot named nope$/],
    ['an unknown volume', 'PATCH', '/api/v1/volumes/nope/snapshots/plain', { pinned: true }, 404, /nope/],
  ];
  for (const [what, method, url, body, status, message] of refused) {
    const response = await call(app, method, url, body);
    t.equal(response.statusCode, status, what);
    t.match((response.json() as { error: { message: string } }).error.message, message, `${what}: ${response.body}`);
  }
  t.equal((await call(app, 'GET', base)).json().snapshots.length, 2, 'nothing refused was made');

  t.equal((await call(app, 'POST', base, { name: 'brief', expiresInSeconds: 1 })).statusCode, 201);
  await waitFor('the brief snapshot to expire', async () => {
    const names = ((await call(app, 'GET', base)).json() as { snapshots: Array<{ name: string }> }).snapshots.map((snapshot) => snapshot.name);
    return names.includes('brief') ? undefined : names;
  });
  t.match(events.find((event) => event.type === 'snapshot-expired'), { volume: 'vol0', name: 'brief' }, 'snapshot-expired tells the console');
});

/** A policy of second-long tiers: every write for 4 s, then a point every second for 10 s. */
async function useShortPolicy(app: FastifyInstance, volume: string): Promise<void> {
  const policy = (await call(app, 'GET', `/api/v1/volumes/${volume}/retention`)).json() as RetentionPolicy;
  const response = await call(app, 'PUT', `/api/v1/volumes/${volume}/retention`, { ...policy, keepAllSeconds: 4, tiers: [{ every: 1, keepSeconds: 10 }], requiredWindowSeconds: 0 });
  if (response.statusCode !== 200) throw new Error(response.body);
}

/**
 * Three writes within one second: the first two lie between tier points (the point at the next
 * second shows the third), so they expire once packed.
 */
async function writeBurst(volume: Volume): Promise<number[]> {
  for (;;) {
    await waitFor('the start of a second', () => (Date.now() % 1000 < 200 ? true : undefined), 5000, 5);
    const sequences: number[] = [];
    for (let index = 0; index < 3; index++) {
      await volume.write(index * 4096, crypto.randomBytes(4096), { fua: true });
      sequences.push(volume.stats().appendedSequence);
    }
    const seconds = await Promise.all(sequences.map(async (sequence) => Math.floor((await volume.history!.microsOf(sequence)) / second)));
    if (seconds.every((value) => value === seconds[0])) return sequences;
  }
}

/** Is the instant kept? Asked without opening a view, so without holding it. */
async function isKept(volume: Volume, sequence: number): Promise<boolean> {
  try {
    await volume.history!.sequenceOf({ sequence });
    return true;
  } catch (error) {
    if (error instanceof StorageError && error.code === 'EEXPIRED') return false;
    throw error;
  }
}

/** Wait until the instants are no longer kept, writing now and then so the volume's newest state is always a later one. */
async function waitUntilExpired(volume: Volume, sequences: number[], what: string): Promise<void> {
  await waitFor(
    what,
    async () => {
      await volume.write(MiB, crypto.randomBytes(4096), { fua: true });
      for (const sequence of sequences) if (await isKept(volume, sequence)) return undefined;
      return true;
    },
    90_000,
    500,
  );
}

t.test('expired instants: 410 with the nearest kept instants; exports and jobs hold theirs only while they need them', async (t) => {
  const files = temporaryDirectory(t as never);
  const { app, appliance } = await startApi(t, silentLogger, { localPaths: { fileRoots: [files], deviceAllow: [] } });
  const volume = await appliance.store.openVolume('vol0');
  await useShortPolicy(app, 'vol0');

  const [heldSequence, expiringSequence] = await writeBurst(volume);
  const expiredMicros = await volume.history!.microsOf(expiringSequence!); // once packed, the record's own time is gone
  const held = await call(app, 'POST', '/api/v1/exports', { volume: 'vol0', sequence: heldSequence!, name: 'held' });
  t.equal(held.statusCode, 201, `an export at sequence ${heldSequence} while it is kept: ${held.body}`);
  await waitUntilExpired(volume, [expiringSequence!], `sequence ${expiringSequence} (between tier points) to expire`);
  t.ok(await isKept(volume, heldSequence!), `sequence ${heldSequence}, as old, is still kept: the export holds it`);
  // Refused once out of the continuous region; packed at the next lifecycle pass.
  const packedStatus = await waitFor('a packed interval', async () => {
    const shown = await retentionOf(app);
    return shown.intervalCount > 0 ? shown : undefined;
  });
  t.ok(packedStatus.keptPointCount > 0, `packed intervals (${packedStatus.intervalCount}) between kept points (${packedStatus.keptPointCount})`);
  const timeline = (await call(app, 'GET', '/api/v1/volumes/vol0/timeline?buckets=20')).json() as { buckets: Array<{ packed: boolean; writes: number }>; retention: Retention };
  t.ok(timeline.buckets.some((bucket) => bucket.packed && bucket.writes > 0), 'the timeline shows the packed history, as what it kept');
  t.equal(timeline.retention.tiers[0]?.every, 1, 'and where the tier of one-second points starts');

  const refused = await call(app, 'POST', '/api/v1/exports', { volume: 'vol0', sequence: expiringSequence! });
  t.equal(refused.statusCode, 410, 'an export at an expired instant');
  const error = (refused.json() as { error: { code: string; message: string; details: { nearest: Record<'before' | 'after', { sequence: number; micros: number; time: string } | null> } } }).error;
  t.equal(error.code, 'expired');
  const { before, after } = error.details.nearest;
  t.equal(before?.sequence, heldSequence, 'the nearest kept instant before it is the one the export holds');
  t.ok(after !== null && after.sequence > expiringSequence!, 'a kept instant after it');
  t.equal(before!.micros, await volume.history!.microsOf(heldSequence!), 'a held instant is given its record\'s time');
  for (const point of [before!, after!]) t.equal(point.time, formatMicros(point.micros), `sequence ${point.sequence}: its time in RFC 3339`);
  t.equal(
    error.message,
    `sequence ${expiringSequence} of volume vol0 is no longer kept by its retention policy; the nearest kept instants are ${before!.time} (sequence ${before!.sequence}) and ${after!.time} (sequence ${after!.sequence})`,
    'the message says it in words',
  );
  const byTime = await call(app, 'POST', '/api/v1/exports', { volume: 'vol0', at: formatMicros(expiredMicros) });
  t.equal(byTime.statusCode, 410, 'an export at its time');
  t.match(errorCode(byTime), 'expired');
  t.match((byTime.json() as { error: { message: string } }).error.message, `${formatMicros(expiredMicros)} of volume vol0 is no longer kept`, 'named as asked');
  const target = `${files}/restored.img`;
  const restore = await call(app, 'POST', '/api/v1/restores', { volume: 'vol0', sequence: expiringSequence!, target });
  t.equal(restore.statusCode, 410, 'a restore from an expired instant');
  t.notOk(fs.existsSync(target), 'refused before the target was touched');

  t.equal((await call(app, 'DELETE', '/api/v1/exports/held')).statusCode, 204);
  await waitUntilExpired(volume, [heldSequence!], `sequence ${heldSequence} to expire once its export is deleted`);
  t.pass('deleting the export released its instant');

  // Jobs: a verification and a restore that ran, and a verification that could not start.
  const [verifiedSequence, restoredSequence, unstartedSequence] = await writeBurst(volume);
  const against = `${files}/other.img`;
  fs.writeFileSync(against, Buffer.alloc(0));
  fs.truncateSync(against, volume.sizeBytes);
  const verified = await call(app, 'POST', '/api/v1/verify?wait=true', { volume: 'vol0', sequence: verifiedSequence!, against });
  t.match(verified.json(), { state: 'done' }, `a verification at sequence ${verifiedSequence}: ${verified.body}`);
  const restored = await call(app, 'POST', '/api/v1/restores?wait=true', { volume: 'vol0', sequence: restoredSequence!, target });
  t.match(restored.json(), { state: 'done' }, `a restore from sequence ${restoredSequence}: ${restored.body}`);
  const unstarted = await call(app, 'POST', '/api/v1/verify', { volume: 'vol0', sequence: unstartedSequence!, against: `${files}/nonexistent.img` });
  t.equal(unstarted.statusCode, 400, 'a verification against nothing does not start');
  const internal = await call(app, 'POST', '/api/v1/verify?wait=true', { volume: 'vol0' });
  t.match(internal.json(), { state: 'done', result: { ok: true } }, 'an internal verification, of the newest instant');
  t.notOk((await call(app, 'GET', '/api/v1/jobs')).json().jobs.some((job: { state: string }) => job.state === 'running'), 'no job left running');
  await waitUntilExpired(volume, [verifiedSequence!, restoredSequence!, unstartedSequence!], 'the instants the jobs read to expire');
  t.pass('finished and failed jobs released their instants');

  // Left alone, everything but the newest state expires: the oldest recoverable instant is its
  // first moment, which opens, and the microsecond before it is refused.
  const newestMicros = await volume.history!.microsOf(volume.stats().appendedSequence);
  const oldest = await waitFor('only the newest state to be kept', async () => {
    const shown = await retentionOf(app);
    return shown.oldestRecoverableMicros === newestMicros ? shown : undefined;
  });
  t.equal(oldest.oldestRecoverableTime, formatMicros(newestMicros));
  const atOldest = await call(app, 'POST', '/api/v1/exports', { volume: 'vol0', at: oldest.oldestRecoverableTime, name: 'oldest' });
  t.equal(atOldest.statusCode, 201, `the oldest recoverable instant opens: ${atOldest.body}`);
  t.equal((await call(app, 'DELETE', '/api/v1/exports/oldest')).statusCode, 204);
  const beforeOldest = await call(app, 'POST', '/api/v1/exports', { volume: 'vol0', at: oldest.oldestRecoverableMicros - 1 });
  t.equal(errorCode(beforeOldest), 'expired', 'the microsecond before it is refused');
  t.match((beforeOldest.json() as { error: { details: { nearest: { after: { micros: number } } } } }).error.details.nearest.after, { micros: oldest.oldestRecoverableMicros }, 'and named as the nearest kept instant after it');
});

t.test('space pressure: a cap it cannot meet; /health degraded with the reasons, history expired for space, alerts', async (t) => {
  const logged: Array<{ level: string; fields: Record<string, unknown>; message: string }> = [];
  const note = (level: string) => (fields: object, message: string) => void logged.push({ level, fields: fields as Record<string, unknown>, message });
  const { app, appliance } = await startApi(t, { debug: () => undefined, info: note('info'), warn: note('warn'), error: note('error') });
  const events: ApplianceEvent[] = [];
  t.teardown(appliance.events.subscribe((event) => events.push(event)));
  t.equal((await call(app, 'POST', '/api/v1/volumes', { name: 'tight', sizeBytes: 16 * MiB })).statusCode, 201);
  const tight = await appliance.store.openVolume('tight');
  for (let index = 0; index < 4; index++) {
    await tight.write(index * MiB, crypto.randomBytes(MiB), { fua: true });
    t.equal((await call(app, 'POST', '/api/v1/volumes/tight/snapshots', { name: `s${index}` })).statusCode, 201); // a snapshot ends a window
  }
  t.equal((await call(app, 'GET', '/health', undefined, false)).statusCode, 200, 'healthy before');
  // The log alone takes two preallocated segments, more than the smallest cap.
  const policy = (await call(app, 'GET', '/api/v1/volumes/tight/retention')).json() as RetentionPolicy;
  const put = await call(app, 'PUT', '/api/v1/volumes/tight/retention', { ...policy, keepAllSeconds: 3600, tiers: [], maxHistoryBytes: 64 * MiB, requiredWindowSeconds: 3600 });
  t.equal(put.statusCode, 200, put.body);

  const health = await waitFor('/health to say degraded', async () => {
    const response = await call(app, 'GET', '/health', undefined, false);
    const json = response.json() as { status: string; reasons: string[]; volumes: Array<{ name: string; degradedReasons: string[] }> };
    return response.statusCode === 503 && json.reasons.some((reason) => reason.includes('shorter than required')) ? json : undefined;
  });
  t.equal(health.status, 'degraded');
  t.ok(health.reasons.includes('volume tight: history is being expired early to stay under its cap and the free-space reserve'), 'space pressure is a reason');
  t.match(health.reasons, [/^volume tight: the protected window \(\d+ s\) is shorter than required \(3600 s\)$/], 'and so is the short window');
  t.same(health.volumes.find((volume) => volume.name === 'vol0')?.degradedReasons, [], 'the other volume is fine');
  const retention = await retentionOf(app, 'tight');
  t.equal(retention.underPressure, true, 'GET /volumes/tight says so');
  t.same(retention.degradedReasons, health.volumes.find((volume) => volume.name === 'tight')?.degradedReasons);
  t.ok(retention.oldestRecoverableMicros > tight.config.createdMicros, 'the oldest recoverable instant moved forward');
  t.ok(retention.statistics.folds > 0, 'history was folded into the base image');
  const metrics = await metricsOf(app);
  t.equal(metrics.get('cdp_history_under_pressure{volume="tight"}'), 1);
  t.ok(metrics.get('cdp_history_expiry_operations_total{volume="tight"}')! > 0, 'expiry counted');

  t.match(events.find((event) => event.type === 'history-usage' && event.volume === 'tight'), { percent: 95, maxHistoryBytes: 64 * MiB }, 'usage over the cap: the 95% alert');
  t.match(events.find((event) => event.type === 'history-expired' && event.volume === 'tight'), { reason: 'space' }, 'history expired for space');
  t.match(events.find((event) => event.type === 'protection-window-short' && event.volume === 'tight'), { requiredSeconds: 3600 }, 'the window is short');
  t.match(
    logged.find((entry) => entry.fields['type'] === 'history-usage'),
    { level: 'warn', message: 'history of volume tight reached 95% of its cap or of the disk; the oldest history goes first past the cap' },
    'logged at warn',
  );
  t.match(logged.find((entry) => entry.fields['type'] === 'protection-window-short'), { level: 'warn', message: /^volume tight can be recovered only \d+ s back, less than the required 3600 s$/ });
  t.match(logged.find((entry) => entry.fields['type'] === 'history-expired'), { level: 'info', message: /^history of volume tight before \S+Z expired \(to make room\)$/ });
});
