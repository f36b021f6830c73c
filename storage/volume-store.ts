// The data folder: data/volumes/<name>/ for every volume, and a lock (flock on cdp-nbd.lock) so
// that one process at a time owns the folder (two appliances writing one log would corrupt it). A volume that fails to
// open (a corrupt DRL, an unreadable index, a bad header) stays failed, with its error, until the
// process restarts or the volume is deleted; the other volumes are not affected.

import fs from 'node:fs';
import { lockExclusive } from 'cdp-native';
import { StorageError, messageWithCauses } from './errors.js';
import type { FileSystem } from './io/file-system.js';
import { nodeFileSystem } from './io/node-file-system.js';
import { assertStorageLimits, storageLimits } from './limits.js';
import { Volume, type CreateVolumeOptions, type OpenVolumeOptions } from './volume.js';
import { readVolumeConfig, validateSegmentSize, validateVolumeName, validateVolumeSize, volumePaths, type VolumeConfig } from './volume-config.js';

export class VolumeStore {
  readonly dataDirectory: string;
  private readonly fileSystem: FileSystem;
  private readonly open = new Map<string, Volume>();
  /** Volumes that failed to open, with why: not tried again until restart (recovery may write). */
  private readonly openFailures = new Map<string, StorageError>();
  private readonly lockPath: string;
  /** The open lock file whose flock holds the folder (null once released). */
  private lockDescriptor: number | null = null;
  private readonly openOptions: OpenVolumeOptions;

  private constructor(dataDirectory: string, fileSystem: FileSystem, openOptions: OpenVolumeOptions) {
    this.dataDirectory = dataDirectory;
    this.fileSystem = fileSystem;
    this.openOptions = openOptions;
    this.lockPath = `${dataDirectory}/cdp-nbd.lock`;
  }

  /** Open (creating if needed) a data folder and take its lock. */
  static openDataDirectory(dataDirectory: string, fileSystem: FileSystem = nodeFileSystem, openOptions: OpenVolumeOptions = {}): VolumeStore {
    assertStorageLimits();
    fileSystem.mkdirp(`${dataDirectory}/volumes`);
    const store = new VolumeStore(dataDirectory, fileSystem, openOptions);
    store.takeLock();
    return store;
  }

  get volumesDirectory(): string {
    return `${this.dataDirectory}/volumes`;
  }

  /** Names of the volumes in the folder, sorted. */
  list(): string[] {
    return this.fileSystem
      .list(this.volumesDirectory)
      .filter((name) => validateVolumeName(name) === null && this.fileSystem.exists(volumePaths(this.directoryOf(name)).config));
  }

  config(name: string): VolumeConfig {
    this.requireValidName(name);
    const paths = volumePaths(this.directoryOf(name));
    if (!this.fileSystem.exists(paths.config)) throw new StorageError('ENOENT', `no volume named ${name}`);
    return readVolumeConfig(this.fileSystem, paths.config);
  }

  async create(options: CreateVolumeOptions): Promise<VolumeConfig> {
    this.requireValidName(options.name);
    const sizeProblem = validateVolumeSize(options.sizeBytes);
    if (sizeProblem !== null) throw new StorageError('EINVAL', sizeProblem);
    const segmentProblem = options.segmentSizeBytes === undefined ? null : validateSegmentSize(options.segmentSizeBytes);
    if (segmentProblem !== null) throw new StorageError('EINVAL', segmentProblem);
    if (this.list().includes(options.name)) throw new StorageError('EEXIST', `a volume named ${options.name} already exists`);
    if (this.list().length >= storageLimits.volumeCountMax) {
      throw new StorageError('EINVAL', `a data folder holds at most ${storageLimits.volumeCountMax} volumes`);
    }
    const directory = this.directoryOf(options.name);
    // Build under a temporary name, then rename: a crash never leaves a half-made volume behind a real name.
    const buildDirectory = `${this.volumesDirectory}/.creating-${options.name}`;
    this.fileSystem.removeTree(buildDirectory);
    this.fileSystem.removeTree(directory);
    try {
      await Volume.create(buildDirectory, options, this.fileSystem);
      this.fileSystem.rename(buildDirectory, directory);
      await this.fileSystem.syncDirectory(this.volumesDirectory);
    } catch (error) {
      this.fileSystem.removeTree(buildDirectory);
      throw error;
    }
    return this.config(options.name);
  }

  /**
   * Open a volume (recovering it if needed); the same instance is returned while it is open. A
   * volume that cannot be opened is failed: this and every later call throw EIO with the cause.
   */
  async openVolume(name: string): Promise<Volume> {
    this.requireValidName(name);
    const existing = this.open.get(name);
    if (existing !== undefined) return existing;
    const failure = this.openFailures.get(name);
    if (failure !== undefined) throw failure;
    this.requireExisting(name);
    let volume: Volume;
    try {
      volume = await Volume.open(this.directoryOf(name), this.fileSystem, this.openOptions);
    } catch (error) {
      const failed = new StorageError('EIO', `volume ${name} failed to open: ${messageWithCauses(error)}`, { cause: error });
      this.openFailures.set(name, failed);
      throw failed;
    }
    this.open.set(name, volume);
    return volume;
  }

  /** The volumes that failed to open, by name, with why. */
  failedVolumes(): Array<{ name: string; error: string }> {
    return [...this.openFailures].map(([name, error]) => ({ name, error: error.message })).sort((left, right) => left.name.localeCompare(right.name));
  }

  /** Close a volume (if open) and delete it with its whole history (a failed one too). */
  async delete(name: string): Promise<void> {
    this.requireValidName(name);
    this.requireExisting(name);
    const volume = this.open.get(name);
    this.open.delete(name);
    this.openFailures.delete(name);
    await volume?.close();
    const directory = this.directoryOf(name);
    const doomed = `${this.volumesDirectory}/.deleting-${name}`;
    this.fileSystem.rename(directory, doomed); // gone from the list at once, even if removal is cut short
    await this.fileSystem.syncDirectory(this.volumesDirectory);
    this.fileSystem.removeTree(doomed);
  }

  openVolumes(): Volume[] {
    return [...this.open.values()];
  }

  /** Close every open volume (durably, leaving clean regions) and release the lock. */
  async close(): Promise<void> {
    const volumes = [...this.open.values()];
    this.open.clear();
    await Promise.all(volumes.map((volume) => volume.close()));
    this.releaseLock();
  }

  private directoryOf(name: string): string {
    return `${this.volumesDirectory}/${name}`;
  }

  /** ENOENT for a volume that does not exist (its volume.json may still be unreadable). */
  private requireExisting(name: string): void {
    if (!this.fileSystem.exists(volumePaths(this.directoryOf(name)).config)) throw new StorageError('ENOENT', `no volume named ${name}`);
  }

  private requireValidName(name: string): void {
    const problem = validateVolumeName(name);
    if (problem !== null) throw new StorageError('EINVAL', problem);
  }

  /**
   * Lock the folder: flock on data/cdp-nbd.lock, held through an open file for as long as the
   * store is open. The kernel releases it when the process dies, however it dies, so a lock is
   * never stale; the pid written into the file only names the holder in the refusal.
   */
  private takeLock(): void {
    const descriptor = fs.openSync(this.lockPath, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    try {
      if (!lockExclusive(descriptor)) {
        const holder = fs.readFileSync(this.lockPath, 'utf8').trim();
        throw new StorageError('EEXIST', `data folder ${this.dataDirectory} is in use${/^\d+$/.test(holder) ? ` by process ${holder}` : ' by another process'}`);
      }
      fs.ftruncateSync(descriptor, 0);
      fs.writeSync(descriptor, `${process.pid}\n`, 0);
    } catch (error) {
      fs.closeSync(descriptor);
      throw error;
    }
    this.lockDescriptor = descriptor;
  }

  /** The file stays: removing it could let a process lock a new file while another holds the old one. */
  private releaseLock(): void {
    if (this.lockDescriptor === null) return;
    fs.ftruncateSync(this.lockDescriptor, 0);
    fs.closeSync(this.lockDescriptor);
    this.lockDescriptor = null;
  }
}
