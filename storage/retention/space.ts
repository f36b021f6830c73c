// What a volume's history takes on disk, and how full its file system is: the figures the
// journal-full policy acts on (docs/decisions/0007-history-lifecycle.md) and the API reports.
// Measured through the volume's FileSystem, so a simulated one (tests) is measured too.

import type { FileSystem } from '../io/file-system.js';
import type { VolumePaths } from '../volume-config.js';

export interface HistoryBytes {
  /** Write-log segments (preallocated: whole segments). */
  logBytes: number;
  packBytes: number;
  baseBytes: number;
  indexBytes: number;
  totalBytes: number;
}

export interface FileSystemSpace {
  sizeBytes: number;
  freeBytes: number;
}

/** Allocated bytes of the history's files (what the file system really gives them). */
export function measureHistoryBytes(fileSystem: FileSystem, paths: VolumePaths): HistoryBytes {
  const logBytes = directoryAllocatedBytes(fileSystem, paths.log);
  const packBytes = directoryAllocatedBytes(fileSystem, paths.packs);
  const baseBytes = fileSystem.allocatedBytes(paths.base);
  const indexBytes = directoryAllocatedBytes(fileSystem, paths.index);
  return { logBytes, packBytes, baseBytes, indexBytes, totalBytes: logBytes + packBytes + baseBytes + indexBytes };
}

export function measureFileSystem(fileSystem: FileSystem, path: string): FileSystemSpace {
  return { sizeBytes: fileSystem.capacityBytes(path), freeBytes: fileSystem.freeBytes(path) };
}

function directoryAllocatedBytes(fileSystem: FileSystem, directory: string): number {
  if (!fileSystem.exists(directory)) return 0;
  let total = 0;
  for (const name of fileSystem.list(directory)) total += fileSystem.allocatedBytes(`${directory}/${name}`);
  return total;
}
