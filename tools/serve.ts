// `cdp-nbd serve`: the appliance. Opens the data folder (making the default volume on first
// start), recovers every volume, exports each over NBD under its own name (and the view and clone
// exports of the previous run), serves the HTTP API, and shuts down in order on SIGTERM/SIGINT:
// stop accepting, finish in-flight requests, make everything durable, close. NBD TLS and the
// volumes' access policies (--tls, --allow, --tls-only) are checked here, before anything opens.

import { limitAllocatorRetention } from 'cdp-native';
import { pino } from 'pino';
import { buildApp } from '../api/app.js';
import { Appliance } from '../appliance/appliance.js';
import { loadOrCreateApiToken } from '../appliance/api-token.js';
import {
  loadServerTls,
  parseAccessPolicy,
  parseListenAddress,
  serverLimits,
  tlsModes,
  type AccessPolicy,
  type ListenAddress,
  type ServerTls,
  type TlsMode,
} from '../server/index.js';
import { GiB, validateVolumeName, type LogCompression, type RetentionPolicyChanges } from '../storage/index.js';
import { servingMessage } from './serving-announcement.js';

export interface ServeOptions {
  dataDirectory: string;
  nbdListen: string;
  nbdSocket: string | null;
  httpListen: string;
  defaultVolumeName: string;
  defaultVolumeSizeBytes: number;
  /** Write-log segment size of the default volume when it is made (--segment-size). */
  defaultVolumeSegmentSizeBytes?: number;
  logLevel: string;
  /** How volumes store data records in their logs (storage OpenVolumeOptions.logCompression). */
  logCompression?: LogCompression;
  version: string;
  access?: ServeAccessOptions;
  /** Changes to the default volume's retention policy (--keep-all, --hourly, ...). */
  defaultVolumeRetention?: RetentionPolicyChanges;
}

/** NBD TLS and access options as given on the command line; checked by accessSettingsOf. */
export interface ServeAccessOptions {
  tlsMode: string;
  certificateFile?: string | undefined;
  keyFile?: string | undefined;
  caFile?: string | undefined;
  verifyClients?: boolean | undefined;
  /** Volumes whose live export refuses clients without TLS. */
  tlsOnlyVolumes?: string[] | undefined;
  /** "VOLUME=RULE[,RULE...]" allowlists of volumes' live exports. */
  allow?: string[] | undefined;
}

export interface AccessSettings {
  tls: ServerTls;
  volumePolicies: Map<string, AccessPolicy>;
}

/** Check the TLS and access options and load the credentials; throws Error naming the bad option. */
export function accessSettingsOf(options: ServeAccessOptions): AccessSettings {
  if (!(tlsModes as readonly string[]).includes(options.tlsMode)) throw new Error(`--tls is one of ${tlsModes.join(', ')}, not "${options.tlsMode}"`);
  const mode = options.tlsMode as TlsMode;
  const anyFile = options.certificateFile !== undefined || options.keyFile !== undefined || options.caFile !== undefined || options.verifyClients === true;
  if (anyFile && (options.certificateFile === undefined || options.keyFile === undefined)) throw new Error('--tls-cert FILE and --tls-key FILE go together');
  const files = anyFile
    ? { certificateFile: options.certificateFile!, keyFile: options.keyFile!, caFile: options.caFile ?? null, verifyClients: options.verifyClients ?? false }
    : null;
  const tls = loadServerTls(mode, files, serverLimits.negotiationTimeoutMs);

  const rulesByVolume = new Map<string, string[]>();
  const tlsOnlyVolumes = new Set<string>();
  for (const volume of options.tlsOnlyVolumes ?? []) {
    const problem = validateVolumeName(volume);
    if (problem !== null) throw new Error(`--tls-only ${volume}: ${problem}`);
    if (mode === 'off') throw new Error(`--tls-only ${volume} needs --tls selective or required`);
    tlsOnlyVolumes.add(volume);
  }
  for (const text of options.allow ?? []) {
    const equals = text.indexOf('=');
    const volume = equals < 0 ? '' : text.slice(0, equals);
    const problem = equals < 0 ? 'it is VOLUME=RULE[,RULE...]' : validateVolumeName(volume);
    if (problem !== null) throw new Error(`--allow ${text}: ${problem}`);
    const rules = text.slice(equals + 1).split(',').filter((rule) => rule.trim() !== '');
    if (rules.length === 0) throw new Error(`--allow ${text}: no rules after "="`);
    rulesByVolume.set(volume, [...(rulesByVolume.get(volume) ?? []), ...rules]);
  }
  const volumePolicies = new Map<string, AccessPolicy>();
  for (const volume of new Set([...rulesByVolume.keys(), ...tlsOnlyVolumes])) {
    try {
      volumePolicies.set(volume, parseAccessPolicy(rulesByVolume.get(volume) ?? [], { tlsOnly: tlsOnlyVolumes.has(volume) }));
    } catch (error) {
      throw new Error(`--allow ${volume}=...: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  return { tls, volumePolicies };
}

export const serveDefaults = {
  dataDirectory: './data',
  nbdListen: '127.0.0.1:10809',
  httpListen: '127.0.0.1:8080',
  defaultVolumeName: 'vol0',
  defaultVolumeSizeBytes: 1 * GiB,
  logLevel: 'info',
  logCompression: 'snappy',
} as const;

export async function serve(options: ServeOptions): Promise<void> {
  limitAllocatorRetention(); // large payload buffers go back to the system when freed
  const log = pino({ level: options.logLevel, base: undefined }, pino.destination(2));
  const tcp = parseListenAddress(options.nbdListen);
  const access = accessSettingsOf(options.access ?? { tlsMode: 'off' });
  const appliance = await Appliance.start({
    dataDirectory: options.dataDirectory,
    defaultVolumeName: options.defaultVolumeName,
    defaultVolumeSizeBytes: options.defaultVolumeSizeBytes,
    logCompression: options.logCompression ?? serveDefaults.logCompression,
    defaultVolumeSegmentSizeBytes: options.defaultVolumeSegmentSizeBytes,
    log,
    nbdUriBase: 'nbd://127.0.0.1:10809', // replaced below once the listener is bound
    tls: access.tls,
    volumePolicies: access.volumePolicies,
    defaultVolumeRetention: options.defaultVolumeRetention,
  });
  for (const volume of access.volumePolicies.keys()) {
    if (appliance.table.lookup(volume) === undefined) log.warn({ volume }, 'an access policy names a volume that does not exist (yet)');
  }

  const addresses: ListenAddress[] = [];
  if (tcp !== null) addresses.push(await appliance.listen(tcp));
  if (options.nbdSocket !== null) addresses.push(await appliance.listen({ kind: 'unix', path: options.nbdSocket }));
  appliance.exports.setUriBase(uriBaseOf(addresses[0], access.tls.mode));

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

  log.info({ nbd: addresses.map(describeAddress), tls: access.tls.mode, tlsCertificateValidTo: access.tls.certificateValidTo?.toISOString(), http: httpAddress, exports: appliance.exports.list().filter((entry) => entry.state === 'serving').map((entry) => entry.name), failedVolumes: appliance.store.failedVolumes().map((failure) => failure.name), failedExports: appliance.exports.failures().map((failure) => failure.name) }, servingMessage);

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

/** The nbd:// (or nbd+unix://) base of export URIs; nbds:// when every client must use TLS. */
function uriBaseOf(address: ListenAddress | undefined, tlsMode: TlsMode): string {
  const scheme = tlsMode === 'required' ? 'nbds' : 'nbd';
  if (address === undefined) return `${scheme}://127.0.0.1:10809`;
  if (address.kind === 'unix') return `${scheme}+unix://?socket=${address.path}#`;
  const host = address.host === '0.0.0.0' || address.host === '::' ? '127.0.0.1' : address.host.includes(':') ? `[${address.host}]` : address.host;
  return `${scheme}://${host}:${address.port}`;
}
