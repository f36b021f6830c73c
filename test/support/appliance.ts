// Start the real appliance (`node dist/tools/cli.js serve`) as a child process on loopback and a
// unix socket in a temporary data folder; stop it with a signal, or kill -9 it.

import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
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
  extraArguments?: string[];
}

export interface Appliance {
  readonly dataDirectory: string;
  readonly nbdPort: number;
  readonly nbdSocket: string;
  readonly httpBase: string;
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
    httpBase: `http://${ready.http}`,
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
