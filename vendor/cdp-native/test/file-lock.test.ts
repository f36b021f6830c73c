// lockExclusive (flock LOCK_EX | LOCK_NB) on real files in os.tmpdir(). Invariants checked:
// - the first open file takes the lock; another open file of the same file is refused, in this
//   process and in another one, until the holder closes it;
// - a process that dies (SIGKILL) holding the lock releases it;
// - taking it again through the same open file succeeds;
// - failed calls throw fs-shaped errors (EBADF), bad arguments TypeError.
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { once } from 'node:events';
import { lockExclusive } from 'cdp-native';

const CLOSED_FD = 1 << 30;

function lockFilePath(t: Test): string {
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'cdp-native-lock-'));
  t.teardown(() => fs.rmSync(directory, { recursive: true, force: true }));
  return path.join(directory, 'lock');
}

/** A child process that takes the lock, says so on stdout, and waits to be killed. */
async function holdInChild(t: Test, file: string) {
  const script = `import('cdp-native').then(({ lockExclusive }) => { const fd = require('node:fs').openSync(${JSON.stringify(file)}, 'a'); process.stdout.write(lockExclusive(fd) ? 'held\\n' : 'refused\\n'); setInterval(() => {}, 1000); })`;
  const child = spawn(process.execPath, ['-e', script], { cwd: path.dirname(new URL(import.meta.url).pathname), stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => void child.kill('SIGKILL'));
  const [line] = (await once(child.stdout!, 'data')) as [Buffer];
  return { child, answer: line.toString().trim() };
}

t.test('one open file holds the lock; others are refused until it is closed', async (t) => {
  const file = lockFilePath(t);
  const first = fs.openSync(file, 'a');
  const second = fs.openSync(file, 'a');
  t.equal(lockExclusive(first), true, 'the first takes it');
  t.equal(lockExclusive(second), false, 'a second open file of the same process is refused');
  t.equal(lockExclusive(first), true, 'the holder may take it again');
  const other = await holdInChild(t, file);
  t.equal(other.answer, 'refused', 'another process is refused');
  other.child.kill('SIGKILL');
  fs.closeSync(first);
  t.equal(lockExclusive(second), true, 'closing the holder releases it');
  fs.closeSync(second);
});

t.test('a process killed with SIGKILL releases the lock', async (t) => {
  const file = lockFilePath(t);
  const holder = await holdInChild(t, file);
  t.equal(holder.answer, 'held');
  const fd = fs.openSync(file, 'a');
  t.teardown(() => fs.closeSync(fd));
  t.equal(lockExclusive(fd), false, 'held by the child');
  holder.child.kill('SIGKILL');
  await once(holder.child, 'exit');
  t.equal(lockExclusive(fd), true, 'released by its death');
});

t.test('errors', async (t) => {
  t.throws(() => lockExclusive(CLOSED_FD), { name: 'Error', code: 'EBADF', errno: -os.constants.errno.EBADF, syscall: 'flock', message: 'EBADF: bad file descriptor, flock' });
  t.throws(() => lockExclusive('3' as unknown as number), TypeError);
  t.throws(() => lockExclusive(-1), TypeError);
});
