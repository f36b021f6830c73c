// Internal verification of a volume: proof that what the appliance holds is self-consistent.
// Expiry is held off while it runs.
//
// 1. Records: the log is scanned from the first record of the fine region (what is not packed)
//    to the last durable one; every record's CRC-32C must hold and sequence numbers must follow
//    each other. A record whose checksum fails but whose header is sound is reported and
//    skipped; anything else stops the scan.
// 2. Maps: the scan replays the records into a newest-wins extent map (for each byte, the last
//    record that wrote it); the delta maps' answer at the same instant must name the same
//    record for every byte the fine region wrote, and a pack or the base image elsewhere. Every
//    pack's records pass their CRC and are exactly the index's extents of their interval.
// 3. Image: the live image must equal the volume at that instant as the history reads it (log
//    records, packs and the base image, never the live image). Ranges written while the check
//    runs are skipped.
//
// Memory: the replay keeps one extent per distinct written range of an 8 GiB address slice, and
// each slice is one scan of the log; reports keep at most 1000 ranges and 100 bad records.

import { StorageError } from './errors.js';
import { flattenNewestWins, type Extent, type RecordExtent } from './index/extents.js';
import type { Volume } from './volume.js';
import { scanLog, logStart } from './write-log/log-reader.js';
import { decodeRecordHeader, recordHeaderBytes, changesData, RecordFlag, RecordKind } from './write-log/record.js';
import { openSegment } from './write-log/segment.js';
import type { LogPosition } from './write-log/batch.js';

export interface BadRecord {
  segmentNumber: number;
  offsetBytes: number;
  sequence: number | null;
  reason: string;
}

export interface VerifyRange {
  startBytes: number;
  endBytes: number;
}

export interface VolumeVerifyReport {
  /** The instant checked: the last record durable when the check began. */
  sequence: number;
  records: { scanned: number; bad: BadRecord[]; badCount: number; missing: number };
  maps: { mismatches: VerifyRange[]; mismatchBytes: number };
  /** The packed history: packs and their records checked, and what differs (in words, at most 100). */
  packs: { checked: number; records: number; problems: string[] };
  image: { mismatches: VerifyRange[]; mismatchBytes: number; checkedBytes: number; skippedBytes: number };
  ok: boolean;
}

export interface VerifyVolumeOptions {
  onProgress?: (progress: { phase: 'records' | 'image'; doneUnits: number; totalUnits: number }) => void;
  signal?: AbortSignal;
}

const sliceBytes = 8 * 1024 ** 3;
const recordsPerStep = 20_000;
const replayBufferRecordsMax = 200_000;
const reportedRangesMax = 1000;
const reportedBadRecordsMax = 100;
const imagePieceBytes = 4 * 1024 * 1024;
const imageCompareBlockBytes = 4096;
const imagePiecesInFlight = 4;

export async function verifyVolume(volume: Volume, options: VerifyVolumeOptions = {}): Promise<VolumeVerifyReport> {
  const history = volume.history;
  if (history === null) throw new StorageError('EINVAL', `volume ${volume.config.name} keeps no history to verify against`);
  return history.lifecycle.withoutExpiry(() => verifyHeldStill(volume, history, options));
}

async function verifyHeldStill(volume: Volume, history: NonNullable<Volume['history']>, options: VerifyVolumeOptions): Promise<VolumeVerifyReport> {
  await volume.flush();
  const packed = history.lifecycle.packedRegion();
  const sequence = volume.stats().durableSequence;
  const sizeBytes = volume.sizeBytes;
  const report: VolumeVerifyReport = {
    sequence,
    records: { scanned: 0, bad: [], badCount: 0, missing: 0 },
    maps: { mismatches: [], mismatchBytes: 0 },
    packs: { checked: 0, records: 0, problems: [] },
    image: { mismatches: [], mismatchBytes: 0, checkedBytes: 0, skippedBytes: 0 },
    ok: false,
  };
  const packs = await history.lifecycle.verifyPacks();
  report.packs = { checked: packs.packs, records: packs.records, problems: packs.problems.slice(0, reportedBadRecordsMax) };
  const view = await history.openView(sequence, 'verification', { fromLogOnly: true });
  // The view holds its instant against expiry while the check reads it.
  try {
    const extentsAt = await history.extentResolver(sequence);

    for (let sliceStart = 0; sliceStart < sizeBytes; sliceStart += sliceBytes) {
      const sliceEnd = Math.min(sizeBytes, sliceStart + sliceBytes);
      const firstSlice = sliceStart === 0;
      const replay = await replaySlice(volume, packed, sequence, sliceStart, sliceEnd, firstSlice ? report : null, options);
      // Bytes the fine region did not write come from a pack or the base image: only the fine region's records are compared.
      const extents = (await extentsAt(sliceStart, sliceEnd)).filter((extent) => extent.source.sequence >= packed.fineStartSequence);
      for (const range of differingExtents(replay, extents, sliceStart, sliceEnd)) {
        report.maps.mismatchBytes += range.endBytes - range.startBytes;
        if (report.maps.mismatches.length < reportedRangesMax) report.maps.mismatches.push(range);
      }
    }

    // 3. The live image against the view at the same instant.
    let nextPiece = 0;
    const pieceCount = Math.ceil(sizeBytes / imagePieceBytes);
    let donePieces = 0;
    const worker = async (): Promise<void> => {
      for (;;) {
        if (options.signal?.aborted === true) throw new StorageError('ECANCELED', 'verification cancelled');
        const piece = nextPiece++;
        if (piece >= pieceCount) return;
        const startBytes = piece * imagePieceBytes;
        const lengthBytes = Math.min(imagePieceBytes, sizeBytes - startBytes);
        const [live, expected] = await Promise.all([volume.read(startBytes, lengthBytes), view.read(startBytes, lengthBytes)]);
        report.image.checkedBytes += lengthBytes;
        if (!live.equals(expected)) await noteImageDifferences(volume, sequence, startBytes, live, expected, report);
        options.onProgress?.({ phase: 'image', doneUnits: ++donePieces, totalUnits: pieceCount });
      }
    };
    await Promise.all(Array.from({ length: imagePiecesInFlight }, worker));
  } finally {
    view.release();
  }
  report.ok = report.records.badCount === 0 && report.records.missing === 0 && report.maps.mismatchBytes === 0 && report.packs.problems.length === 0 && report.image.mismatchBytes === 0;
  return report;
}

/**
 * Scan the log through `sequence`, replaying the records that touch [sliceStart, sliceEnd) into
 * a newest-wins extent map. The first slice's scan also fills the record part of the report.
 */
async function replaySlice(
  volume: Volume,
  packed: { fineStartSequence: number; fineStartPosition: LogPosition | null },
  sequence: number,
  sliceStart: number,
  sliceEnd: number,
  report: VolumeVerifyReport | null,
  options: VerifyVolumeOptions,
): Promise<Extent[]> {
  let flattened: Extent[] = [];
  let buffered: RecordExtent[] = [];
  const flatten = (): void => {
    flattened = flattenNewestWins([...flattened, ...buffered]);
    buffered = [];
  };
  // From the fine region's first record: what came before it is packed (and its segments may be gone).
  let position: LogPosition | null = packed.fineStartPosition ?? logStart(volume.fileSystem, volume.paths.log);
  let expectedSequence: number | undefined = packed.fineStartPosition === null ? undefined : packed.fineStartSequence;
  let lastSequence = packed.fineStartSequence - 1;
  while (position !== null && lastSequence < sequence) {
    if (options.signal?.aborted === true) throw new StorageError('ECANCELED', 'verification cancelled');
    const result = scanLog(
      volume.fileSystem,
      volume.paths.log,
      { from: position, withPayload: false, toSequence: Math.min(sequence, lastSequence + recordsPerStep), ...(expectedSequence === undefined ? {} : { expectedSequence }) },
      ({ header, position: recordPosition }) => {
        lastSequence = header.sequence;
        if (report !== null) report.records.scanned++;
        if (!changesData(header.kind) || header.sequence < packed.fineStartSequence) return;
        const startBytes = Math.max(header.offsetBytes, sliceStart);
        const endBytes = Math.min(header.offsetBytes + header.lengthBytes, sliceEnd);
        if (startBytes >= endBytes) return;
        buffered.push({
          startBytes,
          endBytes,
          source: {
            sequence: header.sequence,
            hasData: header.kind === RecordKind.data,
            compressed: (header.flags & RecordFlag.snappy) !== 0,
            segmentNumber: recordPosition.segmentNumber,
            recordOffsetBytes: recordPosition.offsetBytes,
            volumeOffsetBytes: header.offsetBytes,
          },
        });
        if (buffered.length >= replayBufferRecordsMax) flatten();
      },
    );
    position = result.end;
    expectedSequence = lastSequence + 1;
    if (result.tear !== null && lastSequence < sequence) {
      const skipped = skipBadRecord(volume, result.tear.position, expectedSequence, result.tear.reason);
      if (report !== null) {
        report.records.badCount++;
        if (report.records.bad.length < reportedBadRecordsMax) report.records.bad.push(skipped.bad);
      }
      if (skipped.next === null) break;
      position = skipped.next;
      lastSequence = expectedSequence; // the bad record's number
      expectedSequence = lastSequence + 1;
    } else if (result.recordCount === 0) {
      break; // the clean end of the log
    }
    if (report !== null) options.onProgress?.({ phase: 'records', doneUnits: lastSequence, totalUnits: sequence });
    await new Promise((resolve) => setImmediate(resolve)); // let requests through between steps
  }
  if (report !== null && lastSequence < sequence) report.records.missing = sequence - lastSequence;
  flatten();
  return flattened;
}

/** A record that failed its check: where the next one starts, if its header can be trusted. */
function skipBadRecord(volume: Volume, position: LogPosition, expectedSequence: number, reason: string): { bad: BadRecord; next: LogPosition | null } {
  const segment = openSegment(volume.fileSystem, volume.paths.log, position.segmentNumber, 'read');
  try {
    const headerBytes = Buffer.alloc(recordHeaderBytes);
    segment.handle.readSync(headerBytes, position.offsetBytes);
    const header = decodeRecordHeader(headerBytes, 0);
    const sound = typeof header === 'object' && header.sequence === expectedSequence && reason === 'checksum mismatch';
    const bad: BadRecord = { segmentNumber: position.segmentNumber, offsetBytes: position.offsetBytes, sequence: sound ? header.sequence : null, reason };
    if (!sound) return { bad, next: null };
    const nextOffsetBytes = position.offsetBytes + recordHeaderBytes + header.payloadBytes;
    return { bad, next: { segmentNumber: position.segmentNumber, offsetBytes: nextOffsetBytes } };
  } finally {
    segment.handle.close();
  }
}

/** Ranges of [startBytes, endBytes) where the two extent lists name different records. */
export function differingExtents(left: readonly Extent[], right: readonly Extent[], startBytes: number, endBytes: number): VerifyRange[] {
  const boundaries = new Set<number>([startBytes, endBytes]);
  for (const extent of [...left, ...right]) {
    boundaries.add(Math.max(startBytes, Math.min(endBytes, extent.startBytes)));
    boundaries.add(Math.max(startBytes, Math.min(endBytes, extent.endBytes)));
  }
  const points = [...boundaries].sort((a, b) => a - b);
  const ranges: VerifyRange[] = [];
  let leftAt = 0;
  let rightAt = 0;
  for (let at = 0; at + 1 < points.length; at++) {
    const from = points[at]!;
    const to = points[at + 1]!;
    while (leftAt < left.length && left[leftAt]!.endBytes <= from) leftAt++;
    while (rightAt < right.length && right[rightAt]!.endBytes <= from) rightAt++;
    const leftExtent = left[leftAt] !== undefined && left[leftAt]!.startBytes <= from ? left[leftAt]! : null;
    const rightExtent = right[rightAt] !== undefined && right[rightAt]!.startBytes <= from ? right[rightAt]! : null;
    const same =
      (leftExtent === null && rightExtent === null) ||
      (leftExtent !== null && rightExtent !== null && leftExtent.source.sequence === rightExtent.source.sequence);
    if (same) continue;
    const last = ranges[ranges.length - 1];
    if (last !== undefined && last.endBytes === from) last.endBytes = to;
    else ranges.push({ startBytes: from, endBytes: to });
  }
  return ranges;
}

/** Record the 4 KiB blocks of a piece where the image differs, unless written since `sequence`. */
async function noteImageDifferences(volume: Volume, sequence: number, pieceStart: number, live: Buffer, expected: Buffer, report: VolumeVerifyReport): Promise<void> {
  const history = volume.history!;
  const changedSince = await history.changedBetween(sequence, volume.stats().appendedSequence, pieceStart, pieceStart + live.length);
  for (let at = 0; at < live.length; at += imageCompareBlockBytes) {
    const end = Math.min(live.length, at + imageCompareBlockBytes);
    if (live.subarray(at, end).equals(expected.subarray(at, end))) continue;
    const startBytes = pieceStart + at;
    const endBytes = pieceStart + end;
    if (changedSince.some(([from, to]) => from < endBytes && to > startBytes)) {
      report.image.skippedBytes += endBytes - startBytes;
      continue;
    }
    report.image.mismatchBytes += endBytes - startBytes;
    const last = report.image.mismatches[report.image.mismatches.length - 1];
    if (last !== undefined && last.endBytes === startBytes) last.endBytes = endBytes;
    else if (report.image.mismatches.length < reportedRangesMax) report.image.mismatches.push({ startBytes, endBytes });
  }
}
