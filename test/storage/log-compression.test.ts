// Compressed log payloads (docs/formats/write-log.md, "Compressed payloads"; storage/write-log/
// payload-codec.ts), on real files.
//
// Invariants checked:
//   1. Every payload decodes to the data written, whichever Snappy implementation encoded or
//      decodes it (the native binding and snappyjs cross-check each other).
//   2. Any byte range of a record's data reads back exactly, decoding only the frames it covers:
//      a 4 KiB read inside a 32 MiB record decodes at most one 64 KiB frame.
//   3. Compressed and raw records mix in one log; the live image, a reopened volume, views at
//      past instants and verification all read them right.
//   4. A log written before compression (version 1 records, volume format 1) still reads, and
//      new compressed records follow it in the same log.
//   5. `log inspect` shows the snappy flag and what a payload saves, and says when one does not decode.
//   6. A version 1 record with the snappy bit is refused as a bad header.

import fs from 'node:fs';
import t from 'tap';
import { crc32c } from 'cdp-native';
import { MiB, RecordFlag, RecordKind, Volume, logStart, nodeFileSystem, scanLog, verifyVolume, volumePaths } from '../../storage/index.js';
import { DecodedFrameCache, PayloadEncoder, decodePayload, frameEncodingsOf, payloadFrameBytes, readRecordData, FrameEncoding, type RecordFile } from '../../storage/write-log/payload-codec.js';
import { nativeSnappy, scriptSnappy, type SnappyCodec } from '../../storage/write-log/snappy.js';
import { decodeRecordHeader, recordHeaderBytes } from '../../storage/write-log/record.js';
import { inspectLog } from '../../tools/log-inspect.js';
import { mixedBytesFrom, randomBytesFrom, randomInteger, seededRandom, type RandomSource } from '../support/seeded-random.js';
import { temporaryDirectory } from '../support/temporary-directory.js';

const native = nativeSnappy();
const script = scriptSnappy();

/** A file of one stored payload at position 0, read from memory; counts its reads. */
function memoryFile(bytes: Buffer, cachedBytes: number): RecordFile & { reads: number } {
  const file = {
    reads: 0,
    readCached: (target: Buffer, positionBytes: number) => {
      const available = Math.max(0, Math.min(target.length, cachedBytes - positionBytes));
      bytes.copy(target, 0, positionBytes, positionBytes + available);
      return available;
    },
    read: async (target: Buffer, positionBytes: number) => {
      file.reads++;
      return bytes.copy(target, 0, positionBytes, positionBytes + target.length);
    },
  };
  return file;
}

/** A codec that counts the bytes it decodes. */
function counting(codec: SnappyCodec): SnappyCodec & { decodedBytes: number } {
  const counted = {
    name: codec.name,
    decodedBytes: 0,
    compress: (data: Buffer) => codec.compress(data),
    uncompress: (compressed: Buffer, maxLengthBytes: number) => {
      const decoded = codec.uncompress(compressed, maxLengthBytes);
      counted.decodedBytes += decoded.length;
      return decoded;
    },
  };
  return counted;
}

function stored(data: Buffer, codec: SnappyCodec): { payload: Buffer; flags: number } {
  const encoded = new PayloadEncoder(codec).encode(data);
  return { payload: Buffer.concat(encoded.pieces), flags: encoded.flags };
}

t.test('the native binding loads here, and both codecs read what either wrote', async (t) => {
  t.ok(native, 'the native snappy binding loads (snappyjs is only the fallback)');
  const random = seededRandom(11);
  const sizes = [512, 4096, 8192 + 17, 64 * 1024, 64 * 1024 + 1, 200_000, 3 * MiB + 1234];
  for (const lengthBytes of sizes) {
    const data = mixedBytesFrom(random, lengthBytes);
    for (const [writer, reader] of [
      [native!, script],
      [script, native!],
    ] as const) {
      const { payload, flags } = stored(data, writer);
      t.equal(flags, RecordFlag.snappy, `${lengthBytes} bytes of mixed data are stored compressed (${writer.name})`);
      t.ok(payload.length < data.length, 'and take less room');
      t.same(decodePayload(payload, flags, lengthBytes, reader), data, `${writer.name} -> ${reader.name}: ${lengthBytes} bytes decode whole`);
    }
  }
  const incompressible = randomBytesFrom(random, 64 * 1024);
  t.equal(stored(incompressible, native!).flags, 0, 'random data is stored as written');
  t.equal(stored(Buffer.alloc(300, 7), native!).flags, 0, 'a payload under 512 bytes is stored as written');
});

t.test('frames: raw where they do not compress, empty where all zero, and fewer tries after failures', async (t) => {
  const random = seededRandom(12);
  const frame = (kind: 'random' | 'text' | 'zero') =>
    kind === 'random' ? randomBytesFrom(random, payloadFrameBytes) : kind === 'zero' ? Buffer.alloc(payloadFrameBytes) : Buffer.alloc(payloadFrameBytes, 'a compressible line of text\n');
  const data = Buffer.concat([frame('text'), frame('random'), frame('zero'), frame('text').subarray(0, 1000)]);
  const encoder = new PayloadEncoder(native!);
  const encoded = encoder.encode(data);
  const payload = Buffer.concat(encoded.pieces);
  // The random frame failed, so the encoder skipped the next frame (stored raw, though zero).
  t.same(frameEncodingsOf(payload, encoded.flags, data.length), [FrameEncoding.snappy, FrameEncoding.raw, FrameEncoding.raw, FrameEncoding.snappy]);
  t.same(encoder.statistics, { framesTried: 3, framesCompressed: 2, framesZero: 0, framesSkipped: 1 });
  const fresh = new PayloadEncoder(native!).encode(Buffer.concat([frame('zero'), frame('text')]));
  t.same(frameEncodingsOf(Buffer.concat(fresh.pieces), fresh.flags, 2 * payloadFrameBytes), [FrameEncoding.zero, FrameEncoding.snappy], 'a zero frame stores nothing');

  const skipping = new PayloadEncoder(native!);
  for (let write = 0; write < 200; write++) skipping.encode(randomBytesFrom(random, 4096));
  t.ok(skipping.statistics.framesTried <= 20, `incompressible writes: ${skipping.statistics.framesTried} of 200 tried`);
  let writesUntilCompressed = 1;
  while (skipping.encode(frame('text')).flags !== RecordFlag.snappy && writesUntilCompressed <= 64) writesUntilCompressed++;
  t.ok(writesUntilCompressed <= 32, `compressible data is compressed again within 32 frames (after ${writesUntilCompressed})`);
});

t.test('any range of a 32 MiB record reads back, decoding only the frames it covers', async (t) => {
  const random = seededRandom(13);
  const lengthBytes = 32 * MiB;
  const data = mixedBytesFrom(random, lengthBytes);
  const { payload, flags } = stored(data, native!);
  t.equal(flags, RecordFlag.snappy);
  for (const codec of [native!, script]) {
    const decoder = counting(codec);
    for (let sample = 0; sample < 200; sample++) {
      const readBytes = 4096;
      const offsetBytes = randomInteger(random, 0, lengthBytes / readBytes - 1) * readBytes;
      const target = Buffer.alloc(readBytes);
      const before = decoder.decodedBytes;
      const file = memoryFile(payload, sample % 2 === 0 ? payload.length : 0);
      await readRecordData({ file, fileKey: 'm', payloadPositionBytes: 0, compressed: true }, offsetBytes, target, null, decoder);
      if (!target.equals(data.subarray(offsetBytes, offsetBytes + readBytes))) {
        t.fail(`${codec.name}: 4 KiB at ${offsetBytes} differs`);
        return;
      }
      t.ok(decoder.decodedBytes - before <= payloadFrameBytes, `${codec.name}: a 4 KiB read decoded ${decoder.decodedBytes - before} bytes`);
    }
    for (let sample = 0; sample < 50; sample++) {
      const readBytes = randomInteger(random, 1, 300_000);
      const offsetBytes = randomInteger(random, 0, lengthBytes - readBytes);
      const target = Buffer.alloc(readBytes);
      await readRecordData({ file: memoryFile(payload, payload.length), fileKey: 'm', payloadPositionBytes: 0, compressed: true }, offsetBytes, target, null, decoder);
      t.same(target, data.subarray(offsetBytes, offsetBytes + readBytes), `${codec.name}: ${readBytes} bytes at ${offsetBytes}`);
    }
  }
});

t.test('the decoded-frame cache serves repeated reads and stays within its bound', async (t) => {
  const random = seededRandom(14);
  const data = Buffer.concat(Array.from({ length: 40 }, () => Buffer.alloc(payloadFrameBytes, randomBytesFrom(random, 16))));
  const { payload } = stored(data, native!);
  const cache = new DecodedFrameCache(8 * payloadFrameBytes);
  const decoder = counting(native!);
  const file = memoryFile(payload, payload.length);
  const record = { file, fileKey: 'c', payloadPositionBytes: 0, compressed: true };
  for (let offsetBytes = 0; offsetBytes < payloadFrameBytes; offsetBytes += 4096) {
    const target = Buffer.alloc(4096);
    t.equal(readRecordData(record, offsetBytes, target, cache, decoder), null, 'served at once from the page cache');
    t.same(target, data.subarray(offsetBytes, offsetBytes + 4096));
  }
  t.equal(decoder.decodedBytes, payloadFrameBytes, 'sixteen 4 KiB reads of one frame decode it once');
  for (let offsetBytes = 0; offsetBytes < data.length; offsetBytes += payloadFrameBytes) {
    await readRecordData(record, offsetBytes, Buffer.alloc(100), cache, decoder);
    t.ok(cache.sizeBytes <= 8 * payloadFrameBytes, 'the cache holds at most its capacity');
  }
});

async function newVolume(t: { teardown(callback: () => void): void }, sizeBytes = 8 * MiB): Promise<{ directory: string; volume: Volume }> {
  const directory = `${temporaryDirectory(t)}/volumes/vol`;
  await Volume.create(directory, { name: 'vol', sizeBytes, segmentSizeBytes: 64 * MiB });
  return { directory, volume: await Volume.open(directory) };
}

interface LoggedRecord {
  sequence: number;
  kind: number;
  flags: number;
  segmentNumber: number;
  offsetBytes: number;
  payloadBytes: number;
}

function loggedRecords(directory: string): LoggedRecord[] {
  const log = volumePaths(directory).log;
  const records: LoggedRecord[] = [];
  scanLog(nodeFileSystem, log, { from: logStart(nodeFileSystem, log)!, expectedSequence: 1, withPayload: false }, ({ header, position }) => {
    records.push({ sequence: header.sequence, kind: header.kind, flags: header.flags, segmentNumber: position.segmentNumber, offsetBytes: position.offsetBytes, payloadBytes: header.payloadBytes });
  });
  return records;
}

/** Random writes of mixed, random and zero data (some of several frames); the model after each. */
async function writeRandomly(volume: Volume, random: RandomSource, count: number, model: Buffer, states: Map<number, Buffer>): Promise<void> {
  for (let write = 0; write < count; write++) {
    const lengthBytes = random() < 0.2 ? randomInteger(random, 64 * 1024, 600 * 1024) : randomInteger(random, 1, 16) * 4096;
    const offsetBytes = randomInteger(random, 0, (model.length - lengthBytes) / 512) * 512;
    const roll = random();
    const data = roll < 0.6 ? mixedBytesFrom(random, lengthBytes) : roll < 0.9 ? randomBytesFrom(random, lengthBytes) : Buffer.alloc(lengthBytes);
    await volume.write(offsetBytes, data, { fua: false });
    data.copy(model, offsetBytes);
    states.set(volume.stats().appendedSequence, Buffer.from(model));
  }
}

t.test('compressed and raw records in one log: live reads, views of random ranges, reopen, verification', async (t) => {
  const random = seededRandom(15);
  const { directory, volume: opened } = await newVolume(t);
  let volume = opened;
  const model = Buffer.alloc(volume.sizeBytes);
  const states = new Map<number, Buffer>();
  await writeRandomly(volume, random, 120, model, states);
  await volume.flush();
  t.same(await volume.read(0, volume.sizeBytes), model, 'the live volume reads what was written');

  const records = loggedRecords(directory).filter((record) => record.kind === RecordKind.data);
  const compressed = records.filter((record) => (record.flags & RecordFlag.snappy) !== 0).length;
  t.ok(compressed > 10 && compressed < records.length - 10, `both kinds in one log: ${compressed} of ${records.length} data records compressed`);

  const checkViews = async (label: string): Promise<void> => {
    for (const [sequence, state] of [...states].filter((_, index) => index % 10 === 3)) {
      const view = await volume.history!.openView(sequence, 'test', { fromLogOnly: true });
      for (let sample = 0; sample < 20; sample++) {
        const lengthBytes = randomInteger(random, 1, 200_000);
        const offsetBytes = randomInteger(random, 0, volume.sizeBytes - lengthBytes);
        const got = await view.read(offsetBytes, lengthBytes);
        if (!got.equals(state.subarray(offsetBytes, offsetBytes + lengthBytes))) {
          t.fail(`${label}: the view at ${sequence} differs at ${offsetBytes}+${lengthBytes}`);
          return;
        }
      }
      t.same(await view.read(0, volume.sizeBytes), state, `${label}: the view at ${sequence} reads the volume as it was`);
    }
  };
  await checkViews('open');
  await volume.close();
  volume = await Volume.open(directory);
  t.same(await volume.read(0, volume.sizeBytes), model, 'the reopened volume reads what was written');
  await checkViews('reopened');
  const report = await verifyVolume(volume);
  t.ok(report.ok, 'verification finds the log, the maps and the image in agreement');
  await volume.close();
});

/** Rewrite every record of the log as version 1 (the format before compression) and the volume as format 1. */
function downgradeToVersion1(directory: string): void {
  const paths = volumePaths(directory);
  for (const record of loggedRecords(directory)) {
    const path = `${paths.log}/${String(record.segmentNumber).padStart(16, '0')}.wlog`;
    const file = fs.openSync(path, 'r+');
    const bytes = Buffer.alloc(recordHeaderBytes + record.payloadBytes);
    fs.readSync(file, bytes, 0, bytes.length, record.offsetBytes);
    bytes.writeUInt16BE(1, 4);
    bytes.writeUInt32BE(crc32c(bytes.subarray(recordHeaderBytes), crc32c(bytes.subarray(0, 44))), 44);
    fs.writeSync(file, bytes, 0, recordHeaderBytes, record.offsetBytes);
    fs.closeSync(file);
  }
  const config = JSON.parse(fs.readFileSync(paths.config, 'utf8')) as { formatVersion: number };
  fs.writeFileSync(paths.config, JSON.stringify({ ...config, formatVersion: 1 }));
  fs.rmSync(paths.index, { recursive: true, force: true }); // rebuilt from the log, as for a lost index
}

t.test('a log written before compression still reads, and compressed records follow it', async (t) => {
  const random = seededRandom(16);
  const directory = `${temporaryDirectory(t)}/volumes/vol`;
  await Volume.create(directory, { name: 'vol', sizeBytes: 8 * MiB, segmentSizeBytes: 64 * MiB });
  let volume = await Volume.open(directory, nodeFileSystem, { logCompression: 'off' });
  const model = Buffer.alloc(volume.sizeBytes);
  const states = new Map<number, Buffer>();
  await writeRandomly(volume, random, 40, model, states);
  await volume.close();
  t.ok(loggedRecords(directory).every((record) => (record.flags & RecordFlag.snappy) === 0), 'with compression off nothing is compressed');
  downgradeToVersion1(directory);
  const versions = () => {
    const log = volumePaths(directory).log;
    const found = new Set<number>();
    const segment = fs.readFileSync(`${log}/0000000000000001.wlog`);
    for (const record of loggedRecords(directory)) found.add(segment.readUInt16BE(record.offsetBytes + 4));
    return [...found].sort();
  };
  t.same(versions(), [1], 'the log holds version 1 records only');

  volume = await Volume.open(directory);
  t.equal((JSON.parse(fs.readFileSync(volumePaths(directory).config, 'utf8')) as { formatVersion: number }).formatVersion, 2, 'opening raises volume.json to format 2');
  t.same(await volume.read(0, volume.sizeBytes), model, 'the old log\'s volume reads as written');
  const oldSequence = volume.stats().appendedSequence;
  await writeRandomly(volume, random, 40, model, states);
  await volume.flush();
  t.same(versions(), [1, 2], 'new records (version 2) follow the old ones');
  t.ok(loggedRecords(directory).some((record) => (record.flags & RecordFlag.snappy) !== 0), 'and some are compressed');
  const view = await volume.history!.openView(oldSequence, 'old', { fromLogOnly: true });
  t.same(await view.read(0, volume.sizeBytes), states.get(oldSequence), 'a view at an instant of the old log reads it');
  t.ok((await verifyVolume(volume)).ok, 'verification passes over both versions');
  await volume.close();
});

t.test('log inspect shows compressed records, and a payload that does not decode', async (t) => {
  const { directory, volume } = await newVolume(t);
  const text = Buffer.alloc(128 * 1024, 'every line of this file is the same\n');
  await volume.write(0, text, { fua: true });
  await volume.write(1 * MiB, randomBytesFrom(seededRandom(17), 4096), { fua: true });
  await volume.close();
  const inspect = () => {
    const lines: string[] = [];
    inspectLog({ volumeDirectory: directory, fromSequence: 1, limit: 10, json: false, write: (line) => lines.push(line) });
    return lines;
  };
  const lines = inspect();
  t.match(lines[1], /^1\t\S+\tdata\t0\t131072\tfua,snappy\tstored \d+ bytes \(\d+\.\d%\)$/, 'the compressed record: flags and what it saves');
  t.match(lines[2], /^2\t\S+\tdata\t1048576\t4096\tfua\t$/, 'the random one is stored as written');

  // Damage the first frame's Snappy block and seal the record again, so only decoding can tell.
  const record = loggedRecords(directory)[0]!;
  const path = `${volumePaths(directory).log}/0000000000000001.wlog`;
  const bytes = fs.readFileSync(path);
  const payloadStart = record.offsetBytes + recordHeaderBytes;
  const payload = bytes.subarray(payloadStart, payloadStart + record.payloadBytes);
  const frameStart = payload.readUInt32BE(0) & 0x3fffffff;
  payload[frameStart] = 0xff; // the block's length preamble no longer says 64 KiB
  payload[frameStart + 1] = 0xff;
  bytes.writeUInt32BE(crc32c(payload, crc32c(bytes.subarray(record.offsetBytes, record.offsetBytes + 44))), record.offsetBytes + 44);
  fs.writeFileSync(path, bytes);
  t.match(inspect()[1], /stored \d+ bytes that do not decode/, 'a payload whose checksum holds but which does not decode is reported');
});

t.test('a version 1 record with the snappy bit is a bad header', async (t) => {
  const header = Buffer.alloc(recordHeaderBytes);
  header.writeUInt32BE(0x43445052, 0);
  header.writeUInt16BE(1, 4);
  header[6] = RecordKind.data;
  header[7] = RecordFlag.snappy;
  header.writeUInt32BE(4096, 36);
  header.writeUInt32BE(100, 40);
  t.equal(decodeRecordHeader(header, 0), 'flags');
  header.writeUInt16BE(2, 4);
  t.type(decodeRecordHeader(header, 0), 'object', 'the same header as version 2 is sound');
  header[6] = RecordKind.zeroes;
  t.equal(decodeRecordHeader(header, 0), 'flags', 'only data records are compressed');
});
