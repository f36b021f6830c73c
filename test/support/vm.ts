// The tiny Linux test VM of test/vm/: builds (or finds in its cache) the Debian 12 cloud kernel
// and initramfs with tools/vm/build-test-vm.sh, and boots it under qemu-system-x86_64 with
// user-mode networking (the guest reaches this machine's 127.0.0.1 as 10.0.2.2, and nothing
// else). Each boot appends a second cpio archive to the initramfs with the test's script
// (/test/run.sh), its data files (/test/...) and the host scripts (/host/*.sh, from tools/host/).
//
// The guest talks to the test through the serial console: lines "@@ KEY VALUE..." are markers
// (the init prints "@@ booted UPTIME" and "@@ exit STATUS"); the test answers with send(), which
// the guest reads from /dev/ttyS0.

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { temporaryDirectory } from './temporary-directory.js';

const repositoryRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const buildScriptPath = path.join(repositoryRoot, 'tools/vm/build-test-vm.sh');
const hostScriptsDirectory = path.join(repositoryRoot, 'tools/host');

interface Teardown {
  teardown(callback: () => void | Promise<void>): void;
}

export interface TestVmImage {
  kernelPath: string;
  initramfsPath: string;
}

/** Build the VM image, or find it in the cache (.cache/vm, or CDP_NBD_VM_CACHE). */
export function buildTestVm(): TestVmImage {
  const result = spawnSync('sh', [buildScriptPath], { encoding: 'utf8', timeout: 600_000, maxBuffer: 16 * 1024 * 1024 });
  if (result.status !== 0) throw new Error(`tools/vm/build-test-vm.sh failed (${result.status}):\n${result.stderr}`);
  const directory = result.stdout.trim().split('\n').pop()!;
  return { kernelPath: path.join(directory, 'vmlinuz'), initramfsPath: path.join(directory, 'initramfs.cpio') };
}

/** KVM when it works here, else TCG (CDP_NBD_VM_ACCEL=kvm|tcg decides). Probed once. */
let acceleratorChoice: string | undefined;
function accelerator(image: TestVmImage): string {
  if (process.env.CDP_NBD_VM_ACCEL !== undefined) return process.env.CDP_NBD_VM_ACCEL;
  if (acceleratorChoice !== undefined) return acceleratorChoice;
  acceleratorChoice = 'tcg';
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
    // A kernel with no initramfs panics at once and, with panic=-1 and -no-reboot, qemu exits 0.
    const probe = spawnSync(
      'qemu-system-x86_64',
      ['-accel', 'kvm', '-cpu', 'host', '-m', '256', '-display', 'none', '-serial', 'none', '-monitor', 'none', '-no-reboot', '-kernel', image.kernelPath, '-append', 'panic=-1 console=ttyS0'],
      { timeout: 20_000, stdio: 'ignore' },
    );
    if (probe.status === 0) acceleratorChoice = 'kvm';
  } catch {
    // no usable /dev/kvm
  }
  return acceleratorChoice;
}

export interface VmDisk {
  /** A raw image file; made (sparse) with sizeBytes when it does not exist. */
  path: string;
  sizeBytes: number;
}

export interface VmOptions {
  /** The guest's test script, run as `sh -eu /test/run.sh`. */
  script: string;
  /** More files for the guest, by path under /test/. */
  files?: Record<string, Buffer | string>;
  /** virtio disks, in order: /dev/vda, /dev/vdb, ... */
  disks?: VmDisk[];
  memoryMiB?: number;
  /** The whole run, boot to power-off. */
  timeoutMs?: number;
}

export interface Marker {
  key: string;
  values: string[];
}

export interface VmRun {
  readonly accelerator: string;
  /** Every console line so far. */
  readonly lines: string[];
  markers(key?: string): Marker[];
  /** The next marker with this key (or one already seen and not yet waited for). */
  waitForMarker(key: string, timeoutMs?: number): Promise<Marker>;
  /** A line for the guest to read from /dev/ttyS0. */
  send(line: string): void;
  /** Resolves when qemu has exited. */
  readonly finished: Promise<VmResult>;
}

export interface VmResult {
  /** The guest script's exit status ("@@ exit N"), or null when it never got there. */
  scriptStatus: number | null;
  qemuExitCode: number | null;
  /** From qemu's start to the "@@ booted" marker (kernel, modules, network). */
  bootMs: number | null;
  durationMs: number;
  timedOut: boolean;
  /** The last console lines, for failure messages. */
  tail: string;
}

export function bootVm(t: Teardown, image: TestVmImage, options: VmOptions): VmRun {
  const directory = temporaryDirectory(t, 'cdp-nbd-vm-');
  const initramfsPath = path.join(directory, 'initramfs.cpio');
  const overlay = newcArchive(overlayEntries(options));
  fs.copyFileSync(image.initramfsPath, initramfsPath);
  fs.appendFileSync(initramfsPath, overlay);

  const qemuArguments = [
    '-accel', accelerator(image),
    '-cpu', 'max',
    '-smp', '1',
    '-m', String(options.memoryMiB ?? 512),
    '-nodefaults',
    '-display', 'none',
    '-monitor', 'none',
    '-serial', 'stdio',
    '-no-reboot',
    '-kernel', image.kernelPath,
    '-initrd', initramfsPath,
    // no_timer_check: on a loaded host the emulated timer can miss the kernel's boot-time IO-APIC
    // timer check, which then panics ("IO-APIC + timer doesn't work"); the check proves nothing here.
    '-append', 'console=ttyS0 panic=-1 loglevel=4 no_timer_check',
    '-netdev', 'user,id=net0',
    '-device', 'virtio-net-pci,netdev=net0',
  ];
  for (const disk of options.disks ?? []) {
    if (!fs.existsSync(disk.path)) fs.writeFileSync(disk.path, '');
    if (fs.statSync(disk.path).size < disk.sizeBytes) fs.truncateSync(disk.path, disk.sizeBytes);
    qemuArguments.push('-drive', `file=${disk.path},format=raw,if=virtio,cache=writeback`);
  }

  const startedMs = Date.now();
  const child = spawn('qemu-system-x86_64', qemuArguments, { stdio: ['pipe', 'pipe', 'pipe'] });
  const lines: string[] = [];
  const markers: Marker[] = [];
  const consumed = new Set<Marker>();
  const waiters: Array<{ key: string; resolve: (marker: Marker) => void }> = [];
  let bootMs: number | null = null;
  let pending = '';
  const onText = (chunk: Buffer): void => {
    pending += chunk.toString('utf8');
    const parts = pending.split('\n');
    pending = parts.pop()!;
    for (const raw of parts) {
      const line = raw.replace(/\r$/, '');
      lines.push(line);
      if (process.env.CDP_NBD_VM_VERBOSE !== undefined) process.stderr.write(`vm| ${line}\n`);
      const match = /@@ (\S+)(.*)$/.exec(line);
      if (match === null) continue;
      const marker = { key: match[1]!, values: match[2]!.trim() === '' ? [] : match[2]!.trim().split(/\s+/) };
      if (marker.key === 'booted' && bootMs === null) bootMs = Date.now() - startedMs;
      markers.push(marker);
      const waiterIndex = waiters.findIndex((waiter) => waiter.key === marker.key);
      if (waiterIndex >= 0) {
        consumed.add(marker);
        waiters.splice(waiterIndex, 1)[0]!.resolve(marker);
      }
    }
  };
  child.stdin.on('error', () => {}); // a line sent after power-off: nobody reads it, no harm
  child.stdout.on('data', onText);
  child.stderr.on('data', (chunk: Buffer) => lines.push(`qemu: ${chunk.toString('utf8').trimEnd()}`));

  const timeoutMs = options.timeoutMs ?? 180_000;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, timeoutMs);
  const finished = new Promise<VmResult>((resolve) => {
    child.once('error', (error) => lines.push(`qemu did not start: ${error.message}`));
    child.once('close', (code) => {
      clearTimeout(timer);
      const exit = markers.find((marker) => marker.key === 'exit');
      resolve({
        scriptStatus: exit === undefined ? null : Number(exit.values[0]),
        qemuExitCode: code,
        bootMs,
        durationMs: Date.now() - startedMs,
        timedOut,
        tail: lines.slice(-60).join('\n'),
      });
    });
  });
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await finished;
    }
  });

  return {
    accelerator: qemuArguments[1]!,
    lines,
    markers: (key) => (key === undefined ? [...markers] : markers.filter((marker) => marker.key === key)),
    waitForMarker(key, waitTimeoutMs = timeoutMs) {
      const seen = markers.find((marker) => marker.key === key && !consumed.has(marker));
      if (seen !== undefined) {
        consumed.add(seen);
        return Promise.resolve(seen);
      }
      return new Promise<Marker>((resolve, reject) => {
        const waiter = { key, resolve };
        waiters.push(waiter);
        const fail = (why: string): void => {
          const index = waiters.indexOf(waiter);
          if (index >= 0) waiters.splice(index, 1);
          reject(new Error(`no "@@ ${key}" from the VM (${why}); last lines:\n${lines.slice(-40).join('\n')}`));
        };
        const waitTimer = setTimeout(() => fail(`waited ${waitTimeoutMs} ms`), waitTimeoutMs);
        void finished.then(() => {
          clearTimeout(waitTimer);
          if (waiters.includes(waiter)) fail('it powered off');
        });
      });
    },
    send(line) {
      child.stdin.write(`${line}\n`);
    },
    finished,
  };
}

/** The guest's files: /test/run.sh, /test/<files>, /host/<tools/host/*.sh>. */
function overlayEntries(options: VmOptions): Array<{ name: string; content: Buffer | null; mode: number }> {
  const entries: Array<{ name: string; content: Buffer | null; mode: number }> = [
    { name: 'test', content: null, mode: 0o40755 },
    { name: 'host', content: null, mode: 0o40755 },
    { name: 'test/run.sh', content: Buffer.from(options.script), mode: 0o100755 },
  ];
  const directories = new Set(['test']);
  for (const [name, content] of Object.entries(options.files ?? {})) {
    const parts = name.split('/');
    for (let index = 1; index < parts.length; index++) {
      const directory = `test/${parts.slice(0, index).join('/')}`;
      if (!directories.has(directory)) {
        directories.add(directory);
        entries.push({ name: directory, content: null, mode: 0o40755 });
      }
    }
    entries.push({ name: `test/${name}`, content: Buffer.isBuffer(content) ? content : Buffer.from(content), mode: 0o100644 });
  }
  for (const name of fs.readdirSync(hostScriptsDirectory).sort()) {
    entries.push({ name: `host/${name}`, content: fs.readFileSync(path.join(hostScriptsDirectory, name)), mode: 0o100755 });
  }
  return entries;
}

/** A cpio archive in the "newc" format the kernel unpacks (Documentation/driver-api/early-userspace). */
function newcArchive(entries: Array<{ name: string; content: Buffer | null; mode: number }>): Buffer {
  const parts: Buffer[] = [];
  const pad = (length: number): Buffer => Buffer.alloc((4 - (length % 4)) % 4);
  const header = (inode: number, mode: number, fileBytes: number, name: string): void => {
    const fields = [inode, mode, 0, 0, 1, 0, fileBytes, 0, 0, 0, 0, Buffer.byteLength(name) + 1, 0];
    const text = `070701${fields.map((field) => field.toString(16).padStart(8, '0')).join('')}${name}\0`;
    parts.push(Buffer.from(text), pad(text.length));
  };
  entries.forEach((entry, index) => {
    const content = entry.content ?? Buffer.alloc(0);
    header(1000 + index, entry.mode, content.length, entry.name);
    parts.push(content, pad(content.length));
  });
  header(0, 0, 0, 'TRAILER!!!');
  return Buffer.concat(parts);
}
