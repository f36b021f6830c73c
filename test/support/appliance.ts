// Start the real appliance (`node dist/tools/cli.js serve`) as a child process on loopback and a
// unix socket in a temporary data folder, with an admin token made for it (over HTTPS when given a
// certificate); stop it with a signal, or kill -9 it.

import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createToken } from '../../appliance/api-tokens.js';
import { waitUntilServing } from '../../tools/serving-announcement.js';

const repositoryRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const cliPath = path.join(repositoryRoot, 'dist/tools/cli.js');

interface Teardown {
  teardown(callback: () => void | Promise<void>): void;
}

export interface ApplianceOptions {
  dataDirectory: string;
  volumeSize?: string;
  /** Listen on this NBD port (to restart on the port clients reconnect to); default: any free one. */
  nbdPort?: number;
  /** serve --file-root: folders whose files restores, verifications and seeds may use. */
  fileRoots?: string[];
  /** serve --device-allow: block devices they may use. */
  deviceAllow?: string[];
  /** The appliance's working folder (default: the test's). */
  cwd?: string;
  /** Serve the API over HTTPS with these PEM files (cdp-nbd tls generate's server-cert.pem, ...). */
  https?: { certificateFile: string; keyFile: string; caFile: string };
  /** Make no token before it starts (a first start as a user sees it); token is then ''. */
  withoutToken?: boolean;
  extraArguments?: string[];
}

export interface Appliance {
  readonly dataDirectory: string;
  readonly nbdPort: number;
  readonly nbdSocket: string;
  /** http://127.0.0.1:PORT, or https:// with options.https. */
  readonly httpBase: string;
  /** The CA of the API's certificate (with options.https). */
  readonly httpCa: Buffer | undefined;
  /** An admin token made for this run (test support api.ts and event-stream.ts use it). */
  readonly token: string;
  readonly child: ChildProcess;
  /** Everything the server printed to stderr so far. */
  readonly output: string[];
  /** The JSON log entries among it. */
  logEntries(): Array<Record<string, unknown>>;
  /** nbd://127.0.0.1:PORT/EXPORT */
  uri(exportName?: string): string;
  /** nbd+unix:///EXPORT?socket=PATH */
  unixUri(exportName?: string): string;
  /** SIGTERM (orderly) and wait for exit; resolves with the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL and wait for exit. */
  kill(): Promise<void>;
}

export async function startAppliance(t: Teardown, options: ApplianceOptions): Promise<Appliance> {
  const nbdSocket = path.join(options.dataDirectory, 'nbd.sock');
  fs.mkdirSync(options.dataDirectory, { recursive: true });
  const token = options.withoutToken === true ? '' : createToken(options.dataDirectory, { name: `test-admin-${randomBytes(4).toString('hex')}`, role: 'admin' }).secret;
  const https = options.https === undefined ? [] : ['--http-tls-cert', options.https.certificateFile, '--http-tls-key', options.https.keyFile];
  const child = spawn(
    process.execPath,
    [
      cliPath,
      'serve',
      '--data',
      options.dataDirectory,
      '--nbd-listen',
      `127.0.0.1:${options.nbdPort ?? 0}`,
      '--nbd-socket',
      nbdSocket,
      '--http-listen',
      '127.0.0.1:0',
      '--volume-size',
      options.volumeSize ?? '64M',
      ...(options.fileRoots ?? []).flatMap((root) => ['--file-root', root]),
      ...(options.deviceAllow ?? []).flatMap((device) => ['--device-allow', device]),
      ...https,
      ...(options.extraArguments ?? []),
    ],
    { stdio: ['ignore', 'ignore', 'pipe'], ...(options.cwd === undefined ? {} : { cwd: options.cwd }) },
  );
  const output: string[] = [];
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let alive = true;
  void exited.then(() => (alive = false));
  t.teardown(async () => {
    if (alive) {
      child.kill('SIGKILL');
      await exited;
    }
  });

  const ready = await waitUntilServing(child, (line) => output.push(line));
  const tcp = ready.nbd.find((address) => !address.startsWith('unix:'))!;
  const nbdPort = Number(tcp.slice(tcp.lastIndexOf(':') + 1));

  return {
    dataDirectory: options.dataDirectory,
    nbdPort,
    nbdSocket,
    httpBase: `${options.https === undefined ? 'http' : 'https'}://${ready.http}`,
    httpCa: options.https === undefined ? undefined : fs.readFileSync(options.https.caFile),
    token,
    child,
    output,
    logEntries: () =>
      output.flatMap((line) => {
        try {
          return [JSON.parse(line) as Record<string, unknown>];
        } catch {
          return [];
        }
      }),
    uri: (exportName = 'vol0') => `nbd://127.0.0.1:${nbdPort}/${exportName}`,
    unixUri: (exportName = 'vol0') => `nbd+unix:///${exportName}?socket=${nbdSocket}`,
    async stop() {
      if (!alive) return exited;
      child.kill('SIGTERM');
      return exited;
    },
    async kill() {
      if (!alive) return;
      child.kill('SIGKILL');
      await exited;
    },
  };
}

/** The environment for `cdp-nbd` commands that talk to this appliance: its admin token (and CA). */
export function cliEnvironment(appliance: Appliance, token = appliance.token): NodeJS.ProcessEnv {
  return { ...process.env, CDP_NBD_TOKEN: token, CDP_NBD_API: appliance.httpBase };
}
