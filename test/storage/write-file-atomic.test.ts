// writeFileAtomic (storage/io/file-system.ts): small files written whole, on the real file system
// and on the simulated one. Invariants checked:
//   1. Concurrent writes to one file all succeed, run one at a time in the order asked, and the
//      file ends with the last content asked for; no temporary file is left.
//   2. A write that fails (its sync fails) removes its temporary, and the writes queued after it
//      still run.
//   3. A temporary a crash left behind is removed by the next write to that file, and only its own.

import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { nodeFileSystem, writeFileAtomic } from '../../storage/index.js';
import { SimulatedFileSystem } from '../support/simulated-file-system.js';
import { temporaryDirectory } from '../support/temporary-directory.js';

t.test('concurrent writes to one file: all succeed, in order, the last one wins, nothing is left behind', async (t) => {
  const directory = temporaryDirectory(t);
  const target = path.join(directory, 'exports.json');
  const contents = Array.from({ length: 32 }, (_, index) => Buffer.from(`${JSON.stringify({ write: index, padding: 'x'.repeat(index * 100) })}\n`));
  const finished: number[] = [];
  await Promise.all(contents.map((content, index) => writeFileAtomic(nodeFileSystem, target, content).then(() => void finished.push(index))));
  t.same(finished, contents.map((_, index) => index), 'they finished in the order they were asked for');
  t.same(fs.readFileSync(target), contents[contents.length - 1], 'the file holds the last content');
  t.same(fs.readdirSync(directory), ['exports.json'], 'no temporary is left');
});

t.test('a failed write removes its temporary; the writes queued after it still run', async (t) => {
  const fileSystem = new SimulatedFileSystem();
  fileSystem.mkdirp('/data');
  await writeFileAtomic(fileSystem, '/data/job.json', Buffer.from('first'));
  fileSystem.failDatasyncs({ count: 1, pathMatches: (filePath) => filePath.startsWith('/data/job.json.') });
  const failing = writeFileAtomic(fileSystem, '/data/job.json', Buffer.from('second'));
  const after = writeFileAtomic(fileSystem, '/data/job.json', Buffer.from('third'));
  await t.rejects(failing, 'the write whose sync failed is refused');
  await after;
  t.equal(fileSystem.open('/data/job.json', { readOnly: true }).sizeBytes(), 5, 'the next one ran');
  t.same(fileSystem.list('/data'), ['job.json'], 'no temporary is left');
});

t.test('temporaries a crash left are removed by the next write to their file, and only theirs', async (t) => {
  const directory = temporaryDirectory(t);
  const target = path.join(directory, 'retention.json');
  const left = ['retention.json.0123456789ab.tmp', 'retention.json.ffffffffffff.tmp'];
  const others = ['volume.json.0123456789ab.tmp', 'retention.json.notmine.tmp', 'retention.json.extra.0123456789ab.tmp'];
  for (const name of [...left, ...others]) fs.writeFileSync(path.join(directory, name), 'half');
  await writeFileAtomic(nodeFileSystem, target, Buffer.from('{}\n'));
  t.same(fs.readdirSync(directory).sort(), ['retention.json', ...others].sort(), "the file's own leftovers are gone, the rest stays");
});
