// A batch of the write-log buffer: records appended together and written out together, with one
// I/O per segment they land in. While a batch is not yet applied to the live image it also
// answers reads for the ranges it wrote (the read overlay), so a read always sees every write
// that was acknowledged before it.

import { storageLimits } from '../limits.js';
import { RecordKind, changesData } from './record.js';
import type { OpenSegment } from './segment.js';

export interface LogPosition {
  segmentNumber: number;
  /** Offset of the record's header within its segment file. */
  offsetBytes: number;
}

/** One record as the rest of the storage layer sees it once appended. */
export interface AppendedRecord {
  sequence: number;
  kind: RecordKind;
  /** The header's flag bits (RecordFlag): fua, snappy. */
  flags: number;
  timestampMicros: number;
  offsetBytes: number;
  lengthBytes: number;
  /** Data records: the bytes written (held by the batch until it is applied). */
  data: Buffer | null;
  position: LogPosition;
  /** Bytes the record takes in the log (header and stored payload). */
  encodedBytes: number;
  /** Bytes the batch holds for it: encodedBytes, plus the data itself when the log holds it compressed. */
  heldBytes: number;
}

/** Consecutive bytes of one segment that a batch writes with one writev. */
export interface SegmentRun {
  segment: OpenSegment;
  startOffsetBytes: number;
  buffers: Buffer[];
  lengthBytes: number;
  /** The piece still growing: contiguous bytes of one slab, turned into a Buffer when closed. */
  openPiece: Buffer | null;
  openPieceBytes: number;
}

export class Batch {
  readonly records: AppendedRecord[] = [];
  readonly runs: SegmentRun[] = [];
  /** Bytes this batch holds in memory or on its way to disk (headers and payloads). */
  accountedBytes = 0;
  readonly createdAtMs = performance.now();
  /** Where the log continues after this batch's last record. */
  endPosition: LogPosition = { segmentNumber: 0, offsetBytes: 0 };

  /** Headers and small payloads, as they go to the log. */
  private readonly logSlab = new Slab();
  /** The data of small compressed records, for the live image and reads (not written to the log). */
  private readonly dataSlab = new Slab();
  private readonly overlayChunks = new Map<number, number[]>();
  private readonly overlayLargeRecords: number[] = [];

  get firstSequence(): number {
    return this.records[0]?.sequence ?? 0;
  }

  get lastSequence(): number {
    return this.records[this.records.length - 1]?.sequence ?? 0;
  }

  get isEmpty(): boolean {
    return this.records.length === 0;
  }

  /** Space for a record header (and a small payload) in the batch's log slab. */
  allocate(lengthBytes: number): Buffer {
    return this.logSlab.allocate(lengthBytes);
  }

  /** Space for a copy of a small record's data that the log holds compressed. */
  allocateData(lengthBytes: number): Buffer {
    return this.dataSlab.allocate(lengthBytes);
  }

  /** Queue bytes for the segment at the given offset, merging with the previous piece when contiguous. */
  place(segment: OpenSegment, offsetBytes: number, bytes: Buffer): void {
    let run = this.runs[this.runs.length - 1];
    if (run === undefined || run.segment !== segment || run.startOffsetBytes + run.lengthBytes !== offsetBytes) {
      if (run !== undefined) closePiece(run);
      run = { segment, startOffsetBytes: offsetBytes, buffers: [], lengthBytes: 0, openPiece: null, openPieceBytes: 0 };
      this.runs.push(run);
    }
    const piece = run.openPiece;
    if (
      piece !== null &&
      piece.buffer === bytes.buffer &&
      piece.byteOffset + run.openPieceBytes === bytes.byteOffset &&
      bytes.byteOffset + bytes.length <= piece.byteOffset + piece.length
    ) {
      run.openPieceBytes += bytes.length;
    } else {
      closePiece(run);
      // A slab piece may grow to the end of its slab; a referenced payload stands alone.
      run.openPiece = this.logSlab.rest(bytes) ?? bytes;
      run.openPieceBytes = bytes.length;
    }
    run.lengthBytes += bytes.length;
  }

  /** Close the runs: after this the batch takes no more records and its buffers are final. */
  seal(): void {
    for (const run of this.runs) closePiece(run);
  }

  /** Remember an appended record and index it for reads. */
  addRecord(record: AppendedRecord): void {
    const index = this.records.length;
    this.records.push(record);
    this.accountedBytes += record.heldBytes;
    this.endPosition = { segmentNumber: record.position.segmentNumber, offsetBytes: record.position.offsetBytes + record.encodedBytes };
    if (!changesData(record.kind)) return;
    if (record.lengthBytes > storageLimits.overlayIndexedRecordBytesMax) {
      this.overlayLargeRecords.push(index);
      return;
    }
    const chunkBytes = storageLimits.overlayChunkBytes;
    const firstChunk = Math.floor(record.offsetBytes / chunkBytes);
    const lastChunk = Math.floor((record.offsetBytes + record.lengthBytes - 1) / chunkBytes);
    for (let chunk = firstChunk; chunk <= lastChunk; chunk++) {
      const list = this.overlayChunks.get(chunk);
      if (list === undefined) this.overlayChunks.set(chunk, [index]);
      else list.push(index);
    }
  }

  /**
   * Overwrite target (which holds the bytes of [offsetBytes, offsetBytes + target.length) as
   * older storage has them) with what this batch's records wrote there, oldest record first.
   */
  patchRead(offsetBytes: number, target: Buffer): void {
    if (this.overlayChunks.size === 0 && this.overlayLargeRecords.length === 0) return;
    const endBytes = offsetBytes + target.length;
    const chunkBytes = storageLimits.overlayChunkBytes;
    const candidates: number[] = [...this.overlayLargeRecords];
    const lastChunk = Math.floor((endBytes - 1) / chunkBytes);
    for (let chunk = Math.floor(offsetBytes / chunkBytes); chunk <= lastChunk; chunk++) {
      const list = this.overlayChunks.get(chunk);
      if (list !== undefined) for (const index of list) candidates.push(index);
    }
    if (candidates.length === 0) return;
    candidates.sort((left, right) => left - right);
    let previous = -1;
    for (const index of candidates) {
      if (index === previous) continue;
      previous = index;
      const record = this.records[index]!;
      applyRecordToRange(record, offsetBytes, target);
    }
  }
}

/** Memory handed out in pieces: slabs start small and double, so a batch of one large write does not hold a big slab. */
class Slab {
  private slab: Buffer = Buffer.allocUnsafe(0);
  private usedBytes = 0;
  private nextSlabBytes = 64 * 1024;

  allocate(lengthBytes: number): Buffer {
    if (this.usedBytes + lengthBytes > this.slab.length) {
      this.slab = Buffer.allocUnsafe(Math.max(this.nextSlabBytes, lengthBytes));
      this.usedBytes = 0;
      this.nextSlabBytes = Math.min(this.nextSlabBytes * 2, storageLimits.slabBytes);
    }
    const piece = this.slab.subarray(this.usedBytes, this.usedBytes + lengthBytes);
    this.usedBytes += lengthBytes;
    return piece;
  }

  /** For a piece of the current slab: the slab from that piece to its end (a piece that may grow). */
  rest(bytes: Buffer): Buffer | null {
    return bytes.buffer === this.slab.buffer ? this.slab.subarray(bytes.byteOffset - this.slab.byteOffset) : null;
  }
}

function closePiece(run: SegmentRun): void {
  if (run.openPiece !== null && run.openPieceBytes > 0) run.buffers.push(run.openPiece.subarray(0, run.openPieceBytes));
  run.openPiece = null;
  run.openPieceBytes = 0;
}

/** Copy the effect of one data-changing record onto target, which holds [offsetBytes, +length). */
export function applyRecordToRange(record: AppendedRecord, offsetBytes: number, target: Buffer): void {
  const startBytes = Math.max(record.offsetBytes, offsetBytes);
  const endBytes = Math.min(record.offsetBytes + record.lengthBytes, offsetBytes + target.length);
  if (startBytes >= endBytes) return;
  if (record.kind === RecordKind.data && record.data !== null) {
    record.data.copy(target, startBytes - offsetBytes, startBytes - record.offsetBytes, endBytes - record.offsetBytes);
  } else {
    target.fill(0, startBytes - offsetBytes, endBytes - offsetBytes);
  }
}
