// Real client tools the tests drive. A missing tool fails the test that needs it, with the Debian
// package to install: tests never skip for a missing tool (CI installs them all in .ci/run).

import { execFile, spawnSync } from 'node:child_process';

interface Assertions {
  fail(message: string): void;
}

const packageOf: Record<string, string> = {
  nbdinfo: 'libnbd-bin',
  nbdcopy: 'libnbd-bin',
  nbdsh: 'libnbd-bin (and python3-libnbd)',
  'qemu-io': 'qemu-utils',
  'qemu-img': 'qemu-utils',
  'qemu-nbd': 'qemu-utils',
  fio: 'fio',
  nbdkit: 'nbdkit',
  openssl: 'openssl',
  'qemu-system-x86_64': 'qemu-system-x86',
  cpio: 'cpio',
  debugfs: 'e2fsprogs',
  'mkfs.ext4': 'e2fsprogs',
  ip: 'iproute2',
};

export function hasTool(name: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0;
}

/** True when every tool is installed; otherwise fails the test, naming the packages. */
export function requireTools(t: Assertions, names: string[]): boolean {
  const missing = names.filter((name) => !hasTool(name));
  if (missing.length === 0) return true;
  t.fail(`missing tools: ${missing.map((name) => `${name} (Debian package ${packageOf[name] ?? name})`).join(', ')}`);
  return false;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run a program to completion; never rejects for a non-zero exit (the caller asserts on code). */
export function run(command: string, args: string[], options: { timeoutMs?: number; input?: string; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(
      command,
      args,
      { timeout: options.timeoutMs ?? 120_000, maxBuffer: 64 * 1024 * 1024, env: options.env ?? process.env },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : 1;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
    if (options.input !== undefined) child.stdin?.end(options.input);
  });
}

/**
 * Run an nbdsh script. nbdsh runs `python3 -m nbd`, and the libnbd bindings live in Debian's
 * python3, so /usr/bin comes first on PATH whatever python3 the machine prefers.
 */
export function runNbdsh(args: string[], script: string): Promise<RunResult> {
  return run('nbdsh', [...args, '-c', script], { env: { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` } });
}

/** fio's JSON output (its nbd engine prints a line before the document). */
export function parseFioJson(stdout: string): unknown {
  return JSON.parse(stdout.slice(stdout.indexOf('{')));
}
