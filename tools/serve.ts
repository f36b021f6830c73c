// `cdp-nbd serve`: the appliance. Opens the data folder (making the default volume on first
// start), recovers every volume, exports each over NBD under its own name (and the view and clone
// exports of the previous run), serves the HTTP API, and shuts down in order on SIGTERM/SIGINT:
// stop accepting, finish in-flight requests, make everything durable, close. NBD TLS and the
// volumes' access policies (--tls, --allow, --tls-only), what jobs may reach (--device-allow,
// --file-root, --remote-tls-*), and the API's HTTPS (--http-tls-cert, --http-tls-key; refused
// beyond loopback without it unless --http-insecure) are checked here, before anything opens.

import fs from 'node:fs';
import net from 'node:net';
import { limitAllocatorRetention } from 'cdp-native';
import { pino } from 'pino';
import { buildApp } from '../api/app.js';
import { Appliance } from '../appliance/appliance.js';
import { migrateLegacyToken, TokenStore } from '../appliance/api-tokens.js';
import {
  connectionLimitsOf,
  connectionMemoryBoundBytes,
  defaultConnectionLimits,
  loadServerTls,
  parseAccessPolicy,
  parseListenAddress,
  tlsModes,
  type AccessPolicy,
  type ConnectionLimits,
  type ListenAddress,
  type Logger,
  type ServerTls,
  type TlsMode,
} from '../server/index.js';
import { GiB, validateVolumeName, type LogCompression, type RetentionPolicyChanges } from '../storage/index.js';
import type { LocalPathRules } from '../transfer/local-paths.js';
import { loadNbdClientTls, type NbdClientTls } from '../transfer/client-tls.js';
import type { NbdTimeouts } from '../transfer/limits.js';
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
  transfers?: ServeTransferOptions;
  http?: ServeHttpOptions;
  /** Time limits of jobs' NBD targets and sources (--nbd-connect-timeout, --nbd-request-timeout). */
  nbdTimeouts?: NbdTimeouts;
  /** Changes to the NBD connection limits (--memory-budget, --max-connections-per-address, ...). */
  connectionLimits?: Partial<ConnectionLimits>;
}

/** What restores, verifications and seeds may reach, as given on the command line; checked by transferSettingsOf. */
export interface ServeTransferOptions {
  /** Block devices jobs may use (--device-allow, repeatable). */
  deviceAllow?: string[] | undefined;
  /** Folders whose regular files jobs may use (--file-root, repeatable). */
  fileRoots?: string[] | undefined;
  /** The CA nbds:// servers' certificates must chain to (--remote-tls-ca). */
  remoteTlsCaFile?: string | undefined;
  /** The appliance's client certificate and key for nbds:// servers that verify clients. */
  remoteTlsCertificateFile?: string | undefined;
  remoteTlsKeyFile?: string | undefined;
}

export interface TransferSettings {
  localPaths: LocalPathRules;
  remoteTls: NbdClientTls | null;
}

/**
 * Check the transfer options and load the client TLS files; throws Error naming the bad option.
 * The file roots are checked against the data folder when the appliance opens it.
 */
export function transferSettingsOf(options: ServeTransferOptions): TransferSettings {
  const certificateFile = options.remoteTlsCertificateFile ?? null;
  const keyFile = options.remoteTlsKeyFile ?? null;
  if ((certificateFile === null) !== (keyFile === null)) throw new Error('--remote-tls-cert FILE and --remote-tls-key FILE go together');
  if (certificateFile !== null && options.remoteTlsCaFile === undefined) throw new Error('--remote-tls-cert needs --remote-tls-ca FILE, the CA that signed the servers\' certificates');
  let remoteTls: NbdClientTls | null = null;
  if (options.remoteTlsCaFile !== undefined) {
    try {
      remoteTls = loadNbdClientTls({ caFile: options.remoteTlsCaFile, certificateFile, keyFile });
    } catch (error) {
      throw new Error(`--remote-tls-*: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  return { localPaths: { deviceAllow: options.deviceAllow ?? [], fileRoots: options.fileRoots ?? [] }, remoteTls };
}

/** The API's transport as given on the command line; checked by httpSettingsOf. */
export interface ServeHttpOptions {
  certificateFile?: string | undefined;
  keyFile?: string | undefined;
  /** Serve plain HTTP beyond loopback anyway (--http-insecure). */
  insecure?: boolean | undefined;
}

export interface HttpSettings {
  address: ListenAddress | null;
  https: { certificate: Buffer; key: Buffer; validTo: Date } | null;
  /** Plain HTTP that other machines can reach: tokens cross the network readable. */
  plaintextBeyondLoopback: boolean;
}

/**
 * Check the API's listen address and TLS files. Bearer tokens must not cross a network in
 * plaintext: a listener beyond loopback needs a certificate, or --http-insecure to say it is meant.
 */
export function httpSettingsOf(listen: string, options: ServeHttpOptions): HttpSettings {
  const address = parseListenAddress(listen);
  if ((options.certificateFile === undefined) !== (options.keyFile === undefined)) throw new Error('--http-tls-cert FILE and --http-tls-key FILE go together');
  let https: HttpSettings['https'] = null;
  if (options.certificateFile !== undefined) {
    try {
      const loaded = loadServerTls('required', { certificateFile: options.certificateFile, keyFile: options.keyFile!, caFile: null, verifyClients: false }, defaultConnectionLimits.negotiationTimeoutMs);
      https = { certificate: loaded.engineOptions!.cert as Buffer, key: loaded.engineOptions!.key as Buffer, validTo: loaded.certificateValidTo! };
    } catch (error) {
      throw new Error(`--http-tls-cert/--http-tls-key: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  const beyondLoopback = address !== null && address.kind === 'tcp' && !isLoopbackHost(address.host);
  if (beyondLoopback && https === null && options.insecure !== true) {
    throw new Error(
      `--http-listen ${listen} is reachable from other machines, and API tokens would cross the network in plaintext: ` +
        'give --http-tls-cert FILE --http-tls-key FILE (cdp-nbd tls generate makes them), listen on loopback, or add --http-insecure if you mean it',
    );
  }
  if (options.insecure === true && https !== null) throw new Error('--http-insecure and --http-tls-cert contradict each other');
  return { address, https, plaintextBeyondLoopback: beyondLoopback && https === null };
}

/** 127.0.0.0/8, ::1 (also IPv4-mapped) and localhost: only this machine can connect. */
export function isLoopbackHost(host: string): boolean {
  if (host === 'localhost') return true;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(host);
  const address = mapped === null ? host : mapped[1]!;
  if (net.isIPv4(address)) return loopbackAddresses.check(address, 'ipv4');
  return net.isIPv6(address) && loopbackAddresses.check(address, 'ipv6');
}

const loopbackAddresses = new net.BlockList();
loopbackAddresses.addSubnet('127.0.0.0', 8, 'ipv4');
loopbackAddresses.addAddress('::1', 'ipv6');

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
/** `handshakeTimeoutMs` bounds the TLS handshake (the negotiation timeout). */
export function accessSettingsOf(options: ServeAccessOptions, handshakeTimeoutMs: number): AccessSettings {
  if (!(tlsModes as readonly string[]).includes(options.tlsMode)) throw new Error(`--tls is one of ${tlsModes.join(', ')}, not "${options.tlsMode}"`);
  const mode = options.tlsMode as TlsMode;
  const anyFile = options.certificateFile !== undefined || options.keyFile !== undefined || options.caFile !== undefined || options.verifyClients === true;
  if (anyFile && (options.certificateFile === undefined || options.keyFile === undefined)) throw new Error('--tls-cert FILE and --tls-key FILE go together');
  const files = anyFile
    ? { certificateFile: options.certificateFile!, keyFile: options.keyFile!, caFile: options.caFile ?? null, verifyClients: options.verifyClients ?? false }
    : null;
  const tls = loadServerTls(mode, files, handshakeTimeoutMs);

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
  const connectionLimits = connectionLimitsOf(options.connectionLimits);
  const access = accessSettingsOf(options.access ?? { tlsMode: 'off' }, connectionLimits.negotiationTimeoutMs);
  const transfers = transferSettingsOf(options.transfers ?? {});
  const http = httpSettingsOf(options.httpListen, options.http ?? {});
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
    localPaths: transfers.localPaths,
    remoteTls: transfers.remoteTls,
    nbdTimeouts: options.nbdTimeouts,
    connectionLimits,
  });
  const tokens = openTokens(options.dataDirectory, log); // once the data folder is ours (the appliance's lock)
  for (const volume of access.volumePolicies.keys()) {
    if (appliance.table.lookup(volume) === undefined) log.warn({ volume }, 'an access policy names a volume that does not exist (yet)');
  }

  const addresses: ListenAddress[] = [];
  if (tcp !== null) addresses.push(await appliance.listen(tcp));
  if (options.nbdSocket !== null) addresses.push(await appliance.listen({ kind: 'unix', path: options.nbdSocket }));
  appliance.exports.setUriBase(uriBaseOf(addresses[0], access.tls.mode));

  warnOfOpenExports(appliance, addresses, access.tls.mode, log);

  const app = await buildApp({
    context: { appliance, startedAtMs: Date.now(), version: options.version, tokens },
    logger: log,
    ...(http.https === null ? {} : { https: { certificate: http.https.certificate, key: http.https.key } }),
  });
  let httpAddress: string | null = null;
  if (http.address !== null) {
    await app.listen(http.address.kind === 'tcp' ? { host: http.address.host, port: http.address.port } : { path: http.address.path });
    const bound = app.server.address();
    httpAddress = bound === null || typeof bound === 'string' ? bound : `${bound.address}:${bound.port}`;
  }
  if (http.plaintextBeyondLoopback) {
    log.warn(
      { http: httpAddress },
      'INSECURE: the HTTP API is served in plaintext beyond loopback (--http-insecure): anyone on the network path can read API tokens and replay them; use --http-tls-cert and --http-tls-key',
    );
  }

  log.info({ ...connectionLimits, memoryBoundBytes: connectionMemoryBoundBytes(connectionLimits) }, 'NBD connection limits');
  log.info(
    {
      nbd: addresses.map(describeAddress),
      tls: access.tls.mode,
      tlsCertificateValidTo: access.tls.certificateValidTo?.toISOString(),
      http: httpAddress,
      httpScheme: http.https === null ? 'http' : 'https',
      httpCertificateValidTo: http.https?.validTo.toISOString(),
      tokenFile: tokens.path,
      exports: appliance.exports.list().filter((entry) => entry.state === 'serving').map((entry) => entry.name),
      failedVolumes: appliance.store.failedVolumes().map((failure) => failure.name),
      failedExports: appliance.exports.failures().map((failure) => failure.name),
      fileRoots: transfers.localPaths.fileRoots,
      deviceAllow: transfers.localPaths.deviceAllow,
    },
    servingMessage,
  );

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

/**
 * The API's tokens: a plaintext token file of an earlier version becomes an admin token; with no
 * token yet, say how to make one (the secret is only ever shown by `cdp-nbd token create`).
 */
function openTokens(dataDirectory: string, log: Logger): TokenStore {
  const migrated = migrateLegacyToken(dataDirectory);
  const tokens = new TokenStore(dataDirectory, (problem) => log.error({ file: `${dataDirectory}/api-tokens.json` }, problem));
  if (migrated !== null) {
    log.warn({ tokenFile: tokens.path, tokenName: migrated, role: 'admin' }, 'the API token of data/api-token is now the admin token named in tokenName, kept hashed in the token file; the plaintext file is removed (the token still works)');
  }
  const count = tokens.count();
  if (count === 0) {
    log.warn({ tokenFile: tokens.path }, `no API token yet: make one with "cdp-nbd token create NAME --role admin --data ${dataDirectory}" (it prints the token once; the appliance sees it at once)`);
  } else {
    log.info({ tokenFile: tokens.path, tokenCount: count }, 'API tokens (cdp-nbd token list shows them)');
  }
  const mode = fs.statSync(tokens.path, { throwIfNoEntry: false })?.mode;
  if (mode !== undefined && (mode & 0o077) !== 0) log.warn({ tokenFile: tokens.path, mode: (mode & 0o777).toString(8) }, 'the token file is readable by others than its owner: chmod 600 it');
  return tokens;
}

/** A warning per export anyone who reaches the NBD port may use: no allowlist, TLS not demanded. */
function warnOfOpenExports(appliance: Appliance, addresses: readonly ListenAddress[], tlsMode: TlsMode, log: Logger): void {
  const reachable = addresses.filter((address) => address.kind === 'tcp' && !isLoopbackHost(address.host)).map(describeAddress);
  if (reachable.length === 0 || tlsMode === 'required') return;
  for (const entry of appliance.exports.list()) {
    if (entry.allow.length > 0 || entry.tlsOnly) continue;
    log.warn({ export: entry.name, nbd: reachable }, 'export open to anyone who reaches the NBD port: no allowlist and no TLS (serve --allow, --tls-only, --tls required; docs/tls.md)');
  }
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
