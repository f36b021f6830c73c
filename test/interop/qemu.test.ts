// qemu-io and qemu-img against the real appliance: data written reads back exactly, also
// unaligned, through zeroing and discard, and qemu-img compare agrees with a reference file.

import t from 'tap';
import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import { startAppliance } from '../support/appliance.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools, run } from '../support/tools.js';

t.test('qemu-io write/read patterns, zeroes, discard, unaligned I/O, out of range', async (t) => {
  if (!requireTools(t, ['qemu-io'])) return;
  const appliance = await startAppliance(t, { dataDirectory: temporaryDirectory(t) });
  const commands = [
    'write -P 0xaa 0 1M',
    'read -P 0xaa 0 1M',
    'write -P 0x11 1000 3000', // unaligned
    'read -P 0xaa 0 1000',
    'read -P 0x11 1000 3000',
    'read -P 0xaa 4000 4096',
    'write -z 512k 64k',
    'read -P 0 512k 64k',
    'discard 768k 128k',
    'read -P 0 768k 128k',
    'write -P 0x22 -f 2M 4k', // FUA
    'flush',
    'read -P 0x22 2M 4k',
    'aio_write -P 0x33 3M 64k',
    'aio_write -P 0x34 3200k 64k',
    'aio_flush',
    'read -P 0x33 3M 64k',
    'read -P 0x34 3200k 64k',
  ];
  const result = await run('qemu-io', ['-f', 'raw', appliance.uri(), ...commands.flatMap((command) => ['-c', command])]);
  t.equal(result.code, 0, result.stderr);
  t.notMatch(result.stdout, /Pattern verification failed|error|failed/i, result.stdout);

  // Past the end: qemu-io refuses some ranges itself, so use the unix socket and a raw offset at the edge.
  const beyond = await run('qemu-io', ['-f', 'raw', appliance.unixUri(), '-c', `read ${64 * 1024 * 1024 - 512} 1024`]);
  // qemu-io opened the export (a connection failure says "can't open device") and the read, not
  // the open, failed with EIO.
  t.equal(beyond.code, 1, 'qemu-io exits 1');
  t.notMatch(beyond.stderr, /can't open device/, 'the export opened');
  t.match(beyond.stdout, /^read failed: Input\/output error$/m, 'a read past the end fails with EIO');
});

t.test('qemu-img convert into the export, then qemu-img compare with the reference file', async (t) => {
  if (!requireTools(t, ['qemu-img'])) return;
  const directory = temporaryDirectory(t);
  const appliance = await startAppliance(t, { dataDirectory: `${directory}/data` });
  const reference = `${directory}/reference.img`;
  const content = Buffer.alloc(64 * 1024 * 1024);
  // Random data with holes and zero runs, so zero detection and sparse copying both matter.
  for (let offset = 0; offset < content.length; offset += 1024 * 1024) {
    if ((offset >> 20) % 3 !== 1) randomBytes(1024 * 1024).copy(content, offset);
  }
  content.fill(0, 5 * 1024 * 1024 + 4096, 5 * 1024 * 1024 + 8192);
  fs.writeFileSync(reference, content);

  const convert = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', reference, appliance.uri()]);
  t.equal(convert.code, 0, convert.stderr);
  const compare = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', reference, appliance.uri()]);
  t.equal(compare.code, 0, `${compare.stdout}${compare.stderr}`);
  t.match(compare.stdout, /Images are identical/);

  // After an orderly restart the volume still matches.
  t.equal(await appliance.stop(), 0, 'clean shutdown');
  const again = await startAppliance(t, { dataDirectory: `${directory}/data` });
  const compareAgain = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', reference, again.uri()]);
  t.equal(compareAgain.code, 0, compareAgain.stdout + compareAgain.stderr);
});
