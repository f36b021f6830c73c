// `cdp-nbd serve`: the appliance. Opens the data folder (making the default volume on first
// start), recovers every volume, exports each over NBD under its own name (and the view and clone
// exports of the previous run), serves the HTTP API, and shuts down in order on SIGTERM/SIGINT:
// stop accepting, finish in-flight requests, make everything durable, close.

import { limitAllocatorRetention } from 'cdp-native';
import { pino } from 'pino';
import { buildApp } from '../api/app.js';
import { Appliance } from '../appliance/appliance.js';
import { loadOrCreateApiToken } from '../appliance/api-token.js';
import { parseListenAddress, type ListenAddress } from '../server/index.js';
import { GiB } from '../storage/index.js';

export interface ServeOptions {
  dataDirectory: string;
  nbdListen: string;
  nbdSocket: string | null;
  httpListen: string;
  defaultVolumeName: string;
  defaultVolumeSizeBytes: number;
  logLevel: string;
  version: string;
}

export const serveDefaults = {
  dataDirectory: './data',
  nbdListen: '127.0.0.1:10809',
  httpListen: '127.0.0.1:8080',
  defaultVolumeName: 'vol0',
  defaultVolumeSizeBytes: 1 * GiB,
  logLevel: 'info',
} as const;

export async function serve(options: ServeOptions): Promise<void> {
  limitAllocatorRetention(); // large payload buffers go back to the system when freed
  const log = pino({ level: options.logLevel, base: undefined }, pino.destination(2));
  const tcp = parseListenAddress(options.nbdListen);
  const appliance = await Appliance.start({
    dataDirectory: options.dataDirectory,
    defaultVolumeName: options.defaultVolumeName,
    defaultVolumeSizeBytes: options.defaultVolumeSizeBytes,
    log,
    nbdUriBase: 'nbd://127.0.0.1:10809', // replaced below once the listener is bound
  });

  const addresses: ListenAddress[] = [];
  if (tcp !== null) addresses.push(await appliance.listen(tcp));
  if (options.nbdSocket !== null) addresses.push(await appliance.listen({ kind: 'unix', path: options.nbdSocket }));
  appliance.exports.setUriBase(uriBaseOf(addresses[0]));

  const token = loadOrCreateApiToken(options.dataDirectory);
  if (token.created) log.info({ token: token.token, file: token.path }, 'created the API token (shown once; the CLI reads the file)');
  const app = await buildApp({ context: { appliance, startedAtMs: Date.now(), version: options.version, token: token.token }, logger: log });
  const http = parseListenAddress(options.httpListen);
  let httpAddress: string | null = null;
  if (http !== null) {
    await app.listen(http.kind === 'tcp' ? { host: http.host, port: http.port } : { path: http.path });
    const bound = app.server.address();
    httpAddress = bound === null || typeof bound === 'string' ? bound : `${bound.address}:${bound.port}`;
  }

  log.info({ nbd: addresses.map(describeAddress), http: httpAddress, exports: appliance.exports.list().map((entry) => entry.name) }, 'cdp-nbd is serving');

  let stopping = false;
  const stop = async (signal: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down: finishing in-flight requests');
    await app.close();
    await appliance.stop();
    log.info({}, 'stopped; every volume is durable and clean');
    log.flush();
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}

function describeAddress(address: ListenAddress): string {
  return address.kind === 'unix' ? `unix:${address.path}` : `${address.host}:${address.port}`;
}

/** The nbd:// (or nbd+unix://) base of export URIs. */
function uriBaseOf(address: ListenAddress | undefined): string {
  if (address === undefined) return 'nbd://127.0.0.1:10809';
  if (address.kind === 'unix') return `nbd+unix://?socket=${address.path}#`;
  const host = address.host === '0.0.0.0' || address.host === '::' ? '127.0.0.1' : address.host.includes(':') ? `[${address.host}]` : address.host;
  return `nbd://${host}:${address.port}`;
}
