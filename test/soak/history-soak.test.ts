// The history soak (issue 9, section 5): a 256 MiB volume whose data folder is a 1.5 GiB ext4
// file system of its own (loop-mounted by the test), 64 MiB log segments, a 5% free-space reserve,
// and fio random writes; disk use (du of log/, packs/, base.img and index/, and statfs) is sampled
// every second beside the engine's figures, and printed as comments at the end.
//
// 1. The cap: an 800 MiB history cap, a 20 s keep-all and a fixed tier (a point every 10 s, kept
//    60 s) so that packing, merging and folding all run; bursts of fio at 10 MiB/s, and after each
//    a snapshot and a copy of the volume saved outside the small disk. Each an assertion that can
//    fail:
//    - the host never sees an error: every fio burst ends with error 0, also after the restart;
//    - the history's bytes on disk stay within the cap plus one log segment, and the file system
//      keeps its reserve free;
//    - the oldest recoverable instant never moves back, and moves past the first snapshot;
//    - every snapshot either reads back equal to its saved copy (qemu-img compare) or is refused
//      with 410 expired; the expired ones are the oldest (history expires oldest first), and the
//      cap forces at least one out;
//    - the appliance restarts on the nearly full disk, the retained snapshots still verify, and
//      host writes go on.
// 2. The reserve: a cap larger than the disk, so only the free-space reserve stops the log; fio at
//    25 MiB/s for 60 s, more than the disk holds. The host never sees an error, the file system
//    keeps its reserve free, a snapshot taken at the end verifies, and the appliance restarts on
//    the nearly full disk and takes writes.

import fs from 'node:fs';
import t, { type Test } from 'tap';
import { GiB, MiB } from '../../storage/index.js';
import { apiRequest } from '../support/api.js';
import { startAppliance, type Appliance } from '../support/appliance.js';
import { checkInstant, retentionFigures, type InstantCheck, type RetentionFigures } from '../support/retention.js';
import { mountSmallFileSystem, type SmallFileSystem } from '../support/small-file-system.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { parseFioJson, requireTools, run } from '../support/tools.js';

const fileSystemSizeBytes = 1.5 * GiB;
const segmentSizeBytes = 64 * MiB;
const reservePercent = 5;
const commonFlags = ['--segment-size', '64M', '--reserve', `${reservePercent}%`, '--keep-all', '20s', '--no-tiers', '--required-window', '0'];
const maxHistoryBytes = 800 * MiB;
const rounds = 5;
const burstSeconds = 24;
/** fio's rate in the cap test: enough to fill the cap several times over, little enough for a shared 2-core machine. */
const burstRate = '10m';

interface Sample {
  /** Since the test started. */
  atMs: number;
  wallMicros: number;
  /** du of the history's files (log/, packs/, base.img, index/). */
  historyBytes: number;
  freeBytes: number;
  /** The engine's figures, when the API answered (not during the restart). */
  figures: RetentionFigures | null;
}

interface Burst {
  code: number;
  error: number;
  writtenBytes: number;
  bytesPerSecond: number;
  stderr: string;
}

t.test('the cap: fio bursts on a small disk, a snapshot every ~30 s, expired oldest first, a restart on the nearly full disk', async (t) => {
  const soak = await startSoak(t, [...commonFlags, '--max-history', '800M']);
  if (soak === null) return;
  const appliance = soak.appliance!;
  const config = JSON.parse(fs.readFileSync(`${soak.volumeDirectory}/volume.json`, 'utf8')) as { segmentSizeBytes: number; createdMicros: number };
  t.equal(config.segmentSizeBytes, segmentSizeBytes, 'serve --segment-size 64M made the volume with 64 MiB segments');
  const policy = (await apiRequest(appliance, 'GET', '/api/v1/volumes/vol0/retention')).json;
  const put = await apiRequest(appliance, 'PUT', '/api/v1/volumes/vol0/retention', { ...policy, tiers: [{ every: 10, keepSeconds: 60 }] });
  t.equal(put.status, 200, `a fixed tier through the API: ${JSON.stringify(put.json)}`);

  // 1. Bursts of random writes; after each, quiesced: a snapshot and a copy of the volume as it is.
  const snapshots: Array<{ name: string; copy: string; micros: number }> = [];
  const bursts: Burst[] = [];
  for (let round = 1; round <= rounds; round++) {
    const burst = await fioBurst(appliance.uri(), burstSeconds, burstRate);
    bursts.push(burst);
    t.ok(burst.code === 0 && burst.error === 0, `burst ${round}: fio sees no error (exit ${burst.code}, error ${burst.error}) ${burst.stderr.trim()}`);
    const name = `soak-${round}`;
    const snapshot = await apiRequest(appliance, 'POST', '/api/v1/volumes/vol0/snapshots', { name });
    t.equal(snapshot.status, 201, `snapshot ${name}: ${JSON.stringify(snapshot.json)}`);
    const copy = `${soak.directory}/${name}.img`;
    const copied = await run('nbdcopy', [appliance.uri(), copy], { timeoutMs: 300_000 });
    t.equal(copied.code, 0, `the volume at ${name}, copied outside the small disk ${copied.stderr}`);
    snapshots.push({ name, copy, micros: snapshot.json.micros as number });
  }

  // 2. Every snapshot verifies or is refused as expired; the expired ones are the oldest.
  const checks: InstantCheck[] = [];
  for (const snapshot of snapshots) checks.push(await checkInstant(appliance, { snapshot: snapshot.name }, snapshot.copy));
  checks.forEach((check, position) => {
    t.ok(check.outcome === 'equal' || check.outcome === 'expired', `${snapshots[position]!.name}: ${describeCheck(check)}`);
  });
  const verified = snapshots.filter((_, position) => checks[position]!.outcome === 'equal');
  const expired = snapshots.filter((_, position) => checks[position]!.outcome === 'expired');
  t.ok(expired.length >= 1, `the cap forced snapshots out: ${expired.map((snapshot) => snapshot.name).join(', ') || 'none'} expired`);
  t.ok(verified.length >= 1, `retained snapshots verify: ${verified.map((snapshot) => snapshot.name).join(', ') || 'none'}`);
  const newestExpired = Math.max(-1, ...expired.map((snapshot) => snapshots.indexOf(snapshot)));
  const oldestVerified = Math.min(rounds, ...verified.map((snapshot) => snapshots.indexOf(snapshot)));
  t.ok(newestExpired < oldestVerified, 'history expired oldest first: every expired snapshot is older than every retained one');
  const beforeRestart = await retentionFigures(appliance);

  // 3. A restart on the nearly full disk (the stored policy, with its tier, stays): the retained
  //    snapshots still verify, and host writes go on.
  t.equal(await appliance.stop(), 0, 'an orderly stop');
  const freeAtRestart = soak.disk.space().freeBytes;
  const restarted = await restartSoak(t, soak);
  if (restarted !== null) {
    for (const snapshot of verified) {
      const check = await checkInstant(restarted, { snapshot: snapshot.name }, snapshot.copy);
      t.equal(check.outcome, 'equal', `${snapshot.name} after the restart: ${describeCheck(check)}`);
    }
    const afterRestart = await fioBurst(restarted.uri(), 10, burstRate);
    bursts.push(afterRestart);
    t.ok(afterRestart.code === 0 && afterRestart.error === 0, `after the restart fio sees no error (exit ${afterRestart.code}, error ${afterRestart.error}) ${afterRestart.stderr.trim()}`);
  }
  const final = restarted === null ? beforeRestart : await retentionFigures(restarted);
  const samples = await soak.stopSampling();

  // 4. Disk use against the cap and the reserve, and the oldest instant, over the whole run.
  const reserveBytes = checkSpace(t, soak, samples, maxHistoryBytes);
  const oldest = samples.flatMap((sample) => (sample.figures === null ? [] : [{ atMs: sample.atMs, micros: sample.figures.oldestRecoverableMicros }]));
  const backwards = oldest.find((entry, position) => position > 0 && entry.micros < oldest[position - 1]!.micros);
  t.equal(backwards, undefined, 'the oldest recoverable instant never moves back');
  t.ok(final.oldestRecoverableMicros > snapshots[0]!.micros, `the oldest recoverable instant moved past the first snapshot (${((final.oldestRecoverableMicros - snapshots[0]!.micros) / 1e6).toFixed(1)} s)`);

  reportFigures(t, { samples, bursts, config, beforeRestart, final, freeAtRestart, maxHistoryBytes, reserveBytes });
});

t.test('the reserve: a cap larger than the disk, fio faster than history can stay, a restart on the nearly full disk', async (t) => {
  const soak = await startSoak(t, [...commonFlags, '--max-history', '4G']);
  if (soak === null) return;
  const appliance = soak.appliance!;
  const config = JSON.parse(fs.readFileSync(`${soak.volumeDirectory}/volume.json`, 'utf8')) as { createdMicros: number };
  const burst = await fioBurst(appliance.uri(), 60, '25m');
  t.ok(burst.code === 0 && burst.error === 0, `fio sees no error (exit ${burst.code}, error ${burst.error}) ${burst.stderr.trim()}`);
  const snapshot = await apiRequest(appliance, 'POST', '/api/v1/volumes/vol0/snapshots', { name: 'end' });
  t.equal(snapshot.status, 201, `snapshot end: ${JSON.stringify(snapshot.json)}`);
  const copy = `${soak.directory}/end.img`;
  t.equal((await run('nbdcopy', [appliance.uri(), copy], { timeoutMs: 300_000 })).code, 0, 'the volume at the end, copied outside the small disk');
  const check = await checkInstant(appliance, { snapshot: 'end' }, copy);
  t.equal(check.outcome, 'equal', `the snapshot verifies: ${describeCheck(check)}`);
  const beforeRestart = await retentionFigures(appliance);

  t.equal(await appliance.stop(), 0, 'an orderly stop');
  const freeAtRestart = soak.disk.space().freeBytes;
  const restarted = await restartSoak(t, soak);
  const bursts = [burst];
  if (restarted !== null) {
    const again = await checkInstant(restarted, { snapshot: 'end' }, copy);
    t.equal(again.outcome, 'equal', `the snapshot after the restart: ${describeCheck(again)}`);
    const afterRestart = await fioBurst(restarted.uri(), 10, '25m');
    bursts.push(afterRestart);
    t.ok(afterRestart.code === 0 && afterRestart.error === 0, `after the restart fio sees no error (exit ${afterRestart.code}, error ${afterRestart.error}) ${afterRestart.stderr.trim()}`);
  }
  const final = restarted === null ? beforeRestart : await retentionFigures(restarted);
  const samples = await soak.stopSampling();
  const reserveBytes = checkSpace(t, soak, samples, null);
  reportFigures(t, { samples, bursts, config, beforeRestart, final, freeAtRestart, maxHistoryBytes: 4 * GiB, reserveBytes });
});

interface Soak {
  /** Outside the small disk: its image and the saved copies. */
  directory: string;
  disk: SmallFileSystem;
  dataDirectory: string;
  volumeDirectory: string;
  /** The appliance the sampler asks (null while it restarts). */
  appliance: Appliance | null;
  /** Stop sampling; the samples taken. */
  stopSampling(): Promise<Sample[]>;
}

/** The small disk, the appliance on it with `serveFlags`, and the sampler (every second, to the end). */
async function startSoak(t: Test, serveFlags: string[]): Promise<Soak | null> {
  if (!requireTools(t, ['fio', 'nbdcopy', 'qemu-img', 'mkfs.ext4', 'du'])) return null;
  const directory = temporaryDirectory(t, 'cdp-nbd-soak-');
  const disk = await mountSmallFileSystem(t, directory, fileSystemSizeBytes);
  if (disk === null) return null;
  const dataDirectory = `${disk.mountPoint}/data`;
  const volumeDirectory = `${dataDirectory}/volumes/vol0`;
  const appliance = await startAppliance(t, { dataDirectory, volumeSize: '256M', extraArguments: serveFlags });
  const samples: Sample[] = [];
  const startedMs = performance.now();
  let sampling = true;
  const soak: Soak = {
    directory,
    disk,
    dataDirectory,
    volumeDirectory,
    appliance,
    async stopSampling() {
      sampling = false;
      await sampler;
      return samples;
    },
  };
  t.teardown(() => void (sampling = false)); // also when the test ends early
  const sampler = (async () => {
    while (sampling) {
      const current = soak.appliance;
      samples.push({
        atMs: performance.now() - startedMs,
        wallMicros: Date.now() * 1000,
        historyBytes: await historyBytesOnDisk(volumeDirectory),
        freeBytes: disk.space().freeBytes,
        figures: current === null ? null : await retentionFigures(current).catch(() => null),
      });
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  })();
  return soak;
}

/** Start the appliance again on the same disk (the stored policy stays); null, with the test failed, if it does not serve. */
async function restartSoak(t: Test, soak: Soak): Promise<Appliance | null> {
  soak.appliance = null;
  try {
    soak.appliance = await startAppliance(t, { dataDirectory: soak.dataDirectory, volumeSize: '256M' });
    return soak.appliance;
  } catch (error) {
    t.fail(`the appliance does not start again on the nearly full disk: ${error instanceof Error ? error.message : String(error)}`);
    return null;
  }
}

/** History within the cap plus one segment (when there is a cap to check), and the reserve kept free; returns the reserve. */
function checkSpace(t: Test, soak: Soak, samples: Sample[], capBytes: number | null): number {
  const reserveBytes = Math.ceil((soak.disk.space().sizeBytes * reservePercent) / 100);
  const peak = samples.reduce((most, sample) => (sample.historyBytes > most.historyBytes ? sample : most));
  const leastFree = samples.reduce((least, sample) => (sample.freeBytes < least.freeBytes ? sample : least));
  if (capBytes !== null) {
    t.ok(peak.historyBytes <= capBytes + segmentSizeBytes, `history on disk peaked at ${mebibytes(peak.historyBytes)} MiB at ${seconds(peak.atMs)} s; the cap is ${mebibytes(capBytes)} MiB (+ one ${mebibytes(segmentSizeBytes)} MiB segment)`);
  }
  t.ok(leastFree.freeBytes >= reserveBytes, `the file system's free space fell to ${mebibytes(leastFree.freeBytes)} MiB at ${seconds(leastFree.atMs)} s; the reserve is ${mebibytes(reserveBytes)} MiB`);
  return reserveBytes;
}

async function fioBurst(uri: string, runtimeSeconds: number, rate: string): Promise<Burst> {
  const result = await run(
    'fio',
    [
      '--name=soak',
      '--ioengine=nbd',
      `--uri=${uri}`,
      '--rw=randwrite',
      '--bssplit=4k/50:64k/40:1m/10',
      '--iodepth=16',
      `--size=${256 * MiB}`,
      '--time_based',
      `--runtime=${runtimeSeconds}`,
      `--rate=${rate}`,
      '--randrepeat=0',
      '--refill_buffers',
      '--output-format=json',
    ],
    { timeoutMs: (runtimeSeconds + 120) * 1000 },
  );
  try {
    const job = (parseFioJson(result.stdout) as { jobs: Array<{ error: number; write: { io_bytes: number; bw_bytes: number } }> }).jobs[0]!;
    return { code: result.code, error: job.error, writtenBytes: job.write.io_bytes, bytesPerSecond: job.write.bw_bytes, stderr: result.stderr };
  } catch {
    return { code: result.code === 0 ? 1 : result.code, error: -1, writtenBytes: 0, bytesPerSecond: 0, stderr: `${result.stderr} (no JSON from fio: ${result.stdout.slice(0, 200)})` };
  }
}

/** Allocated bytes of the history's files, as du sees them (files may vanish meanwhile: du's total still counts). */
async function historyBytesOnDisk(volumeDirectory: string): Promise<number> {
  const paths = ['log', 'packs', 'base.img', 'index'].map((name) => `${volumeDirectory}/${name}`).filter((path) => fs.existsSync(path));
  const result = await run('du', ['-s', '-c', '-B1', ...paths]);
  const total = /^(\d+)\s+total$/m.exec(result.stdout);
  return total === null ? 0 : Number(total[1]);
}

function describeCheck(check: InstantCheck): string {
  if (check.outcome === 'equal') return 'equal to its saved copy';
  if (check.outcome === 'expired') return `refused: 410 expired (nearest kept: ${JSON.stringify(check.details.nearest)})`;
  return `${check.outcome}: ${check.detail}`;
}

function mebibytes(bytes: number): string {
  return (bytes / MiB).toFixed(0);
}

function seconds(ms: number): string {
  return (ms / 1000).toFixed(0);
}

interface Comments {
  comment(...message: unknown[]): void;
}

function reportFigures(
  t: Comments,
  figures: {
    samples: Sample[];
    bursts: Burst[];
    config: { createdMicros: number };
    beforeRestart: RetentionFigures;
    final: RetentionFigures;
    freeAtRestart: number;
    maxHistoryBytes: number;
    reserveBytes: number;
  },
): void {
  const { samples, bursts, config, beforeRestart, final } = figures;
  t.comment(`disk use (MiB) against the cap of ${mebibytes(figures.maxHistoryBytes)} and the reserve of ${mebibytes(figures.reserveBytes)}:`);
  t.comment('   s  history(du)  engine-total  free  oldest-age-s  intervals  pressure');
  let nextMs = 0;
  for (const sample of samples) {
    if (sample.atMs < nextMs) continue;
    nextMs = sample.atMs + 10_000;
    const engine = sample.figures;
    const age = engine === null ? '-' : ((sample.wallMicros - engine.oldestRecoverableMicros) / 1e6).toFixed(0);
    t.comment(
      `${seconds(sample.atMs).padStart(4)}  ${mebibytes(sample.historyBytes).padStart(11)}  ${(engine === null ? '-' : mebibytes(engine.historyBytes.totalBytes)).padStart(12)}  ${mebibytes(sample.freeBytes).padStart(4)}  ${age.padStart(12)}  ${String(engine?.intervalCount ?? '-').padStart(9)}  ${engine?.underPressure === true ? 'yes' : 'no'}`,
    );
  }
  t.comment(`the oldest recoverable instant moved ${((final.oldestRecoverableMicros - config.createdMicros) / 1e6).toFixed(1)} s past the volume's creation`);
  t.comment(`before the restart: ${JSON.stringify(beforeRestart.statistics)}; after: ${JSON.stringify(final.statistics)}`);
  t.comment(`free space at the restart: ${mebibytes(figures.freeAtRestart)} MiB`);
  const written = bursts.reduce((sum, burst) => sum + burst.writtenBytes, 0);
  t.comment(`fio: ${(written / MiB).toFixed(0)} MiB written; per burst MiB/s: ${bursts.map((burst) => (burst.bytesPerSecond / MiB).toFixed(1)).join(' ')} (rate-limited)`);
}
