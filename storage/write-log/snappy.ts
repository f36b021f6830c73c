// The Snappy block format (raw, not framed) through one interface: the native `snappy` binding
// where it loads, `snappyjs` (the same format in plain JavaScript, about 4x slower) where it does
// not. Both produce and read the same bytes; the tests cross-check them.

import { createRequire } from 'node:module';
import { StorageError } from '../errors.js';

export interface SnappyCodec {
  readonly name: 'snappy' | 'snappyjs';
  /** Compress a whole buffer; the result is a new buffer of its own. */
  compress(data: Buffer): Buffer;
  /** Decompress one compressed block; refuses a block that decodes to more than maxLengthBytes. */
  uncompress(compressed: Buffer, maxLengthBytes: number): Buffer;
}

interface NativeSnappy {
  compressSync(input: Uint8Array, options: { copyOutputData: boolean }): Buffer;
  uncompressSync(input: Uint8Array, options: { asBuffer: true; copyOutputData: boolean }): Buffer;
}

interface ScriptSnappy {
  compress(input: Uint8Array): Uint8Array;
  uncompress(input: Uint8Array, maxLength?: number): Uint8Array;
}

const require = createRequire(import.meta.url);

function checkedLength(decoded: Uint8Array, maxLengthBytes: number): Buffer {
  if (decoded.length > maxLengthBytes) {
    throw new StorageError('ECORRUPT', `a Snappy block decoded to ${decoded.length} bytes, more than the ${maxLengthBytes} of its frame`);
  }
  return Buffer.from(decoded.buffer, decoded.byteOffset, decoded.length);
}

/** The pure-JavaScript codec (the fallback, and the tests' cross-check). */
export function scriptSnappy(): SnappyCodec {
  const library = require('snappyjs') as ScriptSnappy;
  return {
    name: 'snappyjs',
    compress: (data) => {
      const compressed = library.compress(data);
      return Buffer.from(compressed.buffer, compressed.byteOffset, compressed.length);
    },
    uncompress: (compressed, maxLengthBytes) => {
      try {
        return checkedLength(library.uncompress(compressed, maxLengthBytes), maxLengthBytes);
      } catch (error) {
        if (error instanceof StorageError) throw error;
        throw new StorageError('ECORRUPT', `a Snappy block does not decode: ${String(error)}`, { cause: error });
      }
    },
  };
}

/** The native codec, or null when its binding cannot load on this machine. */
export function nativeSnappy(): SnappyCodec | null {
  let library: NativeSnappy;
  try {
    library = require('snappy') as NativeSnappy;
  } catch {
    return null;
  }
  // copyOutputData: results are ordinary Node buffers, not external memory the binding frees later.
  return {
    name: 'snappy',
    compress: (data) => library.compressSync(data, { copyOutputData: true }),
    uncompress: (compressed, maxLengthBytes) => {
      let decoded: Buffer;
      try {
        decoded = library.uncompressSync(compressed, { asBuffer: true, copyOutputData: true });
      } catch (error) {
        throw new StorageError('ECORRUPT', `a Snappy block does not decode: ${String(error)}`, { cause: error });
      }
      return checkedLength(decoded, maxLengthBytes);
    },
  };
}

let chosen: SnappyCodec | null = null;

/** The codec the storage layer uses: native when it loads, else snappyjs. */
export function snappyCodec(): SnappyCodec {
  chosen ??= nativeSnappy() ?? scriptSnappy();
  return chosen;
}
