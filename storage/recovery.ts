// Recovery when a volume is opened. The log is the source of truth; the live image and the DRL
// are brought back in line with it:
//
//   1. Read the DRL: its checkpoint says the live image and the log are durable through record
//      S, and which regions may have been written since.
//   2. Scan the log from the checkpoint position, checking every record, to its end or to the
//      first record that fails a check (a tear: a write that was cut short by the crash). After a
//      tear, survey the rest of the log for good records past it. None: a torn tail (expected).
//      Some: damage in the middle of the log (not expected after a process crash; possible after a
//      power loss, for writes never made durable): the part of the log past the tear is moved to
//      quarantine/<µs>/ with a report of the sequence ranges, never deleted (quarantine.ts).
//   3. Replay every data-changing record after S onto the live image, in log order. These lie
//      only in dirty regions (checked), so the work grows with the dirty regions, not with the
//      volume's size or history.
//   4. Zero what follows the last good record in its segment and remove later segments: after a
//      torn tail nothing there was ever acknowledged as durable (after damage it is in quarantine
//      by now), and stale bytes must never be mistaken for records once appending resumes.
//   5. If the machine restarted since the DRL was last written (its boot id differs), unsynced
//      pages of the live image may have reached disk while the log records behind them did not:
//      the dirty regions stay dirty and are flagged for resync, and the volume logs their
//      contents before serving (Volume.open). After a process crash the page cache kept both
//      files whole, and this step is not needed, unless records were quarantined: the live image
//      may hold their writes, so the dirty regions are flagged for resync too.
//   6. Make the live image durable and move the checkpoint to the end of the log.
//
// Running it again after a crash during recovery is safe: replay writes the same bytes, and the
// resync flag stays set until the resync is done.

import type { DirtyRegionLog } from './dirty-region-log.js';
import type { FileSystem } from './io/file-system.js';
import type { PrimaryImage } from './primary-image.js';
import type { VolumePaths } from './volume-config.js';
import type { LogPosition } from './write-log/batch.js';
import { scanLog, surveyPastTear, type LogTear } from './write-log/log-reader.js';
import { quarantineLogPastTear, type QuarantineReport } from './quarantine.js';
import { RecordKind, changesData } from './write-log/record.js';
import { decodePayload } from './write-log/payload-codec.js';
import { listSegments, openSegment, segmentFileName } from './write-log/segment.js';
import { StorageError } from './errors.js';

export interface RecoveryReport {
  /** Dirty regions found in the DRL at open. */
  dirtyRegionCount: number;
  /** Records after the checkpoint that were replayed onto the live image. */
  replayedRecordCount: number;
  replayedBytes: number;
  /** Records after the checkpoint that were outside the regions marked dirty (should be 0). */
  outsideDirtyRegionCount: number;
  tear: LogTear | null;
  /** Good records found past the tear, moved to quarantine with a report (null: none, a torn tail or no tear). */
  quarantine: QuarantineReport | null;
  /** Segments after the end of the log that were removed. */
  removedSegmentCount: number;
  /** The machine restarted since the volume was last open (or a resync was left unfinished). */
  machineRestarted: boolean;
  /** Regions whose contents must be logged before the volume serves (step 5). */
  resyncRegions: number[];
  end: LogPosition;
  nextSequence: number;
  lastTimestampMicros: number;
  durationMs: number;
}

export async function recoverVolume(parts: {
  fileSystem: FileSystem;
  paths: VolumePaths;
  primary: PrimaryImage;
  drl: DirtyRegionLog;
}): Promise<RecoveryReport> {
  const { fileSystem, paths, primary, drl } = parts;
  const startedMs = performance.now();
  const checkpoint = drl.checkpoint;
  const dirtyRegionCount = drl.dirtyRegionCount;
  let replayedRecordCount = 0;
  let replayedBytes = 0;
  let outsideDirtyRegionCount = 0;

  // Steps 2 and 3.
  const scan = scanLog(
    fileSystem,
    paths.log,
    { from: checkpoint.position, expectedSequence: checkpoint.sequence + 1, withPayload: true },
    ({ header, payload }) => {
      if (!changesData(header.kind)) return;
      if (!rangeIsDirty(drl, header.offsetBytes, header.lengthBytes)) outsideDirtyRegionCount++;
      if (header.offsetBytes + header.lengthBytes > primary.sizeBytes) {
        throw new StorageError('ECORRUPT', `record ${header.sequence} lies past the end of the volume`);
      }
      if (header.kind === RecordKind.data) {
        primary.writeData(header.offsetBytes, decodePayload(payload!, header.flags, header.lengthBytes));
      } else {
        primary.zero(header.offsetBytes, header.lengthBytes);
      }
      replayedRecordCount++;
      replayedBytes += header.lengthBytes;
    },
  );

  // Step 2, after a tear: what lies past it, kept before anything is zeroed or removed.
  const currentBootId = fileSystem.bootId?.() ?? Buffer.alloc(16);
  const bootKnown = !currentBootId.equals(Buffer.alloc(16));
  const machineRestarted = drl.resyncPending || !bootKnown || !drl.bootId.equals(currentBootId);
  let quarantine: QuarantineReport | null = null;
  if (scan.tear !== null) {
    const runs = surveyPastTear(fileSystem, paths.log, scan, scan.nextSequence);
    if (runs.length > 0) quarantine = await quarantineLogPastTear({ fileSystem, paths, scan, tear: scan.tear, runs, machineRestarted });
  }

  // Step 4.
  for (const segmentEnd of scan.segmentEnds.filter((position) => position.segmentNumber <= scan.end.segmentNumber)) {
    await zeroSegmentTail(fileSystem, paths.log, segmentEnd);
  }
  const later = listSegments(fileSystem, paths.log).filter((segmentNumber) => segmentNumber > scan.end.segmentNumber);
  for (const segmentNumber of later) fileSystem.remove(`${paths.log}/${segmentFileName(segmentNumber)}`);
  if (later.length > 0) await fileSystem.syncDirectory(paths.log);

  // Steps 5 and 6.
  const resyncRegions = machineRestarted || quarantine !== null ? drl.dirtyRegions() : [];
  await primary.datasync();
  const lastSequence = scan.nextSequence - 1;
  const lastTimestampMicros = scan.recordCount > 0 ? scan.lastTimestampMicros : checkpoint.timestampMicros;
  await drl.checkpointAfterRecovery(
    { sequence: lastSequence, position: scan.end, timestampMicros: lastTimestampMicros },
    currentBootId,
    resyncRegions.length > 0,
  );

  return {
    dirtyRegionCount,
    replayedRecordCount,
    replayedBytes,
    outsideDirtyRegionCount,
    tear: scan.tear,
    quarantine,
    removedSegmentCount: later.length,
    machineRestarted,
    resyncRegions,
    end: scan.end,
    nextSequence: scan.nextSequence,
    lastTimestampMicros,
    durationMs: performance.now() - startedMs,
  };
}

/** Zero a segment from `from` to its end and make that durable. */
async function zeroSegmentTail(fileSystem: FileSystem, logDirectory: string, from: LogPosition): Promise<void> {
  const segment = openSegment(fileSystem, logDirectory, from.segmentNumber, 'repair');
  try {
    const tailBytes = segment.sizeBytes - from.offsetBytes;
    if (tailBytes > 0) segment.handle.zeroRange(from.offsetBytes, tailBytes);
    await segment.handle.datasync();
  } finally {
    segment.handle.close();
  }
}

function rangeIsDirty(drl: DirtyRegionLog, offsetBytes: number, lengthBytes: number): boolean {
  const first = Math.floor(offsetBytes / drl.regionSizeBytes);
  const last = Math.floor((offsetBytes + lengthBytes - 1) / drl.regionSizeBytes);
  for (let region = first; region <= last; region++) if (!drl.isDirty(region)) return false;
  return true;
}
