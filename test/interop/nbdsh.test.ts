// nbdsh (libnbd's Python shell) scripts for negotiation edge cases and error values: the answers
// a real client gets when it steps through negotiation by hand or sends requests out of range.

import t from 'tap';
import { startAppliance } from '../support/appliance.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools, runNbdsh } from '../support/tools.js';

const volumeSizeBytes = 64 * 1024 * 1024;

t.test('negotiation step by step (--opt-mode)', async (t) => {
  if (!requireTools(t, ['nbdsh'])) return;
  const appliance = await startAppliance(t, { dataDirectory: temporaryDirectory(t) });
  const script = `
import sys
assert h.aio_is_negotiating()
names = []
h.opt_list(lambda name, description: names.append((name, description)))
assert [n for n, d in names] == ["vol0"], names
assert "vol0" in names[0][1], names

# INFO on an unknown export fails and negotiation goes on.
h.set_export_name("no-such-volume")
try:
    h.opt_info()
    sys.exit("opt_info of an unknown export succeeded")
except nbd.Error as error:
    pass
assert h.aio_is_negotiating()

# Listing contexts: all of them, a namespace wildcard, an unknown namespace (ignored).
h.set_export_name("vol0")
def listed(queries):
    h.clear_meta_contexts()
    for query in queries:
        h.add_meta_context(query)
    seen = []
    h.opt_list_meta_context(lambda name: seen.append(name))
    return seen
assert listed([]) == ["base:allocation"]
assert listed(["base:"]) == ["base:allocation"]
assert listed(["x-unknown:thing"]) == []
h.clear_meta_contexts()

# INFO then GO on vol0 with the allocation context selected.
h.opt_info()
assert h.get_size() == ${volumeSizeBytes}
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 * 1024 * 1024
h.add_meta_context("base:allocation")
h.opt_go()
assert not h.aio_is_negotiating()
assert h.can_meta_context("base:allocation")
extents = []
h.block_status(1024 * 1024, 0, lambda context, offset, entries, error: extents.append((context, entries)))
assert extents[0][0] == "base:allocation" and extents[0][1][1] == 3, extents
h.shutdown()
print("ok")
`;
  const result = await runNbdsh(['--opt-mode', '-u', appliance.uri()], script);
  t.equal(result.code, 0, result.stderr);
  t.match(result.stdout, /ok/);
});

t.test('old EXPORT_NAME path, simple replies, and an unknown export is a hard disconnect', async (t) => {
  if (!requireTools(t, ['nbdsh'])) return;
  const appliance = await startAppliance(t, { dataDirectory: temporaryDirectory(t) });
  const script = `
import sys
# No structured replies: READ data comes back in simple replies.
h.set_request_structured_replies(False)
h.connect_uri("${appliance.uri()}")
assert not h.get_structured_replies_negotiated()
h.pwrite(b"\\x42" * 4096, 8192)
assert h.pread(4096, 8192) == b"\\x42" * 4096
h.shutdown()

# Negotiation aborted by the client: the server acknowledges and closes.
g = nbd.NBD()
g.set_opt_mode(True)
g.connect_uri("${appliance.uri()}")
g.opt_abort()
assert g.aio_is_closed() or g.aio_is_dead() or not g.aio_is_negotiating()

# An unknown export: GO answers an error, the connection is refused.
k = nbd.NBD()
try:
    k.connect_uri("${appliance.uri('no-such-volume')}")
    sys.exit("connected to an unknown export")
except nbd.Error:
    pass
print("ok")
`;
  const result = await runNbdsh([], script);
  t.equal(result.code, 0, result.stderr);
  t.match(result.stdout, /ok/);
});

t.test('out-of-range requests get the errno the spec asks for, and the connection survives', async (t) => {
  if (!requireTools(t, ['nbdsh'])) return;
  const appliance = await startAppliance(t, { dataDirectory: temporaryDirectory(t) });
  const end = volumeSizeBytes - 512;
  const script = `
h.set_strict_mode(0)
results = {}
for name, call in [
    ("read", lambda: h.pread(1024, ${end})),
    ("write", lambda: h.pwrite(b"x" * 1024, ${end})),
    ("trim", lambda: h.trim(1024, ${end})),
    ("zero", lambda: h.zero(1024, ${end})),
    ("cache", lambda: h.cache(1024, ${end})),
    ("block_status", lambda: h.block_status(1024, ${end}, lambda *args: 0)),
    ("huge_read", lambda: h.pread(64 * 1024 * 1024, 0)),
]:
    try:
        call()
        results[name] = "ok"
    except nbd.Error as error:
        results[name] = error.errno
print(results)
assert results == {"read": "EINVAL", "write": "ENOSPC", "trim": "EINVAL", "zero": "ENOSPC", "cache": "EINVAL", "block_status": "EINVAL", "huge_read": "EINVAL"}, results
# Still usable afterwards.
h.pwrite(b"\\x07" * 512, 0)
assert h.pread(512, 0) == b"\\x07" * 512
# A 4 GiB - 1 trim is taken (the volume is smaller, so it is out of range: EINVAL, not a hang).
try:
    h.trim(0xffffffff, 0)
except nbd.Error as error:
    assert error.errno == "EINVAL", error.errno
# A whole-device TRIM and WRITE_ZEROES, as mkfs sends them.
h.trim(${volumeSizeBytes}, 0)
h.zero(${volumeSizeBytes}, 0)
assert h.pread(512, 0) == b"\\x00" * 512
print("ok")
`;
  const result = await runNbdsh(['-u', appliance.uri()], script);
  t.equal(result.code, 0, result.stdout + result.stderr);
  t.match(result.stdout, /ok/);
});

t.test('many requests in flight on one connection, answered out of order', async (t) => {
  if (!requireTools(t, ['nbdsh'])) return;
  const appliance = await startAppliance(t, { dataDirectory: temporaryDirectory(t) });
  const script = `
import os
blocks = {i: os.urandom(4096) for i in range(256)}
cookies = [h.aio_pwrite(blocks[i], i * 8192) for i in range(256)]
cookies.append(h.aio_flush())
while h.aio_in_flight() > 0:
    h.poll(-1)
for c in cookies:
    assert h.aio_command_completed(c)
buffers = {i: nbd.Buffer(4096) for i in range(256)}
reads = [h.aio_pread(buffers[i], i * 8192) for i in range(256)]
while h.aio_in_flight() > 0:
    h.poll(-1)
for i in range(256):
    assert buffers[i].to_bytearray() == blocks[i], i
print("ok")
`;
  const result = await runNbdsh(['-u', appliance.uri()], script);
  t.equal(result.code, 0, result.stdout + result.stderr);
  t.match(result.stdout, /ok/);
});
