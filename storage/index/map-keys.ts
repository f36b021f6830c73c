// The LevelDB key and value layout of the delta-map index: docs/formats/delta-map.md. Every
// encoding of the format lives here, next to its decoding.

import type { LogPosition } from '../write-log/batch.js';
import type { Extent, ExtentSource } from './extents.js';

/** Version 2 adds the lifecycle state (`H`), intervals (`I`, `X`) and window end positions in `L` values; a version 1 database is read as version 2 without them. */
export const indexFormatVersion = 2;
export const indexFormatVersionsReadable = [1, 2];

const Tag = {
  version: 0x56,
  checkpoint: 0x43,
  mapInfo: 0x4d,
  extent: 0x45,
  windowRecords: 0x52,
  windowBySequence: 0x4c,
  windowByTime: 0x54,
  chunkLastWrite: 0x57,
  snapshot: 0x53,
  builtCount: 0x42,
  lifecycle: 0x48,
  interval: 0x49,
  intervalExtent: 0x58,
} as const;

const indexBytes = 6;
const maxIndex = 2 ** 48 - 1;

function writeUint48(target: Buffer, at: number, value: number): void {
  target.writeUIntBE(value, at, indexBytes);
}

function writeUint64(target: Buffer, at: number, value: number): void {
  target.writeUInt32BE(Math.floor(value / 0x1_0000_0000), at);
  target.writeUInt32BE(value >>> 0, at + 4);
}

function readUint64(source: Buffer, at: number): number {
  return source.readUInt32BE(at) * 0x1_0000_0000 + source.readUInt32BE(at + 4);
}

export const versionKey = Buffer.from([Tag.version]);
export const checkpointKey = Buffer.from([Tag.checkpoint]);

export interface MapReference {
  level: number;
  index: number;
}

function mapPrefix(tag: number, map: MapReference, extraBytes: number): Buffer {
  const key = Buffer.alloc(2 + indexBytes + extraBytes);
  key[0] = tag;
  key[1] = map.level;
  writeUint48(key, 2, map.index);
  return key;
}

// ---- map summaries ----

export interface MapInfo {
  firstSequence: number;
  lastSequence: number;
  firstMicros: number;
  lastMicros: number;
  recordCount: number;
  dataBytes: number;
  extentCount: number;
}

export function mapInfoKey(map: MapReference): Buffer {
  return mapPrefix(Tag.mapInfo, map, 0);
}

/** Bounds of every summary of one level: [gte, lt). */
export function mapInfoRange(level: number): { gte: Buffer; lt: Buffer } {
  return { gte: mapInfoKey({ level, index: 0 }), lt: mapInfoKey({ level: level + 1, index: 0 }) };
}

export function decodeMapInfoKey(key: Buffer): MapReference {
  return { level: key[1]!, index: key.readUIntBE(2, indexBytes) };
}

export function encodeMapInfo(info: MapInfo): Buffer {
  const value = Buffer.alloc(48);
  writeUint64(value, 0, info.firstSequence);
  writeUint64(value, 8, info.lastSequence);
  writeUint64(value, 16, info.firstMicros);
  writeUint64(value, 24, info.lastMicros);
  value.writeUInt32BE(info.recordCount, 32);
  writeUint64(value, 36, info.dataBytes);
  value.writeUInt32BE(Math.min(info.extentCount, 0xffffffff), 44);
  return value;
}

export function decodeMapInfo(value: Buffer): MapInfo {
  return {
    firstSequence: readUint64(value, 0),
    lastSequence: readUint64(value, 8),
    firstMicros: readUint64(value, 16),
    lastMicros: readUint64(value, 24),
    recordCount: value.readUInt32BE(32),
    dataBytes: readUint64(value, 36),
    extentCount: value.readUInt32BE(44),
  };
}

// ---- extents, one key per map and chunk ----

/** The flags byte of an extent and of a window record. On disk: never reuse a bit. */
const SourceFlag = {
  /** A data record (else zeroes or trim: the range reads as zeroes). */
  data: 0x01,
  /** The record's payload is compressed (write-log record flag snappy): read it through its frame table. */
  compressed: 0x02,
} as const;

function sourceFlags(source: ExtentSource): number {
  return (source.hasData ? SourceFlag.data : 0) | (source.compressed ? SourceFlag.compressed : 0);
}

const extentValueBytes = 45;

/** The extents of one map within one chunk of the volume. */
export function chunkExtentsKey(map: MapReference, chunk: number): Buffer {
  const key = mapPrefix(Tag.extent, map, 8);
  writeUint64(key, 2 + indexBytes, chunk);
  return key;
}

/** Keys of one map's chunks: [gte, lt). */
export function chunkExtentsRange(map: MapReference): { gte: Buffer; lt: Buffer } {
  return { gte: chunkExtentsKey(map, 0), lt: mapPrefix(Tag.extent, { level: map.level, index: map.index + 1 }, 8) };
}

export function decodeChunkExtentsKey(key: Buffer): number {
  return readUint64(key, 2 + indexBytes);
}

/** Sorted, disjoint extents (all within one chunk) as one value. */
export function encodeChunkExtents(extents: readonly Extent[]): Buffer {
  const value = Buffer.alloc(extents.length * extentValueBytes);
  extents.forEach((extent, position) => {
    const at = position * extentValueBytes;
    const { source } = extent;
    writeUint64(value, at, extent.startBytes);
    writeUint64(value, at + 8, extent.endBytes);
    writeUint64(value, at + 16, source.sequence);
    value[at + 24] = sourceFlags(source);
    value.writeUInt32BE(source.segmentNumber, at + 25);
    writeUint64(value, at + 29, source.recordOffsetBytes);
    writeUint64(value, at + 37, source.volumeOffsetBytes);
  });
  return value;
}

export function decodeChunkExtents(value: Buffer): Extent[] {
  const extents: Extent[] = [];
  for (let at = 0; at + extentValueBytes <= value.length; at += extentValueBytes) {
    extents.push({
      startBytes: readUint64(value, at),
      endBytes: readUint64(value, at + 8),
      source: {
        sequence: readUint64(value, at + 16),
        hasData: (value[at + 24]! & SourceFlag.data) !== 0,
        compressed: (value[at + 24]! & SourceFlag.compressed) !== 0,
        segmentNumber: value.readUInt32BE(at + 25),
        recordOffsetBytes: readUint64(value, at + 29),
        volumeOffsetBytes: readUint64(value, at + 37),
      },
    });
  }
  return extents;
}

// ---- a window's records ----

/** A data-changing record as a window keeps it: every version, for instants inside the window. */
export interface WindowRecord {
  micros: number;
  startBytes: number;
  lengthBytes: number;
  source: ExtentSource;
}

const windowRecordBytes = 45;

export function windowRecordsKey(index: number): Buffer {
  const key = Buffer.alloc(1 + indexBytes);
  key[0] = Tag.windowRecords;
  writeUint48(key, 1, index);
  return key;
}

export function encodeWindowRecords(records: readonly WindowRecord[]): Buffer {
  const value = Buffer.alloc(records.length * windowRecordBytes);
  records.forEach((record, position) => {
    const at = position * windowRecordBytes;
    writeUint64(value, at, record.source.sequence);
    writeUint64(value, at + 8, record.micros);
    writeUint64(value, at + 16, record.startBytes);
    writeUint64(value, at + 24, record.lengthBytes);
    value[at + 32] = sourceFlags(record.source);
    value.writeUInt32BE(record.source.segmentNumber, at + 33);
    writeUint64(value, at + 37, record.source.recordOffsetBytes);
  });
  return value;
}

export function decodeWindowRecords(value: Buffer): WindowRecord[] {
  const records: WindowRecord[] = [];
  for (let at = 0; at + windowRecordBytes <= value.length; at += windowRecordBytes) {
    const startBytes = readUint64(value, at + 16);
    records.push({
      micros: readUint64(value, at + 8),
      startBytes,
      lengthBytes: readUint64(value, at + 24),
      source: {
        sequence: readUint64(value, at),
        hasData: (value[at + 32]! & SourceFlag.data) !== 0,
        compressed: (value[at + 32]! & SourceFlag.compressed) !== 0,
        segmentNumber: value.readUInt32BE(at + 33),
        recordOffsetBytes: readUint64(value, at + 37),
        volumeOffsetBytes: startBytes,
      },
    });
  }
  return records;
}

// ---- finding windows by sequence number and by time ----

export function windowBySequenceKey(lastSequence: number): Buffer {
  const key = Buffer.alloc(9);
  key[0] = Tag.windowBySequence;
  writeUint64(key, 1, lastSequence);
  return key;
}

export const windowBySequenceEnd = Buffer.from([Tag.windowBySequence + 1]);

export function encodeWindowIndex(index: number): Buffer {
  const value = Buffer.alloc(indexBytes);
  writeUint48(value, 0, index);
  return value;
}

/** An `L` value: the window's index, and where the log continues after its last record. */
export function encodeWindowEnd(index: number, nextPosition: LogPosition): Buffer {
  const value = Buffer.alloc(indexBytes + 12);
  writeUint48(value, 0, index);
  value.writeUInt32BE(nextPosition.segmentNumber, indexBytes);
  writeUint64(value, indexBytes + 4, nextPosition.offsetBytes);
  return value;
}

/** An `L` value's position (null in a version 1 database, which did not keep it). */
export function decodeWindowEndPosition(value: Buffer): LogPosition | null {
  if (value.length < indexBytes + 12) return null;
  return { segmentNumber: value.readUInt32BE(indexBytes), offsetBytes: readUint64(value, indexBytes + 4) };
}

export function decodeWindowIndex(value: Buffer): number {
  return value.readUIntBE(0, indexBytes);
}

export function windowByTimeKey(lastMicros: number, index: number): Buffer {
  const key = Buffer.alloc(1 + 8 + indexBytes);
  key[0] = Tag.windowByTime;
  writeUint64(key, 1, lastMicros);
  writeUint48(key, 9, index);
  return key;
}

export const windowByTimeEnd = Buffer.from([Tag.windowByTime + 1]);

export function decodeWindowByTimeKey(key: Buffer): { lastMicros: number; index: number } {
  return { lastMicros: readUint64(key, 1), index: key.readUIntBE(9, indexBytes) };
}

// ---- last write per chunk ----

export function chunkLastWriteKey(chunk: number): Buffer {
  const key = Buffer.alloc(9);
  key[0] = Tag.chunkLastWrite;
  writeUint64(key, 1, chunk);
  return key;
}

export const chunkLastWriteRange = { gte: chunkLastWriteKey(0), lt: Buffer.from([Tag.chunkLastWrite + 1]) };

export function decodeChunkLastWrite(key: Buffer, value: Buffer): { chunk: number; sequence: number } {
  return { chunk: readUint64(key, 1), sequence: readUint64(value, 0) };
}

export function encodeSequence(sequence: number): Buffer {
  const value = Buffer.alloc(8);
  writeUint64(value, 0, sequence);
  return value;
}

// ---- snapshots ----

export interface SnapshotRecord {
  name: string;
  sequence: number;
  micros: number;
  note: string;
  /** Space pressure never expires a pinned snapshot (only its deletion does). */
  pinned?: boolean;
  /** The snapshot is deleted at this time (0 or absent: kept until deleted). */
  expiresMicros?: number;
}

export function snapshotKey(name: string): Buffer {
  return Buffer.concat([Buffer.from([Tag.snapshot]), Buffer.from(name, 'utf8')]);
}

export const snapshotRange = { gte: Buffer.from([Tag.snapshot]), lt: Buffer.from([Tag.snapshot + 1]) };

// ---- the checkpoint ----

export interface IndexCheckpoint {
  windowCount: number;
  mappedThroughSequence: number;
  nextPosition: LogPosition;
}

/** How many merged maps a level (1 and up) has: a key of its own, so merges and cuts never write the same key. */
export function builtCountKey(level: number): Buffer {
  return Buffer.from([Tag.builtCount, level]);
}

export const builtCountRange = { gte: Buffer.from([Tag.builtCount]), lt: Buffer.from([Tag.builtCount + 1]) };

export function assertIndexInRange(index: number): void {
  if (!Number.isSafeInteger(index) || index < 0 || index > maxIndex) throw new Error(`map index ${index} out of range`);
}

// ---- the history lifecycle: intervals between kept points, and its state ----

/** The lifecycle state (docs/formats/delta-map.md, "History lifecycle"), one JSON value. */
export const lifecycleKey = Buffer.from([Tag.lifecycle]);

/** A packed interval's summary, by its last sequence. */
export function intervalKey(lastSequence: number): Buffer {
  const key = Buffer.alloc(9);
  key[0] = Tag.interval;
  writeUint64(key, 1, lastSequence);
  return key;
}

export const intervalRange = { gte: Buffer.from([Tag.interval]), lt: Buffer.from([Tag.interval + 1]) };

export function decodeIntervalKey(key: Buffer): number {
  return readUint64(key, 1);
}

/** The extents of one interval within one chunk: chunk first, so one scan finds every interval that wrote a chunk. */
export function intervalExtentsKey(chunk: number, lastSequence: number): Buffer {
  const key = Buffer.alloc(17);
  key[0] = Tag.intervalExtent;
  writeUint64(key, 1, chunk);
  writeUint64(key, 9, lastSequence);
  return key;
}

export const intervalExtentsRange = { gte: Buffer.from([Tag.intervalExtent]), lt: Buffer.from([Tag.intervalExtent + 1]) };

export function decodeIntervalExtentsKey(key: Buffer): { chunk: number; lastSequence: number } {
  return { chunk: readUint64(key, 1), lastSequence: readUint64(key, 9) };
}
