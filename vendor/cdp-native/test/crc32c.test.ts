// crc32c and crc32cv against a bitwise reference written from the definition.
// Invariants checked:
// - the standard check value: CRC-32C("123456789") = 0xE3069283;
// - the addon equals the reference on random buffers of 0..70000 bytes at random
//   offsets inside a larger buffer (so byteOffset/byteLength are honoured), for the
//   implementation this CPU selects and, in a child process, for the portable tables;
// - chaining: crc32c(b, crc32c(a)) = crc32c(a ++ b); crc32cv(list) = crc32c(concatenation);
// - empty input returns the initial value; results are unsigned 32-bit integers;
// - bad arguments throw TypeError with a stable code.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { crc32c, crc32cv, crc32cImplementation } from 'cdp-native';

const POLYNOMIAL = 0x82f63b78;
const LENGTH_BYTES_MAX = 70_000;
const POOL_BYTES = LENGTH_BYTES_MAX * 2;
const RANDOM_CASE_COUNT = 300;

function referenceCrc32c(data: Uint8Array, initial = 0): number {
  let register = ~initial >>> 0;
  for (const byte of data) {
    register ^= byte;
    for (let bit = 0; bit < 8; bit++) {
      register = register & 1 ? (register >>> 1) ^ POLYNOMIAL : register >>> 1;
    }
  }
  return ~register >>> 0;
}

// A seeded generator, so that a failure can be replayed.
function createRandom(seed: number): (limit: number) => number {
  let state = seed >>> 0;
  return (limit) => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    const high = state >>> 8;
    return Math.floor((high / 2 ** 24) * limit);
  };
}

function randomBytes(random: (limit: number) => number, lengthBytes: number): Uint8Array {
  const bytes = new Uint8Array(lengthBytes);
  for (let i = 0; i < lengthBytes; i++) bytes[i] = random(256);
  return bytes;
}

t.test('the standard check value', async (t) => {
  t.equal(crc32c(Buffer.from('123456789')), 0xe3069283);
  t.equal(crc32c(new TextEncoder().encode('123456789')), 0xe3069283);
  t.equal(referenceCrc32c(Buffer.from('123456789')), 0xe3069283);
  t.equal(crc32cv([Buffer.from('1234'), Buffer.from('56789')]), 0xe3069283);
  t.match(crc32cImplementation, /^(sse4\.2|table)$/);
});

t.test('agrees with the bitwise reference on random subarrays', async (t) => {
  const seed = 20240611;
  const random = createRandom(seed);
  const pool = randomBytes(random, POOL_BYTES);
  let mismatches = 0;
  for (let i = 0; i < RANDOM_CASE_COUNT; i++) {
    // Short lengths are where the alignment and tail code lives: draw them often.
    const lengthBytes = i % 3 === 0 ? random(64) : random(LENGTH_BYTES_MAX + 1);
    const offsetBytes = random(POOL_BYTES - lengthBytes + 1);
    const initial = i % 2 === 0 ? 0 : random(2 ** 32);
    const view = pool.subarray(offsetBytes, offsetBytes + lengthBytes);
    const expected = referenceCrc32c(view, initial);
    const actual = crc32c(view, initial);
    if (actual !== expected) {
      mismatches++;
      t.fail('mismatch', { seed, case: i, offsetBytes, lengthBytes, initial, expected, actual });
    }
    const asBuffer = Buffer.from(pool.buffer, pool.byteOffset + offsetBytes, lengthBytes);
    if (crc32c(asBuffer, initial) !== expected) {
      mismatches++;
      t.fail('Buffer view mismatch', { seed, case: i, offsetBytes, lengthBytes });
    }
  }
  t.equal(mismatches, 0, `${RANDOM_CASE_COUNT} random cases (${crc32cImplementation})`);
});

t.test('every length 0..1100 at every alignment 0..7', async (t) => {
  // Covers each branch boundary of the three-way SSE4.2 loop (768-byte groups) and the tails.
  const random = createRandom(7);
  const pool = randomBytes(random, 1200);
  let mismatches = 0;
  for (let offsetBytes = 0; offsetBytes < 8; offsetBytes++) {
    for (let lengthBytes = 0; lengthBytes <= 1100; lengthBytes++) {
      const view = pool.subarray(offsetBytes, offsetBytes + lengthBytes);
      if (crc32c(view) !== referenceCrc32c(view)) mismatches++;
    }
  }
  t.equal(mismatches, 0);
});

t.test('the portable tables agree with the reference too', async (t) => {
  // CDP_NATIVE_CRC32C=table forces the slicing-by-8 code, which an x86-64 CPU would skip.
  const addonUrl = import.meta.resolve('cdp-native');
  const random = createRandom(99);
  const cases = Array.from({ length: 40 }, (_, i) => {
    const lengthBytes = i < 20 ? i : random(LENGTH_BYTES_MAX + 1);
    return { lengthBytes, offsetBytes: random(16), initial: random(2 ** 32) };
  });
  const pool = randomBytes(random, LENGTH_BYTES_MAX + 16);
  const script = `
    const { crc32c, crc32cImplementation } = await import(process.argv[1]);
    const pool = Buffer.from(process.argv[2], 'base64');
    const cases = JSON.parse(process.argv[3]);
    const results = cases.map((c) => crc32c(pool.subarray(c.offsetBytes, c.offsetBytes + c.lengthBytes), c.initial));
    process.stdout.write(JSON.stringify({ crc32cImplementation, results }));
  `;
  const output = execFileSync(
    process.execPath,
    ['--input-type=module', '-e', script, addonUrl, Buffer.from(pool).toString('base64'), JSON.stringify(cases)],
    { env: { ...process.env, CDP_NATIVE_CRC32C: 'table' }, encoding: 'utf8', maxBuffer: 1 << 20 },
  );
  const child = JSON.parse(output) as { crc32cImplementation: string; results: number[] };
  t.equal(child.crc32cImplementation, 'table');
  const expected = cases.map((c) =>
    referenceCrc32c(pool.subarray(c.offsetBytes, c.offsetBytes + c.lengthBytes), c.initial),
  );
  t.same(child.results, expected);
});

t.test('chaining and lists', async (t) => {
  const random = createRandom(3);
  const whole = randomBytes(random, 50_000);
  for (const cutBytes of [0, 1, 7, 8, 4096, 30_001, 50_000]) {
    const first = whole.subarray(0, cutBytes);
    const second = whole.subarray(cutBytes);
    t.equal(crc32c(second, crc32c(first)), crc32c(whole), `cut at ${cutBytes}`);
  }
  const pieces = [0, 3, 4096, 0, 17, 9000].map((lengthBytes) => randomBytes(random, lengthBytes));
  const concatenation = Buffer.concat(pieces);
  t.equal(crc32cv(pieces), crc32c(concatenation));
  t.equal(crc32cv(pieces, 0xdeadbeef), crc32c(concatenation, 0xdeadbeef));
  t.equal(crc32cv(pieces.slice(3), crc32cv(pieces.slice(0, 3))), crc32c(concatenation));
});

t.test('empty input returns the initial value', async (t) => {
  t.equal(crc32c(new Uint8Array(0)), 0);
  t.equal(crc32c(Buffer.alloc(0), 0x12345678), 0x12345678);
  t.equal(crc32c(Buffer.alloc(10).subarray(5, 5), 0xffffffff), 0xffffffff);
  t.equal(crc32cv([]), 0);
  t.equal(crc32cv([], 42), 42);
  t.equal(crc32cv([new Uint8Array(0), Buffer.alloc(0)], 42), 42);
});

t.test('results are unsigned 32-bit integers', async (t) => {
  const crc = crc32c(Buffer.from([0xff, 0xff, 0xff, 0xff, 0x00]));
  t.equal(crc, referenceCrc32c(Buffer.from([0xff, 0xff, 0xff, 0xff, 0x00])));
  t.ok(Number.isInteger(crc) && crc >= 0 && crc <= 0xffffffff);
  t.ok(crc32c(Buffer.from('a')) > 0x7fffffff, 'a result with the top bit set stays positive');
});

t.test('bad arguments throw TypeError', async (t) => {
  const invalidType = { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' };
  const outOfRange = { name: 'TypeError', code: 'ERR_OUT_OF_RANGE' };
  const call = crc32c as (...args: unknown[]) => number;
  const callList = crc32cv as (...args: unknown[]) => number;
  t.throws(() => call('123456789'), invalidType);
  t.throws(() => call(new Uint16Array(4)), invalidType);
  t.throws(() => call(new ArrayBuffer(4)), invalidType);
  t.throws(() => call(), invalidType);
  t.throws(() => call(Buffer.alloc(1), '1'), invalidType);
  t.throws(() => call(Buffer.alloc(1), -1), outOfRange);
  t.throws(() => call(Buffer.alloc(1), 2 ** 32), outOfRange);
  t.throws(() => call(Buffer.alloc(1), 1.5), outOfRange);
  t.throws(() => call(Buffer.alloc(1), NaN), outOfRange);
  t.throws(() => callList(Buffer.alloc(1)), invalidType);
  t.throws(() => callList([Buffer.alloc(1), 'x']), invalidType);
});
