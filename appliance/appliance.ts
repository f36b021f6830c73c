// The running appliance: the data folder's volumes, each exported live over NBD, the view and
// clone exports, and the events people and the console follow. It wires storage and server
// together; the API (api/) and the command line (tools/) drive it.

import {
  StorageError,
  VolumeStore,
  changeRetentionPolicy,
  formatMicros,
  retentionChangesAreEmpty,
  validateSnapshotName,
  type RetentionPolicy,
  type RetentionPolicyChanges,
  type LogCompression,
  type SnapshotRecord,
  type Volume,
  type VolumeConfig,
} from '../storage/index.js';
import { ExportTable, NbdServer, type AccessPolicy, type ConnectionLimits, type ListenAddress, type Logger, type ServerTls } from '../server/index.js';
import { LocalPathPolicy, noLocalPaths, type LocalPathRules } from '../transfer/local-paths.js';
import type { NbdClientTls } from '../transfer/client-tls.js';
import type { NbdTimeouts } from '../transfer/limits.js';
import { ApplianceError } from './errors.js';
import { ApplianceEvents, nowMicros } from './events.js';
import { ExportManager } from './exports.js';
import { JobManager } from './jobs.js';
import { watchLifecycle } from './lifecycle-alerts.js';

/** How long a snapshot is kept: pinned against space pressure, and an expiry time in µs (0: none). */
export interface SnapshotRetention {
  pinned?: boolean;
  expiresMicros?: number;
}

/** A snapshot's pin and expiry as the API and the events give them (no expiry: null). */
export function snapshotRetentionOf(snapshot: SnapshotRecord): { pinned: boolean; expiresMicros: number | null } {
  return { pinned: snapshot.pinned === true, expiresMicros: (snapshot.expiresMicros ?? 0) === 0 ? null : snapshot.expiresMicros! };
}

export interface ApplianceOptions {
  dataDirectory: string;
  defaultVolumeName: string;
  defaultVolumeSizeBytes: number;
  /** How volumes store data records in their logs; snappy when absent. */
  logCompression?: LogCompression;
  /** Write-log segment size of the default volume when it is made (serve --segment-size); the storage default when absent. */
  defaultVolumeSegmentSizeBytes?: number;
  log: Logger;
  /** How clients reach the NBD server, for export URIs (e.g. nbd://127.0.0.1:10809). */
  nbdUriBase: string;
  /** NBD TLS mode and credentials; off when absent. */
  tls?: ServerTls;
  /** Changes to the NBD server's connection limits (serve --memory-budget, ...); defaults when absent. */
  connectionLimits?: Partial<ConnectionLimits>;
  /** Access policies of volumes' live exports, by volume name (serve --allow, --tls-only). */
  volumePolicies?: ReadonlyMap<string, AccessPolicy>;
  /**
   * Changes to the default volume's retention policy (serve --keep-all, --hourly, ...): made to
   * the defaults when it is created, and to its stored policy at every start.
   */
  defaultVolumeRetention?: RetentionPolicyChanges;
  /**
   * The block devices and folders of files that restores may write and verifications and seeds
   * may read (serve --device-allow, --file-root); absent: none, only NBD targets and sources.
   */
  localPaths?: LocalPathRules;
  /** The CA (and client certificate) for nbds:// targets and sources (serve --remote-tls-*); absent: nbds:// is refused. */
  remoteTls?: NbdClientTls | null;
  /** Time limits of jobs' NBD targets and sources (serve --nbd-connect-timeout, ...); transfer/limits.ts when absent. */
  nbdTimeouts?: NbdTimeouts;
}

export class Appliance {
  readonly store: VolumeStore;
  readonly table: ExportTable;
  readonly nbd: NbdServer;
  readonly exports: ExportManager;
  /** Restores, verifications and seeds. */
  readonly jobs: JobManager;
  readonly events = new ApplianceEvents();
  private readonly log: Logger;
  private readonly defaultVolumeName: string;
  private rateTimer: NodeJS.Timeout | null = null;
  private readonly previousWrites = new Map<string, { writes: number; bytes: number }>();

  private constructor(options: ApplianceOptions, store: VolumeStore, localPaths: LocalPathPolicy) {
    this.store = store;
    this.log = options.log;
    this.defaultVolumeName = options.defaultVolumeName;
    this.table = new ExportTable();
    this.nbd = new NbdServer({ exports: this.table, log: options.log, tls: options.tls, limits: options.connectionLimits });
    this.exports = new ExportManager({ store, table: this.table, nbd: this.nbd, events: this.events, uriBase: options.nbdUriBase, volumePolicies: options.volumePolicies });
    this.jobs = new JobManager({
      store,
      nbd: this.nbd,
      events: this.events,
      createSnapshot: (volume, name, note) => this.createSnapshot(volume, name, note),
      localPaths,
      remoteTls: options.remoteTls ?? null,
      nbdTimeouts: options.nbdTimeouts,
    });
    this.nbd.onAttachChange((entry, connection, attached) => {
      this.events.emit({
        type: attached ? 'client-connected' : 'client-disconnected',
        export: entry.name,
        connection: connection.id,
        remote: connection.remote,
        micros: nowMicros(),
      });
    });
    this.nbd.onAccessRefused((notice) => this.events.emit({ type: 'access-refused', ...notice, micros: nowMicros() }));
  }

  /**
   * Open the data folder (making the default volume on first start), every volume, every export.
   * The local path rules are checked against the data folder first (a file root must not overlap it).
   */
  static async start(options: ApplianceOptions): Promise<Appliance> {
    const store = VolumeStore.openDataDirectory(options.dataDirectory, undefined, { logCompression: options.logCompression ?? 'snappy' });
    let appliance: Appliance;
    try {
      const localPaths = LocalPathPolicy.create(options.localPaths ?? noLocalPaths, store.dataDirectory);
      for (const device of localPaths.missingDevices()) options.log.warn({ device }, 'a --device-allow device does not exist (yet)');
      appliance = new Appliance(options, store, localPaths);
      await appliance.openEverything(options);
    } catch (error) {
      await store.close();
      throw error;
    }
    return appliance;
  }

  /**
   * One bad volume or export does not stop the others: a volume that fails to open is failed (in
   * /health and the API, with its error) and not exported; so is an export that cannot be
   * restored, whose definition stays in exports.json.
   */
  private async openEverything(options: ApplianceOptions): Promise<void> {
    await this.prepareDefaultVolume(options);
    for (const name of this.store.list()) {
      try {
        this.exportVolume(await this.store.openVolume(name));
      } catch (error) {
        this.reportFailedVolume(name, error);
      }
    }
    this.chooseDefaultExport();
    const restored = await this.exports.restore();
    if (restored.fileFailure !== null) this.log.error({ file: 'exports.json', error: restored.fileFailure }, 'the export definitions could not be read; no view or clone export was restored');
    for (const failure of restored.failures) this.log.error(failure, 'an export could not be restored: it is failed, and kept in exports.json');
    this.rateTimer = setInterval(() => this.reportWriteRates(), 1000);
    this.rateTimer.unref();
  }

  /**
   * On first start, make the default volume (with the retention changes the serve flags give);
   * on later starts, make those changes to its stored policy (the rest of it stays).
   */
  private async prepareDefaultVolume(options: ApplianceOptions): Promise<void> {
    const name = options.defaultVolumeName;
    const retention = options.defaultVolumeRetention ?? {};
    try {
      if (this.store.list().length === 0) {
        await this.store.create({ name, sizeBytes: options.defaultVolumeSizeBytes, segmentSizeBytes: options.defaultVolumeSegmentSizeBytes, retention });
        this.log.info({ volume: name, sizeBytes: options.defaultVolumeSizeBytes, segmentSizeBytes: this.store.config(name).segmentSizeBytes }, 'created the default volume');
      } else if (!retentionChangesAreEmpty(retention)) {
        await this.applyRetentionFlags(name, retention);
      }
    } catch (error) {
      if (error instanceof StorageError && error.code === 'EINVAL') throw new ApplianceError('EINVAL', `default volume ${name}: ${error.message}`);
      throw error;
    }
  }

  private async applyRetentionFlags(name: string, changes: RetentionPolicyChanges): Promise<void> {
    if (!this.store.list().includes(name)) {
      this.log.warn({ volume: name }, 'retention flags name a default volume that does not exist; ignored');
      return;
    }
    let volume: Volume;
    try {
      volume = await this.store.openVolume(name);
    } catch (error) {
      this.reportFailedVolume(name, error);
      return;
    }
    const policy = changeRetentionPolicy(volume.retentionPolicy, changes);
    if (JSON.stringify(policy) === JSON.stringify(volume.retentionPolicy)) return;
    await volume.setRetentionPolicy(policy);
    this.log.info({ volume: name, policy }, 'retention policy changed by the serve flags');
  }

  private exportVolume(volume: Volume): void {
    const { recovery } = volume;
    this.log.info(
      {
        volume: volume.config.name,
        replayedRecords: recovery.replayedRecordCount,
        dirtyRegions: recovery.dirtyRegionCount,
        tear: recovery.tear?.reason ?? null,
        recoveryMs: Math.round(recovery.durationMs),
        nextSequence: recovery.nextSequence,
        lastWrite: recovery.lastTimestampMicros > 0 ? formatMicros(recovery.lastTimestampMicros) : null,
      },
      'volume opened',
    );
    this.exports.addVolume(volume);
    watchLifecycle(volume, this.events, this.log);
  }

  private reportFailedVolume(name: string, error: unknown): void {
    const message = error instanceof Error ? error.message : String(error);
    this.log.error({ volume: name, error: message }, 'a volume failed to open: it is not exported; the others serve');
    this.events.emit({ type: 'volume-failed', volume: name, error: message, micros: nowMicros() });
  }

  private chooseDefaultExport(): void {
    const names = this.store.list().filter((name) => this.table.lookup(name) !== undefined);
    this.table.setDefault(names.includes(this.defaultVolumeName) ? this.defaultVolumeName : (names[0] ?? null));
  }

  async listen(address: ListenAddress): Promise<ListenAddress> {
    return this.nbd.listen(address);
  }

  // ---- volumes ----

  async createVolume(name: string, sizeBytes: number): Promise<VolumeConfig> {
    const config = await this.store.create({ name, sizeBytes });
    this.exportVolume(await this.store.openVolume(name));
    this.chooseDefaultExport();
    this.events.emit({ type: 'volume-created', volume: name, sizeBytes, micros: nowMicros() });
    return config;
  }

  /** Delete a volume and its history; refused while any of its exports has clients. */
  async deleteVolume(name: string): Promise<void> {
    if (!this.store.list().includes(name)) await this.store.openVolume(name); // ENOENT (or EINVAL) for a missing volume
    const exportNames = [name, ...this.exports.exportsOfVolume(name)];
    const clients = exportNames.flatMap((exportName) => this.nbd.connectionsOf(exportName).map((connection) => ({ export: exportName, remote: connection.remote })));
    if (clients.length > 0) {
      throw new ApplianceError('EBUSY', `volume ${name} has clients attached: ${clients.map((client) => `${client.remote} on ${client.export}`).join(', ')}`, { clients });
    }
    for (const exportName of exportNames.slice(1)) await this.exports.delete(exportName);
    this.exports.removeVolume(name);
    await this.store.delete(name);
    this.chooseDefaultExport();
    this.events.emit({ type: 'volume-deleted', volume: name, micros: nowMicros() });
  }

  // ---- retention ----

  /** Replace a volume's retention policy (EINVAL with the reason when it is nonsense); returns it as stored. */
  async setRetentionPolicy(volumeName: string, policy: RetentionPolicy): Promise<RetentionPolicy> {
    const volume = await this.store.openVolume(volumeName);
    await volume.setRetentionPolicy(policy);
    this.events.emit({ type: 'retention-changed', volume: volumeName, policy: volume.retentionPolicy, micros: nowMicros() });
    return volume.retentionPolicy;
  }

  // ---- snapshots ----

  /** Mark this instant; a pinned snapshot survives space pressure, one with an expiry time (µs) is deleted then. */
  async createSnapshot(volumeName: string, name: string, note = '', options: SnapshotRetention = {}): Promise<SnapshotRecord> {
    const history = await this.historyOf(volumeName);
    const snapshot = await history.createSnapshot(name, note, options);
    this.events.emit({ type: 'snapshot-created', volume: volumeName, name, sequence: snapshot.sequence, micros: snapshot.micros, note, ...snapshotRetentionOf(snapshot) });
    return snapshot;
  }

  /** Pin or unpin a snapshot, or change its expiry time (0: kept until deleted). */
  async updateSnapshot(volumeName: string, name: string, changes: SnapshotRetention): Promise<SnapshotRecord> {
    const history = await this.historyOf(volumeName);
    const problem = validateSnapshotName(name);
    if (problem !== null) throw new ApplianceError('EINVAL', problem);
    const snapshot = await history.updateSnapshot(name, changes);
    this.events.emit({ type: 'snapshot-updated', volume: volumeName, name, ...snapshotRetentionOf(snapshot), micros: nowMicros() });
    return snapshot;
  }

  async deleteSnapshot(volumeName: string, name: string): Promise<void> {
    const history = await this.historyOf(volumeName);
    const problem = validateSnapshotName(name);
    if (problem !== null) throw new ApplianceError('EINVAL', problem);
    await history.deleteSnapshot(name);
    this.events.emit({ type: 'snapshot-deleted', volume: volumeName, name, micros: nowMicros() });
  }

  async historyOf(volumeName: string) {
    const volume = await this.store.openVolume(volumeName);
    if (volume.history === null) throw new ApplianceError('EINVAL', `volume ${volumeName} keeps no history`);
    return volume.history;
  }

  private reportWriteRates(): void {
    for (const volume of this.store.openVolumes()) {
      const stats = volume.stats();
      const name = volume.config.name;
      const previous = this.previousWrites.get(name) ?? { writes: stats.writeCount, bytes: stats.writeBytes };
      this.previousWrites.set(name, { writes: stats.writeCount, bytes: stats.writeBytes });
      this.events.emit({
        type: 'write-rate',
        volume: name,
        writesPerSecond: stats.writeCount - previous.writes,
        bytesPerSecond: stats.writeBytes - previous.bytes,
        micros: nowMicros(),
      });
    }
  }

  /** Stop accepting, finish in-flight requests, make everything durable, close. */
  async stop(): Promise<void> {
    if (this.rateTimer !== null) clearInterval(this.rateTimer);
    await this.jobs.close();
    await this.nbd.close();
    this.exports.close();
    await this.store.close();
  }
}
