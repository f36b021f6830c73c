// nbdinfo (libnbd) against the real appliance: what the export says about itself.

import t from 'tap';
import { startAppliance } from '../support/appliance.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools, run } from '../support/tools.js';

t.test('nbdinfo sees the export, its size, flags and block sizes', async (t) => {
  if (!requireTools(t, ['nbdinfo'])) return;
  const appliance = await startAppliance(t, { dataDirectory: temporaryDirectory(t) });

  const json = await run('nbdinfo', ['--json', appliance.uri()]);
  t.equal(json.code, 0, json.stderr);
  const info = JSON.parse(json.stdout) as {
    protocol: string;
    exports: Array<Record<string, unknown>>;
  };
  t.match(info.protocol, /newstyle-fixed/);
  const exported = info.exports[0]!;
  t.equal(exported['export-name'], 'vol0');
  t.equal(exported['export-size'], 64 * 1024 * 1024);
  t.equal(exported['block_size_minimum'], 1);
  t.equal(exported['block_size_preferred'], 4096);
  t.equal(exported['block_size_maximum'], 32 * 1024 * 1024);
  t.match(String(exported['description']), /vol0/);

  for (const capability of ['flush', 'fua', 'trim', 'zero', 'fast-zero', 'cache', 'df', 'multi-conn', 'structured-reply']) {
    const can = await run('nbdinfo', [`--can=${capability}`, appliance.uri()]);
    t.equal(can.code, 0, `can ${capability}`);
  }
  const readOnly = await run('nbdinfo', ['--is=read-only', appliance.uri()]);
  t.equal(readOnly.code, 2, 'the live export is writable (exit 2 means false)');
  const size = await run('nbdinfo', ['--size', appliance.unixUri()]);
  t.equal(size.stdout.trim(), String(64 * 1024 * 1024), 'size over the unix socket');
});

t.test('nbdinfo --list shows every volume with its description, and the default export', async (t) => {
  if (!requireTools(t, ['nbdinfo'])) return;
  const appliance = await startAppliance(t, { dataDirectory: temporaryDirectory(t) });
  const list = await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${appliance.nbdPort}`]);
  t.equal(list.code, 0, list.stderr);
  const parsed = JSON.parse(list.stdout) as { exports: Array<{ 'export-name': string; description: string }> };
  t.same(
    parsed.exports.map((entry) => entry['export-name']),
    ['vol0'],
  );
  t.match(parsed.exports[0]!.description, /cdp-nbd volume vol0/);
  const byDefault = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${appliance.nbdPort}`]);
  t.equal(byDefault.stdout.trim(), String(64 * 1024 * 1024), 'the empty export name selects vol0');
  const unknown = await run('nbdinfo', [appliance.uri('no-such-volume')]);
  t.not(unknown.code, 0, 'an unknown export is refused');
});

t.test('nbdinfo --map: a new volume is one hole; written data shows as data', async (t) => {
  if (!requireTools(t, ['nbdinfo', 'qemu-io'])) return;
  const appliance = await startAppliance(t, { dataDirectory: temporaryDirectory(t) });
  const empty = await run('nbdinfo', ['--map', '--json', appliance.uri()]);
  const emptyMap = JSON.parse(empty.stdout) as Array<{ offset: number; length: number; type: number }>;
  t.same(emptyMap, [{ offset: 0, length: 64 * 1024 * 1024, type: 3, description: 'hole,zero' }]);

  const write = await run('qemu-io', ['-f', 'raw', appliance.uri(), '-c', 'write -P 0x5a 1M 1M']);
  t.equal(write.code, 0, write.stderr);
  const written = await run('nbdinfo', ['--map', '--json', appliance.uri()]);
  const map = JSON.parse(written.stdout) as Array<{ offset: number; length: number; type: number }>;
  const data = map.filter((extent) => (extent.type & 1) === 0);
  t.ok(data.some((extent) => extent.offset <= 1048576 && extent.offset + extent.length >= 2097152), 'the written MiB is data');
  t.equal(map.reduce((sum, extent) => sum + extent.length, 0), 64 * 1024 * 1024, 'extents cover the export');
});
