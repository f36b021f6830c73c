// A clone: a writable point-in-time view. Its writes go to an overlay of its own (a sparse image
// plus a bitmap of the 4 KiB blocks it holds) and never touch the volume or its log; reads take
// each block from the overlay if written there, else from the view beneath. Deleting the clone
// deletes its folder, and with it everything written to it.
//
// Durability follows the NBD rules for the clone itself: FLUSH (and FUA) sync the overlay, then
// the bitmap, so the bitmap never names a block whose data is not durable.

import { StorageError, assert } from '../errors.js';
import type { AllocationStatus, BlockDevice, BlockDeviceCapabilities, ContextExtent, WriteOptions, ZeroOptions } from '../block-device.js';
import { readWholeFile, writeFileAtomic, type FileHandle, type FileSystem } from '../io/file-system.js';

const blockBytes = 4096;
const bitmapMagic = Buffer.from('CDPCLON1', 'latin1');
const bitmapHeaderBytes = 4096;

export interface CloneDefinition {
  formatVersion: 1;
  name: string;
  volume: string;
  sequence: number;
  sizeBytes: number;
  createdMicros: number;
}

export class Clone implements BlockDevice {
  readonly readOnly = false;
  readonly capabilities: BlockDeviceCapabilities = {
    flush: true,
    fua: true,
    trim: true,
    writeZeroes: true,
    fastZero: true,
    cache: true,
    multiConnection: true,
  };
  readonly definition: CloneDefinition;
  readonly description: string;
  private readonly base: BlockDevice;
  private readonly overlay: FileHandle;
  private readonly bitmapFile: FileHandle;
  /** Bit b set: block b is in the overlay. */
  private readonly written: Buffer;
  private readonly changedBitmapPages = new Set<number>();

  private constructor(definition: CloneDefinition, base: BlockDevice, overlay: FileHandle, bitmapFile: FileHandle, written: Buffer) {
    this.definition = definition;
    this.base = base;
    this.overlay = overlay;
    this.bitmapFile = bitmapFile;
    this.written = written;
    this.description = `${base.description.replace(/, read-only$/, '')}, writable clone ${definition.name}`;
  }

  /** Make a new clone's folder (definition, empty overlay, empty bitmap). */
  static async create(fileSystem: FileSystem, directory: string, definition: CloneDefinition): Promise<void> {
    fileSystem.mkdirp(directory);
    const overlay = fileSystem.open(`${directory}/overlay.img`, { create: true, exclusive: true });
    overlay.truncate(definition.sizeBytes);
    await overlay.datasync();
    overlay.close();
    const bitmap = fileSystem.open(`${directory}/written.bitmap`, { create: true, exclusive: true });
    const header = Buffer.alloc(bitmapHeaderBytes);
    bitmapMagic.copy(header);
    bitmap.writeSync(Buffer.concat([header, Buffer.alloc(bitmapBytesFor(definition.sizeBytes))]), 0);
    await bitmap.datasync();
    bitmap.close();
    await writeFileAtomic(fileSystem, `${directory}/clone.json`, Buffer.from(`${JSON.stringify(definition, null, 2)}\n`));
  }

  static readDefinition(fileSystem: FileSystem, directory: string): CloneDefinition {
    const definition = JSON.parse(readWholeFile(fileSystem, `${directory}/clone.json`).toString('utf8')) as CloneDefinition;
    if (definition.formatVersion !== 1) throw new StorageError('ECORRUPT', `${directory}/clone.json: unsupported format version`);
    return definition;
  }

  static open(fileSystem: FileSystem, directory: string, base: BlockDevice): Clone {
    const definition = Clone.readDefinition(fileSystem, directory);
    assert(base.sizeBytes === definition.sizeBytes, 'a clone has the size of its volume');
    const overlay = fileSystem.open(`${directory}/overlay.img`);
    const bitmapFile = fileSystem.open(`${directory}/written.bitmap`);
    const header = Buffer.alloc(bitmapHeaderBytes);
    bitmapFile.readSync(header, 0);
    if (!header.subarray(0, 8).equals(bitmapMagic)) {
      overlay.close();
      bitmapFile.close();
      throw new StorageError('ECORRUPT', `${directory}/written.bitmap: bad magic`);
    }
    const written = Buffer.alloc(bitmapBytesFor(definition.sizeBytes));
    bitmapFile.readSync(written, bitmapHeaderBytes);
    return new Clone(definition, base, overlay, bitmapFile, written);
  }

  get sizeBytes(): number {
    return this.definition.sizeBytes;
  }

  // ---- reads: each run of blocks from the overlay or from the view beneath ----

  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    const target = Buffer.alloc(lengthBytes);
    const endBytes = offsetBytes + lengthBytes;
    for (const run of this.runs(offsetBytes, endBytes)) {
      const piece = target.subarray(run.startBytes - offsetBytes, run.endBytes - offsetBytes);
      if (run.inOverlay) await this.overlay.read(piece, run.startBytes);
      else (await this.base.read(run.startBytes, run.endBytes - run.startBytes)).copy(piece);
    }
    return target;
  }

  // ---- writes: whole blocks into the overlay (partial ones completed from what reads show) ----

  async write(offsetBytes: number, data: Buffer, options: WriteOptions): Promise<void> {
    const firstBlock = Math.floor(offsetBytes / blockBytes);
    const endBlock = Math.ceil((offsetBytes + data.length) / blockBytes);
    const alignedStart = firstBlock * blockBytes;
    const alignedEnd = Math.min(endBlock * blockBytes, this.sizeBytes);
    let blocks: Buffer;
    if (alignedStart === offsetBytes && alignedEnd === offsetBytes + data.length) {
      blocks = data;
    } else {
      blocks = await this.read(alignedStart, alignedEnd - alignedStart);
      data.copy(blocks, offsetBytes - alignedStart);
    }
    this.overlay.writeSync(blocks, alignedStart);
    this.markWritten(firstBlock, endBlock);
    if (options.fua) await this.flush();
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number, options: ZeroOptions): Promise<void> {
    await this.zero(offsetBytes, lengthBytes, options.fua);
  }

  async trim(offsetBytes: number, lengthBytes: number, options: WriteOptions): Promise<void> {
    await this.zero(offsetBytes, lengthBytes, options.fua);
  }

  private async zero(offsetBytes: number, lengthBytes: number, fua: boolean): Promise<void> {
    const endBytes = offsetBytes + lengthBytes;
    const firstWhole = Math.ceil(offsetBytes / blockBytes) * blockBytes;
    const endWhole = Math.floor(endBytes / blockBytes) * blockBytes;
    if (firstWhole >= endWhole) {
      await this.write(offsetBytes, Buffer.alloc(lengthBytes), { fua: false }); // within one or two blocks
    } else {
      // Whole blocks are zeroed in place (a metadata operation); partial edges are written.
      if (offsetBytes < firstWhole) await this.write(offsetBytes, Buffer.alloc(firstWhole - offsetBytes), { fua: false });
      this.overlay.zeroRange(firstWhole, endWhole - firstWhole);
      this.markWritten(firstWhole / blockBytes, endWhole / blockBytes);
      if (endWhole < endBytes) await this.write(endWhole, Buffer.alloc(endBytes - endWhole), { fua: false });
    }
    if (fua) await this.flush();
  }

  async flush(): Promise<void> {
    await this.overlay.datasync();
    const pages = [...this.changedBitmapPages].sort((left, right) => left - right);
    this.changedBitmapPages.clear();
    for (const page of pages) {
      const start = page * 4096;
      this.bitmapFile.writeSync(this.written.subarray(start, Math.min(start + 4096, this.written.length)), bitmapHeaderBytes + start);
    }
    if (pages.length > 0) await this.bitmapFile.datasync();
  }

  async cache(): Promise<void> {}

  async allocation(offsetBytes: number, lengthBytes: number, extentCountMax: number): Promise<AllocationStatus[]> {
    const statuses: AllocationStatus[] = [];
    for (const run of this.runs(offsetBytes, offsetBytes + lengthBytes)) {
      if (statuses.length >= extentCountMax) break;
      if (run.inOverlay) statuses.push({ lengthBytes: run.endBytes - run.startBytes, hole: false, zero: false });
      else statuses.push(...(await this.base.allocation(run.startBytes, run.endBytes - run.startBytes, extentCountMax - statuses.length)));
    }
    return statuses.slice(0, extentCountMax);
  }

  metaContexts(): string[] {
    return [];
  }

  async contextStatus(context: string): Promise<ContextExtent[]> {
    throw new StorageError('EINVAL', `no metadata context ${context} on a clone`);
  }

  close(): void {
    this.overlay.close();
    this.bitmapFile.close();
  }

  private isWritten(block: number): boolean {
    return (this.written[block >>> 3]! & (1 << (block & 7))) !== 0;
  }

  private markWritten(firstBlock: number, endBlock: number): void {
    for (let block = firstBlock; block < endBlock; block++) {
      const byteIndex = block >>> 3;
      this.written[byteIndex] = this.written[byteIndex]! | (1 << (block & 7));
      this.changedBitmapPages.add(Math.floor(byteIndex / 4096));
    }
  }

  /** [startBytes, endBytes) split into runs that are wholly in the overlay or wholly not. */
  private runs(startBytes: number, endBytes: number): Array<{ startBytes: number; endBytes: number; inOverlay: boolean }> {
    const runs: Array<{ startBytes: number; endBytes: number; inOverlay: boolean }> = [];
    let position = startBytes;
    while (position < endBytes) {
      const block = Math.floor(position / blockBytes);
      const inOverlay = this.isWritten(block);
      let runEnd = Math.min((block + 1) * blockBytes, endBytes);
      while (runEnd < endBytes && this.isWritten(Math.floor(runEnd / blockBytes)) === inOverlay) runEnd = Math.min(runEnd + blockBytes, endBytes);
      runs.push({ startBytes: position, endBytes: runEnd, inOverlay });
      position = runEnd;
    }
    return runs;
  }
}

function bitmapBytesFor(sizeBytes: number): number {
  return Math.ceil(Math.ceil(sizeBytes / blockBytes) / 8);
}
