// The commands of the cdp-nbd command line: `cdp-nbd COMMAND [options]`. Every command prints --help.

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { connectionLimitsOf, defaultConnectionLimits, type ConnectionLimits } from '../server/index.js';
import { VolumeStore, validateSegmentSize, validateVolumeName } from '../storage/index.js';
import { formatDuration, parseDuration } from './durations.js';
import { inspectLog } from './log-inspect.js';
import { serve, serveDefaults } from './serve.js';
import { runTlsCommand } from './tls-certificates.js';
import { apiClientOf, apiOptions, apiOptionsUsage } from './api-client.js';
import { formatBytes, parseSize } from './sizes.js';
import { jobUsage, runJob, runRestore, runSeed, runVerify } from './job-commands.js';
import { retentionChangesOf, retentionOptions, retentionOptionsUsage, runRetention } from './retention-commands.js';
import { runSnapshot, snapshotUsage } from './snapshot-commands.js';
import { runToken, tokenUsage } from './token-commands.js';
import { defaultNbdTimeouts, nbdClientLimits, nbdTimeoutProblem } from '../transfer/limits.js';

const version = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

const usage = `cdp-nbd ${version}: continuous data protection served over NBD

Usage:
  cdp-nbd serve [options]            run the appliance
  cdp-nbd volume create NAME --size SIZE [--data DIR]
  cdp-nbd volume list [--data DIR]
  cdp-nbd log inspect --volume NAME [--data DIR] [--from SEQUENCE] [--limit N] [--json]
${snapshotUsage}
  cdp-nbd retention show VOLUME
  cdp-nbd retention set VOLUME [--keep-all 24h] [--hourly 7d] [--daily 30d] [--weekly 8w] [--monthly 6M]
                    [--yearly 2y] [--no-tiers] [--max-history 100G] [--reserve 5% | 10G] [--required-window 24h]
  cdp-nbd export create VOLUME (--at INSTANT | --snapshot NAME | --sequence N) [--writable] [--name NAME]
                     [--allow RULE]... [--tls-only] [--no-inherit-access]
  cdp-nbd export list
  cdp-nbd export delete NAME [--force]
  cdp-nbd tls generate --out DIR [--host NAME]... [--client NAME]...   (a lab CA and certificates)
${jobUsage}
${tokenUsage}
  cdp-nbd help | --help | COMMAND --help

Commands that talk to the appliance take ${apiOptionsUsage}.
INSTANT is RFC 3339 with microseconds (2026-11-25T14:03:07.123456Z) or Unix microseconds.

Run \`cdp-nbd serve --help\` for the appliance's options.`;

const serveUsage = `cdp-nbd serve: run the appliance

Options:
  --data DIR              data folder (default ${serveDefaults.dataDirectory})
  --nbd-listen HOST:PORT  NBD over TCP (default ${serveDefaults.nbdListen}; "none" to disable)
  --nbd-socket PATH       also serve NBD on this unix socket
  --http-listen HOST:PORT REST API and console (default ${serveDefaults.httpListen}; "none" to disable);
                          beyond loopback it needs --http-tls-cert and --http-tls-key, or --http-insecure
  --http-tls-cert FILE    serve the API over HTTPS with this certificate (PEM; cdp-nbd tls generate's
                          server-cert.pem does); with --http-tls-key FILE, its private key
  --http-insecure         serve plain HTTP beyond loopback anyway (tokens cross the network readable)
  --volume-size SIZE      size of the default volume made on first start (default 1G)
  --segment-size SIZE     its write-log segment size, 64M to 4G (default 256M); a small data disk
                          wants small segments: space is taken and given back a segment at a time
  --default-volume NAME   name of that volume and of the default export (default ${serveDefaults.defaultVolumeName})
  --log-level LEVEL       trace, debug, info, warn, error (default ${serveDefaults.logLevel})
  --log-compression MODE  snappy (compress logged data where it saves 1/8 or more) or off
                          (default ${serveDefaults.logCompression})
  --tls MODE              NBD TLS: off, required (STARTTLS before anything), selective (default off)
  --tls-cert FILE         server certificate (PEM); with --tls-key FILE, its private key
  --tls-ca FILE           request client certificates and verify them against this CA
  --tls-verify-clients    refuse clients without a certificate the CA signed
  --tls-only VOLUME       (repeatable) the volume's export refuses clients that did not start TLS
  --allow VOLUME=RULES    (repeatable) only these clients may use the volume's export; RULES are
                          comma-separated IP, CIDR (10.0.0.0/8), cn:CERTIFICATE-NAME or unix
  --nbd-connect-timeout DURATION
                          a restore, verify or seed fails when its NBD target or source has not
                          connected and negotiated within this (default ${nbdClientLimits.connectTimeoutMsDefault / 1000}s)
  --nbd-request-timeout DURATION
                          ... or has not answered a request within this (default ${nbdClientLimits.requestTimeoutMsDefault / 1000}s)

What restores, verifications and seeds may reach besides NBD URIs (default: nothing local):
  --file-root DIR         (repeatable) regular files under DIR may be restored onto (a missing one
                          is created, mode 0600), verified against and seeded from; DIR must not
                          contain or lie in the data folder
  --device-allow DEVICE   (repeatable) this block device may be used (e.g. /dev/disk/by-id/...);
                          it is opened exclusively, so a mounted or md-held device is refused
  --remote-tls-ca FILE    nbds:// targets and sources: the CA their certificates must chain to
  --remote-tls-cert FILE  with --remote-tls-key FILE: the appliance's client certificate, for
                          servers that verify clients

NBD connection limits (docs/limits.md):
  --memory-budget SIZE    memory all NBD connections share beyond 2 MiB each: requests being
                          received, in flight and replies queued (default ${formatBytes(defaultConnectionLimits.memoryBudgetBytes)}); when it is used up,
                          the connections that need more stop being read until memory frees
  --max-connections-per-address N   TCP connections from one address (default ${defaultConnectionLimits.connectionsPerAddressMax})
  --max-negotiating N     connections still negotiating, from all addresses (default ${defaultConnectionLimits.negotiatingConnectionCountMax})
  --negotiation-timeout DURATION    time to finish the handshake, TLS included (default ${formatDuration(defaultConnectionLimits.negotiationTimeoutMs / 1000)})
  --stall-timeout DURATION          drop a client whose replies wait unread, or whose request stays
                                    half sent, this long (default ${formatDuration(defaultConnectionLimits.stallTimeoutMs / 1000)}); idle clients stay
  --dead-peer-timeout DURATION      drop a TCP client that answers nothing, keepalive probes
                                    included, this long (default ${formatDuration(defaultConnectionLimits.deadPeerTimeoutMs / 1000)})

The default volume's retention policy: these options set it when the volume is made, and change
it at every start they are given (what is not given stays as stored; "cdp-nbd retention set" changes
it while the appliance runs):
${retentionOptionsUsage}

Each volume is exported over NBD under its own name; the empty export name selects the
default volume. The API takes tokens made with "cdp-nbd token create NAME --role ROLE" (the
data folder keeps only their hashes, in api-tokens.json). SIGTERM or SIGINT finish in-flight requests, make everything durable, and exit.`;

type Handler = (argv: string[]) => Promise<number>;

const commands: Record<string, Handler> = {
  serve: runServe,
  volume: runVolume,
  log: runLog,
  snapshot: runSnapshot,
  retention: runRetention,
  export: runExport,
  tls: runTlsCommand,
  token: runToken,
  restore: runRestore,
  verify: runVerify,
  seed: runSeed,
  job: runJob,
};

function print(value: unknown, asJson: boolean, asText: () => string): void {
  process.stdout.write(asJson ? `${JSON.stringify(value, null, 2)}\n` : `${asText()}\n`);
}

interface ExportJson {
  name: string;
  volume: string;
  kind: string;
  time: string | null;
  sequence: number | null;
  uri: string;
  clients: unknown[];
}

async function runExport(argv: string[]): Promise<number> {
  const [action, ...rest] = argv;
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: {
      ...apiOptions,
      at: { type: 'string' },
      snapshot: { type: 'string' },
      sequence: { type: 'string' },
      writable: { type: 'boolean', default: false },
      allow: { type: 'string', multiple: true },
      'tls-only': { type: 'boolean', default: false },
      'no-inherit-access': { type: 'boolean', default: false },
      name: { type: 'string' },
      force: { type: 'boolean', default: false },
    },
  });
  const usage =
    'Usage:\n  cdp-nbd export create VOLUME (--at INSTANT | --snapshot NAME | --sequence N) [--writable] [--name NAME] [--allow RULE]... [--tls-only] [--no-inherit-access]\n  cdp-nbd export list\n  cdp-nbd export delete NAME [--force]\n\n' +
    "An export of a volume's past keeps the volume's own access rules (serve --allow, --tls-only); --allow and\n" +
    "--tls-only narrow them. --no-inherit-access (admin token) gives the export only the rules given here, which may be wider.\n" +
    `Each takes ${apiOptionsUsage}.\n`;
  const [target] = positionals;
  if (values.help || !['create', 'list', 'delete'].includes(action ?? '') || (action !== 'list' && target === undefined)) {
    process.stdout.write(usage);
    return values.help ? 0 : 2;
  }
  const client = apiClientOf(values);
  if (action === 'create') {
    const body = {
      volume: target,
      ...(values.at === undefined ? {} : { at: values.at }),
      ...(values.snapshot === undefined ? {} : { snapshot: values.snapshot }),
      ...(values.sequence === undefined ? {} : { sequence: Number(values.sequence) }),
      writable: values.writable,
      ...(values.name === undefined ? {} : { name: values.name }),
      ...(values.allow === undefined ? {} : { allow: values.allow }),
      ...(values['tls-only'] ? { tlsOnly: true } : {}),
      ...(values['no-inherit-access'] ? { inheritAccess: false } : {}),
    };
    const created = await client.request<ExportJson>('POST', '/api/v1/exports', body);
    print(created, values.json, () => `exported ${created.volume} at ${created.time} (sequence ${created.sequence}) as ${created.name}, ${created.kind}: ${created.uri}`);
  } else if (action === 'list') {
    const { exports } = await client.request<{ exports: ExportJson[] }>('GET', '/api/v1/exports');
    print(exports, values.json, () =>
      ['name\tkind\tvolume\ttime\tclients\turi', ...exports.map((entry) => `${entry.name}\t${entry.kind}\t${entry.volume}\t${entry.time ?? 'now'}\t${entry.clients.length}\t${entry.uri}`)].join('\n'),
    );
  } else {
    await client.request('DELETE', `/api/v1/exports/${encodeURIComponent(target!)}${values.force ? '?force=true' : ''}`);
    print({ deleted: target }, values.json, () => `deleted export ${target}`);
  }
  return 0;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === 'help' || command === '--help' || command === '-h') {
    process.stdout.write(`${usage}\n`);
    return command === undefined ? 2 : 0;
  }
  if (command === '--version') {
    process.stdout.write(`${version}\n`);
    return 0;
  }
  const handler = commands[command];
  if (handler === undefined) {
    process.stderr.write(`cdp-nbd: unknown command "${command}"\n\n${usage}\n`);
    return 2;
  }
  return handler(rest);
}

async function runServe(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      data: { type: 'string', default: serveDefaults.dataDirectory },
      'nbd-listen': { type: 'string', default: serveDefaults.nbdListen },
      'nbd-socket': { type: 'string' },
      'http-listen': { type: 'string', default: serveDefaults.httpListen },
      'http-tls-cert': { type: 'string' },
      'http-tls-key': { type: 'string' },
      'http-insecure': { type: 'boolean', default: false },
      'volume-size': { type: 'string', default: '1G' },
      'segment-size': { type: 'string' },
      'default-volume': { type: 'string', default: serveDefaults.defaultVolumeName },
      'log-level': { type: 'string', default: serveDefaults.logLevel },
      'log-compression': { type: 'string', default: serveDefaults.logCompression },
      tls: { type: 'string', default: 'off' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'tls-ca': { type: 'string' },
      'tls-verify-clients': { type: 'boolean', default: false },
      'tls-only': { type: 'string', multiple: true, default: [] },
      allow: { type: 'string', multiple: true, default: [] },
      'file-root': { type: 'string', multiple: true, default: [] },
      'device-allow': { type: 'string', multiple: true, default: [] },
      'remote-tls-ca': { type: 'string' },
      'remote-tls-cert': { type: 'string' },
      'remote-tls-key': { type: 'string' },
      'nbd-connect-timeout': { type: 'string' },
      'nbd-request-timeout': { type: 'string' },
      'memory-budget': { type: 'string' },
      'max-connections-per-address': { type: 'string' },
      'max-negotiating': { type: 'string' },
      'negotiation-timeout': { type: 'string' },
      'stall-timeout': { type: 'string' },
      'dead-peer-timeout': { type: 'string' },
      ...retentionOptions,
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(`${serveUsage}\n`);
    return 0;
  }
  const retention = retentionChangesOf(values);
  const nameProblem = validateVolumeName(values['default-volume']);
  if (nameProblem !== null) throw new Error(`--default-volume: ${nameProblem}`);
  const logCompression = values['log-compression'];
  if (logCompression !== 'snappy' && logCompression !== 'off') throw new Error(`--log-compression is snappy or off, not "${logCompression}"`);
  const segmentSizeBytes = values['segment-size'] === undefined ? undefined : parseSize(values['segment-size']);
  const segmentProblem = segmentSizeBytes === undefined ? null : validateSegmentSize(segmentSizeBytes);
  if (segmentProblem !== null) throw new Error(`--segment-size: ${segmentProblem}`);
  const nbdTimeouts = {
    connectTimeoutMs: nbdTimeoutOption('nbd-connect-timeout', values['nbd-connect-timeout']) ?? defaultNbdTimeouts.connectTimeoutMs,
    requestTimeoutMs: nbdTimeoutOption('nbd-request-timeout', values['nbd-request-timeout']) ?? defaultNbdTimeouts.requestTimeoutMs,
  };
  await serve({
    dataDirectory: values.data,
    nbdListen: values['nbd-listen'],
    nbdSocket: values['nbd-socket'] ?? null,
    httpListen: values['http-listen'],
    http: { certificateFile: values['http-tls-cert'], keyFile: values['http-tls-key'], insecure: values['http-insecure'] },
    defaultVolumeName: values['default-volume'],
    defaultVolumeSizeBytes: parseSize(values['volume-size']),
    defaultVolumeSegmentSizeBytes: segmentSizeBytes,
    logLevel: values['log-level'],
    logCompression,
    version,
    defaultVolumeRetention: retention,
    nbdTimeouts,
    connectionLimits: connectionLimitChangesOf(values),
    access: {
      tlsMode: values.tls,
      certificateFile: values['tls-cert'],
      keyFile: values['tls-key'],
      caFile: values['tls-ca'],
      verifyClients: values['tls-verify-clients'],
      tlsOnlyVolumes: values['tls-only'],
      allow: values.allow,
    },
    transfers: {
      fileRoots: values['file-root'],
      deviceAllow: values['device-allow'],
      remoteTlsCaFile: values['remote-tls-ca'],
      remoteTlsCertificateFile: values['remote-tls-cert'],
      remoteTlsKeyFile: values['remote-tls-key'],
    },
  });
  return -1; // keeps running until a signal
}

/** A timeout flag's milliseconds (the flag takes a duration: 30s, 2m), or undefined when not given. */
function nbdTimeoutOption(flag: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const timeoutMs = parseDuration(text) * 1000;
  const problem = nbdTimeoutProblem(timeoutMs);
  if (problem !== null) throw new Error(`--${flag}: ${problem}`);
  return timeoutMs;
}

/** The connection limits the serve options change; checked against each other by connectionLimitsOf. */
function connectionLimitChangesOf(values: Record<string, string | boolean | string[] | undefined>): Partial<ConnectionLimits> {
  const text = (name: string): string | undefined => values[name] as string | undefined;
  const count = (name: string): number | undefined => {
    const given = text(name);
    if (given === undefined) return undefined;
    if (!/^\d+$/.test(given)) throw new Error(`--${name} takes a whole number, not "${given}"`);
    return Number(given);
  };
  const milliseconds = (name: string): number | undefined => {
    const given = text(name);
    return given === undefined ? undefined : parseDuration(given) * 1000;
  };
  const changes: Partial<ConnectionLimits> = {
    memoryBudgetBytes: text('memory-budget') === undefined ? undefined : parseSize(text('memory-budget')!),
    connectionsPerAddressMax: count('max-connections-per-address'),
    negotiatingConnectionCountMax: count('max-negotiating'),
    negotiationTimeoutMs: milliseconds('negotiation-timeout'),
    stallTimeoutMs: milliseconds('stall-timeout'),
    deadPeerTimeoutMs: milliseconds('dead-peer-timeout'),
  };
  connectionLimitsOf(changes); // throws, naming the limit, before anything opens
  return changes;
}

async function runVolume(argv: string[]): Promise<number> {
  const [action, ...rest] = argv;
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: { data: { type: 'string', default: serveDefaults.dataDirectory }, size: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
  });
  if (values.help || (action !== 'create' && action !== 'list')) {
    process.stdout.write('Usage:\n  cdp-nbd volume create NAME --size SIZE [--data DIR]\n  cdp-nbd volume list [--data DIR]\n');
    return values.help ? 0 : 2;
  }
  const store = VolumeStore.openDataDirectory(values.data);
  try {
    if (action === 'list') {
      for (const name of store.list()) process.stdout.write(`${name}\t${describeVolumeSize(store, name)}\n`);
      return 0;
    }
    const name = positionals[0];
    if (name === undefined || values.size === undefined) throw new Error('volume create needs a NAME and --size SIZE');
    const config = await store.create({ name, sizeBytes: parseSize(values.size) });
    process.stdout.write(`created volume ${config.name} (${formatBytes(config.sizeBytes)})\n`);
    return 0;
  } finally {
    await store.close();
  }
}

async function runLog(argv: string[]): Promise<number> {
  const [action, ...rest] = argv;
  const { values } = parseArgs({
    args: rest,
    options: {
      volume: { type: 'string' },
      data: { type: 'string', default: serveDefaults.dataDirectory },
      from: { type: 'string', default: '1' },
      limit: { type: 'string', default: String(Number.MAX_SAFE_INTEGER) },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help || action !== 'inspect' || values.volume === undefined) {
    process.stdout.write('Usage: cdp-nbd log inspect --volume NAME [--data DIR] [--from SEQUENCE] [--limit N] [--json]\n');
    return values.help ? 0 : 2;
  }
  const nameProblem = validateVolumeName(values.volume);
  if (nameProblem !== null) throw new Error(`--volume: ${nameProblem}`);
  inspectLog({
    volumeDirectory: `${values.data}/volumes/${values.volume}`,
    fromSequence: Number(values.from),
    limit: Number(values.limit),
    json: values.json,
    write: (line) => process.stdout.write(`${line}\n`),
  });
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(`cdp-nbd: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exitCode = 1;
  },
);

/** A volume's size for `volume list`, or why its volume.json cannot be read (the others still list). */
function describeVolumeSize(store: VolumeStore, name: string): string {
  try {
    return formatBytes(store.config(name).sizeBytes);
  } catch (error) {
    return `failed: ${error instanceof Error ? error.message : String(error)}`;
  }
}
