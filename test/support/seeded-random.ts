// A small seeded pseudo-random source (mulberry32) for fuzz and crash tests: the same seed gives
// the same sequence, so a failure prints its seed and reproduces.

import type { RandomSource } from '../../tools/bench/seeded-random.js';

export { seededRandom, type RandomSource } from '../../tools/bench/seeded-random.js';

/** A whole number in [minimum, maximum]. */
export function randomInteger(random: RandomSource, minimum: number, maximum: number): number {
  return minimum + Math.floor(random() * (maximum - minimum + 1));
}

/** True with the given probability. */
export function chance(random: RandomSource, probability: number): boolean {
  return random() < probability;
}

/** One of the items, chosen uniformly. */
export function pick<T>(random: RandomSource, items: readonly T[]): T {
  return items[Math.floor(random() * items.length)]!;
}

/** Bytes from the seeded source (not for secrets: for test data that reproduces). */
export function randomBytesFrom(random: RandomSource, lengthBytes: number): Buffer {
  const bytes = Buffer.allocUnsafe(lengthBytes);
  let offset = 0;
  for (; offset + 4 <= lengthBytes; offset += 4) bytes.writeUInt32LE((random() * 4294967296) >>> 0, offset);
  for (; offset < lengthBytes; offset++) bytes[offset] = (random() * 256) >>> 0;
  return bytes;
}

/**
 * Bytes that compress in part, as file and database blocks do: runs of 1 to 24 blocks of 4 KiB,
 * each run of one kind (random bytes, a short random pattern repeated with changes, or zeroes),
 * so a long write mixes frames that compress, frames that do not, and zero frames.
 */
export function mixedBytesFrom(random: RandomSource, lengthBytes: number): Buffer {
  const bytes = Buffer.alloc(lengthBytes);
  for (let start = 0; start < lengthBytes; ) {
    const end = Math.min(lengthBytes, start + 4096 * randomInteger(random, 1, 24));
    const roll = random();
    if (roll < 0.3) {
      randomBytesFrom(random, end - start).copy(bytes, start);
    } else if (roll < 0.85) {
      const pattern = randomBytesFrom(random, randomInteger(random, 1, 64));
      for (let at = start; at < end; at += pattern.length) pattern.copy(bytes, at, 0, Math.min(pattern.length, end - at));
      for (let change = 0; change < 8; change++) bytes[randomInteger(random, start, end - 1)] = randomInteger(random, 0, 255);
    }
    // else: zeroes
    start = end;
  }
  return bytes;
}
