// The simulated file system (test/support/simulated-file-system.ts) behaves as the storage layer
// expects of Linux, and its crashes leave only what a crash could leave. The fault-injection tests
// are only as good as this model, so it is checked on its own.
//
// Invariants checked:
//   1. Linux semantics the storage layer relies on: short reads at the end, zeroRange keeps the
//      size, allocate may extend it, truncate cuts, Node-shaped errors.
//   2. A power loss keeps everything made durable (datasync, syncDirectory) and, of the rest, only
//      states the page cache held: dropped, whole, or torn at sector boundaries.
//   3. A kill -9 keeps the page cache (even writes a failed datasync lost on disk) and the boot id.
//   4. Faults: failing datasyncs (EIO, the writes lost), a space budget (ENOSPC), dead handles (EBADF).

import t from 'tap';
import { SimulatedFileSystem, sectorBytes } from '../support/simulated-file-system.js';
import { seededRandom } from '../support/seeded-random.js';

const random = seededRandom(1);

function readAll(fileSystem: SimulatedFileSystem, path: string): Buffer {
  const handle = fileSystem.open(path, { readOnly: true });
  const content = Buffer.alloc(handle.sizeBytes());
  handle.readSync(content, 0);
  handle.close();
  return content;
}

function codeOf(action: () => unknown): string | undefined {
  try {
    action();
    return undefined;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code;
  }
}

t.test('Linux semantics the storage layer relies on', async (t) => {
  const fileSystem = new SimulatedFileSystem();
  fileSystem.mkdirp('/data/log');
  const handle = fileSystem.open('/data/file', { create: true });
  handle.writeSync(Buffer.from('hello world'), 0);
  const target = Buffer.alloc(20, 0xff);
  t.equal(handle.readSync(target, 6), 5, 'a read past the end is short');
  t.equal(handle.readSync(target, 100), 0, 'a read beyond the end reads nothing');
  handle.zeroRange(2, 100);
  t.equal(handle.sizeBytes(), 11, 'zeroRange keeps the size');
  t.same(readAll(fileSystem, '/data/file'), Buffer.from('he\0\0\0\0\0\0\0\0\0'), 'zeroRange zeroes');
  await handle.allocate(0, 64 * 1024 * 1024);
  t.equal(handle.sizeBytes(), 64 * 1024 * 1024, 'allocate extends the file');
  handle.truncate(4);
  handle.truncate(8);
  t.same(readAll(fileSystem, '/data/file'), Buffer.from('he\0\0\0\0\0\0'), 'what truncate cut reads as zeroes when the file grows again');
  await handle.writev([Buffer.from('ab'), Buffer.from('cd')], 1);
  t.same(readAll(fileSystem, '/data/file').subarray(0, 5), Buffer.from('habcd'), 'writev writes its buffers back to back');
  t.equal(handle.seekData(0), 0, 'the whole file is data');
  t.equal(handle.seekHole(0), 8, 'its end is the hole');
  t.equal(handle.seekData(8), -1, 'nothing past the end');
  t.same(fileSystem.list('/data'), ['file', 'log'], 'list is sorted');

  t.equal(codeOf(() => fileSystem.open('/data/missing')), 'ENOENT', 'opening a missing file: ENOENT');
  t.equal(codeOf(() => fileSystem.open('/data/file', { create: true, exclusive: true })), 'EEXIST', 'exclusive create of an existing file: EEXIST');
  t.equal(codeOf(() => fileSystem.open('/nowhere/file', { create: true })), 'ENOENT', 'creating in a missing folder: ENOENT');
  const readOnly = fileSystem.open('/data/file', { readOnly: true });
  t.equal(codeOf(() => readOnly.writeSync(Buffer.from('x'), 0)), 'EBADF', 'writing through a read-only handle: EBADF');
  handle.close();
  t.equal(codeOf(() => handle.sizeBytes()), 'EBADF', 'a closed handle: EBADF');
  t.ok(fileSystem.freeBytes('/data') > 2 ** 39, 'plenty of free space without a budget');
});

t.test('a power loss keeps what was made durable, and only states the page cache held', async (t) => {
  const fileSystem = new SimulatedFileSystem();
  fileSystem.mkdirp('/data');
  await fileSystem.syncDirectory('/');
  const synced = fileSystem.open('/data/synced', { create: true });
  synced.writeSync(Buffer.alloc(2 * sectorBytes, 1), 0);
  await synced.datasync();
  await fileSystem.syncDirectory('/data');
  synced.writeSync(Buffer.alloc(2 * sectorBytes, 2), 0); // pending
  const unlinked = fileSystem.open('/data/unsynced-name', { create: true });
  unlinked.writeSync(Buffer.from('data'), 0);
  await unlinked.datasync(); // its content is durable, its name is not
  fileSystem.rename('/data/synced', '/data/renamed');

  const nothingKept = fileSystem.crash(random, { keepProbability: 0, tearProbability: 0 });
  t.same(readAll(nothingKept, '/data/synced'), Buffer.alloc(2 * sectorBytes, 1), 'the durable content survives, the pending write does not');
  t.notOk(nothingKept.exists('/data/unsynced-name'), 'a file whose folder was never synced vanishes');
  t.notOk(nothingKept.exists('/data/renamed'), 'an unsynced rename is undone');
  t.not(nothingKept.bootId().toString('hex'), fileSystem.bootId().toString('hex'), 'a power loss is a new boot');

  // Torn: of two writes to one file, keep the second write's first sector only. The sector comes
  // as the page cache held it after that write (the first write's bytes beside it come along).
  const handle = nothingKept.open('/data/synced');
  handle.writeSync(Buffer.from('AAAA'), 100);
  handle.writeSync(Buffer.alloc(2 * sectorBytes, 3), 200);
  let writeIndex = 0;
  const torn = nothingKept.crash(random, {
    decide: (operation) => (operation.kind !== 'write' ? 'keep' : writeIndex++ === 0 ? 'drop' : { keepPiece: (piece) => piece < sectorBytes }),
  });
  const expected = Buffer.alloc(2 * sectorBytes, 1);
  expected.write('AAAA', 100);
  expected.fill(3, 200, sectorBytes);
  const content = readAll(torn, '/data/synced');
  t.equal(content.length, 200 + 2 * sectorBytes, 'the torn write extended the file');
  t.same(content.subarray(0, 2 * sectorBytes), expected, 'the kept sector holds both writes, the lost one nothing new');
  t.same(content.subarray(2 * sectorBytes), Buffer.alloc(200), 'the lost sectors past the old end read as zeroes');
  t.equal(torn.crashReport?.tornWrites.length, 1, 'the crash reports the torn write');
});

t.test('a kill -9 keeps the page cache and the boot', async (t) => {
  const fileSystem = new SimulatedFileSystem();
  const handle = fileSystem.open('/file', { create: true });
  handle.writeSync(Buffer.from('first'), 0);
  fileSystem.failDatasyncs({ count: 1 });
  const failed = await handle.datasync().then(
    () => null,
    (error: NodeJS.ErrnoException) => error.code,
  );
  t.equal(failed, 'EIO', 'the injected datasync failure is EIO');
  await handle.datasync();
  t.pass('the next datasync succeeds: the error is not repeated, the write is lost on disk');

  const afterProcessCrash = fileSystem.crash(random, { process: true });
  t.same(readAll(afterProcessCrash, '/file'), Buffer.from('first'), 'the page cache still holds the write');
  t.equal(afterProcessCrash.bootId().toString('hex'), fileSystem.bootId().toString('hex'), 'same boot');
  t.equal(codeOf(() => handle.readSync(Buffer.alloc(1), 0)), 'EBADF', 'handles of the crashed file system are dead');
  t.equal(codeOf(() => fileSystem.open('/file')), 'EIO', 'and so is the crashed file system');

  const second = afterProcessCrash.open('/file');
  second.writeSync(Buffer.from('second'), 0);
  afterProcessCrash.failDatasyncs({ count: 1, pathMatches: (path) => path === '/file' });
  await second.datasync().catch(() => undefined);
  const afterPowerLoss = afterProcessCrash.crash(random, { keepProbability: 1 });
  t.same(readAll(afterPowerLoss, '/file'), Buffer.from('first'), 'after a power loss the write the failed datasync lost is gone');
});

t.test('a space budget: allocations past it fail with ENOSPC, writes into allocated space do not', async (t) => {
  const fileSystem = new SimulatedFileSystem();
  const handle = fileSystem.open('/file', { create: true });
  await handle.allocate(0, 1024 * 1024);
  fileSystem.setSpaceBudget(4096);
  t.equal(fileSystem.freeBytes('/'), 4096, 'freeBytes reports the budget');
  handle.writeSync(Buffer.alloc(64 * 1024, 1), 0);
  t.pass('writing into allocated space needs no space');
  const refused = await handle.allocate(0, 2 * 1024 * 1024).then(
    () => null,
    (error: NodeJS.ErrnoException) => error.code,
  );
  t.equal(refused, 'ENOSPC', 'allocating past the budget: ENOSPC');
  t.equal(handle.sizeBytes(), 1024 * 1024, 'and nothing changed');
  fileSystem.remove('/file');
  t.equal(fileSystem.freeBytes('/'), 4096 + 1024 * 1024, 'removing a file gives its space back');
});
