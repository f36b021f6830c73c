// The volume's write path end to end on real files: what is written reads back at once, is
// durable after flush, survives close and reopen, and the log holds every write in order.

import t from 'tap';
import { randomBytes } from 'node:crypto';
import { MiB, RecordKind, Volume, scanLog, logStart, volumePaths, nodeFileSystem } from '../../storage/index.js';
import { temporaryDirectory } from '../support/temporary-directory.js';

const volumeSizeBytes = 64 * MiB;

async function newVolume(t: { teardown(callback: () => void): void }): Promise<{ directory: string; volume: Volume }> {
  const directory = `${temporaryDirectory(t)}/vol`;
  await Volume.create(directory, { name: 'vol', sizeBytes: volumeSizeBytes, segmentSizeBytes: 64 * MiB });
  const volume = await Volume.open(directory);
  return { directory, volume };
}

t.test('writes read back at once, before and after they reach the live image', async (t) => {
  const { volume } = await newVolume(t);
  const data = randomBytes(8192);
  await volume.write(4096, data, { fua: false });
  t.same(await volume.read(4096, 8192), data, 'read sees the write while it is in the write-log buffer');
  t.same(await volume.read(0, 4096), Buffer.alloc(4096), 'unwritten blocks read as zeroes');
  const partial = await volume.read(6000, 100);
  t.same(partial, data.subarray(6000 - 4096, 6000 - 4096 + 100), 'unaligned read inside the write');
  await volume.flush();
  t.same(await volume.read(4096, 8192), data, 'read after flush');
  await volume.close();
});

t.test('later writes win over earlier ones, in the image and in the log', async (t) => {
  const { directory, volume } = await newVolume(t);
  const first = Buffer.alloc(4096, 1);
  const second = Buffer.alloc(1000, 2);
  await volume.write(0, first, { fua: false });
  await volume.write(500, second, { fua: false });
  await volume.writeZeroes(3000, 100, { fua: false, noHole: false, fastZero: false });
  const expected = Buffer.alloc(4096, 1);
  expected.fill(2, 500, 1500);
  expected.fill(0, 3000, 3100);
  t.same(await volume.read(0, 4096), expected, 'overlay combines records in order');
  await volume.close();

  const kinds: number[] = [];
  scanLog(nodeFileSystem, volumePaths(directory).log, { from: logStart(nodeFileSystem, volumePaths(directory).log)!, expectedSequence: 1, withPayload: false }, (record) =>
    kinds.push(record.header.kind),
  );
  t.same(kinds, [RecordKind.data, RecordKind.data, RecordKind.zeroes], 'log holds every write in order');

  const reopened = await Volume.open(directory);
  t.same(await reopened.read(0, 4096), expected, 'reopened volume has the same contents');
  t.equal(reopened.recovery.replayedRecordCount, 0, 'a clean close leaves nothing to replay');
  await reopened.close();
});

t.test('all-zero writes are logged without payload', async (t) => {
  const { directory, volume } = await newVolume(t);
  await volume.write(0, Buffer.alloc(4096, 9), { fua: true });
  await volume.write(0, Buffer.alloc(4096), { fua: true });
  t.same(await volume.read(0, 4096), Buffer.alloc(4096));
  await volume.close();
  const records: Array<[number, number, boolean]> = [];
  const log = volumePaths(directory).log;
  scanLog(nodeFileSystem, log, { from: logStart(nodeFileSystem, log)!, withPayload: false }, (record) =>
    records.push([record.header.kind, record.header.lengthBytes, record.header.payloadBytes > 0]),
  );
  t.same(records, [
    [RecordKind.data, 4096, true],
    [RecordKind.zeroes, 4096, false],
  ]);
});

t.test('allocation reports holes, data, and unapplied writes as data', async (t) => {
  const { volume } = await newVolume(t);
  const empty = await volume.allocation(0, volumeSizeBytes, 1024);
  t.same(empty, [{ lengthBytes: volumeSizeBytes, hole: true, zero: true }], 'a new volume is one hole');
  await volume.write(1 * MiB, Buffer.alloc(65536, 7), { fua: false });
  const extents = await volume.allocation(0, 2 * MiB, 1024);
  const dataExtent = extents.find((extent) => !extent.hole);
  t.ok(dataExtent, 'the written range is data even before it reaches the live image');
  t.equal(extents.reduce((sum, extent) => sum + extent.lengthBytes, 0), 2 * MiB, 'extents cover the range');
  await volume.close();
});

t.test('large writes (over the slab copy size) and many small ones', async (t) => {
  const { volume } = await newVolume(t);
  const big = randomBytes(4 * MiB);
  await volume.write(8 * MiB, big, { fua: false });
  const small: Buffer[] = [];
  const writes: Promise<void>[] = [];
  for (let index = 0; index < 2000; index++) {
    const block = randomBytes(4096);
    small.push(block);
    writes.push(volume.write(index * 4096, block, { fua: false }));
  }
  await Promise.all(writes);
  t.same(await volume.read(8 * MiB, 4 * MiB), big);
  for (let index = 0; index < 2000; index += 97) t.same(await volume.read(index * 4096, 4096), small[index]);
  await volume.flush();
  await volume.close();
});
