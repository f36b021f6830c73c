// The three NBD servers under test: how each is started (the exact command lines the report
// quotes), where each keeps its image, and how we wait for it, watch it and stop it.

import { closeSync, existsSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ChildProcess } from 'node:child_process';
import type { QemuAioMode, ServerName } from './options.js';
import { forgetRemoveOnExit, removeOnExit, runCommand, spawnTracked } from './processes.js';

export const exportName = 'vol0';

const readyTimeoutMs = 120_000;
const stopTimeoutMs = 60_000;
const socketPathBytesMax = 107; // sockaddr_un.sun_path holds 108 bytes with the terminating NUL

export interface ServerContext {
  repositoryRoot: string;
  workDirectory: string;
  sizeBytes: number;
  qemuAioMode: QemuAioMode;
}

export interface ServerSpec {
  name: ServerName;
  command: string;
  args: string[];
  socketPath: string;
  uri: string;
  /** Everything the server stores lives below this folder; recreated for every prefill mode. */
  storageDirectory: string;
  /** The live image the server reads and writes. */
  imagePath: string;
}

export function cdpNbdCliPath(repositoryRoot: string): string {
  return path.join(repositoryRoot, 'dist/tools/cli.js');
}

/** cdp-nbd's --data folder; it makes volumes/vol0/{primary.img,log/} inside on first start. */
function cdpNbdDataDirectory(storageDirectory: string): string {
  return path.join(storageDirectory, 'data');
}

export function describeServer(name: ServerName, context: ServerContext): ServerSpec {
  const socketPath = path.join(context.workDirectory, `${name}.sock`);
  if (Buffer.byteLength(socketPath) > socketPathBytesMax) {
    throw new Error(`socket path too long for a unix socket (${socketPath}); use a shorter --work-dir`);
  }
  const storageDirectory = path.join(context.workDirectory, name);
  const uri = `nbd+unix:///${exportName}?socket=${socketPath}`;
  const common = { name, socketPath, uri, storageDirectory };
  switch (name) {
    case 'qemu-nbd': {
      const imagePath = path.join(storageDirectory, `${exportName}.img`);
      const args = ['-f', 'raw', '--cache=writeback', `--aio=${context.qemuAioMode}`, '--shared=8', '-t'];
      return { ...common, imagePath, command: 'qemu-nbd', args: [...args, '-x', exportName, '-k', socketPath, imagePath] };
    }
    case 'nbdkit': {
      const imagePath = path.join(storageDirectory, `${exportName}.img`);
      return { ...common, imagePath, command: 'nbdkit', args: ['-f', '--exit-with-parent', '-U', socketPath, 'file', imagePath] };
    }
    case 'cdp-nbd': {
      const dataDirectory = cdpNbdDataDirectory(storageDirectory);
      const imagePath = path.join(dataDirectory, 'volumes', exportName, 'primary.img');
      const args = [cdpNbdCliPath(context.repositoryRoot), 'serve', '--data', dataDirectory, '--nbd-socket', socketPath];
      const rest = ['--nbd-listen', 'none', '--http-listen', 'none', '--volume-size', String(context.sizeBytes)];
      return { ...common, imagePath, command: process.execPath, args: [...args, ...rest] };
    }
  }
}

/** A fresh, empty (sparse) image for the file-backed peers; an empty data folder for cdp-nbd. */
export function prepareFreshStorage(spec: ServerSpec, sizeBytes: number): void {
  rmSync(spec.storageDirectory, { recursive: true, force: true });
  mkdirSync(spec.storageDirectory, { recursive: true });
  if (spec.name === 'cdp-nbd') {
    mkdirSync(cdpNbdDataDirectory(spec.storageDirectory));
    return;
  }
  writeFileSync(spec.imagePath, '');
  truncateSync(spec.imagePath, sizeBytes);
}

/** Disk space the server's storage folder takes (allocated blocks, so sparse files count as used). */
export function storageBytes(spec: ServerSpec): number {
  return allocatedBytesBelow(spec.storageDirectory);
}

function allocatedBytesBelow(entryPath: string): number {
  if (!existsSync(entryPath)) return 0;
  const stats = lstatSync(entryPath);
  if (!stats.isDirectory()) return stats.blocks * 512;
  return readdirSync(entryPath).reduce((sum, name) => sum + allocatedBytesBelow(path.join(entryPath, name)), 0);
}

export function removeStorage(spec: ServerSpec): void {
  rmSync(spec.storageDirectory, { recursive: true, force: true });
}

export interface ExitStatus {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
}

export interface StopReport extends ExitStatus {
  /** Exited by itself within the grace period after SIGTERM, with status 0. */
  cleanExit: boolean;
  /** It had already exited before we asked it to. */
  exitedEarly: boolean;
  stopSeconds: number;
}

export interface MemoryUse {
  peakRssBytes: number;
  rssBytes: number;
}

export class RunningServer {
  private exitStatus: ExitStatus | undefined;
  readonly exited: Promise<ExitStatus>;

  constructor(
    readonly spec: ServerSpec,
    readonly logPath: string,
    private readonly child: ChildProcess,
  ) {
    this.exited = new Promise((resolve) => {
      child.once('exit', (exitCode, signal) => {
        this.exitStatus = { exitCode, signal };
        resolve(this.exitStatus);
      });
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  isAlive(): boolean {
    return this.exitStatus === undefined;
  }

  /** User plus system CPU time of the whole process (all threads), in clock ticks. */
  cpuTicks(): number | undefined {
    const stat = readProcFile(this.pid, 'stat');
    if (stat === undefined) return undefined;
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[11]) + Number(fields[12]); // utime, stime: fields 14 and 15 of proc(5)
  }

  /** VmHWM (peak resident set) and VmRSS from /proc/PID/status. */
  memoryUse(): MemoryUse | undefined {
    const status = readProcFile(this.pid, 'status');
    if (status === undefined) return undefined;
    const kibibytes = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
    return { peakRssBytes: kibibytes('VmHWM') * 1024, rssBytes: kibibytes('VmRSS') * 1024 };
  }

  logTail(characterCount = 3000): string {
    if (!existsSync(this.logPath)) return '';
    const text = readFileSync(this.logPath, 'utf8');
    return text.slice(-characterCount).trim();
  }

  /** SIGTERM, wait for an orderly exit, SIGKILL after the grace period; removes the socket. */
  async stop(): Promise<StopReport> {
    const startedMs = Date.now();
    const exitedEarly = !this.isAlive();
    let killed = false;
    if (!exitedEarly) {
      this.child.kill('SIGTERM');
      const giveUp = new AbortController();
      const timedOut = await Promise.race([
        this.exited.then(() => false),
        sleep(stopTimeoutMs, true, { signal: giveUp.signal }).catch(() => false),
      ]);
      giveUp.abort();
      if (timedOut) {
        killed = true;
        this.child.kill('SIGKILL');
      }
    }
    const status = await this.exited;
    rmSync(this.spec.socketPath, { force: true });
    forgetRemoveOnExit(this.spec.socketPath);
    const cleanExit = !exitedEarly && !killed && status.exitCode === 0;
    return { ...status, cleanExit, exitedEarly, stopSeconds: (Date.now() - startedMs) / 1000 };
  }
}

function readProcFile(pid: number, name: string): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/${name}`, 'utf8');
  } catch {
    return undefined;
  }
}

/** Starts the server with its output going to `logPath`, and waits until it serves the export. */
export async function startServer(spec: ServerSpec, sizeBytes: number, logPath: string): Promise<RunningServer> {
  rmSync(spec.socketPath, { force: true });
  mkdirSync(path.dirname(logPath), { recursive: true });
  const logFd = openSync(logPath, 'a');
  writeFileSync(logFd, `# ${new Date().toISOString()} ${spec.command} ${spec.args.join(' ')}\n`);
  const child = spawnTracked(spec.command, spec.args, { stdio: ['ignore', logFd, logFd] });
  closeSync(logFd);
  removeOnExit(spec.socketPath);
  const server = new RunningServer(spec, logPath, child);
  recordServerPid(spec, child.pid);
  await waitUntilServing(server, sizeBytes);
  return server;
}

async function waitUntilServing(server: RunningServer, sizeBytes: number): Promise<void> {
  const deadlineMs = Date.now() + readyTimeoutMs;
  while (Date.now() < deadlineMs) {
    if (!server.isAlive()) {
      const status = await server.exited;
      throw new Error(`${server.spec.name} exited (${describeExit(status)}) before serving; log ${server.logPath}:\n${server.logTail()}`);
    }
    if (existsSync(server.spec.socketPath)) {
      const probe = await runCommand('nbdinfo', ['--size', server.spec.uri], 10_000);
      if (probe.exitCode === 0) {
        const servedBytes = Number(probe.stdout.trim());
        if (servedBytes !== sizeBytes) {
          throw new Error(`${server.spec.name} serves ${servedBytes} bytes, expected ${sizeBytes}`);
        }
        return;
      }
    }
    await sleep(100);
  }
  throw new Error(`${server.spec.name} did not serve ${server.spec.uri} within ${readyTimeoutMs / 1000} s; log:\n${server.logTail()}`);
}

export function describeExit(status: ExitStatus): string {
  return status.signal !== null ? `signal ${status.signal}` : `status ${status.exitCode}`;
}

// A harness killed with SIGKILL cannot clean up; the next run kills what it left behind.
// Each server's pid is written next to its socket, and a pid is only killed if its command line
// still names our work folder.

function pidFilePath(spec: ServerSpec): string {
  return `${spec.socketPath}.pid`;
}

function recordServerPid(spec: ServerSpec, pid: number | undefined): void {
  if (pid === undefined) return;
  writeFileSync(pidFilePath(spec), `${pid}\n`);
  removeOnExit(pidFilePath(spec));
}

export function killLeftoverServer(spec: ServerSpec, workDirectory: string): boolean {
  const pidPath = pidFilePath(spec);
  if (!existsSync(pidPath)) return false;
  const pid = Number(readFileSync(pidPath, 'utf8').trim());
  rmSync(pidPath, { force: true });
  const commandLine = readProcFile(pid, 'cmdline')?.replaceAll('\0', ' ');
  if (commandLine === undefined || !commandLine.includes(workDirectory)) return false;
  process.kill(pid, 'SIGKILL');
  return true;
}
