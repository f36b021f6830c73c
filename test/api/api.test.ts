// The HTTP API through app.inject(), on a real appliance (real volumes, real LevelDB) in a
// temporary data folder: the happy paths, and every kind of bad input getting its 4xx with a
// stable error code and a message.

import fs from 'node:fs';
import t from 'tap';
import { MiB, defaultRetentionPolicy, type RetentionPolicy } from '../../storage/index.js';
import { silentLogger } from '../../server/index.js';
import { call, errorCode, startApi } from '../support/api-app.js';
import { temporaryDirectory } from '../support/temporary-directory.js';

t.test('the token: every route but /health needs it', async (t) => {
  const { app } = await startApi(t);
  t.equal((await call(app, 'GET', '/health', undefined, false)).statusCode, 200, '/health is open');
  for (const url of ['/api/v1/volumes', '/api/v1/exports', '/metrics', '/api/docs', '/api/v1/volumes/vol0/timeline', '/api/v1/volumes/vol0/retention']) {
    const response = await call(app, 'GET', url, undefined, false);
    t.equal(response.statusCode, 401, `${url} without a token`);
    t.equal(errorCode(response), 'unauthorized');
  }
  const wrong = await app.inject({ method: 'GET', url: '/api/v1/volumes', headers: { authorization: 'Bearer nope' } });
  t.equal(wrong.statusCode, 401, 'a wrong token');
});

t.test('volumes: list, create, show, bad input, delete', async (t) => {
  const { app } = await startApi(t);
  const listed = await call(app, 'GET', '/api/v1/volumes');
  t.same(
    (listed.json() as { volumes: Array<{ name: string }> }).volumes.map((volume) => volume.name),
    ['vol0'],
  );
  const created = await call(app, 'POST', '/api/v1/volumes', { name: 'data1', sizeBytes: 8 * MiB });
  t.equal(created.statusCode, 201);
  t.match(created.json(), { name: 'data1', sizeBytes: 8 * MiB });
  t.equal((await call(app, 'GET', '/api/v1/volumes/data1')).statusCode, 200);

  const cases: Array<[string, unknown, number, string]> = [
    ['a name clash', { name: 'data1', sizeBytes: 8 * MiB }, 409, 'conflict'],
    ['a size of the wrong type', { name: 'data2', sizeBytes: 'big' }, 400, 'invalid-request'],
    ['a path in the name', { name: '../etc', sizeBytes: 8 * MiB }, 400, 'invalid-request'],
    ['an unaligned size', { name: 'data2', sizeBytes: 8 * MiB + 1 }, 400, 'invalid-request'],
    ['a missing size', { name: 'data2' }, 400, 'invalid-request'],
    ['an unknown field', { name: 'data2', sizeBytes: 8 * MiB, colour: 'red' }, 400, 'invalid-request'],
  ];
  for (const [what, body, status, code] of cases) {
    const response = await call(app, 'POST', '/api/v1/volumes', body);
    t.equal(response.statusCode, status, what);
    t.equal(errorCode(response), code, `${what}: ${(response.json() as { error: { message: string } }).error.message}`);
  }
  t.equal(errorCode(await call(app, 'GET', '/api/v1/volumes/nope')), 'not-found', 'an unknown volume');
  t.equal((await call(app, 'GET', '/api/v1/volumes/..%2Fetc')).statusCode, 400, 'path traversal in the parameter');
  t.equal((await call(app, 'DELETE', '/api/v1/volumes/data1')).statusCode, 204);
  t.equal(errorCode(await call(app, 'GET', '/api/v1/volumes/data1')), 'not-found', 'gone');
  t.equal(errorCode(await call(app, 'GET', '/api/v1/nothing-here')), 'not-found', 'an unknown route');
});

t.test('snapshots and the timeline', async (t) => {
  const { app, appliance } = await startApi(t);
  const volume = await appliance.store.openVolume('vol0');
  await volume.write(0, Buffer.alloc(65536, 1), { fua: true });
  const created = await call(app, 'POST', '/api/v1/volumes/vol0/snapshots', { name: 'first', note: 'after one write' });
  t.equal(created.statusCode, 201);
  const snapshot = created.json() as { name: string; sequence: number; time: string; note: string };
  t.match(snapshot, { name: 'first', sequence: 2, note: 'after one write' });
  t.match(snapshot.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/, 'RFC 3339 with microseconds');
  t.equal(errorCode(await call(app, 'POST', '/api/v1/volumes/vol0/snapshots', { name: 'first' })), 'conflict', 'a snapshot name clash');
  t.equal(errorCode(await call(app, 'POST', '/api/v1/volumes/vol0/snapshots', { name: 'Bad Name' })), 'invalid-request');
  t.equal(errorCode(await call(app, 'POST', '/api/v1/volumes/nope/snapshots', { name: 'x' })), 'not-found');
  await volume.write(65536, Buffer.alloc(65536, 2), { fua: true });
  const listed = (await call(app, 'GET', '/api/v1/volumes/vol0/snapshots')).json() as { snapshots: Array<{ name: string }> };
  t.same(
    listed.snapshots.map((entry) => entry.name),
    ['first'],
  );

  const timeline = (await call(app, 'GET', '/api/v1/volumes/vol0/timeline?buckets=4')).json() as {
    protected: { oldestMicros: number; newestMicros: number };
    buckets: Array<{ writes: number; bytes: number }>;
    snapshots: Array<{ name: string }>;
  };
  t.equal(timeline.buckets.length, 4);
  t.equal(
    timeline.buckets.reduce((sum, bucket) => sum + bucket.writes, 0),
    2,
    'both writes are counted',
  );
  t.equal(
    timeline.buckets.reduce((sum, bucket) => sum + bucket.bytes, 0),
    131072,
  );
  t.ok(timeline.protected.oldestMicros > 0 && timeline.protected.newestMicros >= timeline.protected.oldestMicros, 'the protected range');
  t.same(
    timeline.snapshots.map((entry) => entry.name),
    ['first'],
  );
  t.equal(errorCode(await call(app, 'GET', '/api/v1/volumes/vol0/timeline?from=yesterday')), 'invalid-request', 'a bad instant');
  t.equal(errorCode(await call(app, 'GET', '/api/v1/volumes/vol0/timeline?buckets=0')), 'invalid-request');

  t.equal((await call(app, 'DELETE', '/api/v1/volumes/vol0/snapshots/first')).statusCode, 204);
  t.equal(errorCode(await call(app, 'DELETE', '/api/v1/volumes/vol0/snapshots/first')), 'not-found', 'deleting twice');
});

t.test('exports: views and clones, bad input, deletion', async (t) => {
  const { app, appliance } = await startApi(t);
  const volume = await appliance.store.openVolume('vol0');
  await volume.write(0, Buffer.alloc(4096, 0xaa), { fua: true });
  await call(app, 'POST', '/api/v1/volumes/vol0/snapshots', { name: 'before' });
  await volume.write(0, Buffer.alloc(4096, 0xbb), { fua: true });

  const view = await call(app, 'POST', '/api/v1/exports', { volume: 'vol0', snapshot: 'before' });
  t.equal(view.statusCode, 201);
  t.match(view.json(), { name: 'vol0@before', kind: 'view', writable: false, uri: 'nbd://127.0.0.1:10809/vol0@before', snapshot: 'before' });
  const device = appliance.table.lookup('vol0@before')!.device;
  t.equal((await device.read(0, 4096))[0], 0xaa, 'the view shows the data as of the snapshot');

  const clone = await call(app, 'POST', '/api/v1/exports', { volume: 'vol0', snapshot: 'before', writable: true, name: 'repair' });
  t.equal(clone.statusCode, 201);
  const cloneDevice = appliance.table.lookup('repair')!.device;
  await cloneDevice.write(0, Buffer.alloc(4096, 0xcc), { fua: true });
  t.equal((await cloneDevice.read(0, 4096))[0], 0xcc, 'the clone takes writes');
  t.equal((await volume.read(0, 4096))[0], 0xbb, 'and the volume does not see them');

  const byInstant = await call(app, 'POST', '/api/v1/exports', { volume: 'vol0', at: new Date().toISOString() });
  t.equal(byInstant.statusCode, 201, 'an export at an RFC 3339 instant');
  const bySequence = await call(app, 'POST', '/api/v1/exports', { volume: 'vol0', sequence: 1, name: 'first-write' });
  t.equal(bySequence.statusCode, 201, 'an export at a sequence number');

  const cases: Array<[string, unknown, number, string]> = [
    ['a name clash', { volume: 'vol0', snapshot: 'before' }, 409, 'conflict'],
    ['no instant', { volume: 'vol0' }, 400, 'invalid-request'],
    ['two instants', { volume: 'vol0', snapshot: 'before', sequence: 1 }, 400, 'invalid-request'],
    ['a bad instant', { volume: 'vol0', at: 'last tuesday' }, 400, 'invalid-request'],
    ['an instant before the volume', { volume: 'vol0', at: '2001-01-01T00:00:00Z' }, 400, 'invalid-request'],
    ['a sequence past the log', { volume: 'vol0', sequence: 1_000_000 }, 400, 'invalid-request'],
    ['an unknown snapshot', { volume: 'vol0', snapshot: 'nope' }, 404, 'not-found'],
    ['an unknown volume', { volume: 'nope', sequence: 0 }, 404, 'not-found'],
    ['a bad name', { volume: 'vol0', sequence: 0, name: 'NO SPACES' }, 400, 'invalid-request'],
    ['writable of the wrong type', { volume: 'vol0', sequence: 0, writable: 'yes' }, 400, 'invalid-request'],
  ];
  for (const [what, body, status, code] of cases) {
    const response = await call(app, 'POST', '/api/v1/exports', body);
    t.equal(response.statusCode, status, what);
    t.equal(errorCode(response), code, `${what}: ${(response.json() as { error: { message: string } }).error.message}`);
  }

  const listed = (await call(app, 'GET', '/api/v1/exports')).json() as { exports: Array<{ name: string; kind: string }> };
  t.same(
    listed.exports.map((entry) => [entry.name, entry.kind]),
    [
      ['first-write', 'view'],
      ['repair', 'clone'],
      ['vol0', 'live'],
      ['vol0@before', 'view'],
      [(byInstant.json() as { name: string }).name, 'view'],
    ].sort((left, right) => left[0]!.localeCompare(right[0]!)),
  );
  t.equal(errorCode(await call(app, 'DELETE', '/api/v1/exports/vol0')), 'invalid-request', "a volume's live export is not deleted this way");
  t.equal((await call(app, 'DELETE', '/api/v1/exports/repair')).statusCode, 204, 'a clone is deleted');
  t.equal(errorCode(await call(app, 'DELETE', '/api/v1/exports/repair')), 'not-found');
});

t.test('health, metrics, OpenAPI', async (t) => {
  const { app } = await startApi(t);
  const health = (await call(app, 'GET', '/health', undefined, false)).json() as { status: string; volumes: Array<{ name: string }> };
  t.equal(health.status, 'ok');
  t.same(
    health.volumes.map((volume) => volume.name),
    ['vol0'],
  );
  const metrics = await call(app, 'GET', '/metrics');
  t.equal(metrics.statusCode, 200);
  t.match(metrics.headers['content-type'], /^text\/plain/);
  for (const name of ['cdp_nbd_writes_total{volume="vol0"}', 'cdp_nbd_flush_seconds_bucket', 'cdp_nbd_connections', 'cdp_nbd_delta_maps', 'cdp_nbd_log_bytes']) {
    t.match(metrics.body, name, `metrics include ${name}`);
  }
  const openapi = (await call(app, 'GET', '/api/docs')).json() as { openapi: string; paths: Record<string, unknown> };
  t.match(openapi.openapi, /^3\./);
  for (const path of ['/api/v1/volumes', '/api/v1/volumes/{volume}/snapshots', '/api/v1/volumes/{volume}/retention', '/api/v1/volumes/{volume}/timeline', '/api/v1/exports', '/api/v1/exports/{name}', '/health', '/metrics']) {
    t.ok(openapi.paths[path], `OpenAPI documents ${path}`);
  }
  for (const path of ['/api/v1/restores', '/api/v1/verify', '/api/v1/seeds']) {
    const responses = (openapi.paths[path] as { post: { responses: Record<string, { description: string }> } }).post.responses;
    t.match(responses['403']?.description, /target-not-allowed/, `OpenAPI documents ${path}'s target-not-allowed`);
    t.match(responses['409']?.description, /target-in-use/, `and its target-in-use`);
  }
});

t.test('jobs: restore to a file and verify it, with progress events; bad input', async (t) => {
  const files = temporaryDirectory(t as never);
  const { app, appliance } = await startApi(t, silentLogger, { localPaths: { fileRoots: [files], deviceAllow: [] } });
  const volume = await appliance.store.openVolume('vol0');
  await volume.write(0, Buffer.alloc(2 * MiB, 0x5a), { fua: true });
  t.equal((await call(app, 'POST', '/api/v1/volumes/vol0/snapshots', { name: 'base' })).statusCode, 201);
  await volume.write(MiB, Buffer.alloc(MiB, 0x6b), { fua: true });

  const events: string[] = [];
  const unsubscribe = appliance.events.subscribe((event) => {
    if (event.type.startsWith('job-')) events.push(event.type);
  });
  const targetPath = `${files}/restored.img`;
  const restored = await call(app, 'POST', '/api/v1/restores?wait=true', { volume: 'vol0', snapshot: 'base', target: targetPath });
  unsubscribe();
  t.equal(restored.statusCode, 200, restored.body);
  const job = restored.json() as { id: string; state: string; result: { writtenBytes: number } };
  t.equal(job.state, 'done');
  t.equal(job.result.writtenBytes, 2 * MiB, 'a new file: the 2 MiB of data written, the rest left as holes');
  t.equal(events[0], 'job-started');
  t.equal(events[events.length - 1], 'job-finished');
  t.ok(events.includes('job-progress'), 'progress in between');
  t.same((await call(app, 'GET', `/api/v1/jobs/${job.id}`)).json().state, 'done');
  t.ok((await call(app, 'GET', '/api/v1/jobs')).json().jobs.some((listed: { id: string }) => listed.id === job.id));

  const started = await call(app, 'POST', '/api/v1/verify', { volume: 'vol0', snapshot: 'base', against: targetPath });
  t.equal(started.statusCode, 202, 'without wait: accepted, running');
  const verified = await appliance.jobs.settled((started.json() as { id: string }).id);
  t.equal(verified.result?.['identical'], true, 'the restored file is identical to the snapshot');
  const internal = await call(app, 'POST', '/api/v1/verify?wait=true', { volume: 'vol0' });
  t.equal((internal.json() as { result: { ok: boolean } }).result.ok, true);

  const bad: Array<[string, unknown, number, string]> = [
    ['/api/v1/restores', { volume: 'vol0', snapshot: 'base' }, 400, 'neither target nor inPlace'],
    ['/api/v1/restores', { volume: 'vol0', snapshot: 'base', target: targetPath, inPlace: true }, 400, 'both target and inPlace'],
    ['/api/v1/restores', { volume: 'vol0', snapshot: 'base', target: 'relative.img' }, 400, 'a relative path'],
    ['/api/v1/restores', { volume: 'vol0', snapshot: 'base', target: 'http://example/disk' }, 400, 'another scheme'],
    ['/api/v1/restores', { volume: 'vol0', snapshot: 'base', target: targetPath, mode: 'quick' }, 400, 'an unknown mode'],
    ['/api/v1/restores', { volume: 'vol0', snapshot: 'base', inPlace: true, mode: 'digest' }, 400, 'in place is fast only'],
    ['/api/v1/restores', { volume: 'nope', snapshot: 'base', target: targetPath }, 404, 'an unknown volume'],
    ['/api/v1/restores', { volume: 'vol0', at: 'yesterday', target: targetPath }, 400, 'a bad instant'],
    ['/api/v1/restores', { volume: 'vol0', sequence: 'one', target: targetPath }, 400, 'a sequence of the wrong type'],
    ['/api/v1/restores', { volume: 'vol0', snapshot: 'base', target: targetPath, extra: 1 }, 400, 'an unknown field'],
    ['/api/v1/verify', { volume: 'vol0', snapshot: 'base' }, 400, 'an internal verification takes no instant'],
    ['/api/v1/verify', { volume: 'vol0', against: `${files}/nonexistent.img` }, 400, 'a missing file to compare with'],
    ['/api/v1/seeds', { volume: 'vol0' }, 400, 'a seed without source'],
    ['/api/v1/restores', { volume: 'vol0', snapshot: 'base', target: 'nbd://127.0.0.1:1/x' }, 400, 'an NBD server that is not there'],
  ];
  for (const [url, body, status, what] of bad) {
    const response = await call(app, 'POST', url, body);
    t.equal(response.statusCode, status, `${what}: ${response.body}`);
    t.type((response.json() as { error?: { message?: string } }).error?.message, 'string');
  }
  t.equal((await call(app, 'GET', '/api/v1/jobs/restore-20260101-000000-abcdef')).statusCode, 404, 'an unknown job');
  t.equal((await call(app, 'GET', '/api/v1/jobs/..%2F..%2Fetc')).statusCode, 400, 'a job id that is not one');
  t.equal(errorCode(await call(app, 'DELETE', `/api/v1/jobs/${job.id}`)), 'invalid-request', 'a finished job cannot be cancelled');
});

t.test('retention: the defaults, a round trip, and nonsense refused in words', async (t) => {
  const { app, appliance } = await startApi(t);
  const dataDirectory = appliance.store.dataDirectory;
  const first = await call(app, 'GET', '/api/v1/volumes/vol0/retention');
  t.equal(first.statusCode, 200);
  const defaults = first.json() as RetentionPolicy;
  t.same({ ...defaults, maxHistoryBytes: 0 }, { ...defaultRetentionPolicy(0), maxHistoryBytes: 0 }, 'a new volume gets the defaults');
  const freeNowBytes = statfsFreeBytes(dataDirectory);
  t.ok(Math.abs(defaults.maxHistoryBytes - 0.8 * freeNowBytes) <= 0.02 * freeNowBytes, `cap ${defaults.maxHistoryBytes} is 80% of the ${freeNowBytes} bytes free (within 2%: other tests share the disk)`);

  const events: unknown[] = [];
  const unsubscribe = appliance.events.subscribe((event) => event.type === 'retention-changed' && events.push(event));
  const wanted: RetentionPolicy = {
    keepAllSeconds: 6 * 3600,
    tiers: [
      { every: 900, keepSeconds: 2 * 86_400 },
      { every: 'daily', keepSeconds: 60 * 86_400 },
      { every: 'monthly', keepSeconds: 365 * 86_400 },
    ],
    maxHistoryBytes: 10 * 1024 * MiB,
    reserve: { bytes: 512 * MiB },
    requiredWindowSeconds: 3600,
  };
  const put = await call(app, 'PUT', '/api/v1/volumes/vol0/retention', wanted);
  t.equal(put.statusCode, 200, put.body);
  t.same(put.json(), wanted, 'the stored policy is the answer');
  t.same((await call(app, 'GET', '/api/v1/volumes/vol0/retention')).json(), wanted, 'read back');
  t.same((await call(app, 'GET', '/api/v1/volumes/vol0')).json().retention.policy, wanted, 'and in the volume');
  t.same(JSON.parse(fs.readFileSync(`${dataDirectory}/volumes/vol0/retention.json`, 'utf8')), { formatVersion: 1, policy: wanted }, 'and in retention.json');
  unsubscribe();
  t.match(events, [{ type: 'retention-changed', volume: 'vol0', policy: wanted }], 'an event tells the console');

  const withChange = (change: Record<string, unknown>): Record<string, unknown> => ({ ...wanted, ...change });
  const withoutField = (field: string): Record<string, unknown> => Object.fromEntries(Object.entries(wanted).filter(([key]) => key !== field));
  const nonsense: Array<[string, unknown, RegExp]> = [
    ['a negative duration', withChange({ keepAllSeconds: -3600 }), /^retention policy: keepAllSeconds must be a whole, non-negative number of seconds$/],
    ['a negative tier duration', withChange({ tiers: [{ every: 'daily', keepSeconds: -86_400 }] }), /tier 1 \(daily\) keepSeconds must be a whole, non-negative number of seconds/],
    [
      'a finer tier kept longer than a coarser one after it',
      withChange({ tiers: [{ every: 'hourly', keepSeconds: 90 * 86_400 }, { every: 'daily', keepSeconds: 30 * 86_400 }] }),
      /tier 2 \(daily\): kept for 2592000 s, not longer than the finer tier before it \(7776000 s\)/,
    ],
    ['tiers out of order', withChange({ tiers: [{ every: 'monthly', keepSeconds: 365 * 86_400 }, { every: 'daily', keepSeconds: 400 * 86_400 }] }), /tier 2 \(daily\): tiers go from finer to coarser periods/],
    ['a reserve over 50%', withChange({ reserve: { percent: 75 } }), /the reserve is 0 to 50% of the file system/],
    ['a cap under 64 MiB', withChange({ maxHistoryBytes: 1000 }), /maxHistoryBytes must be a whole number of at least 67108864 bytes/],
    ['a fraction of a second', withChange({ keepAllSeconds: 1.5 }), /^keepAllSeconds must be a whole number$/],
    ['a period nobody knows', withChange({ tiers: [{ every: 'fortnightly', keepSeconds: 90 * 86_400 }] }), /^tiers\[0\]\.every must be: hourly, daily, weekly, monthly, yearly \(UTC; weeks start on Monday\), or a fixed period in whole seconds$/],
    ['a reserve of both kinds', withChange({ reserve: { percent: 5, bytes: 1 } }), /^reserve must be: \{"percent": P\} with P from 0 to 50/],
    ['a reserve of neither kind', withChange({ reserve: 5 }), /^reserve must be: /],
    ['a missing field', withoutField('maxHistoryBytes'), /^maxHistoryBytes is missing$/],
    ['a missing tier field', withChange({ tiers: [{ every: 'daily' }] }), /^tiers\[0\]\.keepSeconds is missing$/],
    ['an unknown field', withChange({ colour: 'red' }), /^colour is not a field here \(the fields are keepAllSeconds, tiers, maxHistoryBytes, reserve, requiredWindowSeconds\)$/],
    ['an unknown tier field', withChange({ tiers: [{ every: 'daily', keepSeconds: 86_400 * 40, keep: 1 }] }), /^tiers\[0\]\.keep is not a field here \(the fields are every, keepSeconds\)$/],
    ['tiers that are not a list', withChange({ tiers: { every: 'hourly', keepSeconds: 86_400 } }), /^tiers must be a list$/],
    ['a body that is not an object', [wanted], /^the body must be an object$/],
  ];
  for (const [what, body, message] of nonsense) {
    const response = await call(app, 'PUT', '/api/v1/volumes/vol0/retention', body);
    t.equal(response.statusCode, 400, what);
    t.equal(errorCode(response), 'invalid-request', what);
    t.match((response.json() as { error: { message: string } }).error.message, message, `${what}: ${(response.json() as { error: { message: string } }).error.message}`);
  }
  t.same((await call(app, 'GET', '/api/v1/volumes/vol0/retention')).json(), wanted, 'nothing refused changed the policy');
  t.equal(errorCode(await call(app, 'PUT', '/api/v1/volumes/nope/retention', wanted)), 'not-found', 'an unknown volume');
  t.equal(errorCode(await call(app, 'GET', '/api/v1/volumes/nope/retention')), 'not-found');
  t.match((await call(app, 'GET', '/api/v1/volumes/NO%20PE/retention')).json(), { error: { code: 'invalid-request', message: /^parameter volume must match pattern/ } }, 'a bad volume name');

  const created = await call(app, 'POST', '/api/v1/volumes', { name: 'data1', sizeBytes: 8 * MiB });
  t.same({ ...(created.json() as { retention: { policy: RetentionPolicy } }).retention.policy, maxHistoryBytes: 0 }, { ...defaultRetentionPolicy(0), maxHistoryBytes: 0 }, 'a volume made over the API gets the defaults');
});

function statfsFreeBytes(directory: string): number {
  const stats = fs.statfsSync(directory);
  return stats.bavail * stats.bsize;
}
