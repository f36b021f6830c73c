// What a volume's history takes on disk, and how full its file system is: the figures the
// journal-full policy acts on (docs/decisions/0007-history-lifecycle.md) and the API reports.

import fs from 'node:fs';
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
export function measureHistoryBytes(paths: VolumePaths): HistoryBytes {
  const logBytes = directoryAllocatedBytes(paths.log);
  const packBytes = directoryAllocatedBytes(paths.packs);
  const baseBytes = allocatedBytes(paths.base);
  const indexBytes = directoryAllocatedBytes(paths.index);
  return { logBytes, packBytes, baseBytes, indexBytes, totalBytes: logBytes + packBytes + baseBytes + indexBytes };
}

export function measureFileSystem(path: string): FileSystemSpace {
  const stats = fs.statfsSync(path);
  return { sizeBytes: stats.blocks * stats.bsize, freeBytes: stats.bavail * stats.bsize };
}

function allocatedBytes(path: string): number {
  try {
    return fs.statSync(path).blocks * 512;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw error;
  }
}

function directoryAllocatedBytes(directory: string): number {
  let names: string[];
  try {
    names = fs.readdirSync(directory);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw error;
  }
  let total = 0;
  for (const name of names) total += allocatedBytes(`${directory}/${name}`);
  return total;
}
