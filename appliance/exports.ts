// The exports of the appliance: every volume under its own name (live), and the point-in-time
// views and clones people create, each under a name of its own. View and clone exports are kept
// in data/exports.json and come back after a restart; a clone's overlay lives in
// data/volumes/<volume>/clones/<export>/. A view holds its instant against expiry until its
// export is deleted (then it is released). A view or clone keeps its volume's access policy
// (serve --allow, --tls-only): its own rules only narrow it, unless it was made with
// inheritAccess false (the API lets only an admin ask for that).
// An export that cannot be restored (its volume failed, its instant expired, its entry in
// exports.json is malformed) is failed: listed with its error, not served, and kept in
// exports.json until it is deleted. An exports.json that cannot be read at all is left as it is,
// reported, and moved aside to exports.json.damaged-<µs> before the file is next written:
// definitions are never dropped silently.

import path from 'node:path';
import {
  Clone,
  formatMicros,
  nodeFileSystem,
  writeFileAtomic,
  type BlockDevice,
  type InstantSpecification,
  type PointInTimeView,
  type Volume,
  type VolumeStore,
} from '../storage/index.js';
import { narrowedPolicy, openAccessPolicy, parseAccessPolicy, shownAllowRules, type AccessPolicy, type ExportTable, type NbdServer } from '../server/index.js';
import { ApplianceError } from './errors.js';
import { nowMicros, type ApplianceEvents } from './events.js';
import { explainExpired, instantOf } from './instant.js';
import fs from 'node:fs';

export interface ExportRequest {
  volume: string;
  /** One of: an instant (RFC 3339 or Unix µs), a snapshot name, a sequence number. */
  at?: string | number;
  snapshot?: string;
  sequence?: number;
  writable?: boolean;
  name?: string;
  /** Allowlist of client addresses, CIDR blocks, cn:NAME and unix (server/access.ts); none = everyone. */
  allow?: string[];
  /** Refuse clients that have not started TLS. */
  tlsOnly?: boolean;
  /**
   * True (the default): the volume's access policy applies too, and allow and tlsOnly only narrow
   * it. False: only allow and tlsOnly apply, which may let in clients the volume refuses.
   */
  inheritAccess?: boolean;
}

/** A view or clone export as kept in data/exports.json. */
export interface ExportDefinition {
  name: string;
  volume: string;
  sequence: number;
  micros: number;
  snapshot: string | null;
  writable: boolean;
  createdMicros: number;
  /** The export's own rules; absent: none of its own. */
  allow?: string[];
  tlsOnly?: boolean;
  /** Only when false: the volume's policy does not apply. Absent (every file before it): it does. */
  inheritAccess?: false;
}

export interface ExportSummary {
  name: string;
  volume: string;
  kind: 'live' | 'view' | 'clone';
  sequence: number | null;
  /** The instant shown (µs), for views and clones. */
  micros: number | null;
  snapshot: string | null;
  writable: boolean;
  description: string;
  uri: string;
  clients: Array<{ connection: number; remote: string; tls: boolean; certificate: string | null }>;
  /** Who may attach: the export's own rules, or the volume's it inherits when it has none. */
  allow: string[];
  /** TLS demanded, by the export or by the volume it inherits from. */
  tlsOnly: boolean;
  /** The volume's access policy applies too (always for a view or clone unless made without it). */
  inheritAccess: boolean;
  /** serving, or failed: not served, for the reason in `error` (deleting it is the way out). */
  state: 'serving' | 'failed';
  error: string | null;
}

/** An export of exports.json that could not be restored: its entry is written back as it was read. */
interface FailedExport {
  entry: unknown;
  /** The entry as a definition, when it is a well-formed one. */
  definition: ExportDefinition | null;
  error: string;
}

/** What restoring the exports found wrong: the file as a whole, or single exports. */
export interface ExportRestoreReport {
  fileFailure: string | null;
  failures: Array<{ name: string; error: string }>;
}

const exportNamePattern = /^[a-z0-9][a-z0-9._@-]{0,127}$/;
const exportCountMax = 256;
const exportsFileVersion = 1;

export class ExportManager {
  private readonly store: VolumeStore;
  private readonly table: ExportTable;
  private readonly nbd: NbdServer;
  private readonly events: ApplianceEvents;
  private readonly definitionsPath: string;
  private uriBase: string;
  private readonly definitions = new Map<string, ExportDefinition>();
  private readonly clones = new Map<string, Clone>();
  /** The view beneath each view and clone export, released when the export goes. */
  private readonly views = new Map<string, PointInTimeView>();
  private readonly volumePolicies: ReadonlyMap<string, AccessPolicy>;
  private readonly failed = new Map<string, FailedExport>();
  /** Entries of exports.json without a usable name of their own (missing, or taken): kept, written back as they were read. */
  private readonly unnamedEntries: unknown[] = [];
  /** Why exports.json could not be read, and whether it still is in place (moved aside before the next write). */
  private fileFailure: { message: string; damagedFileInPlace: boolean } | null = null;

  constructor(parts: { store: VolumeStore; table: ExportTable; nbd: NbdServer; events: ApplianceEvents; uriBase: string; volumePolicies?: ReadonlyMap<string, AccessPolicy> }) {
    this.volumePolicies = parts.volumePolicies ?? new Map();
    this.store = parts.store;
    this.table = parts.table;
    this.nbd = parts.nbd;
    this.events = parts.events;
    this.uriBase = parts.uriBase;
    this.definitionsPath = path.join(parts.store.dataDirectory, 'exports.json');
  }

  /** The nbd:// base of export URIs, once the listener is bound. */
  setUriBase(uriBase: string): void {
    this.uriBase = uriBase;
  }

  /** Export a volume live under its own name. */
  addVolume(volume: Volume): void {
    this.table.add(volume.config.name, volume, volume.description, this.volumePolicies.get(volume.config.name) ?? openAccessPolicy);
  }

  removeVolume(name: string): void {
    this.table.remove(name);
  }

  /** Bring back the view and clone exports of the previous run; says what failed (and stays failed). */
  async restore(): Promise<ExportRestoreReport> {
    for (const [index, entry] of this.readEntries().entries()) {
      const checked = checkDefinition(entry);
      if (typeof checked === 'string') {
        const name = nameOfEntry(entry);
        if (name === null || this.failed.has(name) || this.definitions.has(name)) this.unnamedEntries.push(entry);
        else this.failed.set(name, { entry, definition: null, error: `entry ${index} of exports.json is malformed: ${checked}` });
        continue;
      }
      const definition = checked;
      if (this.failed.has(definition.name) || this.definitions.has(definition.name)) {
        this.unnamedEntries.push(entry);
        continue;
      }
      try {
        // Kept even while TLS is off: the server then refuses a TLS-only export to everyone.
        const policy = this.policyOf(definition, { requireTlsOffered: false });
        const device = await this.openDevice(definition);
        this.table.add(definition.name, device, device.description, policy);
        this.definitions.set(definition.name, definition);
      } catch (error) {
        this.failed.set(definition.name, { entry, definition, error: error instanceof Error ? error.message : String(error) });
      }
    }
    if (this.unnamedEntries.length > 0 && this.fileFailure === null) {
      this.fileFailure = { message: `exports.json has ${this.unnamedEntries.length} entries without a usable name of their own (missing, or another entry's); they are kept in the file`, damagedFileInPlace: false };
    }
    return { fileFailure: this.fileFailure?.message ?? null, failures: this.failures() };
  }

  /** Exports that could not be restored, with why. */
  failures(): Array<{ name: string; error: string }> {
    return [...this.failed].map(([name, failed]) => ({ name, error: failed.error }));
  }

  /** Why exports.json could not be read, or null. */
  get definitionsFileFailure(): string | null {
    return this.fileFailure?.message ?? null;
  }

  async create(request: ExportRequest): Promise<ExportSummary> {
    const volume = await this.store.openVolume(request.volume);
    const history = volume.history;
    if (history === null) throw new ApplianceError('EINVAL', `volume ${request.volume} keeps no history`);
    const instant = instantOf(request);
    const sequence = await history.sequenceOf(instant).catch((error: unknown) => {
      throw explainExpired(error, request.volume, instant);
    });
    const writable = request.writable ?? false;
    const name = request.name ?? defaultExportName(request.volume, instant, sequence, writable);
    if (!exportNamePattern.test(name)) {
      throw new ApplianceError('EINVAL', 'an export name has 1 to 128 characters a-z, 0-9, ".", "_", "@" and "-", starting with a letter or digit');
    }
    if (this.table.lookup(name) !== undefined || this.definitions.has(name) || this.failed.has(name)) throw new ApplianceError('EEXIST', `an export named ${name} already exists`);
    if (this.definitions.size + this.failed.size >= exportCountMax) throw new ApplianceError('EINVAL', `at most ${exportCountMax} view and clone exports`);
    const policy = this.policyOf({ ...request, inheritAccess: request.inheritAccess === false ? false : undefined }, { requireTlsOffered: true });
    const micros = 'micros' in instant ? instant.micros : await this.instantMicros(volume, sequence);
    const definition: ExportDefinition = {
      name,
      volume: request.volume,
      sequence,
      micros,
      snapshot: request.snapshot ?? null,
      writable,
      createdMicros: nowMicros(),
      ...(policy.allow.length > 0 ? { allow: [...policy.allow] } : {}), // the export's own rules, normalised
      ...(request.tlsOnly === true ? { tlsOnly: true } : {}),
      ...(request.inheritAccess === false ? { inheritAccess: false as const } : {}),
    };
    if (writable) {
      await Clone.create(nodeFileSystem, this.cloneDirectory(definition), {
        formatVersion: 1,
        name,
        volume: definition.volume,
        sequence,
        sizeBytes: volume.sizeBytes,
        createdMicros: definition.createdMicros,
      });
    }
    const device = await this.openDevice(definition).catch((error: unknown) => {
      if (writable) fs.rmSync(this.cloneDirectory(definition), { recursive: true, force: true });
      throw explainExpired(error, request.volume, instant);
    });
    this.table.add(name, device, device.description, policy);
    this.definitions.set(name, definition);
    await this.persist();
    this.events.emit({ type: 'export-created', name, volume: definition.volume, sequence, writable, micros: nowMicros() });
    return this.summary(name)!;
  }

  /** Remove a view or clone export; refused while clients are attached, unless forced. */
  async delete(name: string, options: { force?: boolean } = {}): Promise<void> {
    const failed = this.failed.get(name);
    if (failed !== undefined) {
      this.failed.delete(name);
      if (failed.definition?.writable === true) fs.rmSync(this.cloneDirectory(failed.definition), { recursive: true, force: true });
      await this.persist();
      this.events.emit({ type: 'export-deleted', name, micros: nowMicros() });
      return;
    }
    const definition = this.definitions.get(name);
    if (definition === undefined) {
      if (this.table.lookup(name) !== undefined) throw new ApplianceError('EINVAL', `${name} is a volume's live export: delete the volume instead`);
      throw new ApplianceError('ENOENT', `no export named ${name}`);
    }
    const connections = this.nbd.connectionsOf(name);
    if (connections.length > 0 && options.force !== true) {
      const clients = connections.map((connection) => ({ connection: connection.id, remote: connection.remote }));
      throw new ApplianceError('EBUSY', `export ${name} has ${clients.length} client(s) attached: ${clients.map((client) => client.remote).join(', ')}`, { clients });
    }
    for (const connection of connections) connection.destroy();
    this.table.remove(name);
    this.definitions.delete(name);
    const clone = this.clones.get(name);
    if (clone !== undefined) {
      clone.close();
      this.clones.delete(name);
      fs.rmSync(this.cloneDirectory(definition), { recursive: true, force: true });
    }
    this.views.get(name)?.release();
    this.views.delete(name);
    await this.persist();
    this.events.emit({ type: 'export-deleted', name, micros: nowMicros() });
  }

  /** Every export of a volume's views and clones (for deleting the volume). */
  exportsOfVolume(volume: string): string[] {
    const failedOfVolume = [...this.failed].filter(([, failed]) => failed.definition?.volume === volume).map(([name]) => name);
    return [...[...this.definitions.values()].filter((definition) => definition.volume === volume).map((definition) => definition.name), ...failedOfVolume];
  }

  /** Every export: those served, then the failed ones. */
  list(): ExportSummary[] {
    return [...this.table.list().map((entry) => this.summary(entry.name)!), ...[...this.failed.keys()].map((name) => this.summary(name)!)];
  }

  summary(name: string): ExportSummary | undefined {
    const failed = this.failed.get(name);
    if (failed !== undefined) return this.failedSummary(name, failed);
    const entry = this.table.lookup(name);
    if (entry === undefined || name === '') return undefined;
    const definition = this.definitions.get(name);
    const clients = this.nbd.connectionsOf(name).map((connection) => ({ connection: connection.id, remote: connection.remote, ...connection.security }));
    return {
      name,
      volume: definition?.volume ?? name,
      kind: definition === undefined ? 'live' : definition.writable ? 'clone' : 'view',
      sequence: definition?.sequence ?? null,
      micros: definition?.micros ?? null,
      snapshot: definition?.snapshot ?? null,
      writable: !entry.device.readOnly,
      description: entry.description,
      uri: exportUri(this.uriBase, name),
      clients,
      allow: [...shownAllowRules(entry.policy)],
      tlsOnly: entry.policy.tlsOnly,
      inheritAccess: entry.policy.within !== null,
      state: 'serving',
      error: null,
    };
  }

  private failedSummary(name: string, failed: FailedExport): ExportSummary {
    const definition = failed.definition;
    return {
      name,
      volume: definition?.volume ?? '',
      kind: definition?.writable === true ? 'clone' : 'view',
      sequence: definition?.sequence ?? null,
      micros: definition?.micros ?? null,
      snapshot: definition?.snapshot ?? null,
      writable: definition?.writable ?? false,
      description: `failed: ${failed.error}`,
      uri: exportUri(this.uriBase, name),
      clients: [],
      allow: [...(definition?.allow ?? [])],
      tlsOnly: definition?.tlsOnly ?? false,
      inheritAccess: definition?.inheritAccess !== false,
      state: 'failed',
      error: failed.error,
    };
  }

  close(): void {
    for (const clone of this.clones.values()) clone.close();
    this.clones.clear();
    for (const view of this.views.values()) view.release();
    this.views.clear();
  }

  /**
   * The access policy of a new or restored view or clone: its own rules narrowing its volume's
   * (the volume's as serve gives it now), or its own alone when made with inheritAccess false.
   * EINVAL for a bad rule, or TLS-only while the server offers no TLS.
   */
  private policyOf(source: { volume: string; allow?: string[]; tlsOnly?: boolean; inheritAccess?: false | undefined }, options: { requireTlsOffered: boolean }): AccessPolicy {
    const tlsOnly = source.tlsOnly ?? false;
    if (tlsOnly && options.requireTlsOffered && this.nbd.tlsMode === 'off') throw new ApplianceError('EINVAL', 'a TLS-only export needs the NBD server to offer TLS (serve --tls required or selective)');
    let own: AccessPolicy;
    try {
      own = parseAccessPolicy(source.allow ?? [], { tlsOnly });
    } catch (error) {
      throw new ApplianceError('EINVAL', error instanceof Error ? error.message : String(error));
    }
    return source.inheritAccess === false ? own : narrowedPolicy(this.volumePolicies.get(source.volume) ?? openAccessPolicy, own);
  }

  private async openDevice(definition: ExportDefinition): Promise<BlockDevice> {
    const volume = await this.store.openVolume(definition.volume);
    if (volume.history === null) throw new ApplianceError('EINVAL', `volume ${definition.volume} keeps no history`);
    const instantText = definition.snapshot !== null ? `snapshot ${definition.snapshot}, ` : '';
    const description = `cdp-nbd volume ${definition.volume} at ${formatMicros(definition.micros)} (${instantText}sequence ${definition.sequence}), read-only`;
    const view = await volume.history.openView(definition.sequence, description);
    if (!definition.writable) {
      this.views.set(definition.name, view);
      return view;
    }
    try {
      const clone = Clone.open(nodeFileSystem, this.cloneDirectory(definition), view);
      await clone.flush();
      this.clones.set(definition.name, clone);
      this.views.set(definition.name, view);
      return clone;
    } catch (error) {
      view.release();
      throw error;
    }
  }

  private async instantMicros(volume: Volume, sequence: number): Promise<number> {
    const snapshot = volume.history?.snapshots().find((candidate) => candidate.sequence === sequence);
    if (snapshot !== undefined) return snapshot.micros;
    return (await volume.history?.microsOf(sequence)) ?? 0;
  }

  private cloneDirectory(definition: ExportDefinition): string {
    return path.join(this.store.volumesDirectory, definition.volume, 'clones', definition.name);
  }

  /** The entries of exports.json; none (and the file failed) when it cannot be read as a whole. */
  private readEntries(): unknown[] {
    let text: string;
    try {
      text = fs.readFileSync(this.definitionsPath, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
      return this.failDefinitionsFile(error instanceof Error ? error.message : String(error));
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (error) {
      return this.failDefinitionsFile(`not JSON (${error instanceof Error ? error.message : String(error)})`);
    }
    const file = parsed as { formatVersion?: unknown; exports?: unknown } | null;
    if (typeof file !== 'object' || file === null || file.formatVersion !== exportsFileVersion) {
      return this.failDefinitionsFile(`format version ${String(file?.formatVersion)} is not ${exportsFileVersion}`);
    }
    if (!Array.isArray(file.exports)) return this.failDefinitionsFile('"exports" is not a list');
    return file.exports as unknown[];
  }

  private failDefinitionsFile(reason: string): [] {
    this.fileFailure = { message: `exports.json could not be read, and no view or clone export was restored: ${reason}`, damagedFileInPlace: true };
    return [];
  }

  /** Write exports.json: the exports served and the failed ones; a damaged file is moved aside first. */
  private async persist(): Promise<void> {
    if (this.fileFailure?.damagedFileInPlace === true) {
      const asidePath = `${this.definitionsPath}.damaged-${nowMicros()}`;
      try {
        fs.renameSync(this.definitionsPath, asidePath);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error; // the administrator took it away
      }
      this.fileFailure = { message: `${this.fileFailure.message} (the file was moved to ${path.basename(asidePath)})`, damagedFileInPlace: false };
    }
    const failedEntries = [...this.failed.values()].map((failed) => failed.entry);
    const content = { formatVersion: exportsFileVersion, exports: [...this.definitions.values(), ...failedEntries, ...this.unnamedEntries] };
    await writeFileAtomic(nodeFileSystem, this.definitionsPath, Buffer.from(`${JSON.stringify(content, null, 2)}\n`));
  }
}

/** An entry of exports.json as a definition, or what is wrong with it. */
function checkDefinition(entry: unknown): ExportDefinition | string {
  if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) return 'not an object';
  const fields = entry as Record<string, unknown>;
  if (typeof fields['name'] !== 'string' || !exportNamePattern.test(fields['name'])) return 'name is missing or not an export name';
  if (typeof fields['volume'] !== 'string' || fields['volume'] === '') return 'volume is missing';
  for (const key of ['sequence', 'micros', 'createdMicros']) {
    if (!Number.isSafeInteger(fields[key]) || (fields[key] as number) < 0) return `${key} is not a whole number`;
  }
  if (typeof fields['writable'] !== 'boolean') return 'writable is not true or false';
  if (fields['snapshot'] !== null && typeof fields['snapshot'] !== 'string') return 'snapshot is not a name or null';
  if (fields['allow'] !== undefined && !(Array.isArray(fields['allow']) && fields['allow'].every((rule) => typeof rule === 'string'))) return 'allow is not a list of rules';
  if (fields['tlsOnly'] !== undefined && typeof fields['tlsOnly'] !== 'boolean') return 'tlsOnly is not true or false';
  return entry as ExportDefinition;
}

/** The export name an entry gives, if it gives a usable one. */
function nameOfEntry(entry: unknown): string | null {
  const name = typeof entry === 'object' && entry !== null ? (entry as Record<string, unknown>)['name'] : undefined;
  return typeof name === 'string' && exportNamePattern.test(name) ? name : null;
}

function defaultExportName(volume: string, instant: InstantSpecification, sequence: number, writable: boolean): string {
  const at = 'snapshot' in instant ? instant.snapshot : `seq${sequence}`;
  return `${volume}@${at}${writable ? '-clone' : ''}`;
}

/** nbd://HOST:PORT/NAME, or nbd+unix:///NAME?socket=PATH for a unix socket (nbds for TLS). */
function exportUri(uriBase: string, name: string): string {
  const unix = /^(nbds?\+unix):\/\/\?socket=(.*)#$/.exec(uriBase);
  if (unix !== null) return `${unix[1]}:///${name}?socket=${unix[2]}`;
  return `${uriBase}/${name}`; // export names need no escaping (a-z 0-9 . _ @ -)
}
