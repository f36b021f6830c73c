// `cdp-nbd serve`: the appliance. Opens the data folder (creating the default volume on first
// start), recovers every volume, exports each over NBD under its own name, serves the HTTP API,
// and shuts down in order on SIGTERM/SIGINT: stop accepting, finish in-flight requests, make
// everything durable, close.

import { limitAllocatorRetention } from 'cdp-native';
import { pino } from 'pino';
import { buildApp } from '../api/app.js';
import { ExportTable, NbdServer, parseListenAddress, type ListenAddress } from '../server/index.js';
import { GiB, VolumeStore, formatMicros } from '../storage/index.js';
import { formatBytes } from './sizes.js';

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
  const store = VolumeStore.openDataDirectory(options.dataDirectory);

  if (store.list().length === 0) {
    await store.create({ name: options.defaultVolumeName, sizeBytes: options.defaultVolumeSizeBytes });
    log.info({ volume: options.defaultVolumeName, size: formatBytes(options.defaultVolumeSizeBytes) }, 'created the default volume');
  }

  const exports = new ExportTable();
  for (const name of store.list()) {
    const volume = await store.openVolume(name);
    const { recovery } = volume;
    log.info(
      {
        volume: name,
        replayedRecords: recovery.replayedRecordCount,
        dirtyRegions: recovery.dirtyRegionCount,
        tear: recovery.tear?.reason ?? null,
        recoveryMs: Math.round(recovery.durationMs),
        nextSequence: recovery.nextSequence,
        lastWrite: recovery.lastTimestampMicros > 0 ? formatMicros(recovery.lastTimestampMicros) : null,
      },
      'volume opened',
    );
    exports.add(name, volume);
  }
  const defaultExport = store.list().includes(options.defaultVolumeName) ? options.defaultVolumeName : (store.list()[0] ?? null);
  exports.setDefault(defaultExport);

  const nbd = new NbdServer({ exports, log });
  const addresses: ListenAddress[] = [];
  const tcp = parseListenAddress(options.nbdListen);
  if (tcp !== null) addresses.push(await nbd.listen(tcp));
  if (options.nbdSocket !== null) addresses.push(await nbd.listen({ kind: 'unix', path: options.nbdSocket }));

  const app = await buildApp({ context: { store, nbd, startedAtMs: Date.now(), version: options.version }, logger: log });
  const http = parseListenAddress(options.httpListen);
  let httpAddress: string | null = null;
  if (http !== null) {
    await app.listen(http.kind === 'tcp' ? { host: http.host, port: http.port } : { path: http.path });
    const bound = app.server.address();
    httpAddress = bound === null || typeof bound === 'string' ? bound : `${bound.address}:${bound.port}`;
  }

  log.info({ nbd: addresses.map(describeAddress), http: httpAddress, exports: exports.list().map((entry) => entry.name) }, 'cdp-nbd is serving');

  let stopping = false;
  const stop = async (signal: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down: finishing in-flight requests');
    await nbd.close();
    await app.close();
    await store.close();
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
