// A point-in-time view: the volume as it was just after record S, read-only, as a BlockDevice.
//
// A read takes each chunk (1 MiB) of its range one of two ways. If no record after S wrote the
// chunk, the live volume holds exactly what it held then: the chunk is read from the live volume
// (and the chunk's last write is checked again afterwards, in case a write landed meanwhile).
// Otherwise the chunk's extents as of S are resolved through the delta maps (storage/index/planner.ts),
// once, and kept in a bounded cache; their data is read from the log records that hold it. Bytes
// no record wrote up to S read as zeroes.

import { StorageError } from '../errors.js';
import { indexLimits } from '../limits.js';
import type { AllocationStatus, BlockDevice, BlockDeviceCapabilities, ContextExtent, WriteOptions, ZeroOptions } from '../block-device.js';
import type { Extent } from '../index/extents.js';
import type { DeltaMapIndex, InstantPlan } from '../index/delta-map-index.js';
import type { LogDataReader } from './log-data-reader.js';
import { dirtyBitmapContext, dirtyBitmapStatus, type SnapshotInstant } from './dirty-bitmap.js';

/** What a view needs of its volume. */
export interface ViewSource {
  readonly sizeBytes: number;
  read(offsetBytes: number, lengthBytes: number): Promise<Buffer>;
  allocation(offsetBytes: number, lengthBytes: number, extentCountMax: number): Promise<AllocationStatus[]>;
  snapshotInstants(): SnapshotInstant[];
}

/** What a view needs of the history's lifecycle: its instant kept, and plans made again after a switch. */
export interface ViewLifecycle {
  /** A read starts: the index generation it plans at. */
  beginRead(): number;
  endRead(generation: number): void;
  /** The plan for the view's instant at the current generation (EEXPIRED once it is no longer kept). */
  replan(sequence: number): Promise<InstantPlan>;
  /** The view is done: its instant need not be kept for it any more. */
  release(): void;
}

export interface ViewStatistics {
  reads: number;
  readsFromLiveImage: number;
  chunksResolved: number;
  mapsConsulted: number;
}


export class PointInTimeView implements BlockDevice {
  readonly readOnly = true;
  readonly capabilities: BlockDeviceCapabilities = {
    flush: true,
    fua: false,
    trim: false,
    writeZeroes: false,
    fastZero: false,
    cache: true,
    multiConnection: true,
  };
  readonly description: string;
  readonly sequence: number;
  readonly statistics: ViewStatistics = { reads: 0, readsFromLiveImage: 0, chunksResolved: 0, mapsConsulted: 0 };
  private readonly source: ViewSource;
  private readonly index: DeltaMapIndex;
  private plan: InstantPlan;
  private planGeneration: number;
  private readonly lifecycle: ViewLifecycle | null;
  private readonly log: LogDataReader;
  private readonly chunkExtents = new Map<number, Extent[]>();
  private readonly resolving = new Map<number, Promise<Extent[]>>();
  private cachedExtentCount = 0;

  /** Read everything from the log, never from the live image (verification compares the two). */
  private readonly fromLogOnly: boolean;

  constructor(parts: {
    source: ViewSource;
    index: DeltaMapIndex;
    plan: InstantPlan;
    planGeneration: number;
    lifecycle: ViewLifecycle | null;
    log: LogDataReader;
    description: string;
    fromLogOnly?: boolean;
  }) {
    this.planGeneration = parts.planGeneration;
    this.lifecycle = parts.lifecycle;
    this.fromLogOnly = parts.fromLogOnly ?? false;
    this.source = parts.source;
    this.index = parts.index;
    this.plan = parts.plan;
    this.log = parts.log;
    this.description = parts.description;
    this.sequence = parts.plan.sequence;
  }

  get sizeBytes(): number {
    return this.source.sizeBytes;
  }

  /** Release the view's instant (the retention policy may expire it once nothing else holds it). */
  release(): void {
    this.lifecycle?.release();
  }

  /**
   * Run a read (or a prefetch, an allocation query) at a plan of the current index generation: after
   * the lifecycle switched the index (packed, merged, folded), plan again and forget resolved extents.
   */
  private async planned<T>(task: () => Promise<T>): Promise<T> {
    const lifecycle = this.lifecycle;
    if (lifecycle === null) return task();
    const generation = lifecycle.beginRead();
    try {
      if (generation !== this.planGeneration) {
        const plan = await lifecycle.replan(this.sequence);
        if (generation !== this.planGeneration) {
          this.plan = plan;
          this.planGeneration = generation;
          this.chunkExtents.clear();
          this.resolving.clear();
          this.cachedExtentCount = 0;
        }
      }
      return await task();
    } finally {
      lifecycle.endRead(generation);
    }
  }

  read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    return this.planned(() => this.readPlanned(offsetBytes, lengthBytes));
  }

  private async readPlanned(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    this.statistics.reads++;
    const target = Buffer.alloc(lengthBytes);
    const chunkBytes = this.index.chunkBytes;
    const endBytes = offsetBytes + lengthBytes;
    let pending: Array<Promise<void>> | null = null;
    for (let chunkStart = offsetBytes - (offsetBytes % chunkBytes); chunkStart < endBytes; chunkStart += chunkBytes) {
      const startBytes = Math.max(chunkStart, offsetBytes);
      const pieceEnd = Math.min(chunkStart + chunkBytes, endBytes);
      const piece = this.readPiece(startBytes, target.subarray(startBytes - offsetBytes, pieceEnd - offsetBytes));
      if (piece !== null) (pending ??= []).push(piece);
    }
    if (pending !== null) await Promise.all(pending);
    return target;
  }

  /**
   * Read [startBytes, +target.length), which lies within one chunk. Returns null when it was
   * served at once (extents cached, data in the page cache), which is most reads of a warm view.
   */
  private readPiece(startBytes: number, target: Buffer): Promise<void> | null {
    if (!this.fromLogOnly && this.index.lastWriteSequence(startBytes) <= this.sequence) return this.readPieceFromLiveImage(startBytes, target);
    const chunk = Math.floor(startBytes / this.index.chunkBytes);
    const extents = this.chunkExtents.get(chunk);
    if (extents !== undefined) {
      this.chunkExtents.delete(chunk); // most recently used last
      this.chunkExtents.set(chunk, extents);
      return this.readExtents(extents, startBytes, target);
    }
    return this.extentsOfChunk(startBytes).then((resolved) => this.readExtents(resolved, startBytes, target) ?? undefined);
  }

  private async readPieceFromLiveImage(startBytes: number, target: Buffer): Promise<void> {
    const live = await this.source.read(startBytes, target.length);
    if (this.index.lastWriteSequence(startBytes) <= this.sequence) {
      live.copy(target);
      this.statistics.readsFromLiveImage++;
      return;
    }
    // A write landed on the chunk while the live image was read: take the chunk from the log.
    const extents = await this.extentsOfChunk(startBytes);
    await this.readExtents(extents, startBytes, target);
  }

  /** Copy the data of the extents overlapping the piece from the log; null if all was in the page cache. */
  private readExtents(extents: readonly Extent[], startBytes: number, target: Buffer): Promise<void> | null {
    const endBytes = startBytes + target.length;
    let pending: Array<Promise<void>> | null = null;
    for (let index = firstExtentEndingAfter(extents, startBytes); index < extents.length; index++) {
      const extent = extents[index]!;
      if (extent.startBytes >= endBytes) break;
      if (!extent.source.hasData) continue;
      const from = Math.max(extent.startBytes, startBytes);
      const to = Math.min(extent.endBytes, endBytes);
      const read = this.log.read(extent.source, from, target.subarray(from - startBytes, to - startBytes));
      if (read !== null) (pending ??= []).push(read);
    }
    return pending === null ? null : Promise.all(pending).then(() => undefined);
  }

  /** The chunk's extents as of the view's instant (sorted), resolved once and cached. */
  private extentsOfChunk(offsetBytes: number): Promise<Extent[]> {
    const chunkBytes = this.index.chunkBytes;
    const chunk = Math.floor(offsetBytes / chunkBytes);
    const cached = this.chunkExtents.get(chunk);
    if (cached !== undefined) {
      this.chunkExtents.delete(chunk); // most recently used last
      this.chunkExtents.set(chunk, cached);
      return Promise.resolve(cached);
    }
    let pending = this.resolving.get(chunk);
    if (pending === undefined) {
      const chunkStart = chunk * chunkBytes;
      pending = this.index.resolve(this.plan, chunkStart, Math.min(chunkStart + chunkBytes, this.sizeBytes)).then(({ extents, mapsConsulted }) => {
        this.resolving.delete(chunk);
        this.statistics.chunksResolved++;
        this.statistics.mapsConsulted += mapsConsulted;
        this.remember(chunk, extents);
        return extents;
      });
      this.resolving.set(chunk, pending);
    }
    return pending;
  }

  private remember(chunk: number, extents: Extent[]): void {
    this.chunkExtents.set(chunk, extents);
    this.cachedExtentCount += extents.length;
    while (this.cachedExtentCount > indexLimits.viewCachedExtentCountMax && this.chunkExtents.size > 1) {
      const [oldestChunk, oldest] = this.chunkExtents.entries().next().value as [number, Extent[]];
      this.chunkExtents.delete(oldestChunk);
      this.cachedExtentCount -= oldest.length;
    }
  }

  allocation(offsetBytes: number, lengthBytes: number, extentCountMax: number): Promise<AllocationStatus[]> {
    return this.planned(() => this.allocationPlanned(offsetBytes, lengthBytes, extentCountMax));
  }

  private async allocationPlanned(offsetBytes: number, lengthBytes: number, extentCountMax: number): Promise<AllocationStatus[]> {
    const statuses: AllocationStatus[] = [];
    const chunkBytes = this.index.chunkBytes;
    const endBytes = offsetBytes + lengthBytes;
    for (let position = offsetBytes; position < endBytes && statuses.length < extentCountMax; ) {
      const pieceEnd = Math.min(position - (position % chunkBytes) + chunkBytes, endBytes);
      const pieceStatuses =
        this.index.lastWriteSequence(position) <= this.sequence
          ? await this.source.allocation(position, pieceEnd - position, extentCountMax - statuses.length)
          : statusesOf(await this.extentsOfChunk(position), position, pieceEnd);
      for (const status of pieceStatuses) appendStatus(statuses, status);
      position = pieceEnd;
    }
    return statuses.slice(0, extentCountMax);
  }

  metaContexts(): string[] {
    return this.source
      .snapshotInstants()
      .filter((snapshot) => snapshot.sequence <= this.sequence)
      .map((snapshot) => dirtyBitmapContext(snapshot.name));
  }

  async contextStatus(context: string, offsetBytes: number, lengthBytes: number, extentCountMax: number): Promise<ContextExtent[]> {
    return dirtyBitmapStatus(this.index, this.source.snapshotInstants(), context, this.sequence, offsetBytes, lengthBytes, extentCountMax);
  }

  write(_offsetBytes: number, _data: Buffer, _options: WriteOptions): Promise<void> {
    return Promise.reject(readOnlyError());
  }

  writeZeroes(_offsetBytes: number, _lengthBytes: number, _options: ZeroOptions): Promise<void> {
    return Promise.reject(readOnlyError());
  }

  trim(_offsetBytes: number, _lengthBytes: number, _options: WriteOptions): Promise<void> {
    return Promise.reject(readOnlyError());
  }

  async flush(): Promise<void> {
    // Nothing to make durable: a view only reads. (The Linux kernel flushes read-only devices too.)
  }

  /**
   * Prefetch (NBD_CMD_CACHE, and transfers reading ahead): resolve the extents of the range's
   * chunks that are not cached yet and not read from the live image, with one range scan per map.
   */
  cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.planned(() => this.cachePlanned(offsetBytes, lengthBytes));
  }

  private async cachePlanned(offsetBytes: number, lengthBytes: number): Promise<void> {
    const chunkBytes = this.index.chunkBytes;
    const endChunk = Math.ceil(Math.min(offsetBytes + lengthBytes, this.sizeBytes) / chunkBytes);
    const wanted = (chunk: number): boolean =>
      !this.chunkExtents.has(chunk) && !this.resolving.has(chunk) && (this.fromLogOnly || this.index.lastWriteSequence(chunk * chunkBytes) > this.sequence);
    let first = Math.floor(offsetBytes / chunkBytes);
    while (first < endChunk && !wanted(first)) first++;
    let end = endChunk;
    while (end > first && !wanted(end - 1)) end--;
    if (first >= end) return;
    const resolved = await this.index.resolveChunks(this.plan, first, end, this.sizeBytes);
    for (const [chunk, extents] of resolved) {
      if (!wanted(chunk)) continue; // resolved meanwhile by a read
      this.statistics.chunksResolved++;
      this.remember(chunk, extents);
    }
  }
}

/** Index of the first extent (sorted, non-overlapping) that ends after positionBytes. */
function firstExtentEndingAfter(extents: readonly Extent[], positionBytes: number): number {
  let low = 0;
  let high = extents.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (extents[middle]!.endBytes <= positionBytes) low = middle + 1;
    else high = middle;
  }
  return low;
}

function readOnlyError(): StorageError {
  return new StorageError('EPERM', 'a point-in-time view is read-only');
}

/** Allocation of [startBytes, endBytes) from resolved extents: data is allocated, the rest a hole of zeroes. */
function statusesOf(extents: readonly Extent[], startBytes: number, endBytes: number): AllocationStatus[] {
  const statuses: AllocationStatus[] = [];
  const covered = extents.filter((extent) => extent.source.hasData && extent.endBytes > startBytes && extent.startBytes < endBytes);
  let position = startBytes;
  for (const extent of covered) {
    const from = Math.max(extent.startBytes, startBytes);
    const to = Math.min(extent.endBytes, endBytes);
    if (from > position) appendStatus(statuses, { lengthBytes: from - position, hole: true, zero: true });
    appendStatus(statuses, { lengthBytes: to - from, hole: false, zero: false });
    position = to;
  }
  if (position < endBytes) appendStatus(statuses, { lengthBytes: endBytes - position, hole: true, zero: true });
  return statuses;
}

function appendStatus(statuses: AllocationStatus[], status: AllocationStatus): void {
  const last = statuses[statuses.length - 1];
  if (last !== undefined && last.hole === status.hole && last.zero === status.zero) last.lengthBytes += status.lengthBytes;
  else statuses.push({ ...status });
}
