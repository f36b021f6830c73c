// The delta-map index on a full disk (issue 10 §6), on the real appliance: vol0's index folder lives
// on a small ext4 file system of its own, nearly filled by a ballast file, so LevelDB's writes fail
// with ENOSPC while the log and the live image have room. An NBD client keeps writing.
//
// Invariants checked:
//   1. Cuts fail, and writes go on until the in-memory tail is full; then they are refused with
//      NBD_ENOSPC, and the tail never holds more than its bound.
//   2. /health (503, the reasons) and /metrics report it while it lasts; reads still work.
//   3. Once the ballast is gone the failed cuts are tried again, the index catches up by itself,
//      writes are taken again and /health is ok.
//   4. Nothing acknowledged is lost, through a restart of the appliance.

import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { NbdClient, NbdRequestError } from '../../transfer/nbd-client.js';
import { startAppliance, type Appliance } from '../support/appliance.js';
import { apiRequest } from '../support/api.js';
import { mountSmallFileSystem } from '../support/small-file-system.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools } from '../support/tools.js';
import { sleep } from '../support/waits.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const nbdEnospc = 28;
const tailRecordCountMax = 16 * 4096; // indexLimits.tailRecordCountMax
const requestsInFlightMax = 256;

interface IndexFigures {
  tailRecordCount: number;
  cutsFailedInARow: number;
  cutFailuresTotal: number;
  refusingWritesForIndex: boolean;
}

async function indexFigures(appliance: Appliance): Promise<IndexFigures> {
  const volume = await apiRequest(appliance, 'GET', '/api/v1/volumes/vol0');
  return volume.json['history'] as unknown as IndexFigures;
}

async function health(appliance: Appliance): Promise<{ status: number; reasons: string[] }> {
  const response = await fetch(`${appliance.httpBase}/health`);
  return { status: response.status, reasons: ((await response.json()) as { reasons: string[] }).reasons };
}

async function metrics(appliance: Appliance): Promise<string> {
  const token = appliance.token;
  return (await fetch(`${appliance.httpBase}/metrics`, { headers: { authorization: `Bearer ${token}` } })).text();
}

function pattern(byte: number): Buffer {
  return Buffer.alloc(64 * KiB, byte);
}

/**
 * Small writes (header-only log records) with many in flight, until one is refused or `count`
 * are taken. Returns how many were taken and the first refusal.
 */
async function writeUntilRefused(client: NbdClient, count: number): Promise<{ taken: number; refusal: NbdRequestError | null }> {
  let taken = 0;
  let refusal: NbdRequestError | null = null;
  let issued = 0;
  const inFlight = new Set<Promise<void>>();
  while (issued < count && refusal === null) {
    const offsetBytes = MiB + (issued % 4096) * 4 * KiB;
    issued++;
    const request: Promise<void> = client.writeZeroes(offsetBytes, 4 * KiB).then(
      () => void taken++,
      (error: unknown) => {
        if (error instanceof NbdRequestError) refusal ??= error;
        else throw error;
      },
    );
    const tracked = request.finally(() => inFlight.delete(tracked));
    inFlight.add(tracked);
    if (inFlight.size >= requestsInFlightMax) await Promise.race(inFlight);
  }
  await Promise.all(inFlight);
  return { taken, refusal };
}

t.test('an index whose disk is full: writes are refused once the tail is full, reported, and taken again once there is room', async (t) => {
  if (!requireTools(t, ['mkfs.ext4'])) return;
  const dataDirectory = temporaryDirectory(t);
  const first = await startAppliance(t, { dataDirectory });
  t.equal(await first.stop(), 0);

  // vol0's index moves to a small file system of its own (the volume folder links to it).
  const disk = await mountSmallFileSystem(t, temporaryDirectory(t, 'cdp-nbd-index-disk-'), 16 * MiB);
  if (disk === null) return;
  const indexDirectory = path.join(dataDirectory, 'volumes', 'vol0', 'index');
  const movedIndex = path.join(disk.mountPoint, 'index');
  fs.cpSync(indexDirectory, movedIndex, { recursive: true });
  fs.rmSync(indexDirectory, { recursive: true });
  fs.symlinkSync(movedIndex, indexDirectory);
  const ballast = path.join(disk.mountPoint, 'ballast');

  let appliance = await startAppliance(t, { dataDirectory });
  const client = await NbdClient.connect({ kind: 'unix', path: appliance.nbdSocket }, { exportName: 'vol0' });
  t.teardown(() => client.destroy());
  await client.write(0, pattern(0x3c), { fua: true });
  fs.writeFileSync(ballast, Buffer.alloc(Math.max(0, disk.space().freeBytes - 64 * KiB)));
  t.ok(disk.space().freeBytes < 256 * KiB, `the index's disk is nearly full (${disk.space().freeBytes} bytes free)`);

  const { taken, refusal } = await writeUntilRefused(client, 4 * tailRecordCountMax);
  t.ok(refusal !== null, `a write was refused after ${taken} were taken`);
  t.equal(refusal?.errno, nbdEnospc, 'with NBD_ENOSPC');
  const full = await indexFigures(appliance);
  t.ok(full.cutFailuresTotal >= 1, `cuts failed (${full.cutFailuresTotal})`);
  t.ok(full.tailRecordCount <= tailRecordCountMax, `the tail is bounded (${full.tailRecordCount} records)`);
  t.ok(full.refusingWritesForIndex, 'the volume says it refuses writes for its index');
  const refused = await health(appliance);
  t.equal(refused.status, 503, '/health answers 503');
  t.ok(refused.reasons.some((reason) => /volume vol0: cutting records into the delta-map index fails .*No space left on device/i.test(reason)), refused.reasons.join('; '));
  t.ok(refused.reasons.some((reason) => /volume vol0: writes are refused \(ENOSPC\): the index's in-memory tail is full/.test(reason)), 'and why writes are refused');
  const failing = await metrics(appliance);
  t.match(failing, /cdp_index_refusing_writes\{volume="vol0"\} 1/, '/metrics: refusing writes');
  t.match(failing, /cdp_index_cut_failures_total\{volume="vol0"\} [1-9]/, '/metrics: cut failures counted');
  t.ok((await client.read(0, 64 * KiB)).equals(pattern(0x3c)), 'reads work');
  await client.flush();

  fs.rmSync(ballast);
  let caughtUp = false;
  for (const deadline = Date.now() + 60_000; Date.now() < deadline && !caughtUp; ) {
    await sleep(500);
    const figures = await indexFigures(appliance);
    caughtUp = figures.cutsFailedInARow === 0 && figures.tailRecordCount < 2 * 4096;
  }
  t.ok(caughtUp, 'with room again, the index catches up by itself (retried with backoff)');
  t.same(await health(appliance), { status: 200, reasons: [] }, '/health is ok again');
  t.match(await metrics(appliance), /cdp_index_refusing_writes\{volume="vol0"\} 0/);
  await client.write(64 * KiB, pattern(0x5d), { fua: true });
  t.pass('writes are taken again');
  await client.disconnect();
  t.equal(await appliance.stop(), 0, 'stops cleanly');

  appliance = await startAppliance(t, { dataDirectory });
  const reader = await NbdClient.connect({ kind: 'unix', path: appliance.nbdSocket }, { exportName: 'vol0' });
  t.ok((await reader.read(0, 64 * KiB)).equals(pattern(0x3c)), 'the first write survived');
  t.ok((await reader.read(64 * KiB, 64 * KiB)).equals(pattern(0x5d)), 'and the one after the index caught up');
  await reader.disconnect();
  t.equal(await appliance.stop(), 0);
});
