// Retention end to end with real clients (issue 9, section 5). qemu-io writes patterns into a
// 64 MiB volume; at several instants a snapshot and a copy saved with nbdcopy. The policy keeps
// every write for 2 s, then a point every second for 8 s and every 4 s for 16 s, so the engine
// packs the fine windows into intervals, merges the 1 s intervals once their points expire, and
// folds the oldest into the base image once two early snapshots are deleted (the test waits for
// each in the retention figures). It proves:
//   - every retained snapshot reads equal to its saved copy (qemu-img compare) once its history is
//     packed, merged and folded, after an orderly restart, and after kill -9 while a pack is being
//     written; so does the live volume after that crash;
//   - an instant inside a packed interval (between two writes, no kept point showing the same data)
//     is refused with 410 expired, and error.details names the kept instants on either side, which
//     can be exported; instants of deleted snapshots older than the horizon are refused the same way;
//   - the horizon moves past the deleted snapshots, and the oldest recoverable instant the API
//     reports can be exported;
//   - the engine reports no failed operation.

import fs from 'node:fs';
import t, { type Test } from 'tap';
import { apiRequest } from '../support/api.js';
import { startAppliance, type Appliance } from '../support/appliance.js';
import { checkInstant, retentionFigures, waitFor, type InstantCheck } from '../support/retention.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools, run } from '../support/tools.js';

const MiB = 1024 * 1024;
const finestPeriodMicros = 1_000_000;
const policy = {
  keepAllSeconds: 2,
  tiers: [
    { every: 1, keepSeconds: 8 },
    { every: 4, keepSeconds: 16 },
  ],
  maxHistoryBytes: 1024 * MiB,
  reserve: { percent: 0 },
  requiredWindowSeconds: 0,
};

interface Saved {
  name: string;
  micros: number;
  copy: string;
}

t.test('retention with qemu-io and qemu-img: packed, merged, folded, restarted, killed mid-pack', async (t) => {
  if (!requireTools(t, ['qemu-io', 'qemu-img', 'nbdcopy'])) return;
  const directory = temporaryDirectory(t);
  const dataDirectory = `${directory}/data`;
  let appliance = await startAppliance(t, { dataDirectory, extraArguments: ['--required-window', '0'] });
  const put = await apiRequest(appliance, 'PUT', '/api/v1/volumes/vol0/retention', policy);
  t.equal(put.status, 200, `the policy: ${JSON.stringify(put.json)}`);

  // 1. Six rounds, each starting a period of the finest tier: a write, an instant noted, a second
  //    write in the same period, then a snapshot and a copy. The noted instant shows data no kept
  //    point shows.
  const saved: Saved[] = [];
  const between: Array<{ micros: number; round: number }> = [];
  for (let round = 0; round < 6; round++) {
    await sleepUntilPeriodStart();
    await qemuIo(t, appliance, [`write -P ${0x10 + round} ${round * 3}M 4M`, `write -z ${round * 3 + 1}M 256k`, `write -P ${0x20 + round} 40M 1M`]);
    const micros = Date.now() * 1000;
    await qemuIo(t, appliance, [`write -P ${0x30 + round} ${48 * MiB + round * 256 * 1024} 256k`, `discard ${round * 3 + 2}M 128k`]);
    if (Math.floor(micros / finestPeriodMicros) === Math.floor((Date.now() * 1000) / finestPeriodMicros)) between.push({ micros, round });
    saved.push(await snapshotAndCopy(t, appliance, `round-${round}`, directory));
  }
  t.ok(between.length > 0, 'an instant between two writes of one period of the finest tier, noted');
  // Writes across several 1 s points and a 4 s point, with no snapshot: once the 1 s points
  // expire, their intervals merge into the one the 4 s point closes.
  for (let step = 0; step < 16; step++) {
    await qemuIo(t, appliance, [`write -P ${0x50 + step} ${20 * MiB + step * 512 * 1024} 1M`]);
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  const afterStream = await snapshotAndCopy(t, appliance, 'after-stream', directory);

  // 2. Delete the two oldest snapshots: the horizon may then pass them. Wait for the engine to
  //    pack, merge and fold, and for the oldest recoverable instant to pass them.
  for (const name of ['round-0', 'round-1']) t.equal((await apiRequest(appliance, 'DELETE', `/api/v1/volumes/vol0/snapshots/${name}`)).status, 204, `${name} deleted`);
  const folded = await waitFor(async () => {
    const figures = await retentionFigures(appliance);
    const { packs, merges, folds } = figures.statistics;
    return packs > 0 && merges > 0 && folds > 0 && figures.oldestRecoverableMicros > saved[1]!.micros;
  }, 75_000);
  const figures = await retentionFigures(appliance);
  t.ok(folded, `packed, merged and folded past the deleted snapshots: ${JSON.stringify({ ...figures.statistics, intervalCount: figures.intervalCount, oldestRecoverableMicros: figures.oldestRecoverableMicros, deleted: saved.slice(0, 2).map((snapshot) => snapshot.micros) })}`);
  t.ok(figures.intervalCount > 0, `history between the kept points is in packed intervals (${figures.intervalCount})`);
  const oldest = await apiRequest(appliance, 'POST', '/api/v1/exports', { volume: 'vol0', at: figures.oldestRecoverableMicros });
  t.equal(oldest.status, 201, `the oldest recoverable instant the API reports can be exported: ${JSON.stringify(oldest.json)}`);
  if (oldest.status === 201) await apiRequest(appliance, 'DELETE', `/api/v1/exports/${encodeURIComponent(oldest.json.name as string)}?force=true`);

  // 3. What is kept verifies; what is not is refused, naming the kept instants around it.
  const retained = [...saved.slice(2), afterStream];
  const expiredInstant = between.find((instant) => instant.round >= 3) ?? between[between.length - 1]!;
  await checkEverything(t, appliance, 'packed, merged and folded', retained, expiredInstant.micros, saved.slice(0, 2));

  // 4. The same after an orderly restart.
  t.equal(await appliance.stop(), 0, 'an orderly stop');
  appliance = await startAppliance(t, { dataDirectory });
  await checkEverything(t, appliance, 'after a restart', retained, expiredInstant.micros, saved.slice(0, 2));

  // 5. kill -9 while a pack is being written: 48 MiB written, a snapshot, a later write (only
  //    history older than the continuous region is packed), then the kill as soon as a new pack
  //    file appears (packing that interval is throttled to 64 MiB/s of I/O, so it takes a while).
  const packsDirectory = `${dataDirectory}/volumes/vol0/packs`;
  const packsBefore = new Set(fs.readdirSync(packsDirectory));
  await qemuIo(t, appliance, ['write -P 0x77 8M 48M']);
  const big = await snapshotAndCopy(t, appliance, 'big', directory);
  await qemuIo(t, appliance, ['write -P 0x78 60M 1M']);
  const latest = `${directory}/latest.img`;
  t.equal((await run('nbdcopy', [appliance.uri(), latest])).code, 0, 'the volume after the last write, copied');
  let killedWith: { name: string; bytes: number } | null = null;
  await waitFor(
    async () => {
      const name = fs.readdirSync(packsDirectory).find((entry) => !packsBefore.has(entry));
      if (name === undefined) return false;
      const bytes = fs.statSync(`${packsDirectory}/${name}`, { throwIfNoEntry: false })?.size ?? 0;
      await appliance.kill();
      killedWith = { name, bytes };
      return true;
    },
    60_000,
    10,
  );
  t.ok(killedWith !== null, `killed -9 while pack ${JSON.stringify(killedWith)} was being written`);
  await appliance.kill();
  appliance = await startAppliance(t, { dataDirectory });
  await checkEverything(t, appliance, 'after kill -9 mid-pack', [...retained, big], expiredInstant.micros, saved.slice(0, 2));
  const live = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', latest, appliance.uri()]);
  t.equal(live.code, 0, `the live volume after kill -9 mid-pack: ${live.stdout.trim()}`);
  const packedAgain = await waitFor(async () => (await retentionFigures(appliance)).statistics.packs > 0, 60_000);
  t.ok(packedAgain, 'the engine packs again after the crash');
  const check = await checkInstant(appliance, { snapshot: 'big' }, big.copy);
  t.equal(check.outcome, 'equal', `the snapshot after the crash, packed again: ${JSON.stringify(check)}`);
  const last = await retentionFigures(appliance);
  t.equal(last.statistics.operationFailures, 0, `no failed operation: ${last.statistics.lastFailure}`);
});

/** Retained snapshots equal their copies; an instant between kept points and the deleted snapshots' instants are refused. */
async function checkEverything(t: Test, appliance: Appliance, when: string, retained: Saved[], expiredMicros: number, deleted: Saved[]): Promise<void> {
  for (const snapshot of retained) {
    const check = await checkInstant(appliance, { snapshot: snapshot.name }, snapshot.copy);
    t.equal(check.outcome, 'equal', `${when}: ${snapshot.name} equals its copy ${describe(check)}`);
  }
  const refused = await checkInstant(appliance, { at: expiredMicros }, '/dev/null');
  t.equal(refused.outcome, 'expired', `${when}: an instant inside a packed interval is refused: ${describe(refused)}`);
  if (refused.outcome === 'expired') {
    const { before, after } = refused.details.nearest;
    t.ok(before !== null && after !== null && before.micros <= expiredMicros && expiredMicros < after.micros, `${when}: the nearest kept instants lie on either side: ${JSON.stringify(refused.details.nearest)}`);
    for (const kept of [before, after]) {
      if (kept === null) continue;
      const exported = await apiRequest(appliance, 'POST', '/api/v1/exports', { volume: 'vol0', sequence: kept.sequence });
      t.equal(exported.status, 201, `${when}: the nearest kept instant (sequence ${kept.sequence}) can be exported: ${JSON.stringify(exported.json)}`);
      if (exported.status === 201) await apiRequest(appliance, 'DELETE', `/api/v1/exports/${encodeURIComponent(exported.json.name as string)}?force=true`);
    }
  }
  for (const snapshot of deleted) {
    const gone = await checkInstant(appliance, { at: snapshot.micros }, snapshot.copy);
    t.equal(gone.outcome, 'expired', `${when}: the instant of deleted snapshot ${snapshot.name}, older than the horizon, is refused: ${describe(gone)}`);
  }
}

async function qemuIo(t: Test, appliance: Appliance, commands: string[]): Promise<void> {
  const result = await run('qemu-io', ['-f', 'raw', appliance.uri(), ...commands.flatMap((command) => ['-c', command])]);
  t.ok(result.code === 0 && !/failed/i.test(result.stdout), `qemu-io ${commands.join('; ')} ${result.stderr}${result.code === 0 ? '' : result.stdout}`);
}

async function snapshotAndCopy(t: Test, appliance: Appliance, name: string, directory: string): Promise<Saved> {
  const snapshot = await apiRequest(appliance, 'POST', '/api/v1/volumes/vol0/snapshots', { name });
  t.equal(snapshot.status, 201, `snapshot ${name}`);
  const copy = `${directory}/${name}.img`;
  const copied = await run('nbdcopy', [appliance.uri(), copy]);
  t.equal(copied.code, 0, `the volume at ${name}, copied ${copied.stderr}`);
  return { name, micros: snapshot.json.micros as number, copy };
}

/** Sleep until 100 ms into the next period of the finest tier, so a round's writes share one period. */
async function sleepUntilPeriodStart(): Promise<void> {
  const nowMicros = Date.now() * 1000;
  const nextMicros = (Math.floor(nowMicros / finestPeriodMicros) + 1) * finestPeriodMicros + 100_000;
  await new Promise((resolve) => setTimeout(resolve, (nextMicros - nowMicros) / 1000));
}

function describe(check: InstantCheck): string {
  return check.outcome === 'equal' ? '' : JSON.stringify(check);
}
