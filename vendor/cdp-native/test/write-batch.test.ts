// pwriteBatch: positioned writes in bulk on a worker thread, joined when adjacent.

import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { preadNoWait, pwriteAligned, pwriteBatch } from 'cdp-native';

function temporaryFile(t: { teardown(callback: () => void): void }): { filePath: string; fd: number } {
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'cdp-native-batch-'));
  t.teardown(() => fs.rmSync(directory, { recursive: true, force: true }));
  const filePath = path.join(directory, 'file');
  return { filePath, fd: fs.openSync(filePath, 'w+') };
}

t.test('writes land where they are asked to, adjacent or not, in order', async (t) => {
  const { filePath, fd } = temporaryFile(t);
  const expected = Buffer.alloc(1 << 20);
  const buffers: Buffer[] = [];
  const positions: number[] = [];
  let position = 0;
  let endBytes = 0;
  for (let index = 0; index < 3000; index++) {
    const length = 1 + Math.floor(Math.random() * 700);
    if (Math.random() < 0.3) position = Math.floor(Math.random() * ((1 << 20) - length));
    if (position + length > expected.length) position = 0;
    const data = randomBytes(length);
    buffers.push(data);
    positions.push(position);
    data.copy(expected, position); // later writes win, as in order
    position += length;
    endBytes = Math.max(endBytes, position);
  }
  await pwriteBatch(fd, buffers, positions);
  const written = fs.readFileSync(filePath);
  t.equal(written.length, endBytes, 'the file ends where the furthest write ends');
  t.ok(written.equals(expected.subarray(0, endBytes)), 'file equals the writes applied in order');
  fs.closeSync(fd);
});

t.test('errors reject with an fs-shaped error; bad arguments throw TypeError', async (t) => {
  const { fd } = temporaryFile(t);
  fs.closeSync(fd);
  await t.rejects(pwriteBatch(fd, [Buffer.from('x')], [0]), { code: 'EBADF', syscall: 'pwritev' });
  t.throws(() => pwriteBatch(1, [Buffer.from('x')], []), TypeError);
  t.throws(() => pwriteBatch(1, ['x' as unknown as Buffer], [0]), TypeError);
  t.throws(() => pwriteBatch(1, [Buffer.from('x')], [-1]), TypeError);
  const { fd: open } = temporaryFile(t);
  await t.resolves(pwriteBatch(open, [], []), 'an empty batch resolves');
  fs.closeSync(open);
});

t.test('pwriteAligned: prefix and buffers, zero-padded to the alignment, through O_DIRECT', async (t) => {
  const { filePath, fd: plain } = temporaryFile(t);
  fs.closeSync(plain);
  const fd = fs.openSync(filePath, fs.constants.O_RDWR | fs.constants.O_DIRECT);
  const prefix = Buffer.from('prefix-bytes');
  const pieces = [randomBytes(5000), Buffer.alloc(0), randomBytes(3)];
  await pwriteAligned(fd, prefix, pieces, 8192, 4096);
  fs.closeSync(fd);
  const written = fs.readFileSync(filePath);
  const body = Buffer.concat([prefix, ...pieces]);
  t.equal(written.length, 8192 + 8192, 'padded to whole 4 KiB blocks');
  t.ok(written.subarray(8192, 8192 + body.length).equals(body), 'prefix then buffers');
  t.ok(written.subarray(8192 + body.length).every((byte) => byte === 0), 'zero padding');
  t.throws(() => pwriteAligned(fd, prefix, pieces, 100, 4096), TypeError, 'an unaligned position is refused');
  t.throws(() => pwriteAligned(fd, prefix, pieces, 0, 1000), TypeError, 'the alignment is a power of two');
});

t.test('preadNoWait reads what the page cache holds and never more than asked', async (t) => {
  const { fd } = temporaryFile(t);
  const data = randomBytes(64 * 1024);
  fs.writeSync(fd, data, 0, data.length, 0);
  const target = Buffer.alloc(4096);
  // Just written, so in the page cache: the file systems the appliance runs on (ext4, xfs, tmpfs)
  // answer RWF_NOWAIT reads of cached pages in full.
  const readBytes = preadNoWait(fd, target, 8192);
  t.equal(readBytes, 4096, 'all of it from the page cache');
  t.ok(target.equals(data.subarray(8192, 8192 + 4096)), 'the right bytes');
  t.equal(preadNoWait(fd, target, 1 << 30), 0, 'past the end: nothing');
  fs.closeSync(fd);
  t.throws(() => preadNoWait(fd, target, 0), { code: 'EBADF' });
});
