// The local block devices and files a transfer may open: only those the operator named in
// advance (serve --device-allow DEVICE, --file-root DIR); a request over the API never widens
// them. A path in a request is resolved as the kernel resolves it (realpath: symbolic links, "..",
// /proc/self/cwd) and the result is checked against the resolved rules. The open then uses the
// resolved path with O_NOFOLLOW, claims a block device with O_EXCL (Linux refuses a device that is
// mounted, an md member or otherwise held with EBUSY), creates a new file 0600 with O_EXCL, and
// reads back from /proc/self/fd that what it opened is what it checked (a folder swapped for a
// symbolic link in between is caught there).

import fs from 'node:fs';
import path from 'node:path';
import { EndpointError } from './endpoint-error.js';

/** What the operator allows, as given on the command line. */
export interface LocalPathRules {
  /** Block devices by path; a link such as /dev/disk/by-id/... is followed each time it is used. */
  deviceAllow: readonly string[];
  /** Folders whose regular files, at any depth, may be read, written and created. */
  fileRoots: readonly string[];
}

export const noLocalPaths: LocalPathRules = { deviceAllow: [], fileRoots: [] };

/** read: verify against, seed from. write: restore onto (a missing file is created). */
export type LocalPathUse = 'read' | 'write';

/** A path the rules allow, resolved: what the open uses. */
export interface AllowedPath {
  kind: 'device' | 'file';
  /** Absolute, with no symbolic link, "." or ".." in it. */
  resolvedPath: string;
  /** False for a new file, which the open creates. */
  exists: boolean;
}

/** New files: readable and writable by the appliance's user only (they hold a volume's data). */
export const newFileMode = 0o600;

/** Pseudo file systems whose "regular files" are kernel interfaces: never a file root. */
const pseudoFileSystems = ['/proc', '/sys', '/dev'];

export class LocalPathPolicy {
  private constructor(
    /** As given (normalised); resolved at every use, since a by-id link follows its disk. */
    private readonly devices: readonly string[],
    /** Resolved at start-up. */
    private readonly fileRoots: readonly string[],
  ) {}

  /**
   * Check the rules once, at start-up: devices are absolute paths of block devices (or of nothing
   * yet, for a disk plugged in later); roots are existing folders that neither contain nor lie in
   * the data folder, and are not in /proc, /sys or /dev. Throws Error naming the option.
   */
  static create(rules: LocalPathRules, dataDirectory: string): LocalPathPolicy {
    const data = fs.realpathSync(dataDirectory);
    const devices = rules.deviceAllow.map((device) => {
      if (!path.isAbsolute(device)) throw new Error(`--device-allow ${device}: give an absolute path (such as /dev/disk/by-id/...)`);
      const stats = statOrNull(device);
      if (stats !== null && !stats.isBlockDevice()) throw new Error(`--device-allow ${device} is not a block device (files are allowed by folder, with --file-root)`);
      return path.normalize(device);
    });
    const fileRoots = rules.fileRoots.map((root) => {
      if (!path.isAbsolute(root)) throw new Error(`--file-root ${root}: give an absolute path`);
      let resolved: string;
      try {
        resolved = fs.realpathSync(root);
      } catch (error) {
        throw new Error(`--file-root ${root} cannot be used: ${(error as NodeJS.ErrnoException).code ?? String(error)}`);
      }
      if (!fs.statSync(resolved).isDirectory()) throw new Error(`--file-root ${root} is not a folder`);
      if (isSameOrInside(data, resolved)) throw new Error(`--file-root ${root} contains the data folder ${data}: restores could overwrite the appliance's own files; name a folder beside it`);
      if (isSameOrInside(resolved, data)) throw new Error(`--file-root ${root} is inside the data folder ${data}: name a folder outside it`);
      const pseudo = pseudoFileSystems.find((folder) => isSameOrInside(resolved, folder));
      if (pseudo !== undefined) throw new Error(`--file-root ${root} is in ${pseudo}, whose files are kernel interfaces, not disks`);
      return resolved;
    });
    return new LocalPathPolicy(devices, fileRoots);
  }

  /** Allowed devices that do not exist now (worth a warning at start-up). */
  missingDevices(): string[] {
    return this.devices.filter((device) => statOrNull(device) === null);
  }

  /**
   * The path resolved and checked for this use, or EndpointError: not-allowed when the rules do
   * not cover it (whether or not it exists, so the answer tells nothing of paths outside them),
   * invalid when they do but it cannot be used (missing for a read, not a file).
   */
  async authorize(given: string, use: LocalPathUse): Promise<AllowedPath> {
    if (!path.isAbsolute(given)) throw new EndpointError(`${given} must be an nbd:// URI or an absolute path`);
    const { resolvedPath, exists, danglingLink } = await this.resolve(given);
    const stats = exists ? await fs.promises.stat(resolvedPath).catch(() => null) : null;
    if (await this.isAllowedDevice(resolvedPath)) {
      if (stats === null || !stats.isBlockDevice()) throw this.refusal(given, resolvedPath, 'it is allowed as a block device (--device-allow) but is not one now');
      return { kind: 'device', resolvedPath, exists: true };
    }
    if (!this.fileRoots.some((root) => isInside(resolvedPath, root))) throw this.refusal(given, resolvedPath, this.coverage());
    if (danglingLink) throw this.refusal(given, null, 'it is a symbolic link to nothing');
    if (stats === null) {
      if (use === 'read') throw new EndpointError(`cannot open ${given}: ENOENT`);
      if (exists) throw new EndpointError(`${given} disappeared while it was being checked`);
      return { kind: 'file', resolvedPath, exists: false };
    }
    if (stats.isBlockDevice()) throw this.refusal(given, resolvedPath, 'it is a block device under a file root; block devices are allowed one by one with --device-allow');
    if (!stats.isFile()) throw new EndpointError(`${given} is neither a regular file nor a block device`);
    if (stats.nlink > 1) throw this.refusal(given, resolvedPath, `it has ${stats.nlink} hard links, and another may be outside the file roots`);
    return { kind: 'file', resolvedPath, exists: true };
  }

  /**
   * An existing path resolved; a new file as its resolved folder and its own name (danglingLink:
   * that name is a symbolic link to nothing, which creating the file would follow).
   */
  private async resolve(given: string): Promise<{ resolvedPath: string; exists: boolean; danglingLink: boolean }> {
    try {
      return { resolvedPath: await fs.promises.realpath(given), exists: true, danglingLink: false };
    } catch (error) {
      const code = errnoOf(error);
      if (code !== 'ENOENT') throw this.refusal(given, null, `it cannot be resolved (${code})`);
    }
    const slash = given.lastIndexOf('/');
    const folder = given.slice(0, slash) || '/';
    const name = given.slice(slash + 1);
    if (name === '' || name === '.' || name === '..') throw new EndpointError(`${given} names a folder, not a file`);
    let resolvedFolder: string;
    try {
      resolvedFolder = await fs.promises.realpath(folder);
    } catch (error) {
      throw this.refusal(given, null, `its folder ${folder} cannot be resolved (${errnoOf(error)})`);
    }
    const danglingLink = (await fs.promises.lstat(given).catch(() => null)) !== null;
    return { resolvedPath: path.join(resolvedFolder, name), exists: false, danglingLink };
  }

  private async isAllowedDevice(resolvedPath: string): Promise<boolean> {
    for (const device of this.devices) {
      if ((await fs.promises.realpath(device).catch(() => null)) === resolvedPath) return true;
    }
    return false;
  }

  private coverage(): string {
    if (this.devices.length === 0 && this.fileRoots.length === 0) return 'the appliance allows no local files or devices (serve --file-root DIR, --device-allow DEVICE)';
    const roots = this.fileRoots.length === 0 ? 'no file roots' : `file roots ${this.fileRoots.join(', ')}`;
    const devices = this.devices.length === 0 ? 'no devices' : `devices ${this.devices.join(', ')}`;
    return `it is neither under a --file-root nor a --device-allow device (${roots}; ${devices})`;
  }

  /**
   * The refusal names where the path led only when it was written under a file root (a link there
   * led out): that helps the operator, while for other paths it would tell what lies outside.
   */
  private refusal(given: string, resolvedPath: string | null, reason: string): EndpointError {
    const underRoot = this.fileRoots.some((root) => isInside(path.normalize(given), root));
    const resolved = resolvedPath === null || resolvedPath === given || !underRoot ? '' : ` (resolved: ${resolvedPath})`;
    return new EndpointError(`${given}${resolved} is not allowed: ${reason}`, 'not-allowed');
  }
}

/**
 * Open what authorize() allowed: never following a symbolic link in the last component, a device
 * claimed exclusively, a new file created 0600. The opened file's path, read back from
 * /proc/self/fd, must be the checked one; a FIFO swapped in cannot hang the open (O_NONBLOCK).
 */
export async function openAllowedPath(allowed: AllowedPath, writable: boolean): Promise<fs.promises.FileHandle> {
  const { O_RDONLY, O_RDWR, O_CREAT, O_EXCL, O_NOFOLLOW, O_NONBLOCK } = fs.constants;
  if (!allowed.exists && (!writable || allowed.kind !== 'file')) throw new TypeError('only a writable file is created');
  const access = writable ? O_RDWR : O_RDONLY;
  const flags = allowed.kind === 'device' ? access | O_EXCL | O_NOFOLLOW : (allowed.exists ? access : O_RDWR | O_CREAT | O_EXCL) | O_NOFOLLOW | O_NONBLOCK;
  let handle: fs.promises.FileHandle;
  try {
    handle = await fs.promises.open(allowed.resolvedPath, flags, newFileMode);
  } catch (error) {
    throw openRefusal(allowed, errnoOf(error));
  }
  try {
    await checkOpened(handle, allowed);
  } catch (error) {
    await handle.close();
    throw error;
  }
  return handle;
}

function openRefusal(allowed: AllowedPath, code: string): EndpointError {
  const name = allowed.resolvedPath;
  if (code === 'ELOOP') return new EndpointError(`${name} is not allowed: it became a symbolic link after it was checked`, 'not-allowed');
  if (code === 'EBUSY' && allowed.kind === 'device') {
    return new EndpointError(`${name} is in use: mounted, a member of an md array or LVM volume group, or opened exclusively by another program (unmount or stop it first)`, 'in-use');
  }
  if (code === 'EEXIST') return new EndpointError(`${name} appeared while it was being created; ask again to use it`);
  return new EndpointError(`cannot open ${name}: ${code}`);
}

async function checkOpened(handle: fs.promises.FileHandle, allowed: AllowedPath): Promise<void> {
  const opened = await fs.promises.readlink(`/proc/self/fd/${handle.fd}`);
  if (opened !== allowed.resolvedPath) {
    throw new EndpointError(`${allowed.resolvedPath} is not allowed: the file opened is ${opened} (a folder on its path changed after it was checked)`, 'not-allowed');
  }
  const stats = await handle.stat();
  if (allowed.kind === 'device' ? !stats.isBlockDevice() : !stats.isFile()) throw new EndpointError(`${allowed.resolvedPath} changed type after it was checked`, 'not-allowed');
  if (allowed.kind === 'file' && stats.nlink > 1) throw new EndpointError(`${allowed.resolvedPath} is not allowed: it has ${stats.nlink} hard links`, 'not-allowed');
}

/** child is parent or lies below it (both resolved). */
function isSameOrInside(child: string, parent: string): boolean {
  return child === parent || isInside(child, parent);
}

/** child lies strictly below parent (both resolved). */
function isInside(child: string, parent: string): boolean {
  return child.startsWith(parent === '/' ? '/' : `${parent}/`) && child !== parent;
}

function statOrNull(file: string): fs.Stats | null {
  try {
    return fs.statSync(file);
  } catch {
    return null;
  }
}

function errnoOf(error: unknown): string {
  return (error as NodeJS.ErrnoException).code ?? String(error);
}
