// An in-memory FileSystem (storage/io/file-system.ts) that models what survives a power loss, for
// crash and fault-injection tests of the storage layer.
//
// The model, per file: durable content, and the operations (writes, zeroRange, allocate, truncate)
// made since they were last made durable. `datasync()` makes the operations that completed before
// it was called durable. Per directory: durable entries, and the creations, renames and removals
// made since the last `syncDirectory()` of that directory.
//
// `crash(random)` returns the file system a power loss could leave: everything durable, plus each
// pending operation independently kept whole, dropped, or (writes only) torn, keeping only some of
// its 512-byte sectors. Pending operations of one file survive in any subset, because the page
// cache writes back in any order; a kept operation brings its sectors as the page cache held them
// right after it (with the earlier writes sharing them), so no sector shows a state the page cache
// never held. An entry whose directory was never synced may vanish, and an unsynced rename may be
// undone. A power loss also starts a new boot (bootId); `crash(random, { process: true })` is a
// kill -9 instead: everything completed survives and the boot stays. Handles of the crashed file
// system fail with EBADF from then on.
//
// Fault switches: failing `datasync` calls with EIO (losing, as Linux does, the writes it was to
// make durable while the page cache still shows them), a space budget after which allocations fail
// with ENOSPC, and pausing `datasync` calls so a test can crash while one is in flight.
//
// Linux semantics kept where the storage layer relies on them: reads past the end of a file are
// short, zeroRange keeps the size (FALLOC_FL_KEEP_SIZE), allocate may extend it, truncate zeroes what
// it cuts off, and errors are Errors with Node's `code`. SEEK_DATA/SEEK_HOLE report the whole file as
// data, which the interface allows. Contents are sparse (64 KiB pages, copy on write), so preallocated
// 64 MiB log segments cost only what was written. Renaming directories is not modelled.

import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { FileHandle, FileSystem, OpenOptions } from '../../storage/io/file-system.js';
import { cachedPrefixBytes } from './partial-page-cache.js';
import type { RandomSource } from './seeded-random.js';

export const sectorBytes = 512;
const pageBytes = 64 * 1024;
/** What freeBytes reports without a space budget. */
const plentyOfFreeBytes = 2 ** 40;

// ---- errors shaped like Node's ----

const errorDetails = {
  ENOENT: { errno: -2, text: 'no such file or directory' },
  EEXIST: { errno: -17, text: 'file already exists' },
  EIO: { errno: -5, text: 'i/o error' },
  ENOSPC: { errno: -28, text: 'no space left on device' },
  EBADF: { errno: -9, text: 'bad file descriptor' },
  EISDIR: { errno: -21, text: 'illegal operation on a directory' },
  ENOTDIR: { errno: -20, text: 'not a directory' },
} as const;
export type SimulatedErrorCode = keyof typeof errorDetails;

export function systemError(code: SimulatedErrorCode, syscall: string, filePath?: string): NodeJS.ErrnoException {
  const { errno, text } = errorDetails[code];
  const error: NodeJS.ErrnoException = new Error(`${code}: ${text}, ${syscall}${filePath === undefined ? '' : ` '${filePath}'`}`);
  error.code = code;
  error.errno = errno;
  error.syscall = syscall;
  if (filePath !== undefined) error.path = filePath;
  return error;
}

// ---- file contents: sparse pages, shared between copies until written ----

class SparseContent {
  sizeBytes = 0;
  private pages = new Map<number, Buffer>();
  /** Pages this copy may change in place; the others may be shared with another copy. */
  private ownedPages = new Set<number>();

  clone(): SparseContent {
    const copy = new SparseContent();
    copy.sizeBytes = this.sizeBytes;
    copy.pages = new Map(this.pages);
    this.ownedPages.clear(); // both copies share every page now
    return copy;
  }

  read(target: Buffer, positionBytes: number): number {
    if (positionBytes >= this.sizeBytes) return 0;
    const lengthBytes = Math.min(target.length, this.sizeBytes - positionBytes);
    let doneBytes = 0;
    while (doneBytes < lengthBytes) {
      const at = positionBytes + doneBytes;
      const pageIndex = Math.floor(at / pageBytes);
      const inPage = at - pageIndex * pageBytes;
      const pieceBytes = Math.min(pageBytes - inPage, lengthBytes - doneBytes);
      const page = this.pages.get(pageIndex);
      if (page === undefined) target.fill(0, doneBytes, doneBytes + pieceBytes);
      else page.copy(target, doneBytes, inPage, inPage + pieceBytes);
      doneBytes += pieceBytes;
    }
    return lengthBytes;
  }

  write(source: Buffer, positionBytes: number): void {
    let doneBytes = 0;
    while (doneBytes < source.length) {
      const at = positionBytes + doneBytes;
      const pageIndex = Math.floor(at / pageBytes);
      const inPage = at - pageIndex * pageBytes;
      const pieceBytes = Math.min(pageBytes - inPage, source.length - doneBytes);
      source.copy(this.writablePage(pageIndex), inPage, doneBytes, doneBytes + pieceBytes);
      doneBytes += pieceBytes;
    }
    this.sizeBytes = Math.max(this.sizeBytes, positionBytes + source.length);
  }

  /** Make [offsetBytes, +lengthBytes) read as zeroes; the size does not change. */
  zero(offsetBytes: number, lengthBytes: number): void {
    if (lengthBytes <= 0) return;
    const endBytes = offsetBytes + lengthBytes;
    const firstPage = Math.floor(offsetBytes / pageBytes);
    const lastPage = Math.floor((endBytes - 1) / pageBytes);
    const indexes =
      lastPage - firstPage + 1 > this.pages.size
        ? [...this.pages.keys()].filter((index) => index >= firstPage && index <= lastPage)
        : Array.from({ length: lastPage - firstPage + 1 }, (_, step) => firstPage + step).filter((index) => this.pages.has(index));
    for (const index of indexes) {
      const pageStart = index * pageBytes;
      const from = Math.max(offsetBytes, pageStart) - pageStart;
      const to = Math.min(endBytes, pageStart + pageBytes) - pageStart;
      if (from === 0 && to === pageBytes) {
        this.pages.delete(index);
        this.ownedPages.delete(index);
      } else {
        this.writablePage(index).fill(0, from, to);
      }
    }
  }

  /** Copy [startBytes, endBytes) of source here, as it is there; the size does not change. */
  copyRangeFrom(source: SparseContent, startBytes: number, endBytes: number): void {
    for (let at = startBytes; at < endBytes; ) {
      const pageIndex = Math.floor(at / pageBytes);
      const inPage = at - pageIndex * pageBytes;
      const pieceBytes = Math.min(pageBytes - inPage, endBytes - at);
      const sourcePage = source.pages.get(pageIndex);
      if (sourcePage === undefined) this.zero(at, pieceBytes);
      else sourcePage.copy(this.writablePage(pageIndex), inPage, inPage, inPage + pieceBytes);
      at += pieceBytes;
    }
  }

  /** ftruncate: set the size; what is cut off reads as zeroes if the file grows again. */
  truncateTo(sizeBytes: number): void {
    const lastIndex = Math.max(0, ...this.pages.keys());
    this.zero(sizeBytes, (lastIndex + 1) * pageBytes - sizeBytes);
    this.sizeBytes = sizeBytes;
  }

  private writablePage(index: number): Buffer {
    const page = this.pages.get(index);
    if (page !== undefined && this.ownedPages.has(index)) return page;
    const copy = page === undefined ? Buffer.alloc(pageBytes) : Buffer.from(page);
    this.pages.set(index, copy);
    this.ownedPages.add(index);
    return copy;
  }
}

// ---- operations that a crash may keep, drop or tear ----

type FileOperation =
  | { kind: 'write'; offsetBytes: number; data: Buffer }
  | { kind: 'zeroRange'; offsetBytes: number; lengthBytes: number }
  | { kind: 'allocate'; offsetBytes: number; lengthBytes: number }
  | { kind: 'truncate'; sizeBytes: number };

function applyFileOperation(content: SparseContent, operation: FileOperation): void {
  switch (operation.kind) {
    case 'write':
      content.write(operation.data, operation.offsetBytes);
      return;
    case 'zeroRange':
      content.zero(operation.offsetBytes, operation.lengthBytes);
      return;
    case 'allocate':
      content.sizeBytes = Math.max(content.sizeBytes, operation.offsetBytes + operation.lengthBytes);
      return;
    case 'truncate':
      content.truncateTo(operation.sizeBytes);
      return;
  }
}

class FileNode {
  readonly kind = 'file';
  /** What reads see (the page cache). */
  current: SparseContent;
  /** What a crash keeps for sure. */
  durable: SparseContent;
  /** Operations since they were last made durable, oldest first. */
  pending: FileOperation[] = [];
  /** Set once a failed datasync lost operations: current is then more than durable plus pending. */
  lostOperations = false;
  /** Space held, as a prefix of the file (enough for the space budget). */
  allocatedBytes = 0;
  /** Where the file was last linked, for crash decisions and reports. */
  lastPath: string;

  constructor(lastPath: string, content = new SparseContent()) {
    this.lastPath = lastPath;
    this.current = content;
    this.durable = content.clone();
  }

  perform(operation: FileOperation): void {
    applyFileOperation(this.current, operation);
    this.pending.push(operation);
  }

  /** Make one pending operation durable on its own (a write with RWF_DSYNC). */
  makeOperationDurable(operation: FileOperation): void {
    const index = this.pending.indexOf(operation);
    if (index < 0) return;
    this.pending.splice(index, 1);
    applyFileOperation(this.durable, operation);
  }

  makeDurable(operationCount: number): void {
    const operations = this.pending.splice(0, operationCount);
    if (this.pending.length === 0 && !this.lostOperations) {
      this.durable = this.current.clone();
      return;
    }
    for (const operation of operations) applyFileOperation(this.durable, operation);
  }

  loseUnsynced(operationCount: number): void {
    if (operationCount === 0) return;
    this.pending.splice(0, operationCount);
    this.lostOperations = true;
  }
}

class DirectoryNode {
  readonly kind = 'directory';
}

type Node = FileNode | DirectoryNode;

type DirectoryOperation =
  | { kind: 'link'; path: string; node: Node }
  | { kind: 'unlink'; path: string; node: Node }
  | { kind: 'rename'; fromPath: string; toPath: string; node: FileNode };

function applyDirectoryOperation(namespace: Map<string, Node>, operation: DirectoryOperation): void {
  switch (operation.kind) {
    case 'link':
      namespace.set(operation.path, operation.node);
      return;
    case 'unlink':
      if (namespace.get(operation.path) === operation.node) namespace.delete(operation.path);
      return;
    case 'rename':
      if (namespace.get(operation.fromPath) === operation.node) namespace.delete(operation.fromPath);
      namespace.set(operation.toPath, operation.node);
      return;
  }
}

// ---- the public switches and reports ----

/** A pending operation as crash decisions see it. */
export interface PendingOperation {
  path: string;
  kind: 'write' | 'zeroRange' | 'allocate' | 'truncate' | 'link' | 'unlink' | 'rename';
  offsetBytes: number;
  lengthBytes: number;
}

/** Keep a pending operation, drop it, or (writes) keep the pieces for which keepPiece says so. */
export type OperationFate = 'keep' | 'drop' | { keepPiece: (pieceOffsetBytes: number) => boolean };

export interface CrashOptions {
  /**
   * A process crash (kill -9) rather than a power loss: the kernel keeps every operation that
   * completed, and the machine keeps its boot id. The other options do not apply.
   */
  process?: boolean;
  /** Chance that a pending operation survives whole (default 1/3). */
  keepProbability?: number;
  /** Chance that a pending write is torn (default 1/3); the rest are dropped. */
  tearProbability?: number;
  /** Torn writes keep or lose pieces of this size, aligned in the file (default a 512-byte sector). */
  tearGranularityBytes?: number;
  /** Decide an operation's fate; undefined leaves it to chance. */
  decide?: (operation: PendingOperation) => OperationFate | undefined;
}

export interface TornWrite {
  path: string;
  offsetBytes: number;
  lengthBytes: number;
  keptBytes: number;
}

export interface CrashReport {
  keptCount: number;
  droppedCount: number;
  tornWrites: TornWrite[];
  /** Entries that existed before the crash and not after it. */
  vanishedPaths: string[];
}

export interface DatasyncFault {
  /** How many datasync calls (of matching paths) fail. */
  count: number;
  pathMatches?: (filePath: string) => boolean;
  /** What happens to the writes the failed call was to make durable (default 'lost', as on Linux). */
  unsyncedWrites?: 'lost' | 'kept';
}

export interface SimulatedFileSystemOptions {
  /** Awaited by every asynchronous operation before it takes effect (default: one setImmediate). */
  delay?: () => Promise<void>;
}

interface PauseGate {
  pathMatches: (filePath: string) => boolean;
  released: Promise<void>;
  release: () => void;
}

const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
const bootIdBytes = 16;

export class SimulatedFileSystem implements FileSystem {
  /** What the crash that made this file system did (null for a fresh one). */
  readonly crashReport: CrashReport | null;
  private readonly current = new Map<string, Node>();
  private readonly durable = new Map<string, Node>();
  private readonly pendingByDirectory = new Map<string, DirectoryOperation[]>();
  private readonly delay: () => Promise<void>;
  private readonly datasyncFaults: Array<Required<Omit<DatasyncFault, 'pathMatches'>> & { pathMatches: (filePath: string) => boolean }> = [];
  private pauseGates: PauseGate[] = [];
  private spaceBudgetBytes: number | null = null;
  private crashed = false;
  private datasyncCountValue = 0;
  private readonly bootIdentifier: Buffer;

  constructor(
    options: SimulatedFileSystemOptions = {},
    state?: { entries: Map<string, Node>; spaceBudgetBytes: number | null; crashReport: CrashReport; bootId: Buffer },
  ) {
    this.delay = options.delay ?? nextTurn;
    this.crashReport = state?.crashReport ?? null;
    this.bootIdentifier = state?.bootId ?? randomBytes(bootIdBytes);
    const root = state?.entries.get('/') ?? new DirectoryNode();
    this.current.set('/', root);
    this.durable.set('/', root);
    if (state !== undefined) {
      for (const [entryPath, node] of state.entries) {
        this.current.set(entryPath, node);
        this.durable.set(entryPath, node);
      }
      this.spaceBudgetBytes = state.spaceBudgetBytes;
    }
  }

  get isCrashed(): boolean {
    return this.crashed;
  }

  /** Datasync calls so far (of every file). */
  get datasyncCount(): number {
    return this.datasyncCountValue;
  }

  // ---- fault switches ----

  /** Make the next `count` datasync calls (of paths that match) fail with EIO. */
  failDatasyncs(fault: DatasyncFault): void {
    this.datasyncFaults.push({ count: fault.count, pathMatches: fault.pathMatches ?? (() => true), unsyncedWrites: fault.unsyncedWrites ?? 'lost' });
  }

  /** From now on at most this many more bytes can be allocated; null lifts the limit. */
  setSpaceBudget(bytes: number | null): void {
    this.spaceBudgetBytes = bytes;
  }

  /** Hold datasync calls of matching paths (issued from now on) until the returned function is called. */
  pauseDatasyncs(pathMatches: (filePath: string) => boolean = () => true): () => void {
    let release = (): void => undefined;
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    const gate: PauseGate = { pathMatches, released, release: () => release() };
    this.pauseGates.push(gate);
    return () => {
      this.pauseGates = this.pauseGates.filter((other) => other !== gate);
      gate.release();
    };
  }

  /** Operations not yet durable, of one path or of all. */
  pendingOperations(filePath?: string): PendingOperation[] {
    const result: PendingOperation[] = [];
    const wanted = filePath === undefined ? undefined : normalize(filePath);
    for (const [entryPath, node] of this.current) {
      if (node.kind !== 'file' || (wanted !== undefined && wanted !== entryPath)) continue;
      for (const operation of node.pending) result.push(describeFileOperation(entryPath, operation));
    }
    for (const operations of this.pendingByDirectory.values()) {
      for (const operation of operations) {
        const described = describeDirectoryOperation(operation);
        if (wanted === undefined || described.path === wanted) result.push(described);
      }
    }
    return result;
  }

  // ---- the crash ----

  /**
   * The file system a power loss now could leave. This one is dead afterwards: its handles fail
   * with EBADF and its operations with EIO.
   */
  crash(random: RandomSource, options: CrashOptions = {}): SimulatedFileSystem {
    if (this.crashed) throw new Error('this simulated file system has already crashed');
    this.crashed = true;
    for (const gate of this.pauseGates) gate.release();
    this.pauseGates = [];

    const keepProbability = options.keepProbability ?? 1 / 3;
    const tearProbability = options.tearProbability ?? 1 / 3;
    const granularityBytes = options.tearGranularityBytes ?? sectorBytes;
    const report: CrashReport = { keptCount: 0, droppedCount: 0, tornWrites: [], vanishedPaths: [] };
    const fateOf = (operation: PendingOperation): OperationFate => {
      if (options.process) return 'keep';
      const decided = options.decide?.(operation);
      if (decided !== undefined) return decided;
      const roll = random();
      if (roll < keepProbability) return 'keep';
      if (operation.kind === 'write' && roll < keepProbability + tearProbability) return { keepPiece: () => random() < 0.5 };
      return 'drop';
    };

    // Directory entries: the durable ones, plus any subset of the pending operations, in order.
    const namespace = new Map(this.durable);
    for (const operations of this.pendingByDirectory.values()) {
      for (const operation of operations) {
        if (fateOf(describeDirectoryOperation(operation)) === 'drop') {
          report.droppedCount++;
        } else {
          report.keptCount++;
          applyDirectoryOperation(namespace, operation);
        }
      }
    }
    // An entry survives only if every directory above it did.
    const reachable = new Map<string, Node>();
    for (const entryPath of [...namespace.keys()].sort((left, right) => left.length - right.length)) {
      const parent = path.posix.dirname(entryPath);
      if (entryPath === '/' || reachable.get(parent)?.kind === 'directory') reachable.set(entryPath, namespace.get(entryPath)!);
    }
    for (const entryPath of this.current.keys()) if (!reachable.has(entryPath)) report.vanishedPaths.push(entryPath);

    // File contents: durable content plus any subset of the pending operations, some torn.
    const survivors = new Map<FileNode, FileNode>();
    const entries = new Map<string, Node>();
    for (const [entryPath, node] of reachable) {
      if (node.kind === 'directory') {
        entries.set(entryPath, entryPath === '/' ? node : new DirectoryNode());
        continue;
      }
      let survivor = survivors.get(node);
      if (survivor === undefined) {
        // A process crash leaves what the page cache holds, even writes a failed datasync lost on disk.
        survivor = options.process ? new FileNode(entryPath, node.current.clone()) : crashFile(node, entryPath, fateOf, granularityBytes, report);
        if (options.process) survivor.allocatedBytes = node.allocatedBytes;
        survivors.set(node, survivor);
      }
      entries.set(entryPath, survivor);
    }
    // A power loss is a new boot; after a process crash the machine is still the same.
    const bootId = options.process ? this.bootIdentifier : Buffer.from(Array.from({ length: bootIdBytes }, () => Math.floor(random() * 256)));
    return new SimulatedFileSystem({ delay: this.delay }, { entries, spaceBudgetBytes: this.spaceBudgetBytes, crashReport: report, bootId });
  }

  // ---- FileSystem ----

  open(filePath: string, options: OpenOptions = {}): FileHandle {
    this.assertAlive('open', filePath);
    const entryPath = normalize(filePath);
    this.requireDirectory(path.posix.dirname(entryPath), 'open', filePath);
    const existing = this.current.get(entryPath);
    if (existing !== undefined) {
      if (options.create && options.exclusive) throw systemError('EEXIST', 'open', filePath);
      if (existing.kind === 'directory') throw systemError('EISDIR', 'open', filePath);
      return new SimulatedFileHandle(filePath, this, existing, options.readOnly ?? false);
    }
    if (!options.create) throw systemError('ENOENT', 'open', filePath);
    const node = new FileNode(entryPath);
    this.link(entryPath, node);
    return new SimulatedFileHandle(filePath, this, node, options.readOnly ?? false);
  }

  exists(filePath: string): boolean {
    this.assertAlive('stat', filePath);
    return this.current.has(normalize(filePath));
  }

  mkdirp(directoryPath: string): void {
    this.assertAlive('mkdir', directoryPath);
    const target = normalize(directoryPath);
    const chain: string[] = [];
    for (let at = target; at !== '/'; at = path.posix.dirname(at)) chain.unshift(at);
    for (const at of chain) {
      const node = this.current.get(at);
      if (node === undefined) this.link(at, new DirectoryNode());
      else if (node.kind !== 'directory') throw systemError('ENOTDIR', 'mkdir', directoryPath);
    }
  }

  list(directoryPath: string): string[] {
    this.assertAlive('scandir', directoryPath);
    const directory = normalize(directoryPath);
    this.requireDirectory(directory, 'scandir', directoryPath);
    const names: string[] = [];
    for (const entryPath of this.current.keys()) {
      if (entryPath !== '/' && path.posix.dirname(entryPath) === directory) names.push(path.posix.basename(entryPath));
    }
    return names.sort();
  }

  remove(filePath: string): void {
    this.assertAlive('rm', filePath);
    const entryPath = normalize(filePath);
    const node = this.current.get(entryPath);
    if (node === undefined) return; // force: a missing file is not an error
    if (node.kind === 'directory') throw systemError('EISDIR', 'rm', filePath);
    this.unlink(entryPath, node);
  }

  removeTree(treePath: string): void {
    this.assertAlive('rm', treePath);
    const top = normalize(treePath);
    if (top === '/') throw new Error('refusing to remove the root of the simulated file system');
    const inside = [...this.current.keys()].filter((entryPath) => entryPath === top || entryPath.startsWith(`${top}/`));
    for (const entryPath of inside.sort((left, right) => right.length - left.length)) this.unlink(entryPath, this.current.get(entryPath)!);
  }

  rename(fromPath: string, toPath: string): void {
    this.assertAlive('rename', fromPath);
    const from = normalize(fromPath);
    const to = normalize(toPath);
    const node = this.current.get(from);
    if (node === undefined) throw systemError('ENOENT', 'rename', fromPath);
    if (node.kind === 'directory') throw new Error('SimulatedFileSystem does not model renaming directories');
    this.requireDirectory(path.posix.dirname(to), 'rename', toPath);
    if (from === to) return;
    const replaced = this.current.get(to);
    if (replaced?.kind === 'directory') throw systemError('EISDIR', 'rename', toPath);
    if (replaced !== undefined) this.releaseSpace(replaced);
    this.current.delete(from);
    this.current.set(to, node);
    node.lastPath = to;
    const fromDirectory = path.posix.dirname(from);
    const toDirectory = path.posix.dirname(to);
    if (fromDirectory === toDirectory) {
      this.pendingOf(toDirectory).push({ kind: 'rename', fromPath: from, toPath: to, node });
    } else {
      this.pendingOf(toDirectory).push({ kind: 'link', path: to, node });
      this.pendingOf(fromDirectory).push({ kind: 'unlink', path: from, node });
    }
  }

  async syncDirectory(directoryPath: string): Promise<void> {
    this.assertAlive('fsync', directoryPath);
    const directory = normalize(directoryPath);
    this.requireDirectory(directory, 'open', directoryPath);
    const operationCount = this.pendingByDirectory.get(directory)?.length ?? 0;
    await this.delay();
    this.assertAlive('fsync', directoryPath);
    const operations = this.pendingByDirectory.get(directory)?.splice(0, operationCount) ?? [];
    for (const operation of operations) applyDirectoryOperation(this.durable, operation);
  }

  freeBytes(filePath: string): number {
    this.assertAlive('statfs', filePath);
    return this.spaceBudgetBytes ?? plentyOfFreeBytes;
  }

  /** What is allocated plus what is free. */
  capacityBytes(filePath: string): number {
    this.assertAlive('statfs', filePath);
    let allocatedBytes = 0;
    for (const node of new Set(this.current.values())) if (node.kind === 'file') allocatedBytes += node.allocatedBytes;
    return allocatedBytes + this.freeBytes(filePath);
  }

  allocatedBytes(filePath: string): number {
    this.assertAlive('stat', filePath);
    const node = this.current.get(normalize(filePath));
    return node?.kind === 'file' ? node.allocatedBytes : 0;
  }

  /** This boot of the simulated machine: a power loss starts a new one, a process crash does not. */
  bootId(): Buffer {
    return Buffer.from(this.bootIdentifier);
  }

  // ---- for the handles ----

  /** Awaited by asynchronous handle operations before they take effect. */
  wait(): Promise<void> {
    return this.delay();
  }

  /** Called by datasync: the fault it meets (if any), decided in call order. */
  takeDatasyncFault(filePath: string): 'lost' | 'kept' | null {
    this.datasyncCountValue++;
    const fault = this.datasyncFaults.find((candidate) => candidate.count > 0 && candidate.pathMatches(filePath));
    if (fault === undefined) return null;
    fault.count--;
    return fault.unsyncedWrites;
  }

  /** Resolves once no pause holds datasync calls of this path. */
  async passPauses(filePath: string): Promise<void> {
    for (const gate of this.pauseGates.filter((candidate) => candidate.pathMatches(filePath))) await gate.released;
  }

  /** Take space for the file to reach endBytes, or fail with ENOSPC and take nothing. */
  reserveSpace(node: FileNode, endBytes: number, syscall: string, filePath: string): void {
    if (endBytes <= node.allocatedBytes) return;
    const neededBytes = endBytes - node.allocatedBytes;
    if (this.spaceBudgetBytes !== null) {
      if (neededBytes > this.spaceBudgetBytes) throw systemError('ENOSPC', syscall, filePath);
      this.spaceBudgetBytes -= neededBytes;
    }
    node.allocatedBytes = endBytes;
  }

  shrinkSpace(node: FileNode, sizeBytes: number): void {
    if (sizeBytes >= node.allocatedBytes) return;
    if (this.spaceBudgetBytes !== null) this.spaceBudgetBytes += node.allocatedBytes - sizeBytes;
    node.allocatedBytes = sizeBytes;
  }

  private releaseSpace(node: Node): void {
    if (node.kind === 'file') this.shrinkSpace(node, 0);
  }

  private assertAlive(syscall: string, filePath: string): void {
    if (this.crashed) throw systemError('EIO', syscall, filePath);
  }

  private requireDirectory(directory: string, syscall: string, filePath: string): void {
    const node = this.current.get(directory);
    if (node === undefined) throw systemError('ENOENT', syscall, filePath);
    if (node.kind !== 'directory') throw systemError('ENOTDIR', syscall, filePath);
  }

  private pendingOf(directory: string): DirectoryOperation[] {
    let operations = this.pendingByDirectory.get(directory);
    if (operations === undefined) {
      operations = [];
      this.pendingByDirectory.set(directory, operations);
    }
    return operations;
  }

  private link(entryPath: string, node: Node): void {
    this.current.set(entryPath, node);
    if (node.kind === 'file') node.lastPath = entryPath;
    this.pendingOf(path.posix.dirname(entryPath)).push({ kind: 'link', path: entryPath, node });
  }

  private unlink(entryPath: string, node: Node): void {
    this.current.delete(entryPath);
    this.releaseSpace(node);
    this.pendingOf(path.posix.dirname(entryPath)).push({ kind: 'unlink', path: entryPath, node });
  }
}

class SimulatedFileHandle implements FileHandle {
  readonly path: string;
  private readonly fileSystem: SimulatedFileSystem;
  private readonly node: FileNode;
  private readonly readOnly: boolean;
  private closed = false;

  constructor(filePath: string, fileSystem: SimulatedFileSystem, node: FileNode, readOnly: boolean) {
    this.path = filePath;
    this.fileSystem = fileSystem;
    this.node = node;
    this.readOnly = readOnly;
  }

  readSync(target: Buffer, positionBytes: number): number {
    this.assertOpen('read');
    return this.node.current.read(target, positionBytes);
  }

  writeSync(source: Buffer, positionBytes: number): void {
    this.assertWritable('write');
    this.fileSystem.reserveSpace(this.node, positionBytes + source.length, 'write', this.path);
    this.node.perform({ kind: 'write', offsetBytes: positionBytes, data: Buffer.from(source) });
  }

  async read(target: Buffer, positionBytes: number): Promise<number> {
    this.assertOpen('read');
    await this.fileSystem.wait();
    this.assertOpen('read');
    return this.node.current.read(target, positionBytes);
  }

  /** Positioned writes, each its own operation for a crash (as separate pwrite calls are). */
  async writeBatch(sources: readonly Buffer[], positionsBytes: readonly number[]): Promise<void> {
    this.assertWritable('pwrite');
    if (sources.length !== positionsBytes.length) throw new TypeError('writeBatch needs one position per buffer');
    const copies = sources.map((source) => Buffer.from(source));
    await this.fileSystem.wait();
    for (const [index, data] of copies.entries()) {
      this.assertWritable('pwrite');
      if (data.length === 0) continue;
      const positionBytes = positionsBytes[index]!;
      this.fileSystem.reserveSpace(this.node, positionBytes + data.length, 'pwrite', this.path);
      this.node.perform({ kind: 'write', offsetBytes: positionBytes, data });
    }
  }

  /**
   * An O_DIRECT write: whole blocks, one operation for a crash, pending until datasync. A durable
   * (RWF_DSYNC) write is durable when it returns; the model only allows it when nothing else of
   * the file is pending, since it cannot order it against other pending writes.
   */
  async writeAligned(prefix: Buffer, sources: readonly Buffer[], positionBytes: number, alignmentBytes: number, durable = false): Promise<void> {
    if (positionBytes % alignmentBytes !== 0) throw new TypeError('writeAligned needs an aligned position');
    const body = Buffer.concat([prefix, ...sources]);
    const padded = Buffer.alloc(Math.ceil(body.length / alignmentBytes) * alignmentBytes);
    body.copy(padded);
    await this.writev([padded], positionBytes);
    if (!durable) return;
    // The write is not durable until the device says so: a test holding this file's syncs holds it.
    const operation = this.node.pending[this.node.pending.length - 1]!;
    await this.fileSystem.passPauses(this.path);
    await this.fileSystem.wait();
    this.assertOpen('pwrite');
    this.makeWriteDurable(operation);
  }

  /**
   * RWF_DSYNC: the write just made is durable, on its own. (Callers never overlap it with other
   * pending writes of the file, so applying it ahead of them keeps every byte's order.)
   */
  private makeLastWriteDurable(): void {
    this.makeWriteDurable(this.node.pending[this.node.pending.length - 1]!);
  }

  private makeWriteDurable(operation: FileOperation): void {
    const fault = this.fileSystem.takeDatasyncFault(this.path);
    if (fault !== null) {
      if (fault === 'lost') this.node.loseUnsynced(this.node.pending.length);
      throw systemError('EIO', 'pwrite', this.path);
    }
    this.node.makeOperationDurable(operation);
  }

  writeAlignedSync(prefix: Buffer, sources: readonly Buffer[], positionBytes: number, alignmentBytes: number, durable = false): void {
    if (positionBytes % alignmentBytes !== 0) throw new TypeError('writeAligned needs an aligned position');
    const body = Buffer.concat([prefix, ...sources]);
    const padded = Buffer.alloc(Math.ceil(body.length / alignmentBytes) * alignmentBytes);
    body.copy(padded);
    this.writeSync(padded, positionBytes);
    if (durable) this.makeLastWriteDurable();
  }

  /** Everything is in the simulated page cache. */
  readCached(target: Buffer, positionBytes: number): number {
    // Two pages in three are "cached", so callers take both the at-once and the worker-thread path.
    return this.readSync(target.subarray(0, cachedPrefixBytes(positionBytes, target.length)), positionBytes);
  }

  async writev(sources: readonly Buffer[], positionBytes: number): Promise<void> {
    this.assertWritable('writev');
    const data = Buffer.concat(sources);
    await this.fileSystem.wait();
    this.assertWritable('writev');
    if (data.length === 0) return;
    this.fileSystem.reserveSpace(this.node, positionBytes + data.length, 'writev', this.path);
    this.node.perform({ kind: 'write', offsetBytes: positionBytes, data });
  }

  async datasync(): Promise<void> {
    this.assertOpen('fdatasync');
    const fault = this.fileSystem.takeDatasyncFault(this.path);
    const operationCount = this.node.pending.length;
    await this.fileSystem.passPauses(this.path);
    await this.fileSystem.wait();
    this.assertOpen('fdatasync');
    if (fault !== null) {
      if (fault === 'lost') this.node.loseUnsynced(operationCount);
      throw systemError('EIO', 'fdatasync', this.path);
    }
    this.node.makeDurable(operationCount);
  }

  zeroRange(offsetBytes: number, lengthBytes: number): void {
    this.assertWritable('fallocate');
    if (lengthBytes <= 0) return;
    this.fileSystem.reserveSpace(this.node, offsetBytes + lengthBytes, 'fallocate', this.path);
    this.node.perform({ kind: 'zeroRange', offsetBytes, lengthBytes });
  }

  async allocate(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.assertWritable('fallocate');
    await this.fileSystem.wait();
    this.assertWritable('fallocate');
    if (lengthBytes <= 0) return;
    this.fileSystem.reserveSpace(this.node, offsetBytes + lengthBytes, 'fallocate', this.path);
    this.node.perform({ kind: 'allocate', offsetBytes, lengthBytes });
  }

  seekData(offsetBytes: number): number {
    this.assertOpen('lseek');
    return offsetBytes < this.node.current.sizeBytes ? offsetBytes : -1;
  }

  seekHole(offsetBytes: number): number {
    this.assertOpen('lseek');
    return offsetBytes < this.node.current.sizeBytes ? this.node.current.sizeBytes : -1;
  }

  sizeBytes(): number {
    this.assertOpen('fstat');
    return this.node.current.sizeBytes;
  }

  truncate(sizeBytes: number): void {
    this.assertWritable('ftruncate');
    this.fileSystem.shrinkSpace(this.node, sizeBytes);
    this.node.perform({ kind: 'truncate', sizeBytes });
  }

  close(): void {
    this.closed = true; // closing twice, or after a crash, is harmless
  }

  private assertOpen(syscall: string): void {
    if (this.closed || this.fileSystem.isCrashed) throw systemError('EBADF', syscall, this.path);
  }

  private assertWritable(syscall: string): void {
    this.assertOpen(syscall);
    if (this.readOnly) throw systemError('EBADF', syscall, this.path);
  }
}

// ---- helpers ----

function normalize(filePath: string): string {
  return path.posix.resolve('/', filePath);
}

function describeFileOperation(filePath: string, operation: FileOperation): PendingOperation {
  switch (operation.kind) {
    case 'write':
      return { path: filePath, kind: 'write', offsetBytes: operation.offsetBytes, lengthBytes: operation.data.length };
    case 'zeroRange':
    case 'allocate':
      return { path: filePath, kind: operation.kind, offsetBytes: operation.offsetBytes, lengthBytes: operation.lengthBytes };
    case 'truncate':
      return { path: filePath, kind: 'truncate', offsetBytes: operation.sizeBytes, lengthBytes: 0 };
  }
}

function describeDirectoryOperation(operation: DirectoryOperation): PendingOperation {
  const filePath = operation.kind === 'rename' ? operation.toPath : operation.path;
  return { path: filePath, kind: operation.kind, offsetBytes: 0, lengthBytes: 0 };
}

/**
 * The content a crash leaves of one file: its durable content, then, for each pending operation
 * the crash keeps (whole, or some pieces of a torn write), the pieces it touched as the page cache
 * held them right after it. So a kept operation carries the earlier writes sharing its sectors, as
 * a page written back does, and a sector never shows a later write without an earlier one.
 */
function crashFile(
  node: FileNode,
  filePath: string,
  fateOf: (operation: PendingOperation) => OperationFate,
  granularityBytes: number,
  report: CrashReport,
): FileNode {
  const result = node.durable.clone();
  const pageCache = node.durable.clone();
  let sizeBytes = node.durable.sizeBytes;
  for (const operation of node.pending) {
    const sizeBeforeBytes = pageCache.sizeBytes;
    applyFileOperation(pageCache, operation);
    const fate = fateOf(describeFileOperation(filePath, operation));
    if (fate === 'drop') {
      report.droppedCount++;
      continue;
    }
    const [startBytes, endBytes] = touchedRange(operation, sizeBeforeBytes, pageCache.sizeBytes, granularityBytes);
    if (fate === 'keep' || operation.kind !== 'write') {
      report.keptCount++;
      result.copyRangeFrom(pageCache, startBytes, endBytes);
      sizeBytes = pageCache.sizeBytes;
      continue;
    }
    let keptBytes = 0;
    for (let pieceStart = startBytes; pieceStart < endBytes; pieceStart += granularityBytes) {
      if (!fate.keepPiece(pieceStart)) continue;
      result.copyRangeFrom(pageCache, pieceStart, pieceStart + granularityBytes);
      keptBytes += granularityBytes;
    }
    if (keptBytes > 0) sizeBytes = pageCache.sizeBytes;
    report.tornWrites.push({ path: filePath, offsetBytes: operation.offsetBytes, lengthBytes: operation.data.length, keptBytes });
  }
  result.truncateTo(sizeBytes);
  const survivor = new FileNode(filePath, result);
  survivor.allocatedBytes = Math.max(node.allocatedBytes, sizeBytes);
  return survivor;
}

/** The bytes an operation changed, widened to whole pieces (sectors). */
function touchedRange(operation: FileOperation, sizeBeforeBytes: number, sizeAfterBytes: number, granularityBytes: number): [number, number] {
  let startBytes: number;
  let endBytes: number;
  if (operation.kind === 'write') [startBytes, endBytes] = [operation.offsetBytes, operation.offsetBytes + operation.data.length];
  else if (operation.kind === 'zeroRange') [startBytes, endBytes] = [operation.offsetBytes, operation.offsetBytes + operation.lengthBytes];
  else [startBytes, endBytes] = [Math.min(sizeBeforeBytes, sizeAfterBytes), Math.max(sizeBeforeBytes, sizeAfterBytes)];
  return [Math.floor(startBytes / granularityBytes) * granularityBytes, Math.ceil(endBytes / granularityBytes) * granularityBytes];
}
