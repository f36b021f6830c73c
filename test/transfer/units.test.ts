// The pieces of transfers on their own: coalescing, the bounded range set, the block diff, and
// parsing of what people give as targets.

import t from 'tap';
import { BoundedRangeSet, coalesce, split } from '../../transfer/ranges.js';
import { differingRuns } from '../../transfer/copy.js';
import { parseEndpoint } from '../../transfer/endpoints.js';

t.test('coalesce joins small gaps, never past the piece size, and split aligns pieces', async (t) => {
  const ranges = [
    { startBytes: 0, endBytes: 4096 },
    { startBytes: 8192, endBytes: 12288 },
    { startBytes: 100_000, endBytes: 104_096 },
  ];
  t.same(coalesce(ranges, 4096, 1 << 20), [
    { startBytes: 0, endBytes: 12288 },
    { startBytes: 100_000, endBytes: 104_096 },
  ]);
  t.same(coalesce(ranges, 0, 1 << 20), ranges, 'no gap allowed: nothing joined');
  t.same(coalesce([{ startBytes: 0, endBytes: 10 }, { startBytes: 12, endBytes: 20 }], 4, 8), [
    { startBytes: 0, endBytes: 8 },
    { startBytes: 8, endBytes: 10 },
    { startBytes: 12, endBytes: 16 },
    { startBytes: 16, endBytes: 20 },
  ], 'pieces never exceed the bound');
  t.same(split({ startBytes: 3, endBytes: 20 }, 8), [
    { startBytes: 3, endBytes: 8 },
    { startBytes: 8, endBytes: 16 },
    { startBytes: 16, endBytes: 20 },
  ]);
});

t.test('a bounded range set stays bounded and covers everything added', async (t) => {
  const set = new BoundedRangeSet(4);
  const added: Array<[number, number]> = [];
  for (let index = 0; index < 50; index++) {
    const start = index * 100 + (index % 7) * 3;
    added.push([start, start + 10]);
    set.add(start, start + 10);
  }
  t.ok(set.list().length <= 4, 'at most 4 ranges');
  t.ok(set.widened);
  t.equal(set.addedBytes, 500);
  for (const [start, end] of added) t.ok(set.list().some((range) => range.startBytes <= start && range.endBytes >= end), `[${start}, ${end}) is covered`);
  const exact = new BoundedRangeSet(10);
  exact.add(0, 10);
  exact.add(10, 20);
  exact.add(30, 40);
  t.same(exact.list(), [{ startBytes: 0, endBytes: 20 }, { startBytes: 30, endBytes: 40 }], 'touching ranges merge; nothing widened');
  t.notOk(exact.widened);
});

t.test('differing runs find the 4 KiB blocks that differ, joined across small gaps', async (t) => {
  const left = Buffer.alloc(1 << 20);
  const right = Buffer.alloc(1 << 20);
  t.same(differingRuns(left, right), []);
  right[5] = 1; // block 0
  right[3 * 4096 + 1] = 1; // block 3: gap of 8 KiB, joined
  right[100 * 4096] = 1; // block 100: alone
  right.writeUInt8(1, (1 << 20) - 1); // the last block
  t.same(differingRuns(left, right), [
    [0, 4 * 4096],
    [100 * 4096, 101 * 4096],
    [(1 << 20) - 4096, 1 << 20],
  ]);
});

t.test('targets: NBD URIs (nbds:// with TLS), unix sockets, paths; anything else is refused with a reason', async (t) => {
  t.same(parseEndpoint('nbd://host-a:10810/disk'), { kind: 'nbd', address: { kind: 'tcp', host: 'host-a', port: 10810 }, exportName: 'disk', tls: false });
  t.same(parseEndpoint('nbd://[::1]/'), { kind: 'nbd', address: { kind: 'tcp', host: '::1', port: 10809 }, exportName: '', tls: false });
  t.same(parseEndpoint('nbds://host-a/disk'), { kind: 'nbd', address: { kind: 'tcp', host: 'host-a', port: 10809 }, exportName: 'disk', tls: true });
  t.match(parseEndpoint('nbds://host-a/disk?tls-certificates=/etc/ssl/private'), { problem: /takes no query.*--remote-tls-ca/ }, 'a caller does not choose the files the appliance reads');
  t.same(parseEndpoint('nbd+unix:///vol0@snap?socket=/run/nbd.sock'), { kind: 'nbd', address: { kind: 'unix', path: '/run/nbd.sock' }, exportName: 'vol0@snap', tls: false });
  t.same(parseEndpoint('/dev/sdb'), { kind: 'path', path: '/dev/sdb' });
  t.match(parseEndpoint('nbd+unix:///disk'), { problem: /socket=PATH/ });
  t.match(parseEndpoint('https://example.com/disk'), { problem: /only nbd/ });
  t.match(parseEndpoint('nbd://'), { problem: /./ });
  t.match(parseEndpoint(''), { problem: /empty/ });
});
