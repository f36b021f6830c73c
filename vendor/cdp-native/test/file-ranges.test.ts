// punchHole, zeroRange, allocate, seekData, seekHole and blockSize on real files in os.tmpdir().
// Invariants checked:
// - after punchHole the range reads as zeroes, the bytes around it are untouched, the
//   size is unchanged and blocks are freed; seekData/seekHole find the hole's edges;
// - after zeroRange the range reads as zeroes and the size is unchanged;
// - allocate reserves blocks and extends the file when the range ends past its end;
// - seekData and seekHole return -1 at or past the end instead of throwing ENXIO;
// - failed system calls throw Errors shaped like Node's fs errors (code, errno, syscall);
// - bad arguments throw TypeError before any system call.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  allocate,
  blockSize,
  punchHole,
  seekData,
  seekHole,
  zeroRange,
  type SystemCallError,
} from 'cdp-native';

const MIB = 1024 * 1024;
const FILE_BYTES = 3 * MIB;
// Far above any descriptor a test process opens, below 2^31.
const CLOSED_FD = 1 << 30;

function temporaryFile(t: Test, contents: Uint8Array): number {
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'cdp-native-'));
  t.teardown(() => fs.rmSync(directory, { recursive: true, force: true }));
  const fd = fs.openSync(path.join(directory, 'file'), 'w+');
  t.teardown(() => fs.closeSync(fd));
  fs.writeSync(fd, contents, 0, contents.length, 0);
  fs.fsyncSync(fd);
  return fd;
}

function patternedBytes(lengthBytes: number): Buffer {
  const bytes = Buffer.alloc(lengthBytes);
  for (let i = 0; i < lengthBytes; i++) bytes[i] = (i % 251) + 1; // never zero
  return bytes;
}

function readRange(fd: number, offsetBytes: number, lengthBytes: number): Buffer {
  const bytes = Buffer.alloc(lengthBytes);
  const readBytes = fs.readSync(fd, bytes, 0, lengthBytes, offsetBytes);
  return bytes.subarray(0, readBytes);
}

function isAllZero(bytes: Uint8Array): boolean {
  return bytes.every((byte) => byte === 0);
}

t.test('punchHole frees the middle, keeps the size, and seekData/seekHole find it', async (t) => {
  const contents = patternedBytes(FILE_BYTES);
  const fd = temporaryFile(t, contents);
  const blocksBefore = fs.fstatSync(fd).blocks;

  punchHole(fd, MIB, MIB);

  t.equal(fs.fstatSync(fd).size, FILE_BYTES, 'size unchanged');
  t.ok(fs.fstatSync(fd).blocks < blocksBefore, 'blocks freed');
  t.ok(isAllZero(readRange(fd, MIB, MIB)), 'the hole reads as zeroes');
  t.ok(readRange(fd, 0, MIB).equals(contents.subarray(0, MIB)), 'data before the hole');
  t.ok(readRange(fd, 2 * MIB, MIB).equals(contents.subarray(2 * MIB)), 'data after the hole');

  t.equal(seekData(fd, 0), 0);
  t.equal(seekHole(fd, 0), MIB);
  t.equal(seekData(fd, MIB), 2 * MIB);
  t.equal(seekData(fd, MIB + 12345), 2 * MIB);
  t.equal(seekHole(fd, MIB + 12345), MIB + 12345, 'inside a hole, seekHole stays put');
  t.equal(seekHole(fd, 2 * MIB), FILE_BYTES, 'the end of the file counts as a hole');
  t.equal(seekData(fd, FILE_BYTES), -1, 'seekData at the end');
  t.equal(seekHole(fd, FILE_BYTES), -1, 'seekHole at the end');
  t.equal(seekData(fd, FILE_BYTES + MIB), -1, 'seekData past the end');
  t.equal(seekHole(fd, 2 ** 53), -1, 'seekHole far past the end');
});

t.test('punchHole of unaligned edges zeroes exactly the range', async (t) => {
  const contents = patternedBytes(64 * 1024);
  const fd = temporaryFile(t, contents);
  punchHole(fd, 1000, 10_000);
  const expected = Buffer.from(contents);
  expected.fill(0, 1000, 11_000);
  t.ok(readRange(fd, 0, contents.length).equals(expected));
  t.equal(fs.fstatSync(fd).size, contents.length);
});

t.test('seekData on a file that ends in a hole returns -1 after the last data', async (t) => {
  const contents = patternedBytes(2 * MIB);
  const fd = temporaryFile(t, contents);
  punchHole(fd, MIB, MIB);
  t.equal(seekHole(fd, 0), MIB);
  t.equal(seekData(fd, MIB), -1, 'no more data');
});

t.test('zeroRange zeroes the range and keeps the size', async (t) => {
  const contents = patternedBytes(FILE_BYTES);
  const fd = temporaryFile(t, contents);
  try {
    zeroRange(fd, MIB, MIB);
  } catch (error) {
    // tmpfs and some other file systems lack FALLOC_FL_ZERO_RANGE. The appliance's data folder is
    // on ext4 or xfs, which have it: a test that cannot check it fails rather than skips.
    t.match(error, { code: 'EOPNOTSUPP', syscall: 'fallocate' });
    t.fail(`FALLOC_FL_ZERO_RANGE is not supported on ${os.tmpdir()}: run the tests with TMPDIR on ext4 or xfs`);
    return;
  }
  t.equal(fs.fstatSync(fd).size, FILE_BYTES, 'size unchanged');
  t.ok(isAllZero(readRange(fd, MIB, MIB)), 'the range reads as zeroes');
  t.ok(readRange(fd, 0, MIB).equals(contents.subarray(0, MIB)), 'data before the range');
  t.ok(readRange(fd, 2 * MIB, MIB).equals(contents.subarray(2 * MIB)), 'data after the range');
});

t.test('allocate reserves blocks and extends the file', async (t) => {
  const fd = temporaryFile(t, new Uint8Array(0));
  allocate(fd, 4096, MIB);
  const status = fs.fstatSync(fd);
  t.equal(status.size, 4096 + MIB, 'extended to the end of the range');
  t.ok(status.blocks * 512 >= MIB, 'blocks reserved');
  t.ok(isAllZero(readRange(fd, 0, 4096 + MIB)), 'reads as zeroes');

  allocate(fd, 0, 4096);
  t.equal(fs.fstatSync(fd).size, 4096 + MIB, 'a range inside the file keeps the size');
});

t.test('blockSize returns st_blksize', async (t) => {
  const fd = temporaryFile(t, new Uint8Array(0));
  t.equal(blockSize(fd), fs.fstatSync(fd).blksize);
  t.ok(blockSize(fd) > 0);
});

t.test('failed system calls throw fs-style errors', async (t) => {
  const badFd = (syscall: string) => ({
    name: 'Error',
    code: 'EBADF',
    errno: -os.constants.errno.EBADF,
    syscall,
    message: `EBADF: bad file descriptor, ${syscall}`,
  });
  t.throws(() => punchHole(CLOSED_FD, 0, 4096), badFd('fallocate'));
  t.throws(() => zeroRange(CLOSED_FD, 0, 4096), badFd('fallocate'));
  t.throws(() => allocate(CLOSED_FD, 0, 4096), badFd('fallocate'));
  t.throws(() => seekData(CLOSED_FD, 0), badFd('lseek'));
  t.throws(() => seekHole(CLOSED_FD, 0), badFd('lseek'));
  t.throws(() => blockSize(CLOSED_FD), badFd('fstat'));

  const fd = temporaryFile(t, patternedBytes(8192));
  t.throws(() => punchHole(fd, 0, 0), { code: 'EINVAL', syscall: 'fallocate' }, 'zero length');

  const readOnlyFd = fs.openSync(fs.readlinkSync(`/proc/self/fd/${fd}`), 'r');
  t.teardown(() => fs.closeSync(readOnlyFd));
  t.throws(() => punchHole(readOnlyFd, 0, 4096), { code: 'EBADF' }, 'fd not open for writing');

  try {
    seekData(CLOSED_FD, 0);
    t.fail('seekData on a closed fd returned');
  } catch (error) {
    t.type(error, Error);
    t.equal((error as SystemCallError).syscall, 'lseek');
  }
});

t.test('bad arguments throw TypeError before any system call', async (t) => {
  const invalidType = { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' };
  const outOfRange = { name: 'TypeError', code: 'ERR_OUT_OF_RANGE' };
  const punch = punchHole as (...args: unknown[]) => void;
  const seek = seekData as (...args: unknown[]) => number;
  // CLOSED_FD would give EBADF if the arguments reached the system call.
  t.throws(() => punch(CLOSED_FD, -1, 4096), outOfRange, 'negative offset');
  t.throws(() => punch(CLOSED_FD, 0, -4096), outOfRange, 'negative length');
  t.throws(() => punch(CLOSED_FD, 0.5, 4096), outOfRange, 'fractional offset');
  t.throws(() => punch(CLOSED_FD, 2 ** 53 + 2, 1), outOfRange, 'offset above 2^53');
  t.throws(() => punch(CLOSED_FD, Infinity, 1), outOfRange, 'infinite offset');
  t.throws(() => punch(CLOSED_FD, NaN, 1), outOfRange, 'NaN offset');
  t.throws(() => punch(CLOSED_FD, 0), invalidType, 'missing length');
  t.throws(() => punch(CLOSED_FD, 0n, 1), invalidType, 'bigint offset');
  t.throws(() => punch(CLOSED_FD, '0', 1), invalidType, 'string offset');
  t.throws(() => punch(-1, 0, 1), outOfRange, 'negative fd');
  t.throws(() => punch(2 ** 31, 0, 1), outOfRange, 'fd above 2^31 - 1');
  t.throws(() => punch(1.5, 0, 1), outOfRange, 'fractional fd');
  t.throws(() => punch(undefined, 0, 1), invalidType, 'missing fd');
  t.throws(() => seek(CLOSED_FD, -1), outOfRange, 'negative seek offset');
  t.throws(() => seek(CLOSED_FD), invalidType, 'missing seek offset');
  t.throws(() => (blockSize as (...args: unknown[]) => number)('1'), invalidType);
});
