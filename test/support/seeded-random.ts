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
