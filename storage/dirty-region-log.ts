// The dirty region log (DRL): a persistent bitmap with one bit per region of the volume, plus a
// checkpoint saying up to which log record the live image is durable. Format:
// docs/formats/dirty-region-log.md.
//
// A region's bit is durable before any logged write is applied to that region of the live
// image, and is cleared only once everything written to the region is durable in both the live
// image and the log. Recovery therefore replays only the log after the checkpoint, and that part
// of the log touches only dirty regions: its cost grows with the dirty regions, not with the
// volume or its history.

import { crc32c } from 'cdp-native';
import { StorageError, assert } from './errors.js';
import type { FileHandle, FileSystem } from './io/file-system.js';
import type { LogPosition } from './write-log/batch.js';

export const drlMagic = Buffer.from('CDPDRL\n\0', 'latin1');
export const drlFormatVersion = 1;
/** Two header slots of 512 bytes (written alternately) in the first 4 KiB block. */
const slotBytes = 512;
const slotChecksummedBytes = 92;
const bitmapStartBytes = 4096;
const pageBytes = 4096;

export interface DrlCheckpoint {
  /** Every record up to this sequence number is durable in the live image. */
  sequence: number;
  /** Where the record after it is (or will be) in the log. */
  position: LogPosition;
  /** Time of that record (0 if none): recovery keeps log time from going backwards. */
  timestampMicros: number;
}

/** Header flag bits. On disk: never reuse a bit. */
export const DrlFlag = {
  /** Dirty regions must be logged from the live image (a machine restart was detected). */
  resyncPending: 0x1,
} as const;

interface DrlHeader {
  generation: number;
  /** The boot of the machine that last wrote the header (16 bytes; zeroes if unknown). */
  bootId: Buffer;
  flags: number;
  regionSizeBytes: number;
  regionCount: number;
  volumeSizeBytes: number;
  checkpoint: DrlCheckpoint;
}

function encodeSlot(header: DrlHeader): Buffer {
  const slot = Buffer.alloc(slotBytes);
  drlMagic.copy(slot, 0);
  slot.writeUInt16BE(drlFormatVersion, 8);
  slot.writeUInt32BE(header.regionSizeBytes, 12);
  slot.writeBigUInt64BE(BigInt(header.generation), 16);
  slot.writeBigUInt64BE(BigInt(header.regionCount), 24);
  slot.writeBigUInt64BE(BigInt(header.checkpoint.sequence), 32);
  slot.writeBigUInt64BE(BigInt(header.checkpoint.position.segmentNumber), 40);
  slot.writeBigUInt64BE(BigInt(header.checkpoint.position.offsetBytes), 48);
  slot.writeBigUInt64BE(BigInt(header.volumeSizeBytes), 56);
  slot.writeBigUInt64BE(BigInt(header.checkpoint.timestampMicros), 64);
  header.bootId.copy(slot, 72, 0, 16);
  slot.writeUInt32BE(header.flags, 88);
  slot.writeUInt32BE(crc32c(slot.subarray(0, slotChecksummedBytes)), slotChecksummedBytes);
  return slot;
}

function decodeSlot(slot: Buffer): DrlHeader | null {
  if (!slot.subarray(0, 8).equals(drlMagic)) return null;
  if (crc32c(slot.subarray(0, slotChecksummedBytes)) !== slot.readUInt32BE(slotChecksummedBytes)) return null;
  if (slot.readUInt16BE(8) !== drlFormatVersion) return null;
  return {
    regionSizeBytes: slot.readUInt32BE(12),
    generation: Number(slot.readBigUInt64BE(16)),
    regionCount: Number(slot.readBigUInt64BE(24)),
    checkpoint: {
      sequence: Number(slot.readBigUInt64BE(32)),
      position: { segmentNumber: Number(slot.readBigUInt64BE(40)), offsetBytes: Number(slot.readBigUInt64BE(48)) },
      timestampMicros: Number(slot.readBigUInt64BE(64)),
    },
    volumeSizeBytes: Number(slot.readBigUInt64BE(56)),
    bootId: Buffer.from(slot.subarray(72, 88)),
    flags: slot.readUInt32BE(88),
  };
}

function bitmapBytesFor(regionCount: number): number {
  return Math.ceil(Math.ceil(regionCount / 8) / pageBytes) * pageBytes;
}

/** A range of bytes touched by a write, as the DRL needs to know it. */
export interface TouchedRange {
  sequence: number;
  offsetBytes: number;
  lengthBytes: number;
}

export class DirtyRegionLog {
  readonly regionSizeBytes: number;
  readonly regionCount: number;
  private readonly handle: FileHandle;
  private header: DrlHeader;
  /** The bits as the next DRL write will persist them. */
  private readonly bitmap: Buffer;
  /** Highest sequence number that touched each region (0: none since start). */
  private readonly lastSequenceByRegion: Float64Array;
  private readonly changedPages = new Set<number>();
  private dirtyCount = 0;
  /** The DRL write being done now, and the one queued behind it (takes every change up to its start). */
  private writing: Promise<void> = Promise.resolve();
  private queued: Promise<void> | null = null;
  private queuedWritesHeader = false;

  private constructor(handle: FileHandle, header: DrlHeader, bitmap: Buffer) {
    this.handle = handle;
    this.header = header;
    this.regionSizeBytes = header.regionSizeBytes;
    this.regionCount = header.regionCount;
    this.bitmap = bitmap;
    this.lastSequenceByRegion = new Float64Array(header.regionCount);
    for (let region = 0; region < this.regionCount; region++) if (this.isDirty(region)) this.dirtyCount++;
  }

  /** Create a clean DRL for a new volume and make it durable. */
  static async create(
    fileSystem: FileSystem,
    path: string,
    geometry: { regionSizeBytes: number; volumeSizeBytes: number; checkpoint: DrlCheckpoint },
  ): Promise<void> {
    const regionCount = Math.ceil(geometry.volumeSizeBytes / geometry.regionSizeBytes);
    const handle = fileSystem.open(path, { create: true, exclusive: true });
    try {
      const header: DrlHeader = {
        generation: 1,
        regionSizeBytes: geometry.regionSizeBytes,
        regionCount,
        volumeSizeBytes: geometry.volumeSizeBytes,
        checkpoint: geometry.checkpoint,
        bootId: Buffer.alloc(16),
        flags: 0,
      };
      const block = Buffer.alloc(bitmapStartBytes + bitmapBytesFor(regionCount));
      encodeSlot(header).copy(block, (header.generation % 2) * slotBytes); // the slot writeChanges would use
      handle.writeSync(block, 0);
      await handle.datasync();
    } finally {
      handle.close();
    }
  }

  /** Open a DRL: the newer valid header slot wins (a torn header write leaves the other one). */
  static open(fileSystem: FileSystem, path: string): DirtyRegionLog {
    const handle = fileSystem.open(path);
    const headerBlock = Buffer.alloc(bitmapStartBytes);
    handle.readSync(headerBlock, 0);
    const slots = [decodeSlot(headerBlock.subarray(0, slotBytes)), decodeSlot(headerBlock.subarray(slotBytes, 2 * slotBytes))];
    const valid = slots.filter((slot): slot is DrlHeader => slot !== null);
    if (valid.length === 0) {
      handle.close();
      throw new StorageError('ECORRUPT', `${path}: no valid dirty region log header`);
    }
    const header = valid.reduce((newest, slot) => (slot.generation > newest.generation ? slot : newest));
    const bitmap = Buffer.alloc(bitmapBytesFor(header.regionCount));
    handle.readSync(bitmap, bitmapStartBytes);
    return new DirtyRegionLog(handle, header, bitmap);
  }

  get checkpoint(): DrlCheckpoint {
    return this.header.checkpoint;
  }

  get volumeSizeBytes(): number {
    return this.header.volumeSizeBytes;
  }

  /** The machine boot that last wrote the header (zeroes: unknown). */
  get bootId(): Buffer {
    return this.header.bootId;
  }

  get resyncPending(): boolean {
    return (this.header.flags & DrlFlag.resyncPending) !== 0;
  }

  get dirtyRegionCount(): number {
    return this.dirtyCount;
  }

  isDirty(region: number): boolean {
    return (this.bitmap[region >>> 3]! & (1 << (region & 7))) !== 0;
  }

  /** Regions currently dirty, ascending. */
  dirtyRegions(): number[] {
    const regions: number[] = [];
    for (let byteIndex = 0; byteIndex < this.bitmap.length; byteIndex++) {
      const bits = this.bitmap[byteIndex]!;
      if (bits === 0) continue;
      for (let bit = 0; bit < 8; bit++) if ((bits & (1 << bit)) !== 0) regions.push(byteIndex * 8 + bit);
    }
    return regions;
  }

  /**
   * Mark the regions these writes touch. Resolves once every one of their bits is durable, which
   * must happen before the writes are applied to the live image.
   */
  markBeforeApply(ranges: Iterable<TouchedRange>): Promise<void> {
    let added = false;
    for (const range of ranges) {
      const first = Math.floor(range.offsetBytes / this.regionSizeBytes);
      const last = Math.floor((range.offsetBytes + range.lengthBytes - 1) / this.regionSizeBytes);
      for (let region = first; region <= last; region++) {
        this.lastSequenceByRegion[region] = range.sequence;
        if (!this.isDirty(region)) {
          this.setBit(region, true);
          added = true;
        }
      }
    }
    return added ? this.scheduleWrite(false) : this.writing;
  }

  /**
   * Move the checkpoint to `checkpoint` (the live image must already be durable through it) and
   * clear regions whose last write is at or before `cleanThroughSequence` (≤ checkpoint). Regions
   * written since stay dirty, so a hot region is not cleared and re-marked every cycle.
   */
  cleanAndCheckpoint(checkpoint: DrlCheckpoint, cleanThroughSequence: number): Promise<void> {
    assert(cleanThroughSequence <= checkpoint.sequence, 'only durable regions are cleaned');
    assert(checkpoint.sequence >= this.header.checkpoint.sequence, 'the checkpoint never moves back');
    for (let byteIndex = 0; byteIndex < this.bitmap.length; byteIndex++) {
      if (this.bitmap[byteIndex] === 0) continue;
      for (let bit = 0; bit < 8; bit++) {
        const region = byteIndex * 8 + bit;
        if (this.isDirty(region) && this.lastSequenceByRegion[region]! <= cleanThroughSequence) this.setBit(region, false);
      }
    }
    this.header = { ...this.header, checkpoint };
    return this.scheduleWrite(true);
  }

  /**
   * After recovery: checkpoint at the end of the log, stamped with this boot. Either every region
   * is cleaned, or (keepDirtyForResync) the dirty ones stay dirty with the resync flag set until
   * their contents are logged (finishResync).
   */
  checkpointAfterRecovery(checkpoint: DrlCheckpoint, bootId: Buffer, keepDirtyForResync: boolean): Promise<void> {
    this.header = {
      ...this.header,
      bootId: Buffer.from(bootId),
      flags: keepDirtyForResync ? this.header.flags | DrlFlag.resyncPending : this.header.flags & ~DrlFlag.resyncPending,
    };
    if (keepDirtyForResync) {
      assert(checkpoint.sequence >= this.header.checkpoint.sequence, 'the checkpoint never moves back');
      this.header = { ...this.header, checkpoint };
      return this.scheduleWrite(true);
    }
    return this.cleanAndCheckpoint(checkpoint, checkpoint.sequence);
  }

  /** The dirty regions' contents are in the log now: drop the resync flag. */
  finishResync(): Promise<void> {
    this.header = { ...this.header, flags: this.header.flags & ~DrlFlag.resyncPending };
    return this.scheduleWrite(true);
  }

  /** Wait for every DRL write issued so far. */
  settled(): Promise<void> {
    return this.queued ?? this.writing;
  }

  close(): void {
    this.handle.close();
  }

  private setBit(region: number, dirty: boolean): void {
    assert(region >= 0 && region < this.regionCount, `region ${region} is inside the volume`);
    const byteIndex = region >>> 3;
    const mask = 1 << (region & 7);
    if (dirty) {
      this.bitmap[byteIndex] = this.bitmap[byteIndex]! | mask;
      this.dirtyCount++;
    } else {
      this.bitmap[byteIndex] = this.bitmap[byteIndex]! & ~mask;
      this.dirtyCount--;
    }
    this.changedPages.add(Math.floor(byteIndex / pageBytes));
  }

  /** Queue a durable write of the bitmap pages changed so far (and the header, if asked). */
  private scheduleWrite(withHeader: boolean): Promise<void> {
    if (withHeader) this.queuedWritesHeader = true;
    if (this.queued !== null) return this.queued;
    const queued = this.writing.then(() => {
      this.queued = null;
      return this.writeChanges();
    });
    this.queued = queued;
    this.writing = queued;
    return queued;
  }

  private async writeChanges(): Promise<void> {
    const pages = [...this.changedPages].sort((left, right) => left - right);
    this.changedPages.clear();
    for (const page of pages) {
      const start = page * pageBytes;
      this.handle.writeSync(this.bitmap.subarray(start, start + pageBytes), bitmapStartBytes + start);
    }
    if (this.queuedWritesHeader) {
      this.queuedWritesHeader = false;
      this.header = { ...this.header, generation: this.header.generation + 1 };
      const slotIndex = this.header.generation % 2;
      this.handle.writeSync(encodeSlot(this.header), slotIndex * slotBytes);
    }
    await this.handle.datasync();
  }
}

/** The region size a new volume gets: the default, grown so the bitmap stays bounded. */
export function defaultRegionSizeBytes(volumeSizeBytes: number, regionSizeBytesDefault: number, regionCountMax: number): number {
  let regionSizeBytes = regionSizeBytesDefault;
  while (Math.ceil(volumeSizeBytes / regionSizeBytes) > regionCountMax) regionSizeBytes *= 2;
  return regionSizeBytes;
}
