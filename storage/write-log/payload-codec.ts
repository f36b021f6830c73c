// The payload of a data record as the log stores it: the bytes as written, or (flag `snappy`,
// record version 2) Snappy-compressed in frames of 64 KiB behind a frame table, so that any byte
// range of a record's data is read by decompressing only the frames it covers.
// Layout, constants and a worked example: docs/formats/write-log.md, "Compressed payloads".
//
// Encoding runs on the write path, on the event loop (the record's size must be known when it is
// appended, since that fixes the next record's position): frames that do not shrink by an eighth
// are stored raw, and after frames that did not shrink the encoder tries fewer frames, so
// incompressible data costs one attempt in up to 32 frames (docs/decisions/0008-log-compression.md).
// Decoding serves recovery (whole payloads) and views (ranges, through a bounded cache of
// decoded frames). Anything that holds records in this format reads them through
// readRecordData: segments of the log, and files that copy records from it.

import { assert, StorageError } from '../errors.js';
import { RecordFlag } from './record.js';
import { snappyCodec, type SnappyCodec } from './snappy.js';

/** Uncompressed bytes per frame: the last frame of a record may be shorter. */
export const payloadFrameBytes = 64 * 1024;
const tableEntryBytes = 4;
/** A table entry: the frame's encoding in the top two bits, its start offset in the payload below. */
const offsetMask = 0x3fff_ffff;
const encodingShift = 30;

/** How one frame is stored. The numbers are on disk: never renumber. */
export const FrameEncoding = {
  /** The frame's bytes as written (it did not compress, or was not tried). */
  raw: 0,
  /** One Snappy block (raw Snappy format, not framed) that decodes to the frame's bytes. */
  snappy: 1,
  /** The frame is all zero; nothing is stored. */
  zero: 2,
} as const;
export type FrameEncoding = (typeof FrameEncoding)[keyof typeof FrameEncoding];

/** Records shorter than this are stored as written: too little to gain. */
const compressMinBytes = 512;
/** A frame, and a record, is stored compressed only when that saves at least 1/8 of its bytes. */
const savingFractionMin = 1 / 8;
/** After consecutive frames that did not compress, the encoder skips up to this many before trying again. */
const skippedFramesMax = 31;

const zeroFrame = Buffer.alloc(payloadFrameBytes);

/** True when every byte is zero (checked before logging, so zero blocks cost no log space). */
export function isAllZero(data: Buffer): boolean {
  for (let offset = 0; offset < data.length; offset += zeroFrame.length) {
    const piece = data.subarray(offset, Math.min(offset + zeroFrame.length, data.length));
    if (!piece.equals(zeroFrame.subarray(0, piece.length))) return false;
  }
  return true;
}

export function frameCountOf(lengthBytes: number): number {
  return Math.ceil(lengthBytes / payloadFrameBytes);
}

function frameLengthOf(lengthBytes: number, frame: number): number {
  return Math.min(payloadFrameBytes, lengthBytes - frame * payloadFrameBytes);
}

/** Bytes of the frame table of a compressed record of lengthBytes. */
export function frameTableBytes(lengthBytes: number): number {
  return (frameCountOf(lengthBytes) + 1) * tableEntryBytes;
}

export interface EncodedPayload {
  /** RecordFlag.snappy when the payload is framed and compressed; 0 when it is the data as written. */
  flags: number;
  /** The stored bytes, in order (pieces of the data itself where it is stored raw). */
  pieces: Buffer[];
  storedBytes: number;
}

export interface PayloadEncoderStatistics {
  framesTried: number;
  framesCompressed: number;
  framesZero: number;
  /** Frames stored raw without a try, after frames before them did not compress. */
  framesSkipped: number;
}

/** Encodes data payloads for the write path; one per log writer (it learns from what it sees). */
export class PayloadEncoder {
  readonly statistics: PayloadEncoderStatistics = { framesTried: 0, framesCompressed: 0, framesZero: 0, framesSkipped: 0 };
  private readonly codec: SnappyCodec | null;
  private failedStreak = 0;
  private framesToSkip = 0;

  private readonly recordBytesMin: number;

  /**
   * codec null: store everything as written (compression off). Records shorter than
   * recordBytesMin are stored as written (the write path sets it high: small writes cost more CPU
   * per byte than they save, and packs compress them later).
   */
  constructor(codec: SnappyCodec | null = snappyCodec(), options: { recordBytesMin?: number } = {}) {
    this.codec = codec;
    this.recordBytesMin = Math.max(compressMinBytes, options.recordBytesMin ?? compressMinBytes);
  }

  get codecName(): string {
    return this.codec?.name ?? 'off';
  }

  encode(data: Buffer): EncodedPayload {
    const asWritten: EncodedPayload = { flags: 0, pieces: [data], storedBytes: data.length };
    if (this.codec === null || data.length < this.recordBytesMin) return asWritten;
    const frameCount = frameCountOf(data.length);
    const table = Buffer.allocUnsafe((frameCount + 1) * tableEntryBytes);
    const pieces: Buffer[] = [table];
    let storedBytes = table.length;
    for (let frame = 0; frame < frameCount; frame++) {
      const start = frame * payloadFrameBytes;
      const frameData = data.subarray(start, start + frameLengthOf(data.length, frame));
      const { encoding, stored } = this.encodeFrame(frameData);
      table.writeUInt32BE(((encoding << encodingShift) | storedBytes) >>> 0, frame * tableEntryBytes);
      if (stored !== null) pieces.push(stored);
      storedBytes += stored?.length ?? 0;
    }
    table.writeUInt32BE(storedBytes, frameCount * tableEntryBytes);
    if (storedBytes > data.length * (1 - savingFractionMin)) return asWritten;
    return { flags: RecordFlag.snappy, pieces, storedBytes };
  }

  private encodeFrame(frameData: Buffer): { encoding: FrameEncoding; stored: Buffer | null } {
    if (this.framesToSkip > 0) {
      this.framesToSkip--;
      this.statistics.framesSkipped++;
      return { encoding: FrameEncoding.raw, stored: frameData };
    }
    this.statistics.framesTried++;
    const compressed = this.codec!.compress(frameData);
    if (compressed.length > frameData.length * (1 - savingFractionMin)) {
      // Did not pay: try fewer of the next frames (1, 3, 7, ... skipped), until one compresses.
      this.failedStreak++;
      this.framesToSkip = Math.min(2 ** this.failedStreak - 1, skippedFramesMax);
      return { encoding: FrameEncoding.raw, stored: frameData };
    }
    this.failedStreak = 0;
    // A zero frame compresses to about 1/21 of its size; only then is it worth checking.
    if (compressed.length * 16 <= frameData.length && isAllZero(frameData)) {
      this.statistics.framesZero++;
      return { encoding: FrameEncoding.zero, stored: null };
    }
    this.statistics.framesCompressed++;
    return { encoding: FrameEncoding.snappy, stored: compressed };
  }
}

// ---- decoding ----

interface FrameEntry {
  encoding: FrameEncoding;
  /** Offsets in the payload: the frame's stored bytes are [startBytes, endBytes). */
  startBytes: number;
  endBytes: number;
}

/** Entries of frames first..last from the table entries first..last+1 (the bytes in `entries`). */
function decodeEntries(entries: Buffer, firstFrame: number, lastFrame: number): FrameEntry[] {
  const frames: FrameEntry[] = [];
  for (let frame = firstFrame; frame <= lastFrame; frame++) {
    const at = (frame - firstFrame) * tableEntryBytes;
    const entry = entries.readUInt32BE(at);
    const encoding = entry >>> encodingShift;
    const startBytes = entry & offsetMask;
    const endBytes = entries.readUInt32BE(at + tableEntryBytes) & offsetMask;
    const storedBytes = endBytes - startBytes;
    const sound =
      storedBytes >= 0 &&
      (encoding === FrameEncoding.snappy ? storedBytes > 0 : encoding === FrameEncoding.zero ? storedBytes === 0 : encoding === FrameEncoding.raw && storedBytes <= payloadFrameBytes);
    if (!sound) throw new StorageError('ECORRUPT', `frame ${frame} of a compressed record has a bad table entry`);
    frames.push({ encoding: encoding as FrameEncoding, startBytes, endBytes });
  }
  return frames;
}

/**
 * The data of a frame from its stored bytes (a view into them when stored raw). A zero frame
 * is returned full length: a reader takes only the part its range covers.
 */
function decodeFrame(entry: FrameEntry, stored: Buffer, codec: SnappyCodec): Buffer {
  switch (entry.encoding) {
    case FrameEncoding.zero:
      return zeroFrame;
    case FrameEncoding.raw:
      return stored;
    case FrameEncoding.snappy:
      return codec.uncompress(stored, payloadFrameBytes);
  }
}

/** The whole data of a record from its stored payload and header flags (recovery, tools). */
export function decodePayload(payload: Buffer, flags: number, lengthBytes: number, codec: SnappyCodec = snappyCodec()): Buffer {
  if ((flags & RecordFlag.snappy) === 0) return payload;
  const frameCount = frameCountOf(lengthBytes);
  const tableBytes = frameTableBytes(lengthBytes);
  const sound = payload.length >= tableBytes && (payload.readUInt32BE(0) & offsetMask) === tableBytes && payload.readUInt32BE(frameCount * tableEntryBytes) === payload.length;
  if (!sound) throw new StorageError('ECORRUPT', 'the frame table of a compressed record does not match its payload');
  const data = Buffer.allocUnsafe(lengthBytes);
  decodeEntries(payload, 0, frameCount - 1).forEach((entry, frame) => {
    const frameBytes = frameLengthOf(lengthBytes, frame);
    const decoded = decodeFrame(entry, payload.subarray(entry.startBytes, entry.endBytes), codec);
    if (decoded.length < frameBytes || (decoded.length > frameBytes && entry.encoding !== FrameEncoding.zero)) {
      throw new StorageError('ECORRUPT', `frame ${frame} of a compressed record holds ${decoded.length} bytes where ${frameBytes} were due`);
    }
    decoded.copy(data, frame * payloadFrameBytes, 0, frameBytes);
  });
  return data;
}

/** How each frame of a stored payload is kept (an empty list for a payload stored as written). */
export function frameEncodingsOf(payload: Buffer, flags: number, lengthBytes: number): FrameEncoding[] {
  if ((flags & RecordFlag.snappy) === 0) return [];
  return decodeEntries(payload, 0, frameCountOf(lengthBytes) - 1).map((entry) => entry.encoding);
}

/** What readRecordData needs of a file that holds records: reads through the page cache first. */
export interface RecordFile {
  /** Read what the page cache holds at once; returns the bytes read (fewer when not cached). */
  readCached(target: Buffer, positionBytes: number): number;
  read(target: Buffer, positionBytes: number): Promise<number>;
}

/** Decoded frames, most recently used last, bounded in bytes (storageLimits.decodedFrameCacheBytes). */
export class DecodedFrameCache {
  private readonly frames = new Map<string, Buffer>();
  private heldBytes = 0;

  constructor(private readonly capacityBytes: number) {
    assert(capacityBytes >= payloadFrameBytes, 'the frame cache holds at least one frame');
  }

  get(key: string): Buffer | undefined {
    const frame = this.frames.get(key);
    if (frame !== undefined) {
      this.frames.delete(key);
      this.frames.set(key, frame);
    }
    return frame;
  }

  set(key: string, frame: Buffer): void {
    if (this.frames.has(key)) return;
    this.frames.set(key, frame);
    this.heldBytes += frame.length;
    for (const [oldestKey, oldest] of this.frames) {
      if (this.heldBytes <= this.capacityBytes) break;
      this.frames.delete(oldestKey);
      this.heldBytes -= oldest.length;
    }
  }

  get sizeBytes(): number {
    return this.heldBytes;
  }
}

/** Where a record's data is: its payload's position in a file, and whether it is compressed. */
export interface StoredRecord {
  file: RecordFile;
  /** Names the file among those that share a frame cache (e.g. its segment number). */
  fileKey: string;
  /** Position of the payload (just after the 48-byte header) in the file. */
  payloadPositionBytes: number;
  compressed: boolean;
}

/** Fill target from the file; null when the page cache held it all, else a promise. */
function readFully(file: RecordFile, target: Buffer, positionBytes: number): Promise<void> | null {
  const cachedBytes = file.readCached(target, positionBytes);
  if (cachedBytes === target.length) return null;
  return file.read(target.subarray(cachedBytes), positionBytes + cachedBytes).then((readBytes) => {
    if (readBytes < target.length - cachedBytes) throw new StorageError('ECORRUPT', `the file ends inside a record's payload (at ${positionBytes + cachedBytes + readBytes})`);
  });
}

/** Run next after step, synchronously when step already finished (null). */
function andThen(step: Promise<void> | null, next: () => Promise<void> | null): Promise<void> | null {
  return step === null ? next() : step.then(() => next() ?? undefined);
}

/**
 * Read bytes [dataOffsetBytes, +target.length) of a record's data into target, decompressing
 * only the frames the range covers: a 4 KiB read decodes one 64 KiB frame at most (two when it
 * straddles a frame boundary), whatever the record's size. The caller keeps the range inside
 * the record. Returns null when the page cache and the frame cache served it all at once.
 */
export function readRecordData(record: StoredRecord, dataOffsetBytes: number, target: Buffer, cache: DecodedFrameCache | null, codec: SnappyCodec = snappyCodec()): Promise<void> | null {
  if (target.length === 0) return null;
  if (!record.compressed) return readFully(record.file, target, record.payloadPositionBytes + dataOffsetBytes);
  const endBytes = dataOffsetBytes + target.length;
  const firstFrame = Math.floor(dataOffsetBytes / payloadFrameBytes);
  const lastFrame = Math.floor((endBytes - 1) / payloadFrameBytes);
  const cacheKey = (frame: number): string => `${record.fileKey}:${record.payloadPositionBytes}:${frame}`;
  const copyFrame = (frame: number, data: Buffer): void => {
    const frameStart = frame * payloadFrameBytes;
    const from = Math.max(dataOffsetBytes, frameStart);
    const to = Math.min(endBytes, frameStart + payloadFrameBytes);
    if (frameStart + data.length < to) throw new StorageError('ECORRUPT', `frame ${frame} of a compressed record ends before the range read from it`);
    data.copy(target, from - dataOffsetBytes, from - frameStart, to - frameStart);
  };
  const cachedFrames: Buffer[] = [];
  for (let frame = firstFrame; frame <= lastFrame && cache !== null; frame++) {
    const data = cache.get(cacheKey(frame));
    if (data === undefined) break;
    cachedFrames.push(data);
  }
  if (cachedFrames.length === lastFrame - firstFrame + 1) {
    cachedFrames.forEach((data, index) => copyFrame(firstFrame + index, data));
    return null;
  }
  const entries = Buffer.allocUnsafe((lastFrame - firstFrame + 2) * tableEntryBytes);
  return andThen(readFully(record.file, entries, record.payloadPositionBytes + firstFrame * tableEntryBytes), () => {
    const frames = decodeEntries(entries, firstFrame, lastFrame);
    const storedStart = frames[0]!.startBytes;
    const stored = Buffer.allocUnsafe(frames[frames.length - 1]!.endBytes - storedStart);
    return andThen(readFully(record.file, stored, record.payloadPositionBytes + storedStart), () => {
      frames.forEach((entry, index) => {
        const data = decodeFrame(entry, stored.subarray(entry.startBytes - storedStart, entry.endBytes - storedStart), codec);
        if (entry.encoding === FrameEncoding.snappy) cache?.set(cacheKey(firstFrame + index), data);
        copyFrame(firstFrame + index, data);
      });
      return null;
    });
  });
}
