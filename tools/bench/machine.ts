// What the figures were measured on: CPU, memory, kernel, the work folder's file system, tool
// versions and the machine's load, for the report's header.

import { readFileSync } from 'node:fs';
import os from 'node:os';
import { firstOutputLine } from './processes.js';

export interface MachineDescription {
  cpuModel: string;
  coreCount: number;
  memoryBytes: number;
  kernel: string;
  /** e.g. "ext4 (/dev/vda)" */
  workFileSystem: string;
}

export interface ToolVersions {
  fio: string;
  qemuNbd: string;
  nbdkit: string;
  nbdcopy: string;
  node: string;
  cdpNbd: string;
}

export function describeMachine(workDirectory: string): MachineDescription {
  const cpuModel = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? os.cpus()[0]?.model ?? 'unknown';
  const fileSystem = firstOutputLine('findmnt', ['-n', '-o', 'FSTYPE,SOURCE', '--target', workDirectory]);
  const [type, source] = (fileSystem ?? 'unknown').split(/\s+/);
  return {
    cpuModel: cpuModel.trim(),
    coreCount: os.availableParallelism(),
    memoryBytes: os.totalmem(),
    kernel: `${os.type()} ${os.release()}`,
    workFileSystem: source === undefined ? type! : `${type} (${source})`,
  };
}

export function describeToolVersions(repositoryRoot: string): ToolVersions {
  const unknown = 'unknown';
  return {
    fio: firstOutputLine('fio', ['--version']) ?? unknown,
    qemuNbd: firstOutputLine('qemu-nbd', ['--version']) ?? unknown,
    nbdkit: firstOutputLine('nbdkit', ['--version']) ?? unknown,
    nbdcopy: firstOutputLine('nbdcopy', ['--version']) ?? unknown,
    node: process.version,
    cdpNbd: describeOurVersion(repositoryRoot),
  };
}

/** package.json version and the git commit, marked when the working tree has changes. */
function describeOurVersion(repositoryRoot: string): string {
  const packageJson = JSON.parse(readFileSync(`${repositoryRoot}/package.json`, 'utf8')) as { version?: string };
  const commit = firstOutputLine('git', ['-C', repositoryRoot, 'rev-parse', '--short', 'HEAD']);
  const changes = firstOutputLine('git', ['-C', repositoryRoot, 'status', '--porcelain']);
  const tree = commit === undefined ? '' : ` (git ${commit}${changes !== undefined && changes !== '' ? ' + uncommitted changes' : ''})`;
  return `${packageJson.version ?? '?'}${tree}`;
}

/** 1, 5 and 15 minute load averages. */
export function loadAverages(): [number, number, number] {
  const [one, five, fifteen] = os.loadavg();
  return [one!, five!, fifteen!];
}

export interface CpuTimes {
  busyTicks: number;
  totalTicks: number;
}

/** The machine's CPU time so far, all cores, from the first line of /proc/stat. */
export function readCpuTimes(): CpuTimes {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const totalTicks = fields.reduce((sum, value) => sum + value, 0);
  const idleTicks = (fields[3] ?? 0) + (fields[4] ?? 0); // idle, iowait
  return { busyTicks: totalTicks - idleTicks, totalTicks };
}

/** Share of all cores busy between two readings, 0..1. */
export function busyFraction(before: CpuTimes, after: CpuTimes): number {
  const totalTicks = after.totalTicks - before.totalTicks;
  return totalTicks <= 0 ? 0 : (after.busyTicks - before.busyTicks) / totalTicks;
}

/** CPU seconds (user + system) a process has used, from /proc/PID/stat. */
export function processCpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

/** Dirty plus under-writeback page cache of the whole machine (/proc/meminfo), in bytes. */
export function readDirtyBytes(): number {
  const meminfo = readFileSync('/proc/meminfo', 'utf8');
  const kibibytes = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(meminfo)?.[1] ?? 0);
  return (kibibytes('Dirty') + kibibytes('Writeback')) * 1024;
}
