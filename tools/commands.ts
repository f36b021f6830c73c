// The commands of the cdp-nbd command line: `cdp-nbd COMMAND [options]`. Every command prints --help.

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { VolumeStore, validateSegmentSize, validateVolumeName } from '../storage/index.js';
import { inspectLog } from './log-inspect.js';
import { serve, serveDefaults } from './serve.js';
import { runTlsCommand } from './tls-certificates.js';
import { apiClientOf, apiOptions } from './api-client.js';
import { formatBytes, parseSize } from './sizes.js';
import { jobUsage, runJob, runRestore, runSeed, runVerify } from './job-commands.js';
import { retentionChangesOf, retentionOptions, retentionOptionsUsage, runRetention } from './retention-commands.js';
import { runSnapshot, snapshotUsage } from './snapshot-commands.js';

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
                     [--allow RULE]... [--tls-only]
  cdp-nbd export list
  cdp-nbd export delete NAME [--force]
  cdp-nbd tls generate --out DIR [--host NAME]... [--client NAME]...   (a lab CA and certificates)
${jobUsage}
  cdp-nbd help | --help | COMMAND --help

Commands that talk to the appliance take --api URL (default http://127.0.0.1:8080) and the API
token from --token TOKEN or from DIR/api-token (--data DIR, default ./data). INSTANT is RFC 3339
with microseconds (2026-11-25T14:03:07.123456Z) or Unix microseconds.

Run \`cdp-nbd serve --help\` for the appliance's options.`;

const serveUsage = `cdp-nbd serve: run the appliance

Options:
  --data DIR              data folder (default ${serveDefaults.dataDirectory})
  --nbd-listen HOST:PORT  NBD over TCP (default ${serveDefaults.nbdListen}; "none" to disable)
  --nbd-socket PATH       also serve NBD on this unix socket
  --http-listen HOST:PORT REST API and console (default ${serveDefaults.httpListen}; "none" to disable)
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

The default volume's retention policy: these options set it when the volume is made, and change
it at every start they are given (what is not given stays as stored; "cdp-nbd retention set" changes
it while the appliance runs):
${retentionOptionsUsage}

Each volume is exported over NBD under its own name; the empty export name selects the
default volume. SIGTERM or SIGINT finish in-flight requests, make everything durable, and exit.`;

type Handler = (argv: string[]) => Promise<number>;

const commands: Record<string, Handler> = {
  serve: runServe,
  volume: runVolume,
  log: runLog,
  snapshot: runSnapshot,
  retention: runRetention,
  export: runExport,
  tls: runTlsCommand,
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
      name: { type: 'string' },
      force: { type: 'boolean', default: false },
    },
  });
  const usage =
    'Usage:\n  cdp-nbd export create VOLUME (--at INSTANT | --snapshot NAME | --sequence N) [--writable] [--name NAME] [--allow RULE]... [--tls-only]\n  cdp-nbd export list\n  cdp-nbd export delete NAME [--force]\n';
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
  await serve({
    dataDirectory: values.data,
    nbdListen: values['nbd-listen'],
    nbdSocket: values['nbd-socket'] ?? null,
    httpListen: values['http-listen'],
    defaultVolumeName: values['default-volume'],
    defaultVolumeSizeBytes: parseSize(values['volume-size']),
    defaultVolumeSegmentSizeBytes: segmentSizeBytes,
    logLevel: values['log-level'],
    logCompression,
    version,
    defaultVolumeRetention: retention,
    access: {
      tlsMode: values.tls,
      certificateFile: values['tls-cert'],
      keyFile: values['tls-key'],
      caFile: values['tls-ca'],
      verifyClients: values['tls-verify-clients'],
      tlsOnlyVolumes: values['tls-only'],
      allow: values.allow,
    },
  });
  return -1; // keeps running until a signal
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
