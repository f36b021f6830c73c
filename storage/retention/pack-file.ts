// Pack files: packs/<pack number, 16 digits>.pack. A pack holds one interval of history between
// two kept points: for every byte written in the interval, only its newest data, as write-log
// records in volume order (docs/formats/pack.md). A pack is written whole, synced, and only then
// named by the index; it is never changed afterwards, only deleted.

import { crc32c } from 'cdp-native';
import { StorageError, assert } from '../errors.js';
import type { FileHandle, FileSystem } from '../io/file-system.js';
import { lifecycleLimits } from '../limits.js';
import { fileNumbers, type ExtentSource } from '../index/extents.js';
import { decodePayload, PayloadEncoder } from '../write-log/payload-codec.js';
import { RecordFlag, RecordKind, decodeRecordHeader, encodeRecordHeader, recordHeaderBytes, verifyRecord, type RecordHeader } from '../write-log/record.js';

export const packMagic = Buffer.from('CDPPACK\n', 'latin1');
export const packFormatVersion = 1;
export const packHeaderBytes = 4096;
const packHeaderChecksummedBytes = 96;

/** The number extents name a pack's file by (extents.ts, fileNumbers). */
export function packFileNumber(packNumber: number): number {
  assert(Number.isSafeInteger(packNumber) && packNumber > 0 && packNumber < fileNumbers.baseImage - fileNumbers.packFirst, 'pack numbers fit the file number space');
  return fileNumbers.packFirst + packNumber;
}

export function packFileName(packNumber: number): string {
  return `${String(packNumber).padStart(16, '0')}.pack`;
}

export function parsePackFileName(name: string): number | undefined {
  const match = /^(\d{16})\.pack$/.exec(name);
  return match ? Number(match[1]) : undefined;
}

export interface PackHeader {
  packNumber: number;
  volumeId: Buffer;
  /** The interval: records (firstSequence, ..., lastSequence], their first and last times. */
  firstSequence: number;
  lastSequence: number;
  firstMicros: number;
  lastMicros: number;
  recordCount: number;
  /** Bytes of records after the header. */
  recordsBytes: number;
  createdMicros: number;
}

function writeUint64(target: Buffer, at: number, value: number): void {
  target.writeUInt32BE(Math.floor(value / 0x1_0000_0000), at);
  target.writeUInt32BE(value >>> 0, at + 4);
}

function readUint64(source: Buffer, at: number): number {
  return source.readUInt32BE(at) * 0x1_0000_0000 + source.readUInt32BE(at + 4);
}

export function encodePackHeader(header: PackHeader): Buffer {
  const block = Buffer.alloc(packHeaderBytes);
  packMagic.copy(block, 0);
  block.writeUInt16BE(packFormatVersion, 8);
  block.writeUInt16BE(packHeaderBytes / 1024, 10);
  writeUint64(block, 16, header.packNumber);
  header.volumeId.copy(block, 24, 0, 16);
  writeUint64(block, 40, header.firstSequence);
  writeUint64(block, 48, header.lastSequence);
  writeUint64(block, 56, header.firstMicros);
  writeUint64(block, 64, header.lastMicros);
  writeUint64(block, 72, header.recordCount);
  writeUint64(block, 80, header.recordsBytes);
  writeUint64(block, 88, header.createdMicros);
  block.writeUInt32BE(crc32c(block.subarray(0, packHeaderChecksummedBytes)), packHeaderChecksummedBytes);
  return block;
}

export function decodePackHeader(block: Buffer): PackHeader | string {
  if (block.length < packHeaderBytes || !block.subarray(0, 8).equals(packMagic)) return 'not a pack (magic)';
  if (block.readUInt16BE(8) !== packFormatVersion) return `unsupported pack format version ${block.readUInt16BE(8)}`;
  if (crc32c(block.subarray(0, packHeaderChecksummedBytes)) !== block.readUInt32BE(packHeaderChecksummedBytes)) return 'pack header checksum mismatch';
  return {
    packNumber: readUint64(block, 16),
    volumeId: Buffer.from(block.subarray(24, 40)),
    firstSequence: readUint64(block, 40),
    lastSequence: readUint64(block, 48),
    firstMicros: readUint64(block, 56),
    lastMicros: readUint64(block, 64),
    recordCount: readUint64(block, 72),
    recordsBytes: readUint64(block, 80),
    createdMicros: readUint64(block, 88),
  };
}

/** One extent as a pack stores it: its range, the record its data came from, and the data (null: zeroes). */
export interface PackExtent {
  startBytes: number;
  endBytes: number;
  sequence: number;
  timestampMicros: number;
  data: Buffer | null;
}

/** Writes a pack front to back; the header goes in last, so a pack cut short never looks whole. */
export class PackWriter {
  private readonly handle: FileHandle;
  private readonly pending: Buffer[] = [];
  private pendingBytes = 0;
  private positionBytes = packHeaderBytes;
  private recordCount = 0;
  private lastEndBytes = 0;

  private readonly encoder: PayloadEncoder;

  private constructor(handle: FileHandle, encoder: PayloadEncoder) {
    this.handle = handle;
    this.encoder = encoder;
  }

  /** A new pack; its data is compressed as the log's is (payload-codec.ts), or stored as written with `new PayloadEncoder(null)`. */
  static create(fileSystem: FileSystem, path: string, encoder: PayloadEncoder = new PayloadEncoder()): PackWriter {
    return new PackWriter(fileSystem.open(path, { create: true, exclusive: true }), encoder);
  }

  get path(): string {
    return this.handle.path;
  }

  /** Where the next record will start (the extent's recordOffsetBytes). */
  get nextRecordOffsetBytes(): number {
    return this.positionBytes + this.pendingBytes;
  }

  /** Append one extent (in volume order); returns where its record starts. */
  async append(extent: PackExtent): Promise<number> {
    assert(extent.startBytes >= this.lastEndBytes && extent.startBytes < extent.endBytes, 'pack extents come in volume order, without overlap');
    assert(extent.data === null || extent.data.length === extent.endBytes - extent.startBytes, 'an extent carries all its data');
    const offsetBytes = this.nextRecordOffsetBytes;
    const payload = extent.data === null ? null : this.encoder.encode(extent.data);
    const header: RecordHeader = {
      kind: extent.data === null ? RecordKind.zeroes : RecordKind.data,
      flags: payload?.flags ?? 0,
      sequence: extent.sequence,
      timestampMicros: extent.timestampMicros,
      offsetBytes: extent.startBytes,
      lengthBytes: extent.endBytes - extent.startBytes,
      payloadBytes: payload?.storedBytes ?? 0,
    };
    const encoded = Buffer.allocUnsafe(recordHeaderBytes);
    encodeRecordHeader(encoded, 0, header, payload?.pieces ?? []);
    this.pending.push(encoded);
    this.pendingBytes += recordHeaderBytes;
    for (const piece of payload?.pieces ?? []) {
      this.pending.push(piece);
      this.pendingBytes += piece.length;
    }
    this.recordCount++;
    this.lastEndBytes = extent.endBytes;
    if (this.pendingBytes >= lifecycleLimits.packWriteBytes) await this.writePending();
    return offsetBytes;
  }

  private async writePending(): Promise<void> {
    if (this.pendingBytes === 0) return;
    const buffers = this.pending.splice(0);
    await this.handle.writev(buffers, this.positionBytes);
    this.positionBytes += this.pendingBytes;
    this.pendingBytes = 0;
  }

  /** Write the rest and the header, make the pack durable, close it. Returns its size. */
  async finish(header: Omit<PackHeader, 'recordCount' | 'recordsBytes'>): Promise<{ packBytes: number; recordCount: number }> {
    await this.writePending();
    const recordsBytes = this.positionBytes - packHeaderBytes;
    await this.handle.writev([encodePackHeader({ ...header, recordCount: this.recordCount, recordsBytes })], 0);
    await this.handle.datasync();
    this.handle.close();
    return { packBytes: this.positionBytes, recordCount: this.recordCount };
  }

  /** Give up: close (the caller removes the file). */
  abandon(): void {
    this.handle.close();
  }
}

/** Open a pack and check its header; throws ECORRUPT if it is not a whole pack of this volume. */
export function readPackHeader(fileSystem: FileSystem, path: string, volumeId: Buffer): PackHeader {
  const handle = fileSystem.open(path, { readOnly: true });
  try {
    const block = Buffer.alloc(packHeaderBytes);
    handle.readSync(block, 0);
    const header = decodePackHeader(block);
    if (typeof header === 'string') throw new StorageError('ECORRUPT', `${path}: ${header}`);
    if (!header.volumeId.equals(volumeId)) throw new StorageError('ECORRUPT', `${path}: a pack of another volume`);
    if (handle.sizeBytes() < packHeaderBytes + header.recordsBytes) throw new StorageError('ECORRUPT', `${path}: shorter than its header says`);
    return header;
  } finally {
    handle.close();
  }
}

/** One record of a pack as a reader sees it: its range, its source (for the index), its data when asked. */
export interface PackRecord {
  startBytes: number;
  endBytes: number;
  source: ExtentSource;
  timestampMicros: number;
  data: Buffer | null;
}

/**
 * Read a pack's records in order, checking each one's CRC, yielding its source and, when asked,
 * its data. Reads in large sequential pieces; memory is one piece.
 */
export async function* readPackRecords(fileSystem: FileSystem, path: string, options: { fileNumber: number; volumeId: Buffer; withData: boolean }): AsyncGenerator<PackRecord> {
  const header = readPackHeader(fileSystem, path, options.volumeId);
  const handle = fileSystem.open(path, { readOnly: true });
  try {
    const endBytes = packHeaderBytes + header.recordsBytes;
    let buffer = Buffer.alloc(0);
    let bufferStart = packHeaderBytes;
    const view = async (at: number, lengthBytes: number): Promise<Buffer> => {
      if (at < bufferStart || at + lengthBytes > bufferStart + buffer.length) {
        const wantBytes = Math.min(Math.max(lengthBytes, lifecycleLimits.packWriteBytes), endBytes - at);
        buffer = Buffer.alloc(wantBytes);
        const readBytes = await handle.read(buffer, at);
        if (readBytes < wantBytes) throw new StorageError('ECORRUPT', `${path}: ends at ${at + readBytes}, before its records do`);
        bufferStart = at;
      }
      return buffer.subarray(at - bufferStart, at - bufferStart + lengthBytes);
    };
    let position = packHeaderBytes;
    let count = 0;
    while (position < endBytes) {
      const headerBytes = Buffer.from(await view(position, recordHeaderBytes));
      const record = decodeRecordHeader(headerBytes, 0);
      if (typeof record === 'string') throw new StorageError('ECORRUPT', `${path}: bad record at ${position} (${record})`);
      const payload = record.payloadBytes > 0 ? await view(position + recordHeaderBytes, record.payloadBytes) : null;
      if (!verifyRecord(headerBytes, 0, payload)) throw new StorageError('ECORRUPT', `${path}: checksum mismatch of the record at ${position}`);
      const compressed = (record.flags & RecordFlag.snappy) !== 0;
      yield {
        startBytes: record.offsetBytes,
        endBytes: record.offsetBytes + record.lengthBytes,
        timestampMicros: record.timestampMicros,
        source: { sequence: record.sequence, hasData: record.kind === RecordKind.data, compressed, segmentNumber: options.fileNumber, recordOffsetBytes: position, volumeOffsetBytes: record.offsetBytes },
        data: options.withData && payload !== null ? Buffer.from(decodePayload(payload, record.flags, record.lengthBytes)) : null,
      };
      position += recordHeaderBytes + record.payloadBytes;
      count++;
    }
    if (count !== header.recordCount) throw new StorageError('ECORRUPT', `${path}: ${count} records where its header says ${header.recordCount}`);
  } finally {
    handle.close();
  }
}

/** A pack's records grouped by chunk, in order (a pack's records never cross a chunk boundary). */
export async function* readPackChunks(
  fileSystem: FileSystem,
  path: string,
  options: { fileNumber: number; volumeId: Buffer; withData: boolean; chunkBytes: number },
): AsyncGenerator<{ chunk: number; records: PackRecord[] }> {
  let current: { chunk: number; records: PackRecord[] } | null = null;
  for await (const record of readPackRecords(fileSystem, path, options)) {
    const chunk = Math.floor(record.startBytes / options.chunkBytes);
    assert(Math.floor((record.endBytes - 1) / options.chunkBytes) === chunk, 'a pack record lies within one chunk');
    if (current !== null && current.chunk !== chunk) {
      yield current;
      current = null;
    }
    current ??= { chunk, records: [] };
    current.records.push(record);
  }
  if (current !== null) yield current;
}
