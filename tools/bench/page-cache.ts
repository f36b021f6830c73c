// Prefilling the images and controlling the page cache, the two things that decide file-backed
// random-write figures (shared/BENCHMARKING.md): every image gets the same random data, written
// through its own server over NBD, and "direct" mode makes the kernel forget the cached pages.

import { randomFillSync } from 'node:crypto';
import { closeSync, existsSync, openSync, readdirSync, statSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import type { CacheDropMethod } from './options.js';
import { runCommand, runCommandOrThrow } from './processes.js';

const randomChunkBytes = 4 * 1024 * 1024;
const prefillTimeoutMs = 30 * 60_000;
const syncTimeoutMs = 10 * 60_000;

/** The prefill source: `sizeBytes` of incompressible data, made once and reused. */
export function ensureRandomDataFile(filePath: string, sizeBytes: number): void {
  if (existsSync(filePath) && statSync(filePath).size === sizeBytes) return;
  const chunk = Buffer.alloc(randomChunkBytes);
  const fd = openSync(filePath, 'w');
  try {
    for (let writtenBytes = 0; writtenBytes < sizeBytes; writtenBytes += chunk.length) {
      randomFillSync(chunk);
      writeSync(fd, chunk, 0, Math.min(chunk.length, sizeBytes - writtenBytes));
    }
  } finally {
    closeSync(fd);
  }
}

export const prefillConnectionCount = 1;

/**
 * Copies the random data onto the export with nbdcopy over one connection (the same request
 * stream for every server, whether or not it offers multi-conn). With `flush`, nbdcopy ends
 * with an NBD FLUSH, so the server has made the data durable its own way.
 */
export async function prefillThroughNbd(sourcePath: string, uri: string, flush: boolean): Promise<number> {
  const startedMs = Date.now();
  const args = [`--connections=${prefillConnectionCount}`, ...(flush ? ['--flush'] : []), sourcePath, uri];
  await runCommandOrThrow('nbdcopy', args, prefillTimeoutMs);
  return (Date.now() - startedMs) / 1000;
}

export function prefillCommand(flush: boolean): string {
  return `nbdcopy --connections=${prefillConnectionCount}${flush ? ' --flush' : ''} RANDOM-DATA-FILE URI`;
}

/**
 * How "direct" mode makes the kernel forget the servers' cached pages:
 * - "files" (default): `sync FILE...` (fsync of exactly those files), then
 *   `dd if=FILE iflag=nocache count=0` per file, which is posix_fadvise(POSIX_FADV_DONTNEED)
 *   over the whole file (GNU coreutils). Only the servers' files leave the cache; file-system
 *   metadata stays cached, as it does after O_DIRECT writes, and other work on the machine is
 *   left alone.
 * - "global": `sync`, then `echo 1 > /proc/sys/vm/drop_caches` (root only): every clean
 *   page-cache page on the machine, file-system metadata included, and other users' files too.
 */
export const cacheDropDescriptions: Record<CacheDropMethod, string> = {
  files: '`sync FILE...` then `dd if=FILE iflag=nocache count=0` (posix_fadvise DONTNEED) on every file of every server',
  global: '`sync`, then `echo 1 > /proc/sys/vm/drop_caches` (all clean page cache of the machine)',
};

const dropCachesPath = '/proc/sys/vm/drop_caches';

/** Fails clearly when the method cannot work here. */
export async function checkCacheDropMethod(method: CacheDropMethod): Promise<void> {
  if (method === 'files') return;
  await syncFileSystems();
  try {
    writeFileSync(dropCachesPath, '1');
  } catch (error) {
    throw new Error(`--cache-drop global: cannot write ${dropCachesPath} (${(error as Error).message}); use --cache-drop files`);
  }
}

export async function syncFileSystems(): Promise<void> {
  await runCommandOrThrow('sync', [], syncTimeoutMs);
}

/** Writes back the files below `directories`, then drops their cached pages (or all of them). */
export async function forgetPageCache(method: CacheDropMethod, directories: string[]): Promise<void> {
  if (method === 'global') {
    await syncFileSystems();
    writeFileSync(dropCachesPath, '1');
    return;
  }
  const files = directories.flatMap(listFilesBelow);
  if (files.length === 0) return;
  await runCommandOrThrow('sync', files, syncTimeoutMs);
  for (const filePath of files) {
    await runCommandOrThrow('dd', [`if=${filePath}`, 'iflag=nocache', 'count=0', 'status=none'], 60_000);
  }
}

function listFilesBelow(directory: string): string[] {
  if (!existsSync(directory)) return [];
  return readdirSync(directory, { withFileTypes: true }).flatMap((entry) => {
    const entryPath = path.join(directory, entry.name);
    if (entry.isDirectory()) return listFilesBelow(entryPath);
    return entry.isFile() ? [entryPath] : [];
  });
}

/** Bytes of `filePath` resident in the page cache (fincore), for the record; undefined if unknown. */
export async function residentBytes(filePath: string): Promise<number | undefined> {
  if (!existsSync(filePath)) return undefined;
  const result = await runCommand('fincore', ['--bytes', '--noheadings', '--output', 'RES', filePath], 10_000);
  if (result.exitCode !== 0) return undefined;
  const value = Number(result.stdout.trim());
  return Number.isFinite(value) ? value : undefined;
}
