// A small ext4 file system for one test: an image file made with mkfs.ext4 and loop-mounted, so a
// test can watch the appliance fill a disk it owns. Mounting needs root (or sudo without a
// password); the mount is always undone in teardown, even when the test fails, before the folder
// holding the image is removed.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { run } from './tools.js';

interface TestContext {
  fail(message: string): void;
  teardown(callback: () => void | Promise<void>): void;
}

export interface SmallFileSystem {
  readonly mountPoint: string;
  /** Size and free space for an unprivileged writer (statfs: blocks and bavail). */
  space(): { sizeBytes: number; freeBytes: number };
}

const isRoot = process.getuid?.() === 0;

/** Run a command as root: directly when we are root, else through `sudo -n`. */
function runPrivileged(command: string, args: string[]) {
  return isRoot ? run(command, args) : run('sudo', ['-n', command, ...args]);
}

/**
 * Make an ext4 file system of `sizeBytes` in `directory`/fs.img and mount it at
 * `directory`/mnt (owned by the current user). Null, after failing the test, when it cannot be
 * done here.
 */
export async function mountSmallFileSystem(t: TestContext, directory: string, sizeBytes: number): Promise<SmallFileSystem | null> {
  const image = `${directory}/fs.img`;
  const mountPoint = `${directory}/mnt`;
  fs.mkdirSync(mountPoint);
  fs.closeSync(fs.openSync(image, 'w'));
  fs.truncateSync(image, sizeBytes);
  const made = await run('mkfs.ext4', ['-q', '-F', image]);
  if (made.code !== 0) {
    t.fail(`mkfs.ext4 (Debian package e2fsprogs): ${made.stderr}`);
    return null;
  }
  const mounted = await runPrivileged('mount', ['-o', 'loop', image, mountPoint]);
  if (mounted.code !== 0) {
    t.fail(`mount -o loop needs root or password-less sudo: ${mounted.stderr.trim()}`);
    return null;
  }
  t.teardown(() => unmount(mountPoint));
  if (!isRoot) await runPrivileged('chown', [`${process.getuid!()}:${process.getgid!()}`, mountPoint]);
  return {
    mountPoint,
    space() {
      const stats = fs.statfsSync(mountPoint);
      return { sizeBytes: stats.blocks * stats.bsize, freeBytes: stats.bavail * stats.bsize };
    },
  };
}

/** Unmount, lazily if something still holds it (a teardown must not throw: later ones would not run). */
function unmount(mountPoint: string): void {
  const command = isRoot ? ['umount'] : ['sudo', '-n', 'umount'];
  const orderly = spawnSync(command[0]!, [...command.slice(1), mountPoint], { stdio: 'ignore' });
  if (orderly.status !== 0) spawnSync(command[0]!, [...command.slice(1), '-l', mountPoint], { stdio: 'ignore' });
}
