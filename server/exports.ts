// The export table: which BlockDevice answers to which NBD export name, and who is attached.
// The empty name selects the default export, as the protocol says. Each entry carries its access
// policy (access.ts), so the server decides who may attach without asking storage.

import type { BlockDevice } from '../storage/index.js';
import { openAccessPolicy, type AccessPolicy } from './access.js';

export interface ExportEntry {
  readonly name: string;
  readonly device: BlockDevice;
  /** One line for NBD_OPT_LIST and NBD_INFO_DESCRIPTION. */
  readonly description: string;
  /** Who may attach: TLS-only or not, and the allowlist. */
  readonly policy: AccessPolicy;
  /** Connections in transmission with this export now. */
  connectionCount: number;
}

export class ExportTable {
  private readonly entries = new Map<string, ExportEntry>();
  private defaultName: string | null = null;

  add(name: string, device: BlockDevice, description = device.description, policy: AccessPolicy = openAccessPolicy): ExportEntry {
    if (this.entries.has(name)) throw new Error(`export ${name} already exists`);
    const entry: ExportEntry = { name, device, description, policy, connectionCount: 0 };
    this.entries.set(name, entry);
    return entry;
  }

  remove(name: string): void {
    this.entries.delete(name);
    if (this.defaultName === name) this.defaultName = null;
  }

  setDefault(name: string | null): void {
    if (name !== null && !this.entries.has(name)) throw new Error(`export ${name} does not exist`);
    this.defaultName = name;
  }

  /** The export for a name from the client ("" is the default export), or undefined. */
  lookup(name: string): ExportEntry | undefined {
    return this.entries.get(name === '' ? (this.defaultName ?? '') : name);
  }

  list(): ExportEntry[] {
    return [...this.entries.values()].sort((left, right) => left.name.localeCompare(right.name));
  }
}
