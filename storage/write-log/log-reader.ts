// Reading the write log back in order: for recovery, the inspector, verification and replay.
// A scan checks every record (magic, version, lengths, sequence continuity, CRC32C) and stops at
// the clean end of the log (zeroes) or at the first record that fails a check (a tear). After a
// tear, recovery surveys the rest of the log for good records past it (surveyPastTear): none
// means a torn tail, some mean damage in the middle (docs/formats/write-log.md, "Damage").

import type { FileHandle, FileSystem } from '../io/file-system.js';
import { decodeRecordHeader, recordHeaderBytes, recordMagic, verifyRecord, type RecordHeader } from './record.js';
import { listSegments, openSegment, segmentHeaderBytes, type OpenSegment } from './segment.js';
import type { LogPosition } from './batch.js';

export interface ScannedRecord {
  header: RecordHeader;
  position: LogPosition;
  /** The stored payload (possibly compressed), when the scan was asked for payloads. */
  payload: Buffer | null;
}

export interface LogTear {
  position: LogPosition;
  reason: string;
}

export interface LogScanResult {
  /** Where the next record goes: just after the last good record. */
  end: LogPosition;
  /** Sequence number the next record gets. */
  nextSequence: number;
  lastTimestampMicros: number;
  recordCount: number;
  /** The first bad record, if the scan stopped at one rather than at the clean end. */
  tear: LogTear | null;
  /** For every segment scanned, where its last good record ends. */
  segmentEnds: LogPosition[];
}

export interface LogScanOptions {
  from: LogPosition;
  /** Sequence number the first record at `from` must carry; undefined accepts any. */
  expectedSequence?: number;
  withPayload: boolean;
  /** Stop after this sequence number (inclusive). */
  toSequence?: number;
}

const readAheadBytes = 4 * 1024 * 1024;

/** Reads a file front to back through one reusable buffer. */
class SequentialReader {
  private buffer = Buffer.alloc(0);
  private bufferStartBytes = 0;
  /** Bytes of the buffer that hold the file from bufferStartBytes on (the rest is stale). */
  private bufferValidBytes = 0;

  constructor(
    private readonly handle: FileHandle,
    private readonly limitBytes: number,
  ) {}

  /** The bytes [positionBytes, +lengthBytes), or null if they run past the limit. */
  view(positionBytes: number, lengthBytes: number): Buffer | null {
    if (positionBytes + lengthBytes > this.limitBytes) return null;
    const inBuffer =
      positionBytes >= this.bufferStartBytes && positionBytes + lengthBytes <= this.bufferStartBytes + this.bufferValidBytes;
    if (!inBuffer) {
      const wantBytes = Math.min(Math.max(lengthBytes, readAheadBytes), this.limitBytes - positionBytes);
      if (this.buffer.length < wantBytes) this.buffer = Buffer.alloc(Math.max(wantBytes, readAheadBytes));
      const readBytes = this.handle.readSync(this.buffer.subarray(0, wantBytes), positionBytes);
      this.buffer.fill(0, readBytes, wantBytes); // past the end of file reads as the clean end
      this.bufferStartBytes = positionBytes;
      this.bufferValidBytes = wantBytes;
    }
    const start = positionBytes - this.bufferStartBytes;
    return this.buffer.subarray(start, start + lengthBytes);
  }
}

type SegmentOutcome = { kind: 'end'; offsetBytes: number } | { kind: 'tear'; offsetBytes: number; reason: string } | { kind: 'stop'; offsetBytes: number };

/**
 * Scan the log from a position to its end, calling onRecord for every good record in order.
 * Payload buffers passed to onRecord are only valid during the call.
 */
export function scanLog(
  fileSystem: FileSystem,
  logDirectory: string,
  options: LogScanOptions,
  onRecord: (record: ScannedRecord) => void,
): LogScanResult {
  const segmentNumbers = listSegments(fileSystem, logDirectory).filter((number) => number >= options.from.segmentNumber);
  let expectedSequence = options.expectedSequence;
  let lastTimestampMicros = 0;
  let recordCount = 0;
  let end: LogPosition = options.from;
  const segmentEnds: LogPosition[] = [];

  for (const segmentNumber of segmentNumbers) {
    const segment = openSegment(fileSystem, logDirectory, segmentNumber, 'read');
    const startOffsetBytes = segmentNumber === options.from.segmentNumber ? options.from.offsetBytes : segmentHeaderBytes;
    let outcome: SegmentOutcome;
    try {
      outcome = scanSegment(segment, startOffsetBytes, options, expectedSequence, (record) => {
        expectedSequence = record.header.sequence + 1;
        lastTimestampMicros = record.header.timestampMicros;
        recordCount++;
        onRecord(record);
      });
    } finally {
      segment.handle.close();
    }
    const position = { segmentNumber, offsetBytes: outcome.offsetBytes };
    segmentEnds.push(position);
    if (outcome.kind === 'tear') {
      const tear = { position, reason: outcome.reason };
      return { end: position, nextSequence: expectedSequence ?? 1, lastTimestampMicros, recordCount, tear, segmentEnds };
    }
    if (outcome.kind === 'stop') {
      return { end: position, nextSequence: expectedSequence ?? 1, lastTimestampMicros, recordCount, tear: null, segmentEnds };
    }
    // A segment with records continues the log; an empty one (a prepared spare) does not move the end.
    if (outcome.offsetBytes > startOffsetBytes || segmentNumber === options.from.segmentNumber) end = position;
  }
  return { end, nextSequence: expectedSequence ?? 1, lastTimestampMicros, recordCount, tear: null, segmentEnds };
}

function scanSegment(
  segment: OpenSegment,
  startOffsetBytes: number,
  options: LogScanOptions,
  expectedSequence: number | undefined,
  onRecord: (record: ScannedRecord) => void,
): SegmentOutcome {
  const reader = new SequentialReader(segment.handle, segment.sizeBytes);
  let offsetBytes = startOffsetBytes;
  let expected = expectedSequence;
  for (;;) {
    const headerBytes = reader.view(offsetBytes, recordHeaderBytes);
    if (headerBytes === null) return { kind: 'end', offsetBytes };
    const header = decodeRecordHeader(headerBytes, 0);
    if (header === 'zero') return { kind: 'end', offsetBytes };
    if (typeof header === 'string') return { kind: 'tear', offsetBytes, reason: `bad record header (${header})` };
    if (expected !== undefined && header.sequence !== expected) {
      return { kind: 'tear', offsetBytes, reason: `sequence ${header.sequence} where ${expected} was due` };
    }
    const headerCopy = Buffer.from(headerBytes); // the payload view may move the reader's buffer
    const payload = header.payloadBytes > 0 ? reader.view(offsetBytes + recordHeaderBytes, header.payloadBytes) : null;
    if (header.payloadBytes > 0 && payload === null) {
      return { kind: 'tear', offsetBytes, reason: 'record runs past the end of its segment' };
    }
    if (!verifyRecord(headerCopy, 0, payload)) return { kind: 'tear', offsetBytes, reason: 'checksum mismatch' };
    onRecord({ header, position: { segmentNumber: segment.segmentNumber, offsetBytes }, payload: options.withPayload ? payload : null });
    offsetBytes += recordHeaderBytes + header.payloadBytes;
    expected = header.sequence + 1;
    if (options.toSequence !== undefined && header.sequence >= options.toSequence) return { kind: 'stop', offsetBytes };
  }
}

/** The position of the first record of the log (segment 1 unless older segments were expired). */
export function logStart(fileSystem: FileSystem, logDirectory: string): LogPosition | null {
  const first = listSegments(fileSystem, logDirectory)[0];
  return first === undefined ? null : { segmentNumber: first, offsetBytes: segmentHeaderBytes };
}

/** A run of good records, in sequence without a gap, found past a tear. */
export interface RecordRun {
  firstSequence: number;
  lastSequence: number;
  recordCount: number;
  /** Where its first record starts, and where its last one ends (they may lie in different segments). */
  from: LogPosition;
  to: LogPosition;
  firstMicros: number;
  lastMicros: number;
}

const magicBytes = Buffer.alloc(4);
magicBytes.writeUInt32BE(recordMagic, 0);

/**
 * The good records past a scan's tear whose sequence is at least `expectedSequence` (the one the
 * tear was due to carry), in log order, joined into runs. Looked for everywhere a record could
 * still be: in every scanned segment after its last good record (a zeroed header reads as a clean
 * end), and in every later segment; past garbage, by the record magic. An empty answer means the
 * log ends in a torn tail; records found mean damage in the middle of the log.
 */
export function surveyPastTear(fileSystem: FileSystem, logDirectory: string, scan: LogScanResult, expectedSequence: number): RecordRun[] {
  const runs: RecordRun[] = [];
  const firstSegment = scan.segmentEnds[0]?.segmentNumber ?? scan.end.segmentNumber;
  for (const segmentNumber of listSegments(fileSystem, logDirectory).filter((number) => number >= firstSegment)) {
    const scanned = scan.segmentEnds.find((position) => position.segmentNumber === segmentNumber);
    const segment = openSegment(fileSystem, logDirectory, segmentNumber, 'read');
    try {
      surveySegment(segment, scanned?.offsetBytes ?? segmentHeaderBytes, expectedSequence, (run) => {
        const last = runs[runs.length - 1];
        if (last !== undefined && last.lastSequence + 1 === run.firstSequence && last.to.segmentNumber !== run.from.segmentNumber) {
          runs[runs.length - 1] = { ...last, lastSequence: run.lastSequence, recordCount: last.recordCount + run.recordCount, to: run.to, lastMicros: run.lastMicros };
        } else {
          runs.push(run);
        }
      });
    } finally {
      segment.handle.close();
    }
  }
  return runs;
}

/** Runs of good records in one segment from `fromOffsetBytes` on, found by their magic. */
function surveySegment(segment: OpenSegment, fromOffsetBytes: number, expectedSequence: number, onRun: (run: RecordRun) => void): void {
  const windowBytes = readAheadBytes;
  const window = Buffer.alloc(windowBytes);
  let offsetBytes = fromOffsetBytes;
  while (offsetBytes + recordHeaderBytes <= segment.sizeBytes) {
    const candidate = nextMagic(segment, window, offsetBytes);
    if (candidate === null) return;
    let run: RecordRun | null = null;
    const outcome = scanSegment(segment, candidate, { from: { segmentNumber: segment.segmentNumber, offsetBytes: candidate }, withPayload: false }, undefined, ({ header, position }) => {
      const end = { segmentNumber: segment.segmentNumber, offsetBytes: position.offsetBytes + recordHeaderBytes + header.payloadBytes };
      if (run === null) {
        run = { firstSequence: header.sequence, lastSequence: header.sequence, recordCount: 1, from: position, to: end, firstMicros: header.timestampMicros, lastMicros: header.timestampMicros };
      } else {
        run.lastSequence = header.sequence;
        run.recordCount++;
        run.to = end;
        run.lastMicros = header.timestampMicros;
      }
    });
    const found = run as RecordRun | null;
    if (found !== null && found.firstSequence >= expectedSequence) onRun(found);
    offsetBytes = Math.max(candidate + 1, outcome.offsetBytes);
  }
}

/** The offset of the next record magic at or after `offsetBytes`, or null. */
function nextMagic(segment: OpenSegment, window: Buffer, offsetBytes: number): number | null {
  for (let start = offsetBytes; start + magicBytes.length <= segment.sizeBytes; start += window.length - magicBytes.length + 1) {
    const wantBytes = Math.min(window.length, segment.sizeBytes - start);
    const readBytes = segment.handle.readSync(window.subarray(0, wantBytes), start);
    if (readBytes < magicBytes.length) return null;
    const found = window.subarray(0, readBytes).indexOf(magicBytes);
    if (found >= 0) return start + found;
    if (readBytes < wantBytes) return null;
  }
  return null;
}
