// Reading and writing the protocol's 64-bit offsets and sizes as JS numbers.
// Offsets and lengths travel as u64 but a block device never needs more than
// 2^53 bytes, and numbers are much cheaper than bigints on the hot path. A
// u64 that does not fit is read as Infinity rather than silently rounded, so
// any later bounds check (offset + length > size) fails and the server
// answers EINVAL/ENOSPC instead of touching the wrong block.

const TWO_TO_THE_32 = 4294967296;
// 2^53 - 1 is (0x1fffff << 32) | 0xffffffff: a high word above 0x1fffff
// cannot be represented exactly.
const SAFE_HIGH_WORD_MAX = 0x1fffff;

/** Reads a big-endian u64; Infinity when above Number.MAX_SAFE_INTEGER. */
export function readUint64AsNumber(buffer: Buffer, offsetBytes: number): number {
  const highWord = buffer.readUInt32BE(offsetBytes);
  const lowWord = buffer.readUInt32BE(offsetBytes + 4);
  if (highWord > SAFE_HIGH_WORD_MAX) return Infinity;
  return highWord * TWO_TO_THE_32 + lowWord;
}

/** Writes a non-negative safe integer as a big-endian u64. */
export function writeUint64FromNumber(buffer: Buffer, value: number, offsetBytes: number): void {
  buffer.writeUInt32BE(Math.floor(value / TWO_TO_THE_32), offsetBytes);
  buffer.writeUInt32BE(value >>> 0, offsetBytes + 4);
}

// The checks below guard serializer arguments: a wrong value there is a bug
// in the caller, so they throw TypeError rather than returning an error.

export function assertUint64(value: number, what: string): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new TypeError(`${what} must be a non-negative safe integer, got ${value}`);
  }
}

export function assertUint32(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new TypeError(`${what} must be a u32, got ${value}`);
  }
}

export function assertUint16(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff) {
    throw new TypeError(`${what} must be a u16, got ${value}`);
  }
}

export function assertCookie(cookie: bigint): void {
  if (typeof cookie !== 'bigint' || cookie < 0n || cookie > 0xffffffffffffffffn) {
    throw new TypeError(`cookie must be a u64 bigint, got ${String(cookie)}`);
  }
}
