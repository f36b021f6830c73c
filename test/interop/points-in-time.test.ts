// Points in time with real clients against the real appliance: write with qemu-io, snapshot over
// the API, overwrite, export the snapshot, and check it with qemu-img compare against a copy made
// at the snapshot; nbdinfo --map for holes and for qemu:dirty-bitmap:<snapshot>; a clone takes
// writes the volume never sees; all of it survives a restart.

import t from 'tap';
import { spawn } from 'node:child_process';
import { startAppliance } from '../support/appliance.js';
import { apiRequest } from '../support/api.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { waitFor } from '../support/wait.js';
import { requireTools, run } from '../support/tools.js';

const api = apiRequest;

interface MapEntry {
  offset: number;
  length: number;
  type: number;
  description: string;
}

async function map(uri: string, context?: string): Promise<MapEntry[]> {
  const result = await run('nbdinfo', [context === undefined ? '--map' : `--map=${context}`, '--json', uri]);
  if (result.code !== 0) throw new Error(result.stderr);
  return JSON.parse(result.stdout) as MapEntry[];
}

t.test('snapshot, overwrite, export the snapshot: it is the disk as it was', async (t) => {
  if (!requireTools(t, ['qemu-io', 'qemu-img', 'nbdinfo', 'nbdcopy'])) return;
  const directory = temporaryDirectory(t);
  const dataDirectory = `${directory}/data`;
  let appliance = await startAppliance(t, { dataDirectory });
  const MiB = 1024 * 1024;

  // 1. Data, then a copy of the disk as it is, then the snapshot.
  const write = await run('qemu-io', ['-f', 'raw', appliance.uri(), '-c', 'write -P 0x11 0 4M', '-c', 'write -P 0x22 8M 1M', '-c', 'write -z 1M 64k']);
  t.equal(write.code, 0, write.stderr);
  const reference = `${directory}/at-snapshot.img`;
  t.equal((await run('nbdcopy', [appliance.uri(), reference])).code, 0, 'a copy of the disk at the snapshot');
  const snapshot = await api(appliance, 'POST', '/api/v1/volumes/vol0/snapshots', { name: 'before-deploy', note: 'known good' });
  t.equal(snapshot.status, 201);

  // 2. The "bad deploy": overwrite some, trim some, write new places.
  const overwrite = await run('qemu-io', ['-f', 'raw', appliance.uri(), '-c', 'write -P 0x33 512k 1M', '-c', 'discard 8M 512k', '-c', 'write -P 0x44 20M 256k']);
  t.equal(overwrite.code, 0, overwrite.stderr);

  // 3. Export the snapshot and compare it with the copy.
  const created = await api(appliance, 'POST', '/api/v1/exports', { volume: 'vol0', snapshot: 'before-deploy' });
  t.equal(created.status, 201, JSON.stringify(created.json));
  const viewUri = created.json.uri as string;
  t.equal(viewUri, appliance.uri('vol0@before-deploy'));
  const compare = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', reference, viewUri]);
  t.equal(compare.code, 0, `qemu-img compare: ${compare.stdout}${compare.stderr}`);
  const live = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', reference, appliance.uri()]);
  t.equal(live.code, 1, 'while the live volume has moved on');

  // 4. nbdinfo: the view is read-only, listed with its instant; holes where nothing was written.
  t.equal((await run('nbdinfo', ['--is=read-only', viewUri])).code, 0, 'the view is read-only');
  const list = await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${appliance.nbdPort}`]);
  const listed = JSON.parse(list.stdout) as { exports: Array<{ 'export-name': string; description: string }> };
  const viewEntry = listed.exports.find((entry) => entry['export-name'] === 'vol0@before-deploy');
  t.match(viewEntry?.description, /cdp-nbd volume vol0 at \d{4}-\d\d-\d\dT.*\(snapshot before-deploy/, 'NBD_OPT_LIST says volume and instant');
  const viewMap = await map(viewUri);
  const hole = viewMap.find((entry) => entry.offset <= 12 * MiB && entry.offset + entry.length >= 13 * MiB);
  t.equal(hole?.type, 3, 'never written up to the snapshot: a hole that reads as zeroes');
  const data = viewMap.find((entry) => entry.offset <= 2 * MiB && entry.offset + entry.length > 2 * MiB);
  t.equal(data?.type, 0, 'written before the snapshot: data');

  // 5. Changed-block tracking: exactly what changed since the snapshot is dirty.
  const dirty = (await map(appliance.uri(), 'qemu:dirty-bitmap:before-deploy')).filter((entry) => entry.type === 1);
  t.same(
    dirty.map((entry) => [entry.offset, entry.length]),
    [
      [512 * 1024, MiB],
      [8 * MiB, 512 * 1024],
      [20 * MiB, 256 * 1024],
    ],
    'qemu:dirty-bitmap:before-deploy marks the overwritten, trimmed and new ranges',
  );
  const qemuMap = await run('qemu-img', ['map', '--output=json', '-f', 'raw', viewUri]);
  t.equal(qemuMap.code, 0, 'qemu-img map reads the view');

  // 6. A clone: writable, and the volume never sees its writes.
  const clone = await api(appliance, 'POST', '/api/v1/exports', { volume: 'vol0', snapshot: 'before-deploy', writable: true, name: 'repair' });
  t.equal(clone.status, 201);
  const cloneWrite = await run('qemu-io', ['-f', 'raw', appliance.uri('repair'), '-c', 'write -P 0x55 0 64k', '-c', 'read -P 0x55 0 64k', '-c', 'read -P 0x11 64k 64k']);
  t.equal(cloneWrite.code, 0, cloneWrite.stderr);
  t.notMatch(cloneWrite.stdout, /verification failed/i, 'the clone reads its own writes and the snapshot beneath');
  t.match(cloneWrite.stdout, /read 65536\/65536 bytes at offset 65536/, 'qemu-io read the clone');
  const untouched = await run('qemu-io', ['-f', 'raw', '-r', appliance.uri(), '-c', 'read -P 0x11 0 64k']);
  t.equal(untouched.code, 0, untouched.stderr);
  t.match(untouched.stdout, /read 65536\/65536 bytes at offset 0/, 'qemu-io read the volume');
  t.notMatch(untouched.stdout, /verification failed/i, 'the volume did not see the clone');

  // 7. A client attached: deleting the export is refused, saying who.
  const holder = spawn('nbdsh', ['-u', viewUri, '-c', 'import time; time.sleep(60)'], { env: { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` } });
  t.teardown(() => holder.kill());
  // nbdsh (Python) may take seconds to start on a busy machine: wait until the export shows it.
  await waitFor('nbdsh attached to the view', async () => {
    const listed = (await api(appliance, 'GET', '/api/v1/exports')).json.exports as { name: string; clients: unknown[] }[];
    return listed.find((shown) => shown.name === 'vol0@before-deploy')?.clients.length ? true : undefined;
  }, 30_000, 100);
  const refused = await api(appliance, 'DELETE', '/api/v1/exports/vol0@before-deploy');
  t.equal(refused.status, 409, 'refused while a client is attached');
  t.match((refused.json.error as { message: string }).message, /client/, 'the refusal names the clients');
  holder.kill();

  // 8. After a restart: the exports come back, the view is the same, the dirty bitmap too.
  t.equal(await appliance.stop(), 0);
  appliance = await startAppliance(t, { dataDirectory });
  const compareAgain = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', reference, appliance.uri('vol0@before-deploy')]);
  t.equal(compareAgain.code, 0, `the view after a restart: ${compareAgain.stdout}`);
  const dirtyAgain = (await map(appliance.uri(), 'qemu:dirty-bitmap:before-deploy')).filter((entry) => entry.type === 1);
  t.equal(dirtyAgain.length, 3, 'the dirty bitmap survives the restart');
  const cloneAgain = await run('qemu-io', ['-f', 'raw', '-r', appliance.uri('repair'), '-c', 'read -P 0x55 0 64k']);
  t.equal(cloneAgain.code, 0, cloneAgain.stderr);
  t.match(cloneAgain.stdout, /read 65536\/65536 bytes at offset 0/, 'qemu-io read the clone after the restart');
  t.notMatch(cloneAgain.stdout, /verification failed/i, 'the clone kept its writes');
  t.equal((await api(appliance, 'DELETE', '/api/v1/exports/repair')).status, 204);
});
