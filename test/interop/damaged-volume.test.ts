// One bad thing does not stop everything (issue 10 §6): the real appliance with two volumes, one
// of them damaged on disk so that it cannot open (a corrupt dirty region log, an unreadable
// index, a bad volume.json, a bad log segment header), and an exports.json that is damaged or
// holds a malformed entry.
//
// Invariants checked after every start on damaged files:
//   1. The appliance starts, and the healthy volume serves real clients (nbdinfo, qemu-io) with
//      its data intact; so does the view export of the healthy volume.
//   2. The damaged volume is `failed`, with an error naming the damaged file, in /health (503,
//      reasons), GET /volumes, GET /volumes/:volume and /metrics; it is not exported over NBD.
//   3. The view export of the damaged volume is `failed` with its error, and stays in exports.json.
//   4. An unreadable exports.json leaves the volumes serving, is reported in /health, and is never
//      lost: it is moved aside before the file is written again. A malformed entry fails only its export.
//   5. A failed export and a failed volume can be deleted.

import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { startAppliance, type Appliance } from '../support/appliance.js';
import { apiRequest } from '../support/api.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools, run } from '../support/tools.js';

const MiB = 1024 * 1024;

type TapTest = Parameters<Parameters<typeof t.test>[0]>[0];

interface HealthJson {
  status: string;
  reasons: string[];
  volumes: Array<{ name: string; state: string; failed: string | null }>;
  failedExports: Array<{ name: string; error: string }>;
  exportsFileError: string | null;
}

interface ExportJson {
  name: string;
  state: string;
  error: string | null;
}

async function health(appliance: Appliance): Promise<{ status: number; json: HealthJson }> {
  const response = await fetch(`${appliance.httpBase}/health`);
  return { status: response.status, json: (await response.json()) as HealthJson };
}

async function exportsOf(appliance: Appliance): Promise<ExportJson[]> {
  return (await apiRequest(appliance, 'GET', '/api/v1/exports')).json['exports'] as ExportJson[];
}

/** vol0 serves: its size over NBD, the pattern written to it, and its view export. */
async function assertHealthyVolumeServes(t: TapTest, appliance: Appliance): Promise<void> {
  const size = await run('nbdinfo', ['--size', appliance.uri('vol0')]);
  t.equal(size.code, 0, `nbdinfo vol0: ${size.stderr}`);
  t.equal(size.stdout.trim(), String(64 * MiB), 'vol0 has its size');
  const read = await run('qemu-io', ['-f', 'raw', '-r', appliance.uri('vol0'), '-c', 'read -P 0xa0 0 1M']);
  t.equal(read.code, 0, read.stderr);
  t.notMatch(read.stdout, /Pattern verification failed|error|failed/i, 'vol0 holds what was written to it');
  const view = await run('qemu-io', ['-f', 'raw', '-r', appliance.uri('vol0@good'), '-c', 'read -P 0xa0 0 1M']);
  t.equal(view.code, 0, view.stderr);
  t.notMatch(view.stdout, /Pattern verification failed|error|failed/i, 'the view of vol0 serves');
}

/** vol1 is failed with an error matching `error`, everywhere the appliance reports volumes. */
async function assertFailedVolume(t: TapTest, appliance: Appliance, error: RegExp): Promise<void> {
  const { status, json } = await health(appliance);
  t.equal(status, 503, '/health answers 503');
  t.equal(json.status, 'degraded');
  t.match(json.volumes.find((volume) => volume.name === 'vol1'), { state: 'failed', failed: error }, '/health: vol1 failed, with why');
  t.match(json.volumes.find((volume) => volume.name === 'vol0'), { state: 'open', failed: null }, '/health: vol0 open');
  t.ok(json.reasons.some((reason) => reason.startsWith('volume vol1:') && error.test(reason)), `/health reasons name vol1: ${json.reasons.join('; ')}`);

  const listed = await apiRequest(appliance, 'GET', '/api/v1/volumes');
  t.equal(listed.status, 200, 'GET /volumes answers');
  const volumes = listed.json['volumes'] as Array<{ name: string; state: string; error: string | null }>;
  t.same(volumes.map((volume) => volume.name), ['vol0', 'vol1'], 'both volumes are listed');
  t.match(volumes[1], { state: 'failed', error }, 'GET /volumes: vol1 failed');
  t.match(volumes[0], { state: 'open', error: null });
  const shown = await apiRequest(appliance, 'GET', '/api/v1/volumes/vol1');
  t.match(shown, { status: 200, json: { name: 'vol1', state: 'failed', error } }, 'GET /volumes/vol1');
  const snapshot = await apiRequest(appliance, 'POST', '/api/v1/volumes/vol1/snapshots', { name: 'later' });
  t.match(snapshot, { status: 503, json: { error: { code: 'volume-failed' } } }, 'operations on vol1 are refused as volume-failed');

  const metrics = await (await fetch(`${appliance.httpBase}/metrics`, { headers: { authorization: `Bearer ${appliance.token}` } })).text();
  t.match(metrics, /cdp_nbd_volume_failed\{volume="vol1"\} 1/, '/metrics: vol1 failed');
  t.match(metrics, /cdp_nbd_volume_failed\{volume="vol0"\} 0/, '/metrics: vol0 not');

  const nbd = await run('nbdinfo', ['--size', appliance.uri('vol1')]);
  t.not(nbd.code, 0, 'vol1 is not exported');
  const exports = await exportsOf(appliance);
  t.match(exports.find((entry) => entry.name === 'vol1@first'), { state: 'failed', error: /vol1/ }, 'the view of vol1 is failed');
  t.match(exports.find((entry) => entry.name === 'vol0@good'), { state: 'serving', error: null });
  t.ok(json.failedExports.some((failure) => failure.name === 'vol1@first'), '/health lists the failed export');
  const kept = JSON.parse(fs.readFileSync(path.join(appliance.dataDirectory, 'exports.json'), 'utf8')) as { exports: Array<{ name: string }> };
  t.same(kept.exports.map((entry) => entry.name).sort(), ['vol0@good', 'vol1@first'], 'exports.json keeps the failed export');
}


/** Overwrite bytes of a file, returning a function that puts them back. */
function damage(file: string, positionBytes: number, garbage: Buffer): () => void {
  const handle = fs.openSync(file, 'r+');
  const original = Buffer.alloc(garbage.length);
  const readBytes = fs.readSync(handle, original, 0, garbage.length, positionBytes);
  fs.writeSync(handle, garbage, 0, garbage.length, positionBytes);
  fs.closeSync(handle);
  return () => {
    const restore = fs.openSync(file, 'r+');
    fs.writeSync(restore, original, 0, readBytes, positionBytes);
    fs.ftruncateSync(restore, Math.max(fs.fstatSync(restore).size, positionBytes + readBytes));
    fs.closeSync(restore);
  };
}

function replaceFile(file: string, content: string): () => void {
  const original = fs.readFileSync(file);
  fs.writeFileSync(file, content);
  return () => fs.writeFileSync(file, original);
}

/** Two volumes with data, a snapshot of each, a view export of each; stopped cleanly. */
async function prepareDataFolder(t: TapTest, dataDirectory: string): Promise<void> {
  const appliance = await startAppliance(t, { dataDirectory });
  t.equal((await apiRequest(appliance, 'POST', '/api/v1/volumes', { name: 'vol1', sizeBytes: 64 * MiB })).status, 201, 'vol1 created');
  for (const [volume, pattern] of [['vol0', '0xa0'], ['vol1', '0xb1']] as const) {
    const write = await run('qemu-io', ['-f', 'raw', appliance.uri(volume), '-c', `write -P ${pattern} 0 1M`]);
    t.equal(write.code, 0, write.stderr);
  }
  for (const [volume, snapshot] of [['vol0', 'good'], ['vol1', 'first']] as const) {
    t.equal((await apiRequest(appliance, 'POST', `/api/v1/volumes/${volume}/snapshots`, { name: snapshot })).status, 201);
    t.equal((await apiRequest(appliance, 'POST', '/api/v1/exports', { volume, snapshot })).status, 201, `export ${volume}@${snapshot}`);
  }
  t.equal(await appliance.stop(), 0, 'stopped cleanly');
}

t.test('a volume that cannot open is failed; the other volume and its exports serve real clients', async (t) => {
  if (!requireTools(t, ['nbdinfo', 'qemu-io'])) return;
  const dataDirectory = temporaryDirectory(t);
  await prepareDataFolder(t, dataDirectory);
  const volumeDirectory = path.join(dataDirectory, 'volumes', 'vol1');

  const damages: Array<{ what: string; error: RegExp; apply: () => () => void }> = [
    { what: 'both headers of the dirty region log overwritten', error: /drl: no valid dirty region log header/, apply: () => damage(path.join(volumeDirectory, 'drl'), 0, Buffer.alloc(8192, 0x5c)) },
    { what: "the index's CURRENT file names no manifest", error: /Database failed to open: .*MANIFEST-999999/, apply: () => replaceFile(path.join(volumeDirectory, 'index', 'CURRENT'), 'MANIFEST-999999\n') },
    { what: 'volume.json is not JSON', error: /volume\.json: not readable JSON/, apply: () => replaceFile(path.join(volumeDirectory, 'volume.json'), '{"formatVersion": 2, "name": ') },
    { what: 'the first log segment has a bad magic', error: /0000000000000001\.wlog: bad magic/, apply: () => damage(path.join(volumeDirectory, 'log', '0000000000000001.wlog'), 0, Buffer.from('XXXXXXXX')) },
  ];
  for (const { what, error, apply } of damages) {
    await t.test(what, async (t) => {
      const repair = apply();
      const appliance = await startAppliance(t, { dataDirectory });
      await assertHealthyVolumeServes(t, appliance);
      await assertFailedVolume(t, appliance, error);
      t.equal(await appliance.stop(), 0, 'stops cleanly with a failed volume');
      repair();
    });
  }

  await t.test('repaired, vol1 opens again; damaged again, its export and then the volume can be deleted', async (t) => {
    const appliance = await startAppliance(t, { dataDirectory });
    t.equal((await health(appliance)).status, 200, 'healthy once the files are repaired');
    const read = await run('qemu-io', ['-f', 'raw', '-r', appliance.uri('vol1@first'), '-c', 'read -P 0xb1 0 1M']);
    t.notMatch(read.stdout, /Pattern verification failed|error|failed/i, 'the view of vol1 was kept through its failures, and serves');
    t.equal(await appliance.stop(), 0);

    damage(path.join(volumeDirectory, 'drl'), 0, Buffer.alloc(8192, 0x5c));
    const damaged = await startAppliance(t, { dataDirectory });
    t.equal((await apiRequest(damaged, 'DELETE', '/api/v1/exports/vol1@first')).status, 204, 'the failed export is deleted');
    t.same((await exportsOf(damaged)).map((entry) => entry.name), ['vol0', 'vol0@good'], 'it is gone from the list');
    t.equal((await apiRequest(damaged, 'DELETE', '/api/v1/volumes/vol1')).status, 204, 'the failed volume is deleted');
    const after = await health(damaged);
    t.match(after, { status: 200, json: { status: 'ok', reasons: [] } }, 'healthy again');
    t.same(after.json.volumes.map((volume) => volume.name), ['vol0']);
    t.equal(await damaged.stop(), 0);
  });
});

t.test('a damaged exports.json: the volumes serve, /health says why, and the file is kept', async (t) => {
  if (!requireTools(t, ['nbdinfo', 'qemu-io'])) return;
  const dataDirectory = temporaryDirectory(t);
  await prepareDataFolder(t, dataDirectory);
  const exportsPath = path.join(dataDirectory, 'exports.json');
  const good = JSON.parse(fs.readFileSync(exportsPath, 'utf8')) as { formatVersion: number; exports: Array<Record<string, unknown>> };

  await t.test('a malformed entry fails only its export, and stays in the file', async (t) => {
    const broken = { ...good.exports[0], name: 'broken', sequence: 'seven' };
    fs.writeFileSync(exportsPath, JSON.stringify({ ...good, exports: [...good.exports, broken] }));
    const appliance = await startAppliance(t, { dataDirectory });
    await assertHealthyVolumeServes(t, appliance);
    const exports = await exportsOf(appliance);
    t.match(exports.find((entry) => entry.name === 'broken'), { state: 'failed', error: /malformed: sequence is not a whole number/ });
    t.match(exports.find((entry) => entry.name === 'vol1@first'), { state: 'serving' });
    const { status, json } = await health(appliance);
    t.equal(status, 503);
    t.ok(json.reasons.some((reason) => reason.startsWith('export broken:')), json.reasons.join('; '));
    t.equal((await apiRequest(appliance, 'POST', '/api/v1/exports', { volume: 'vol1', snapshot: 'first', name: 'another' })).status, 201, 'a new export');
    const written = JSON.parse(fs.readFileSync(exportsPath, 'utf8')) as { exports: Array<Record<string, unknown>> };
    t.same(written.exports.find((entry) => entry['name'] === 'broken'), broken, 'the malformed entry was written back as it was');
    t.equal((await apiRequest(appliance, 'DELETE', '/api/v1/exports/broken')).status, 204, 'and can be deleted');
    t.equal((await apiRequest(appliance, 'DELETE', '/api/v1/exports/another')).status, 204);
    t.equal(await appliance.stop(), 0);
  });

  await t.test('an exports.json that is not JSON', async (t) => {
    const garbage = '{"formatVersion": 1, "exports": [{"name": "vol0@good", ';
    fs.writeFileSync(exportsPath, garbage);
    const appliance = await startAppliance(t, { dataDirectory });
    const size = await run('nbdinfo', ['--size', appliance.uri('vol1')]);
    t.equal(size.code, 0, 'vol1 serves');
    const read = await run('qemu-io', ['-f', 'raw', '-r', appliance.uri('vol0'), '-c', 'read -P 0xa0 0 1M']);
    t.notMatch(read.stdout, /Pattern verification failed|error|failed/i, 'vol0 serves its data');
    const { status, json } = await health(appliance);
    t.equal(status, 503);
    t.match(json.exportsFileError, /exports\.json could not be read.*not JSON/);
    t.ok(json.reasons.includes(json.exportsFileError!), 'it is a reason');
    t.equal(fs.readFileSync(exportsPath, 'utf8'), garbage, 'the damaged file is left as it is');

    t.equal((await apiRequest(appliance, 'POST', '/api/v1/exports', { volume: 'vol0', snapshot: 'good', name: 'fresh' })).status, 201, 'exports can still be made');
    const aside = fs.readdirSync(dataDirectory).filter((name) => name.startsWith('exports.json.damaged-'));
    t.equal(aside.length, 1, 'the damaged file was moved aside');
    t.equal(fs.readFileSync(path.join(dataDirectory, aside[0]!), 'utf8'), garbage, 'with its content');
    t.same((JSON.parse(fs.readFileSync(exportsPath, 'utf8')) as { exports: Array<{ name: string }> }).exports.map((entry) => entry.name), ['fresh']);
    t.match((await health(appliance)).json.exportsFileError, /moved to exports\.json\.damaged-/, '/health says where it went');
    t.equal(await appliance.stop(), 0);
  });
});
