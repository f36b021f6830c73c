// A small seeded pseudo-random source (mulberry32) for fuzz and crash tests: the same seed gives
// the same sequence, so a failure prints its seed and reproduces.

/** Returns numbers in [0, 1), like Math.random. */
export type RandomSource = () => number;

export function seededRandom(seed: number): RandomSource {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let mixed = state;
    mixed = Math.imul(mixed ^ (mixed >>> 15), mixed | 1);
    mixed ^= mixed + Math.imul(mixed ^ (mixed >>> 7), mixed | 61);
    return ((mixed ^ (mixed >>> 14)) >>> 0) / 4294967296;
  };
}

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
