// A page cache that holds two pages in three, for tests of code that reads what is cached at
// once and sends the rest to a worker thread (FileHandle.readCached): with it, both paths run.

import type { FileHandle, FileSystem } from '../../storage/io/file-system.js';

const pageBytes = 4096;

function pageIsCached(positionBytes: number): boolean {
  return Math.floor(positionBytes / pageBytes) % 3 !== 2;
}

/** How many bytes from positionBytes on, up to lengthBytes, the partial cache serves at once. */
export function cachedPrefixBytes(positionBytes: number, lengthBytes: number): number {
  let prefixBytes = 0;
  while (prefixBytes < lengthBytes && pageIsCached(positionBytes + prefixBytes)) {
    prefixBytes = Math.min(lengthBytes, prefixBytes + pageBytes - ((positionBytes + prefixBytes) % pageBytes));
  }
  return prefixBytes;
}

/** `fileSystem`, with readCached answering only from the cached pages. */
export function withPartialPageCache(fileSystem: FileSystem): FileSystem {
  return new Proxy(fileSystem, {
    get(target, property) {
      if (property !== 'open') return Reflect.get(target, property, target) as unknown;
      return (path: string, options?: Parameters<FileSystem['open']>[1]): FileHandle => partialHandle(target.open(path, options));
    },
  });
}

function partialHandle(handle: FileHandle): FileHandle {
  return new Proxy(handle, {
    get(target, property) {
      if (property === 'readCached') {
        return (buffer: Buffer, positionBytes: number): number => {
          const prefixBytes = cachedPrefixBytes(positionBytes, buffer.length);
          return prefixBytes === 0 ? 0 : target.readCached(buffer.subarray(0, prefixBytes), positionBytes);
        };
      }
      const value = Reflect.get(target, property, target) as unknown;
      return typeof value === 'function' ? (value as (...parameters: unknown[]) => unknown).bind(target) : value;
    },
  });
}
