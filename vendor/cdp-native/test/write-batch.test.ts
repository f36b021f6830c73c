// pwriteBatch: positioned writes in bulk on a worker thread, joined when adjacent.

import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { pwriteBatch } from 'cdp-native';

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
  for (let index = 0; index < 3000; index++) {
    const length = 1 + Math.floor(Math.random() * 700);
    if (Math.random() < 0.3) position = Math.floor(Math.random() * ((1 << 20) - length));
    if (position + length > expected.length) position = 0;
    const data = randomBytes(length);
    buffers.push(data);
    positions.push(position);
    data.copy(expected, position); // later writes win, as in order
    position += length;
  }
  await pwriteBatch(fd, buffers, positions);
  const written = fs.readFileSync(filePath);
  t.ok(written.subarray(0, expected.length).equals(expected.subarray(0, written.length)), 'file equals the writes applied in order');
  fs.closeSync(fd);
});

t.test('errors reject with an fs-shaped error; bad arguments throw TypeError', async (t) => {
  const { fd } = temporaryFile(t);
  fs.closeSync(fd);
  await t.rejects(pwriteBatch(fd, [Buffer.from('x')], [0]), { code: 'EBADF', syscall: 'pwritev' });
  t.throws(() => pwriteBatch(1, [Buffer.from('x')], []), TypeError);
  t.throws(() => pwriteBatch(1, ['x' as unknown as Buffer], [0]), TypeError);
  t.throws(() => pwriteBatch(1, [Buffer.from('x')], [-1]), TypeError);
  await pwriteBatch(fd, [], []).catch(() => undefined);
  t.pass('an empty batch settles');
});
