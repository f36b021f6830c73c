// What a volume's history lifecycle does, seen from outside the appliance process: the files it
// writes and deletes (docs/decisions/0007-history-lifecycle.md). Used by the retention benchmark
// while the API does not report the lifecycle's own figures.
//
// Every `pollMs` the watcher lists the volume's log/ and packs/ and stats base.img:
//   - a pack file whose header became valid (the header is written last) is new: it was written
//     by a merge if its interval covers a pack seen before it, otherwise by packing;
//   - a pack that disappears was merged away if a newer pack covers its interval, otherwise it
//     was folded into the base image;
//   - a log segment that disappears was deleted (all its records packed or folded).
// Sizes are allocated bytes (what the file system gives the files), as the lifecycle counts them.

import fs from 'node:fs';
import path from 'node:path';
import { decodePackHeader, measureHistoryBytes, nodeFileSystem, packHeaderBytes, parsePackFileName, volumePaths, type HistoryBytes } from '../../storage/index.js';

export interface LifecycleActivity {
  /** Pack files written by packing fine windows, and their bytes. */
  packsWritten: number;
  packBytesWritten: number;
  /** Pack files written by merging intervals, and their bytes. */
  mergedPacksWritten: number;
  mergedPackBytesWritten: number;
  /** Packs deleted because a merged pack replaced them. */
  packsMergedAway: number;
  /** Packs deleted because their interval was folded into the base image, and their bytes. */
  packsFolded: number;
  foldedPackBytes: number;
  /** Log segments deleted, and their bytes. */
  segmentsDeleted: number;
  segmentBytesDeleted: number;
  /** Bytes of every file deleted (segments and packs): what the lifecycle gave back to the file system. */
  freedBytes: number;
  /** Growth of pack files' allocated bytes, those still being written included: the lifecycle's writes as they happen. */
  packBytesGrown: number;
  /** Times base.img was seen changed (a fold writes it). */
  baseChanges: number;
  /** Growth of base.img's allocated bytes. */
  baseGrowthBytes: number;
}

export function emptyActivity(): LifecycleActivity {
  return { packsWritten: 0, packBytesWritten: 0, mergedPacksWritten: 0, mergedPackBytesWritten: 0, packsMergedAway: 0, packsFolded: 0, foldedPackBytes: 0, segmentsDeleted: 0, segmentBytesDeleted: 0, freedBytes: 0, packBytesGrown: 0, baseChanges: 0, baseGrowthBytes: 0 };
}

export function activityBetween(before: LifecycleActivity, after: LifecycleActivity): LifecycleActivity {
  const difference = emptyActivity();
  for (const key of Object.keys(difference) as Array<keyof LifecycleActivity>) difference[key] = after[key] - before[key];
  return difference;
}

interface PackSeen {
  number: number;
  firstSequence: number;
  lastSequence: number;
  bytes: number;
  present: boolean;
}

export class LifecycleWatcher {
  private readonly logDirectory: string;
  private readonly packDirectory: string;
  private readonly basePath: string;
  private readonly volumeDirectory: string;
  private readonly packs = new Map<number, PackSeen>();
  /** Pack files without a valid header yet (being written), by number. */
  private readonly packsBeingWritten = new Set<number>();
  /** Allocated bytes of every pack file when last seen, by number. */
  private readonly packFileBytes = new Map<number, number>();
  private readonly segments = new Map<string, number>();
  private base = { mtimeMs: 0, bytes: 0 };
  private timer: NodeJS.Timeout | null = null;
  private baselineTaken = false;
  readonly activity = emptyActivity();
  /** Largest total history seen since `resetPeak`, and when the watcher last measured. */
  peakHistoryBytes = 0;
  lastHistory: HistoryBytes | null = null;

  constructor(volumeDirectory: string, private readonly pollMs = 200) {
    const paths = volumePaths(volumeDirectory);
    this.volumeDirectory = volumeDirectory;
    this.logDirectory = paths.log;
    this.packDirectory = paths.packs;
    this.basePath = paths.base;
  }

  start(): void {
    this.poll();
    this.timer = setInterval(() => this.poll(), this.pollMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  /** A copy of the counters now (after one more look). */
  snapshot(): LifecycleActivity {
    this.poll();
    return { ...this.activity };
  }

  resetPeak(): void {
    this.peakHistoryBytes = this.lastHistory?.totalBytes ?? 0;
  }

  history(): HistoryBytes {
    this.poll();
    return this.lastHistory!;
  }

  private poll(): void {
    try {
      this.pollPacks();
      this.pollSegments();
      this.pollBase();
      this.lastHistory = measureHistoryBytes(nodeFileSystem, volumePaths(this.volumeDirectory));
      this.peakHistoryBytes = Math.max(this.peakHistoryBytes, this.lastHistory.totalBytes);
      this.baselineTaken = true;
    } catch (error) {
      // A file deleted between listing and stat: the next poll sees the new state.
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
  }

  private pollPacks(): void {
    const names = listOrEmpty(this.packDirectory);
    const present = new Set<number>();
    const added: PackSeen[] = [];
    for (const name of names) {
      const number = parsePackFileName(name);
      if (number === undefined) continue;
      present.add(number);
      const known = this.packs.get(number);
      const bytes = allocatedBytes(path.join(this.packDirectory, name));
      if (bytes !== null) {
        if (this.baselineTaken) this.activity.packBytesGrown += Math.max(0, bytes - (this.packFileBytes.get(number) ?? 0));
        this.packFileBytes.set(number, bytes);
      }
      if (known !== undefined) {
        known.bytes = bytes ?? known.bytes;
        continue;
      }
      const header = readHeader(path.join(this.packDirectory, name));
      if (header === null || bytes === null) {
        this.packsBeingWritten.add(number);
        continue;
      }
      this.packsBeingWritten.delete(number);
      const pack = { number, firstSequence: header.firstSequence, lastSequence: header.lastSequence, bytes, present: true };
      this.packs.set(number, pack);
      added.push(pack);
    }
    for (const number of this.packsBeingWritten) if (!present.has(number)) this.packsBeingWritten.delete(number); // abandoned
    for (const number of this.packFileBytes.keys()) if (!present.has(number)) this.packFileBytes.delete(number);
    added.sort((left, right) => left.number - right.number);
    for (const pack of added) {
      if (!this.baselineTaken) continue;
      const merged = [...this.packs.values()].some((other) => other.number < pack.number && covers(pack, other));
      if (merged) {
        this.activity.mergedPacksWritten++;
        this.activity.mergedPackBytesWritten += pack.bytes;
      } else {
        this.activity.packsWritten++;
        this.activity.packBytesWritten += pack.bytes;
      }
    }
    for (const pack of this.packs.values()) {
      if (!pack.present || present.has(pack.number)) continue;
      pack.present = false;
      this.activity.freedBytes += pack.bytes;
      const mergedAway = [...this.packs.values()].some((other) => other.number > pack.number && covers(other, pack));
      if (mergedAway) this.activity.packsMergedAway++;
      else {
        this.activity.packsFolded++;
        this.activity.foldedPackBytes += pack.bytes;
      }
    }
  }

  private pollSegments(): void {
    const names = new Set(listOrEmpty(this.logDirectory).filter((name) => name.endsWith('.wlog')));
    for (const [name, bytes] of this.segments) {
      if (names.has(name)) continue;
      this.segments.delete(name);
      this.activity.segmentsDeleted++;
      this.activity.segmentBytesDeleted += bytes;
      this.activity.freedBytes += bytes;
    }
    for (const name of names) {
      const bytes = allocatedBytes(path.join(this.logDirectory, name));
      if (bytes !== null) this.segments.set(name, bytes);
    }
  }

  private pollBase(): void {
    let stats: fs.Stats;
    try {
      stats = fs.statSync(this.basePath);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw error;
    }
    const bytes = stats.blocks * 512;
    if (this.baselineTaken && stats.mtimeMs !== this.base.mtimeMs) this.activity.baseChanges++;
    if (this.baselineTaken) this.activity.baseGrowthBytes += bytes - this.base.bytes;
    this.base = { mtimeMs: stats.mtimeMs, bytes };
  }
}

function covers(outer: PackSeen, inner: PackSeen): boolean {
  return outer.firstSequence <= inner.firstSequence && outer.lastSequence >= inner.lastSequence;
}

function listOrEmpty(directory: string): string[] {
  try {
    return fs.readdirSync(directory);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
}

function allocatedBytes(file: string): number | null {
  try {
    return fs.statSync(file).blocks * 512;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
}

function readHeader(file: string): { firstSequence: number; lastSequence: number } | null {
  let descriptor: number;
  try {
    descriptor = fs.openSync(file, 'r');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
  try {
    const block = Buffer.alloc(packHeaderBytes);
    if (fs.readSync(descriptor, block, 0, packHeaderBytes, 0) < packHeaderBytes) return null;
    const header = decodePackHeader(block);
    return typeof header === 'string' ? null : header;
  } finally {
    fs.closeSync(descriptor);
  }
}
