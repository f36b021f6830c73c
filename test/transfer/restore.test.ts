// Restore, verify and seed against the real appliance, through the command line, with real
// targets: qemu-nbd serving a file as the host's disk, plain files under the appliance's
// --file-root, a loop device it is given with --device-allow. Every outcome is checked with
// qemu-img compare, never with our own reader alone.

import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { cliEnvironment, cliPath, startAppliance, type Appliance } from '../support/appliance.js';
import { apiRequest } from '../support/api.js';
import { startQemuNbd } from '../support/qemu-nbd.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools, run } from '../support/tools.js';

const MiB = 1024 * 1024;

interface JobJson {
  id: string;
  state: string;
  runs: number;
  resumedFromBytes: number;
  undoSnapshot: string | null;
  error: string | null;
  result: Record<string, unknown> & {
    writtenBytes?: number;
    equalBytes?: number;
    resumedBytes?: number;
    verification?: { checkedBytes: number; mismatches: unknown[] } | null;
  };
}

async function cli(appliance: Appliance, args: string[]): Promise<{ code: number; job: JobJson | null; stdout: string; stderr: string }> {
  const result = await run('node', [cliPath, ...args, '--api', appliance.httpBase, '--json'], { timeoutMs: 300_000, env: cliEnvironment(appliance) });
  let job: JobJson | null = null;
  try {
    job = JSON.parse(result.stdout) as JobJson;
  } catch {
    // not a job: the error is on stderr
  }
  return { code: result.code, job, stdout: result.stdout, stderr: result.stderr };
}

async function compare(left: string, right: string): Promise<{ code: number; text: string }> {
  const result = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', left, right]);
  return { code: result.code, text: `${result.stdout}${result.stderr}` };
}

async function qemuIo(uri: string, commands: string[]): Promise<void> {
  const result = await run('qemu-io', ['-f', 'raw', uri, ...commands.flatMap((command) => ['-c', command])]);
  if (result.code !== 0) throw new Error(`qemu-io: ${result.stderr}`);
}

async function copy(from: string, to: string): Promise<void> {
  const result = await run('nbdcopy', [from, to]);
  if (result.code !== 0) throw new Error(`nbdcopy: ${result.stderr}`);
}

/** A folder beside the data folder for the appliance's --file-root. */
function fileRoot(directory: string): string {
  const root = `${directory}/files`;
  fs.mkdirSync(root);
  return root;
}

function corruptFile(filePath: string, offsetBytes: number, lengthBytes: number): void {
  const handle = fs.openSync(filePath, 'r+');
  fs.writeSync(handle, crypto.randomBytes(lengthBytes), 0, lengthBytes, offsetBytes);
  fs.closeSync(handle);
}

t.test('restore a snapshot onto a qemu-nbd target: fast, then digest after corruption, then full to a new file', async (t) => {
  if (!requireTools(t, ['qemu-io', 'qemu-img', 'qemu-nbd', 'nbdcopy'])) return;
  const directory = temporaryDirectory(t);
  const files = fileRoot(directory);
  const appliance = await startAppliance(t, { dataDirectory: `${directory}/data`, volumeSize: '64M', fileRoots: [files] });

  await qemuIo(appliance.uri(), ['write -P 0x11 0 8M', 'write -P 0x22 16M 2M', 'write -P 0x23 40M 64k', 'write -z 1M 64k']);
  const atSnapshot = `${directory}/at-snapshot.img`;
  await copy(appliance.uri(), atSnapshot);
  t.equal((await apiRequest(appliance, 'POST', '/api/v1/volumes/vol0/snapshots', { name: 'good' })).status, 201);
  await qemuIo(appliance.uri(), ['write -P 0x33 512k 1M', 'discard 16M 1M', 'write -P 0x44 30M 256k', 'write -P 0x45 63M 4k', 'write -P 0x46 5M 8k']);

  // The host's disk equals the volume now (its mirror leg): fast restore sends what changed.
  const disk = `${directory}/host-disk.img`;
  await copy(appliance.uri(), disk);
  t.not((await compare(atSnapshot, disk)).code, 0, 'the disk has moved on from the snapshot');
  const target = await startQemuNbd(t, disk, `${directory}/qemu.sock`);
  const fast = await cli(appliance, ['restore', 'vol0', '--snapshot', 'good', '--to', target.uri, '--fast']);
  t.equal(fast.code, 0, fast.stderr);
  t.equal(fast.job?.state, 'done');
  t.ok((fast.job?.result.writtenBytes ?? Infinity) + Number(fast.job?.result['zeroedBytes'] ?? 0) <= 4 * MiB, `fast restore wrote only around the changes: ${JSON.stringify(fast.job?.result)}`);
  t.same(fast.job?.result.verification?.mismatches, [], 'its own verification found the target equal');
  const afterFast = await compare(atSnapshot, disk);
  t.equal(afterFast.code, 0, `qemu-img compare after the fast restore: ${afterFast.text}`);

  // Somebody scribbles on the disk: a digest restore finds and rewrites only those chunks.
  const scribbles = [3 * MiB + 100, 17 * MiB, 41 * MiB + 4096, 60 * MiB + 1];
  for (const offset of scribbles) corruptFile(disk, offset, 512);
  t.not((await compare(atSnapshot, disk)).code, 0, 'the disk is corrupted');
  const digest = await cli(appliance, ['restore', 'vol0', '--snapshot', 'good', '--to', target.uri]);
  t.equal(digest.code, 0, digest.stderr);
  const writtenByDigest = (digest.job?.result.writtenBytes ?? 0) + Number(digest.job?.result['zeroedBytes'] ?? 0);
  t.ok(writtenByDigest <= scribbles.length * 8192 && writtenByDigest > 0, `digest restore sent only the differing blocks (${writtenByDigest} bytes)`);
  t.equal(digest.job?.result.equalBytes, 64 * MiB - writtenByDigest, 'and found the rest equal');
  const afterDigest = await compare(atSnapshot, disk);
  t.equal(afterDigest.code, 0, `qemu-img compare after the digest restore: ${afterDigest.text}`);
  await target.stop();

  // A full copy onto a file that does not exist yet.
  const fresh = `${files}/fresh.img`;
  const full = await cli(appliance, ['restore', 'vol0', '--snapshot', 'good', '--to', fresh, '--full']);
  t.equal(full.code, 0, full.stderr);
  t.equal(fs.statSync(fresh).size, 64 * MiB);
  const afterFull = await compare(atSnapshot, fresh);
  t.equal(afterFull.code, 0, `qemu-img compare after the full restore: ${afterFull.text}`);

  // Bad requests get clear refusals.
  const noInstant = await cli(appliance, ['restore', 'vol0', '--to', fresh]);
  t.not(noInstant.code, 0);
  t.match(noInstant.stderr, /exactly one of at, snapshot or sequence/);
  const badTarget = await apiRequest(appliance, 'POST', '/api/v1/restores', { volume: 'vol0', snapshot: 'good', target: `${appliance.dataDirectory}/volumes/vol0/primary.img` });
  t.equal(badTarget.status, 403, 'a target inside the data folder is refused');
  t.match(badTarget.json.error, { code: 'target-not-allowed' });
  const smallTarget = `${files}/small.img`;
  fs.writeFileSync(smallTarget, Buffer.alloc(MiB));
  const tooSmall = await apiRequest(appliance, 'POST', '/api/v1/restores', { volume: 'vol0', snapshot: 'good', target: smallTarget });
  t.equal(tooSmall.status, 400);
  t.match((tooSmall.json.error as { message: string }).message, /less than the volume/);
  const unknown = await apiRequest(appliance, 'POST', '/api/v1/restores', { volume: 'vol0', snapshot: 'nope', target: fresh });
  t.equal(unknown.status, 404);
});

t.test('a restore killed with kill -9 resumes where its last checkpoint was', async (t) => {
  if (!requireTools(t, ['qemu-img', 'nbdcopy'])) return;
  const directory = temporaryDirectory(t);
  const dataDirectory = `${directory}/data`;
  const files = fileRoot(directory);
  let appliance = await startAppliance(t, { dataDirectory, volumeSize: '128M', fileRoots: [files] });
  const random = `${directory}/random.img`;
  fs.writeFileSync(random, crypto.randomBytes(128 * MiB));
  await copy(random, appliance.uri());
  t.equal((await apiRequest(appliance, 'POST', '/api/v1/volumes/vol0/snapshots', { name: 'filled' })).status, 201);

  // A throttled full restore (8 MiB/s: 16 s), killed once a checkpoint (every 10 s) is on disk.
  const target = `${files}/target.img`;
  const args = ['restore', 'vol0', '--snapshot', 'filled', '--to', target, '--full', '--max-rate', '8M'];
  const started = await cli(appliance, [...args, '--detach']);
  t.equal(started.code, 0, started.stderr);
  const journal = `${dataDirectory}/jobs/${started.job!.id}.json`;
  for (let attempt = 0; ; attempt++) {
    const checkpoint = (JSON.parse(fs.readFileSync(journal, 'utf8')) as { checkpoint: { doneThroughBytes: number } }).checkpoint;
    if (checkpoint.doneThroughBytes >= 16 * MiB) break;
    if (attempt > 600) throw new Error('no checkpoint after 30 s');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  await appliance.kill();

  appliance = await startAppliance(t, { dataDirectory, volumeSize: '128M', fileRoots: [files] });
  const listed = await apiRequest(appliance, 'GET', `/api/v1/jobs/${started.job!.id}`);
  t.equal(listed.json.state, 'interrupted', 'after the restart the job is interrupted');
  const resumed = await cli(appliance, args.filter((arg) => arg !== '--max-rate' && arg !== '8M'));
  t.equal(resumed.code, 0, resumed.stderr);
  t.equal(resumed.job?.id, started.job!.id, 'the same job continued');
  t.equal(resumed.job?.runs, 2);
  t.ok((resumed.job?.result.resumedBytes ?? 0) >= 16 * MiB, `it did not start over (${resumed.job?.result.resumedBytes} bytes done before)`);
  t.ok((resumed.job?.result.resumedBytes ?? 0) < 128 * MiB, 'and it had not finished before the kill');
  t.match(resumed.stderr, /resuming restore-/);
  const equal = await compare(random, target);
  t.equal(equal.code, 0, `qemu-img compare after the resumed restore: ${equal.text}`);
});

t.test('rewind in place, refused while a client is attached, then undone', async (t) => {
  if (!requireTools(t, ['qemu-io', 'qemu-img', 'nbdcopy', 'nbdsh'])) return;
  const directory = temporaryDirectory(t);
  const appliance = await startAppliance(t, { dataDirectory: `${directory}/data`, volumeSize: '64M' });
  await qemuIo(appliance.uri(), ['write -P 0x51 0 4M', 'write -P 0x52 20M 1M']);
  const good = `${directory}/good.img`;
  await copy(appliance.uri(), good);
  t.equal((await apiRequest(appliance, 'POST', '/api/v1/volumes/vol0/snapshots', { name: 'good' })).status, 201);
  await qemuIo(appliance.uri(), ['write -P 0x66 1M 2M', 'discard 20M 512k', 'write -P 0x67 50M 1M']);
  const bad = `${directory}/bad.img`;
  await copy(appliance.uri(), bad);

  // A host still attached: refused, saying who.
  const { spawn } = await import('node:child_process');
  const holder = spawn('nbdsh', ['-u', appliance.uri(), '-c', 'import time; time.sleep(30)'], { env: { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` } });
  t.teardown(() => {
    holder.kill('SIGKILL');
  });
  for (let attempt = 0; ; attempt++) {
    const exports = await apiRequest(appliance, 'GET', '/api/v1/exports');
    const live = (exports.json.exports as Array<{ name: string; clients: unknown[] }>).find((entry) => entry.name === 'vol0');
    if ((live?.clients.length ?? 0) > 0) break;
    if (attempt > 200) throw new Error('nbdsh never attached');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const refused = await cli(appliance, ['restore', 'vol0', '--snapshot', 'good', '--in-place']);
  t.not(refused.code, 0);
  t.match(refused.stderr, /client\(s\) attached.*force/);
  holder.kill('SIGKILL');
  await new Promise((resolve) => holder.once('exit', resolve));
  for (let attempt = 0; ; attempt++) {
    const exports = await apiRequest(appliance, 'GET', '/api/v1/exports');
    const live = (exports.json.exports as Array<{ name: string; clients: unknown[] }>).find((entry) => entry.name === 'vol0');
    if (live?.clients.length === 0) break;
    if (attempt > 200) throw new Error('nbdsh never detached');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }

  const rewind = await cli(appliance, ['restore', 'vol0', '--snapshot', 'good', '--in-place']);
  t.equal(rewind.code, 0, rewind.stderr);
  t.match(rewind.job?.undoSnapshot, /^before-restore-/);
  const afterRewind = await compare(good, appliance.uri());
  t.equal(afterRewind.code, 0, `the volume is back at the snapshot: ${afterRewind.text}`);

  // The rewind is history too: undo it by restoring the snapshot taken just before.
  const undo = await cli(appliance, ['restore', 'vol0', '--snapshot', rewind.job!.undoSnapshot!, '--in-place']);
  t.equal(undo.code, 0, undo.stderr);
  const afterUndo = await compare(bad, appliance.uri());
  t.equal(afterUndo.code, 0, `the undo brought back the later state: ${afterUndo.text}`);
  const view = await apiRequest(appliance, 'POST', '/api/v1/exports', { volume: 'vol0', snapshot: 'good' });
  t.equal((await compare(good, view.json.uri as string)).code, 0, 'and the snapshot itself is untouched');
});

t.test('verify: consistent, then a corrupted record and a corrupted range of the live image are found; against a copy', async (t) => {
  if (!requireTools(t, ['qemu-io', 'nbdcopy'])) return;
  const directory = temporaryDirectory(t);
  const dataDirectory = `${directory}/data`;
  const files = fileRoot(directory);
  let appliance = await startAppliance(t, { dataDirectory, volumeSize: '64M', fileRoots: [files] });
  await qemuIo(appliance.uri(), ['write -P 0x11 0 1M', 'write -P 0x22 0 1M', 'write -P 0x33 8M 2M', 'write -z 9M 4k', 'discard 12M 1M', 'write -P 0x44 20M 64k']);

  const clean = await cli(appliance, ['verify', 'vol0']);
  t.equal(clean.code, 0, `${clean.stdout}${clean.stderr}`);
  t.equal(clean.job?.result['ok'], true);

  const copyPath = `${files}/copy.img`;
  await copy(appliance.uri(), copyPath);
  const identical = await cli(appliance, ['verify', 'vol0', '--against', copyPath]);
  t.equal(identical.code, 0, identical.stderr);
  t.equal(identical.job?.result['identical'], true);
  corruptFile(copyPath, 3 * MiB + 10, 100);
  const differs = await cli(appliance, ['verify', 'vol0', '--against', copyPath]);
  t.equal(differs.code, 1, 'a difference makes verify fail');
  t.same(differs.job?.result['differingRanges'], [{ startBytes: 3 * MiB, endBytes: 3 * MiB + 4096 }], 'and it says where, to the 4 KiB block');

  // Corrupt, with the appliance stopped: the payload of the first write (later overwritten, so
  // only the record check can see it), and 4 KiB of the live image at 30 MiB.
  const records = (await run('node', [cliPath, 'log', 'inspect', '--volume', 'vol0', '--data', dataDirectory, '--json'])).stdout
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line) as { sequence: number; kind: string; offsetBytes?: number; offset?: number; segment: number; segmentOffsetBytes: number; lengthBytes?: number });
  const first = records.find((record) => record.kind === 'data');
  t.ok(first, 'the first data record');
  t.equal(await appliance.stop(), 0);
  const segmentPath = `${dataDirectory}/volumes/vol0/log/${String(first!.segment).padStart(16, '0')}.wlog`;
  corruptFile(segmentPath, first!.segmentOffsetBytes + 48 + 1000, 16);
  corruptFile(`${dataDirectory}/volumes/vol0/primary.img`, 30 * MiB + 4096, 4096); // a region no write made dirty: recovery leaves it as it is

  appliance = await startAppliance(t, { dataDirectory, volumeSize: '64M', fileRoots: [files] });
  const found = await cli(appliance, ['verify', 'vol0']);
  t.equal(found.code, 1, 'verify fails');
  const report = found.job?.result as { ok: boolean; records: { badCount: number; bad: Array<{ sequence: number; reason: string }> }; image: { mismatches: unknown[] }; maps: { mismatchBytes: number } };
  t.equal(report.ok, false);
  t.equal(report.records.badCount, 1, 'one bad record');
  t.equal(report.records.bad[0]?.sequence, first!.sequence, 'the one corrupted');
  t.match(report.records.bad[0]?.reason, /checksum/);
  t.same(report.image.mismatches, [{ startBytes: 30 * MiB + 4096, endBytes: 30 * MiB + 8192 }], 'the corrupted range of the live image, exactly');
  t.equal(report.maps.mismatchBytes, 0, 'the maps agree with the log');
});

t.test('seed a volume from a disk image, then re-seed only what differs', async (t) => {
  if (!requireTools(t, ['qemu-io', 'qemu-img'])) return;
  const directory = temporaryDirectory(t);
  const files = fileRoot(directory);
  const appliance = await startAppliance(t, { dataDirectory: `${directory}/data`, volumeSize: '64M', fileRoots: [files] });
  t.equal((await apiRequest(appliance, 'POST', '/api/v1/volumes', { name: 'vol1', sizeBytes: 32 * MiB })).status, 201);
  const image = `${files}/disk.img`;
  fs.writeFileSync(image, Buffer.alloc(0));
  fs.truncateSync(image, 32 * MiB);
  await qemuIo(image, ['write -P 0x71 0 6M', 'write -P 0x72 10M 1M', 'write -P 0x73 31M 1M']);

  const seeded = await cli(appliance, ['seed', 'vol1', '--from', image]);
  t.equal(seeded.code, 0, seeded.stderr);
  t.equal(seeded.job?.result.writtenBytes, 8 * MiB, 'only the chunks holding data were written to the empty volume');
  t.match(seeded.job?.result['snapshot'], /^seed-/);
  const equal = await compare(image, appliance.uri('vol1'));
  t.equal(equal.code, 0, `the volume equals the image: ${equal.text}`);

  await qemuIo(image, ['write -P 0x74 2M 4k', 'write -P 0x75 20M 8k']);
  const reseeded = await cli(appliance, ['seed', 'vol1', '--from', image]);
  t.equal(reseeded.code, 0, reseeded.stderr);
  t.equal(reseeded.job?.result.writtenBytes, 12 * 1024, 're-seeding wrote only the 12 KiB that differ');
  t.equal((await compare(image, appliance.uri('vol1'))).code, 0);
  const wrongSize = await apiRequest(appliance, 'POST', '/api/v1/seeds', { volume: 'vol0', source: image });
  t.equal(wrongSize.status, 400, 'a source of another size is refused');
});

t.test('restore onto a block device (a loop device the appliance is allowed), and verify the device against the snapshot', async (t) => {
  if (!requireTools(t, ['losetup', 'qemu-io', 'qemu-img'])) return;
  const directory = temporaryDirectory(t);
  const backing = `${directory}/device.img`;
  fs.writeFileSync(backing, crypto.randomBytes(32 * MiB)); // the device holds something else entirely
  const attached = await run('losetup', ['--find', '--show', backing]);
  t.equal(attached.code, 0, `losetup (needs root): ${attached.stderr}`);
  if (attached.code !== 0) return;
  const device = attached.stdout.trim();
  t.teardown(async () => void (await run('losetup', ['-d', device])));

  const appliance = await startAppliance(t, { dataDirectory: `${directory}/data`, volumeSize: '32M', deviceAllow: [device] });
  await qemuIo(appliance.uri(), ['write -P 0x81 0 3M', 'write -P 0x82 20M 64k']);
  t.equal((await apiRequest(appliance, 'POST', '/api/v1/volumes/vol0/snapshots', { name: 'good' })).status, 201);
  await qemuIo(appliance.uri(), ['write -P 0x83 1M 1M']);

  const restored = await cli(appliance, ['restore', 'vol0', '--snapshot', 'good', '--to', device]);
  t.equal(restored.code, 0, restored.stderr);
  t.equal(restored.job?.result.equalBytes, 0, 'nothing on the device matched');
  const verified = await cli(appliance, ['verify', 'vol0', '--snapshot', 'good', '--against', device]);
  t.equal(verified.code, 0, verified.stderr);
  t.equal(verified.job?.result['identical'], true, 'the device is identical to the snapshot');
  const view = await apiRequest(appliance, 'POST', '/api/v1/exports', { volume: 'vol0', snapshot: 'good' });
  const equal = await compare(device, view.json.uri as string);
  t.equal(equal.code, 0, `qemu-img compare of the device with the snapshot's export: ${equal.text}`);
});

t.test('a resumed in-place restore plans from the volume as it is: writes made between its runs are rewound too', async (t) => {
  if (!requireTools(t, ['qemu-io'])) return;
  const directory = temporaryDirectory(t);
  const dataDirectory = `${directory}/data`;
  let appliance = await startAppliance(t, { dataDirectory, volumeSize: '64M' });
  await qemuIo(appliance.uri(), ['write -P 0x11 0 32M']);
  t.equal((await apiRequest(appliance, 'POST', '/api/v1/volumes/vol0/snapshots', { name: 'good' })).status, 201);
  // 1 MiB every 2 MiB: pieces of their own, so the throttled run moves its watermark piece by piece.
  await qemuIo(appliance.uri(), Array.from({ length: 16 }, (_, index) => `write -P 0x22 ${index * 2}M 1M`));

  const request = { volume: 'vol0', snapshot: 'good', inPlace: true };
  const started = await apiRequest(appliance, 'POST', '/api/v1/restores', { ...request, rateBytesPerSecond: MiB });
  t.equal(started.status, 202, 'a throttled rewind starts');
  const id = started.json.id as string;
  const journal = `${dataDirectory}/jobs/${id}.json`;
  let doneThroughBytes = 0;
  for (let attempt = 0; doneThroughBytes < 4 * MiB; attempt++) {
    if (attempt > 600) throw new Error('no checkpoint after 30 s');
    await new Promise((resolve) => setTimeout(resolve, 50));
    doneThroughBytes = (JSON.parse(fs.readFileSync(journal, 'utf8')) as { checkpoint: { doneThroughBytes: number } }).checkpoint.doneThroughBytes;
  }
  t.equal(await appliance.stop(), 0, `stopped with the first run's watermark at ${doneThroughBytes / MiB} MiB`);

  appliance = await startAppliance(t, { dataDirectory, volumeSize: '64M' });
  t.equal((await apiRequest(appliance, 'GET', `/api/v1/jobs/${id}`)).json.state, 'interrupted');
  // Between the runs: below the watermark, where the first run restored and where it had nothing
  // to do; above it, where the first run's plan did not reach.
  await qemuIo(appliance.uri(), ['write -P 0x55 0 64k', 'write -P 0x33 1M 64k', 'write -P 0x44 48M 64k']);
  const resumed = await apiRequest(appliance, 'POST', '/api/v1/restores?wait=true', request);
  t.match(resumed.json, { id, runs: 2, state: 'done' }, `the same job resumed and finished: ${JSON.stringify(resumed.json.error)}`);
  const check = await run('qemu-io', ['-f', 'raw', '-r', appliance.uri(), '-c', 'read -P 0x11 0 32M', '-c', 'read -P 0 32M 32M']);
  t.equal(check.code, 0, check.stderr);
  t.notMatch(check.stdout, /Pattern verification failed/, `the volume shows the snapshot again, the writes between the runs included:\n${check.stdout}`);
});
