// The disks a transfer reads or writes besides the volume: an NBD export (nbd://HOST[:PORT]/NAME,
// nbds://HOST[:PORT]/NAME over TLS, or nbd+unix:///NAME?socket=PATH), a block device, or a file.
// Devices and files are only those the operator allowed (local-paths.ts). A storage BlockDevice
// (the live volume, a view) is wrapped the same way, so restore, verify and seed see one interface.

import fs from 'node:fs';
import { zeroRange } from 'cdp-native';
import { TransmissionFlag } from 'nbd-protocol-ts';
import type { BlockDevice } from '../storage/index.js';
import { EndpointError } from './endpoint-error.js';
import { openAllowedPath, type AllowedPath, type LocalPathPolicy } from './local-paths.js';
import type { NbdClientTls } from './client-tls.js';
import { defaultNbdTimeouts, type NbdTimeouts } from './limits.js';
import { NbdClient, type NbdAddress } from './nbd-client.js';

export { EndpointError } from './endpoint-error.js';

export interface Endpoint {
  readonly sizeBytes: number;
  /** For people and reports: the URI or path. */
  readonly description: string;
  read(offsetBytes: number, lengthBytes: number): Promise<Buffer>;
  write(offsetBytes: number, data: Buffer): Promise<void>;
  /** Make the range read as zeroes (cheaply where the endpoint can). */
  writeZeroes(offsetBytes: number, lengthBytes: number): Promise<void>;
  /** Resolve once every completed write is durable. */
  flush(): Promise<void>;
  /** A hint that the range will be read soon (a view resolves its extents in one go). */
  prefetch?(offsetBytes: number, lengthBytes: number): Promise<void>;
  close(): Promise<void>;
}

/** The largest request a transfer sends to an endpoint (NBD servers accept 32 MiB at least). */
export const requestBytesMax = 4 * 1024 * 1024;
/**
 * NBD reads and writes go out in requests of this size, spread over the connections. Measured
 * against qemu-nbd over a unix socket, 512 MiB from the page cache, repeated in one qemu-nbd
 * process: 64 KiB reads took 0.26-0.34 s and 300 ms of qemu-nbd's CPU every time, where 128 KiB
 * reads took 0.5-1.8 s, getting slower with each pass (qemu-nbd maps a fresh buffer for every
 * request of 128 KiB or more: strace shows an mmap and munmap per request); 64 KiB writes took
 * 0.35-0.38 s against 0.48-0.58 s for 256 KiB.
 */
const nbdRequestBytes = 64 * 1024;
const nbdConnectionCount = 4;

/** tls: nbds://, TLS through STARTTLS before anything else, the server checked against the appliance's CA. */
export type EndpointAddress = { kind: 'nbd'; address: NbdAddress; exportName: string; tls: boolean } | { kind: 'path'; path: string };

/** Parse what people give as a target or source; null with a reason when it is not one. */
export function parseEndpoint(text: string): EndpointAddress | { problem: string } {
  if (text.startsWith('nbd://') || text.startsWith('nbds://')) {
    const tls = text.startsWith('nbds://');
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      return { problem: `${text} is not a valid ${tls ? 'nbds' : 'nbd'}:// URI` };
    }
    // libnbd's ?tls-certificates=DIR would let a caller choose the files the appliance reads.
    if (tls && url.search !== '') return { problem: `${text}: nbds:// takes no query; the appliance checks the server with its own CA (serve --remote-tls-ca)` };
    const port = url.port === '' ? 10809 : Number(url.port);
    const host = url.hostname.replace(/^\[|\]$/g, '');
    if (host === '') return { problem: `${text} names no host` };
    return { kind: 'nbd', address: { kind: 'tcp', host, port }, exportName: decodeURIComponent(url.pathname.slice(1)), tls };
  }
  if (text.startsWith('nbd+unix://')) {
    // nbd+unix:///EXPORT?socket=PATH: no authority, so parse the path and query by hand.
    const rest = text.slice('nbd+unix://'.length);
    const queryAt = rest.indexOf('?');
    const pathPart = queryAt < 0 ? rest : rest.slice(0, queryAt);
    const socket = new URLSearchParams(queryAt < 0 ? '' : rest.slice(queryAt + 1)).get('socket');
    if (socket === null || socket === '') return { problem: `${text} needs ?socket=PATH` };
    if (pathPart !== '' && !pathPart.startsWith('/')) return { problem: `${text}: the export name goes after nbd+unix:///` };
    return { kind: 'nbd', address: { kind: 'unix', path: socket }, exportName: decodeURIComponent(pathPart.slice(1)), tls: false };
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) return { problem: `${text}: only nbd://, nbds://, nbd+unix:// URIs, block devices and files are supported` };
  if (text === '') return { problem: 'an empty path' };
  return { kind: 'path', path: text };
}

export interface OpenEndpointOptions {
  writable: boolean;
  /** For a file target that does not exist: create it with this size. */
  createSizeBytes?: number;
  /** The devices and files the operator allows; every other path is refused. */
  localPaths: LocalPathPolicy;
  /** The CA (and client certificate) for nbds://; null: nbds:// is refused. */
  remoteTls: NbdClientTls | null;
  /** For NBD: how long connecting and each request may take (transfer/limits.ts when absent). */
  nbdTimeouts?: NbdTimeouts;
}

/** Open a target or source; EndpointError says why not (refusal: invalid, not-allowed, in-use). */
export async function openEndpoint(text: string, options: OpenEndpointOptions): Promise<Endpoint> {
  const parsed = parseEndpoint(text);
  if ('problem' in parsed) throw new EndpointError(parsed.problem);
  if (parsed.kind === 'nbd') {
    const tls = parsed.tls && parsed.address.kind === 'tcp' ? { ...remoteTlsOf(text, options.remoteTls), serverName: parsed.address.host } : null;
    return NbdEndpoint.open(text, parsed.address, parsed.exportName, options.writable, tls, options.nbdTimeouts ?? defaultNbdTimeouts);
  }
  const allowed = await options.localPaths.authorize(parsed.path, options.writable ? 'write' : 'read');
  return FileEndpoint.open(parsed.path, allowed, options);
}

/** Check a target or source without opening it: its syntax, nbds:// credentials, a path against the rules. */
export async function checkEndpoint(text: string, options: Omit<OpenEndpointOptions, 'createSizeBytes'>): Promise<void> {
  const parsed = parseEndpoint(text);
  if ('problem' in parsed) throw new EndpointError(parsed.problem);
  if (parsed.kind === 'nbd') {
    if (parsed.tls) remoteTlsOf(text, options.remoteTls);
    return;
  }
  await options.localPaths.authorize(parsed.path, options.writable ? 'write' : 'read');
}

function remoteTlsOf(text: string, remoteTls: NbdClientTls | null): NbdClientTls {
  if (remoteTls === null) throw new EndpointError(`${text}: nbds:// needs the appliance started with --remote-tls-ca FILE (the CA that signed the server's certificate)`);
  return remoteTls;
}

/**
 * An NBD export, over several connections when the server says a FLUSH on one covers the others
 * (CAN_MULTI_CONN): measured against qemu-nbd, 4 connections read 1.4x faster than one.
 */
class NbdEndpoint implements Endpoint {
  private nextClient = 0;

  private constructor(
    private readonly clients: readonly NbdClient[],
    readonly description: string,
  ) {}

  static async open(description: string, address: NbdAddress, exportName: string, writable: boolean, tls: (NbdClientTls & { serverName: string }) | null, timeouts: NbdTimeouts): Promise<NbdEndpoint> {
    const connect = async (): Promise<NbdClient> => {
      try {
        return await NbdClient.connect(address, { exportName, structuredReplies: false, ...timeouts, ...(tls === null ? {} : { tls }) });
      } catch (error) {
        throw new EndpointError(`cannot attach ${description}: ${(error as Error).message}`);
      }
    };
    const first = await connect();
    if (writable && (first.transmissionFlags & TransmissionFlag.READ_ONLY) !== 0) {
      first.destroy();
      throw new EndpointError(`${description} is read-only`);
    }
    const clients = [first];
    if ((first.transmissionFlags & TransmissionFlag.CAN_MULTI_CONN) !== 0) {
      for (let index = 1; index < nbdConnectionCount; index++) clients.push(await connect().catch(() => first));
    }
    return new NbdEndpoint([...new Set(clients)], description);
  }

  get sizeBytes(): number {
    return this.clients[0]!.sizeBytes;
  }

  private get flags(): number {
    return this.clients[0]!.transmissionFlags;
  }

  /** The connections in turn, one request each. */
  private client(): NbdClient {
    this.nextClient = (this.nextClient + 1) % this.clients.length;
    return this.clients[this.nextClient]!;
  }

  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    if (lengthBytes <= nbdRequestBytes) return this.client().read(offsetBytes, lengthBytes);
    const parts: Array<Promise<Buffer>> = [];
    for (let at = 0; at < lengthBytes; at += nbdRequestBytes) parts.push(this.client().read(offsetBytes + at, Math.min(nbdRequestBytes, lengthBytes - at)));
    return Buffer.concat(await Promise.all(parts), lengthBytes);
  }

  async write(offsetBytes: number, data: Buffer): Promise<void> {
    if (data.length <= nbdRequestBytes) return this.client().write(offsetBytes, data);
    const parts: Array<Promise<void>> = [];
    for (let at = 0; at < data.length; at += nbdRequestBytes) parts.push(this.client().write(offsetBytes + at, data.subarray(at, at + nbdRequestBytes)));
    await Promise.all(parts);
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number): Promise<void> {
    if ((this.flags & TransmissionFlag.SEND_WRITE_ZEROES) !== 0) return this.client().writeZeroes(offsetBytes, lengthBytes);
    await writeZeroBuffers(this, offsetBytes, lengthBytes);
  }

  /** Every connection flushes: correct even where CAN_MULTI_CONN is not advertised (one connection). */
  async flush(): Promise<void> {
    if ((this.flags & TransmissionFlag.SEND_FLUSH) === 0) return;
    await Promise.all(this.clients.map((client) => client.flush()));
  }

  async close(): Promise<void> {
    await Promise.all(this.clients.map((client) => client.disconnect().catch(() => client.destroy())));
  }
}

/** A regular file or a block device, by path. */
class FileEndpoint implements Endpoint {
  private zeroRangeWorks = true;

  private constructor(
    private readonly handle: fs.promises.FileHandle,
    readonly sizeBytes: number,
    readonly description: string,
  ) {}

  /** What authorize() allowed, opened (a new file is made with the size asked for). */
  static async open(description: string, allowed: AllowedPath, options: OpenEndpointOptions): Promise<FileEndpoint> {
    if (!allowed.exists && options.createSizeBytes === undefined) throw new EndpointError(`cannot open ${description}: ENOENT`);
    const handle = await openAllowedPath(allowed, options.writable);
    try {
      if (!allowed.exists) await handle.truncate(options.createSizeBytes);
      const stat = await handle.stat();
      const sizeBytes = allowed.kind === 'device' ? blockDeviceSizeBytes(stat.rdev) : stat.size;
      return new FileEndpoint(handle, sizeBytes, description);
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    const target = Buffer.allocUnsafe(lengthBytes);
    let doneBytes = 0;
    while (doneBytes < lengthBytes) {
      const { bytesRead } = await this.handle.read(target, doneBytes, lengthBytes - doneBytes, offsetBytes + doneBytes);
      if (bytesRead === 0) break;
      doneBytes += bytesRead;
    }
    target.fill(0, doneBytes); // past the end of a file reads as zeroes
    return target;
  }

  async write(offsetBytes: number, data: Buffer): Promise<void> {
    let doneBytes = 0;
    while (doneBytes < data.length) {
      const { bytesWritten } = await this.handle.write(data, doneBytes, data.length - doneBytes, offsetBytes + doneBytes);
      doneBytes += bytesWritten;
    }
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number): Promise<void> {
    if (this.zeroRangeWorks) {
      try {
        zeroRange(this.handle.fd, offsetBytes, lengthBytes);
        return;
      } catch {
        this.zeroRangeWorks = false; // not on this file system or device: write zeroes instead
      }
    }
    await writeZeroBuffers(this, offsetBytes, lengthBytes);
  }

  async flush(): Promise<void> {
    await this.handle.datasync();
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}

/** A block device's size from sysfs (stat reports 0 for devices). */
function blockDeviceSizeBytes(rdev: number): number {
  const major = Math.floor(rdev / 256) & 0xfff;
  const minor = (rdev & 0xff) | ((Math.floor(rdev / 2 ** 20) & 0xfff) << 8);
  const sectors = Number(fs.readFileSync(`/sys/dev/block/${major}:${minor}/size`, 'utf8').trim());
  return sectors * 512;
}

/** Zeroes written as data, for endpoints that cannot zero a range themselves. */
async function writeZeroBuffers(endpoint: Pick<Endpoint, 'write'>, offsetBytes: number, lengthBytes: number): Promise<void> {
  const zeroes = Buffer.alloc(Math.min(requestBytesMax, lengthBytes));
  for (let at = offsetBytes; at < offsetBytes + lengthBytes; at += zeroes.length) {
    await endpoint.write(at, zeroes.subarray(0, Math.min(zeroes.length, offsetBytes + lengthBytes - at)));
  }
}

/** A storage device (the live volume as a target, a view as a source) as an endpoint. */
export function blockDeviceEndpoint(device: BlockDevice, description: string): Endpoint {
  return {
    sizeBytes: device.sizeBytes,
    description,
    read: (offsetBytes, lengthBytes) => device.read(offsetBytes, lengthBytes),
    write: (offsetBytes, data) => device.write(offsetBytes, data, { fua: false }),
    writeZeroes: (offsetBytes, lengthBytes) => device.writeZeroes(offsetBytes, lengthBytes, { fua: false, noHole: false, fastZero: false }),
    flush: () => device.flush(),
    prefetch: (offsetBytes, lengthBytes) => device.cache(offsetBytes, lengthBytes),
    close: async () => undefined,
  };
}
