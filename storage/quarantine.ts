// Good log records found past a tear are never deleted: recovery moves the part of the log past
// the tear to volumes/<name>/quarantine/<µs>/ with a report.json saying which sequence ranges were
// lost and which were found, before it repairs the log (docs/formats/write-log.md, "Damage").
//
// A report's kind says what it means. `damage`: the volume was not shut down by a machine
// restart (or its index had cut records past the tear, so they had been durable): acknowledged
// records were lost in the middle of the log. The volume then refuses writes until an
// administrator takes the folder away. `unsynced-records`: after a machine restart, records past a
// torn tail that may never have been durable (a disk may write them out of order); kept and
// reported, and the volume goes on.

import type { FileSystem } from './io/file-system.js';
import { readWholeFile, writeFileAtomic } from './io/file-system.js';
import type { VolumePaths } from './volume-config.js';
import type { LogScanResult, LogTear, RecordRun } from './write-log/log-reader.js';
import { listSegments, segmentFileName } from './write-log/segment.js';

export const quarantineReportVersion = 1;

export type QuarantineKind = 'damage' | 'unsynced-records';

/** quarantine/<µs>/report.json (docs/formats/write-log.md, "Damage"). */
export interface QuarantineReport {
  formatVersion: number;
  kind: QuarantineKind;
  /** The folder, relative to the volume's (quarantine/<µs>). */
  folder: string;
  detectedMicros: number;
  machineRestarted: boolean;
  /** The first bad record: where, why, and the sequence it was due to carry. */
  tear: { segmentNumber: number; offsetBytes: number; reason: string; expectedSequence: number };
  /** Sequences with no good record: lost. */
  lostSequences: Array<{ firstSequence: number; lastSequence: number }>;
  /** Good records found past the tear, kept in the folder's files. */
  foundRecords: RecordRun[];
  /** The files in the folder: a segment's bytes from an offset on, or whole later segments. */
  files: Array<{ name: string; segmentNumber: number; fromOffsetBytes: number; lengthBytes: number }>;
  /** Set when the index proved the records past the tear had been durable (it had cut them). */
  indexMappedThroughSequence?: number;
}

const copyChunkBytes = 4 * 1024 * 1024;

/**
 * Keep what lies past the tear: for each scanned segment with good records past its last good
 * record, a copy of its bytes from there to the end of those records (recovery zeroes them next);
 * every later segment, moved whole. Then the report, durably.
 */
export async function quarantineLogPastTear(parts: {
  fileSystem: FileSystem;
  paths: VolumePaths;
  scan: LogScanResult;
  tear: LogTear;
  runs: readonly RecordRun[];
  machineRestarted: boolean;
}): Promise<QuarantineReport> {
  const { fileSystem, paths, scan, tear, runs } = parts;
  const detectedMicros = Date.now() * 1000;
  const folder = `quarantine/${detectedMicros}`;
  const directory = `${paths.directory}/${folder}`;
  fileSystem.mkdirp(directory);
  const files: QuarantineReport['files'] = [];

  const lastKept = scan.end.segmentNumber;
  for (const segmentEnd of scan.segmentEnds.filter((position) => position.segmentNumber <= lastKept)) {
    const endBytes = Math.max(0, ...runs.flatMap((run) => endsIn(run, segmentEnd.segmentNumber)));
    if (endBytes <= segmentEnd.offsetBytes) continue;
    const name = `${segmentFileName(segmentEnd.segmentNumber)}.from-${segmentEnd.offsetBytes}`;
    await copyRange(fileSystem, `${paths.log}/${segmentFileName(segmentEnd.segmentNumber)}`, `${directory}/${name}`, segmentEnd.offsetBytes, endBytes - segmentEnd.offsetBytes);
    files.push({ name, segmentNumber: segmentEnd.segmentNumber, fromOffsetBytes: segmentEnd.offsetBytes, lengthBytes: endBytes - segmentEnd.offsetBytes });
  }
  for (const segmentNumber of listSegments(fileSystem, paths.log).filter((number) => number > lastKept)) {
    const name = segmentFileName(segmentNumber);
    fileSystem.rename(`${paths.log}/${name}`, `${directory}/${name}`);
    files.push({ name, segmentNumber, fromOffsetBytes: 0, lengthBytes: -1 });
  }

  const report: QuarantineReport = {
    formatVersion: quarantineReportVersion,
    kind: parts.machineRestarted ? 'unsynced-records' : 'damage',
    folder,
    detectedMicros,
    machineRestarted: parts.machineRestarted,
    tear: { segmentNumber: tear.position.segmentNumber, offsetBytes: tear.position.offsetBytes, reason: tear.reason, expectedSequence: scan.nextSequence },
    lostSequences: gapsBefore(scan.nextSequence, runs),
    foundRecords: [...runs],
    files,
  };
  await writeFileAtomic(fileSystem, `${directory}/report.json`, Buffer.from(`${JSON.stringify(report, null, 2)}\n`));
  await fileSystem.syncDirectory(directory);
  await fileSystem.syncDirectory(`${paths.directory}/quarantine`);
  await fileSystem.syncDirectory(paths.directory);
  await fileSystem.syncDirectory(paths.log);
  return report;
}

/** Every report in the volume's quarantine folder, oldest first. */
export function readQuarantineReports(fileSystem: FileSystem, paths: VolumePaths): QuarantineReport[] {
  const root = `${paths.directory}/quarantine`;
  if (!fileSystem.exists(root)) return [];
  const reports: QuarantineReport[] = [];
  for (const name of fileSystem.list(root)) {
    const file = `${root}/${name}/report.json`;
    if (!fileSystem.exists(file)) continue;
    let report: QuarantineReport;
    try {
      report = JSON.parse(readWholeFile(fileSystem, file).toString('utf8')) as QuarantineReport;
    } catch {
      report = unreadableReport(`quarantine/${name}`); // taken for damage: what it kept is unknown
    }
    reports.push({ ...report, folder: `quarantine/${name}` });
  }
  return reports;
}

/** What stands for a report.json that cannot be read. */
function unreadableReport(folder: string): QuarantineReport {
  return {
    formatVersion: quarantineReportVersion,
    kind: 'damage',
    folder,
    detectedMicros: 0,
    machineRestarted: false,
    tear: { segmentNumber: 0, offsetBytes: 0, reason: `${folder}/report.json cannot be read`, expectedSequence: 0 },
    lostSequences: [],
    foundRecords: [],
    files: [],
  };
}

/** The index had cut records past the tear: they were durable, so the records lost are damage. */
export async function markQuarantineAsDamage(fileSystem: FileSystem, paths: VolumePaths, report: QuarantineReport, indexMappedThroughSequence: number): Promise<QuarantineReport> {
  const damaged: QuarantineReport = { ...report, kind: 'damage', indexMappedThroughSequence };
  await writeFileAtomic(fileSystem, `${paths.directory}/${report.folder}/report.json`, Buffer.from(`${JSON.stringify(damaged, null, 2)}\n`));
  return damaged;
}

/** The report in words: what was lost, what was kept where. */
export function describeQuarantine(report: QuarantineReport): string {
  const ranges = (list: ReadonlyArray<{ firstSequence: number; lastSequence: number }>): string =>
    list.map((range) => (range.firstSequence === range.lastSequence ? `${range.firstSequence}` : `${range.firstSequence}-${range.lastSequence}`)).join(', ');
  const where = `segment ${report.tear.segmentNumber} at byte ${report.tear.offsetBytes} (${report.tear.reason})`;
  const lostCount = report.lostSequences.reduce((sum, range) => sum + range.lastSequence - range.firstSequence + 1, 0);
  const lost = lostCount === 0 ? 'no record is lost' : `${lostCount === 1 ? 'record' : 'records'} ${ranges(report.lostSequences)} ${lostCount === 1 ? 'is' : 'are'} lost`;
  return `the write log is bad at ${where}; ${lost}, and the good records ${ranges(report.foundRecords)} found past it are kept in ${report.folder}`;
}

function endsIn(run: RecordRun, segmentNumber: number): number[] {
  if (run.from.segmentNumber > segmentNumber || run.to.segmentNumber < segmentNumber) return [];
  return [run.to.segmentNumber === segmentNumber ? run.to.offsetBytes : Number.MAX_SAFE_INTEGER];
}

/** The sequence ranges from `firstSequence` on that no run holds, up to the last run. */
function gapsBefore(firstSequence: number, runs: readonly RecordRun[]): Array<{ firstSequence: number; lastSequence: number }> {
  const gaps: Array<{ firstSequence: number; lastSequence: number }> = [];
  let next = firstSequence;
  for (const run of [...runs].sort((left, right) => left.firstSequence - right.firstSequence)) {
    if (run.firstSequence > next) gaps.push({ firstSequence: next, lastSequence: run.firstSequence - 1 });
    next = Math.max(next, run.lastSequence + 1);
  }
  return gaps;
}

async function copyRange(fileSystem: FileSystem, fromPath: string, toPath: string, fromOffsetBytes: number, lengthBytes: number): Promise<void> {
  const source = fileSystem.open(fromPath, { readOnly: true });
  const target = fileSystem.open(toPath, { create: true, exclusive: true });
  try {
    const chunk = Buffer.alloc(Math.min(copyChunkBytes, lengthBytes));
    for (let doneBytes = 0; doneBytes < lengthBytes; ) {
      const wantBytes = Math.min(chunk.length, lengthBytes - doneBytes);
      const readBytes = source.readSync(chunk.subarray(0, wantBytes), fromOffsetBytes + doneBytes);
      if (readBytes === 0) break;
      target.writeSync(chunk.subarray(0, readBytes), doneBytes);
      doneBytes += readBytes;
    }
    await target.datasync();
  } finally {
    source.close();
    target.close();
  }
}
