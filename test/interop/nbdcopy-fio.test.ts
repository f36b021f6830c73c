// Parallel load from real clients: nbdcopy over 4 connections (CAN_MULTI_CONN, one flush at the
// end covering every connection) and fio's nbd engine with crc32c verification.

import t from 'tap';
import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import { startAppliance } from '../support/appliance.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { parseFioJson, requireTools, run } from '../support/tools.js';

t.test('nbdcopy --connections 4 into the export and back out is byte-exact', async (t) => {
  if (!requireTools(t, ['nbdcopy'])) return;
  const directory = temporaryDirectory(t);
  const appliance = await startAppliance(t, { dataDirectory: `${directory}/data` });
  const source = `${directory}/source.img`;
  const content = randomBytes(64 * 1024 * 1024);
  content.fill(0, 10 * 1024 * 1024, 12 * 1024 * 1024); // a zero run: nbdcopy sends WRITE_ZEROES or skips
  fs.writeFileSync(source, content);

  const into = await run('nbdcopy', ['--connections=4', '--requests=16', '--flush', source, appliance.uri()]);
  t.equal(into.code, 0, into.stderr);
  const copy = `${directory}/copy.img`;
  const out = await run('nbdcopy', ['--connections=4', '--requests=16', appliance.unixUri(), copy]);
  t.equal(out.code, 0, out.stderr);
  t.ok(fs.readFileSync(copy).equals(content), 'what came back is what went in');
});

t.test('fio random writes with crc32c verification, then a mixed workload', async (t) => {
  if (!requireTools(t, ['fio'])) return;
  const appliance = await startAppliance(t, { dataDirectory: temporaryDirectory(t) });
  const common = ['--ioengine=nbd', `--uri=${appliance.uri()}`, '--size=48M', '--output-format=json'];
  const verified = await run('fio', [
    '--name=verify',
    ...common,
    '--rw=randwrite',
    '--bs=4k',
    '--iodepth=32',
    '--verify=crc32c',
    '--do_verify=1',
    '--verify_fatal=1',
    '--verify_state_save=0',
  ]);
  t.equal(verified.code, 0, verified.stderr);
  const verifyJob = (parseFioJson(verified.stdout) as { jobs: Array<{ error: number; write: { io_bytes: number }; read: { io_bytes: number } }> }).jobs[0]!;
  t.equal(verifyJob.error, 0, 'fio reports no error');
  t.equal(verifyJob.write.io_bytes, 48 * 1024 * 1024, 'every block written');
  t.equal(verifyJob.read.io_bytes, 48 * 1024 * 1024, 'every block read back and verified');

  const mixed = await run('fio', [
    '--name=mixed',
    ...common,
    '--rw=randrw',
    '--bsrange=512-256k',
    '--bs_unaligned=0',
    '--iodepth=16',
    '--fsync=64',
    '--io_size=64M',
    '--verify=crc32c',
    '--do_verify=1',
    '--verify_fatal=1',
    '--verify_state_save=0',
  ]);
  t.equal(mixed.code, 0, mixed.stderr);
  t.equal((parseFioJson(mixed.stdout) as { jobs: Array<{ error: number }> }).jobs[0]!.error, 0);
});
