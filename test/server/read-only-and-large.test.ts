// The server in-process with exports the appliance does not make yet on its own: a read-only
// export (FLUSH accepted, every write refused with EPERM) and a volume over 4 GiB (TRIM and
// WRITE_ZEROES of 4 GiB - 1 bytes in one request, as mkfs sends them), driven by real clients.

import t from 'tap';
import { ExportTable, NbdServer } from '../../server/index.js';
import { GiB, MiB, Volume, type BlockDevice } from '../../storage/index.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools, run, runNbdsh } from '../support/tools.js';

/** A view of a device that refuses writes, as point-in-time exports will. */
function readOnly(device: BlockDevice): BlockDevice {
  const refuse = (): Promise<never> => Promise.reject(new Error('read-only'));
  return {
    sizeBytes: device.sizeBytes,
    readOnly: true,
    description: `${device.description}, read-only`,
    capabilities: { ...device.capabilities, trim: false, writeZeroes: false, fastZero: false },
    read: (offsetBytes, lengthBytes) => device.read(offsetBytes, lengthBytes),
    write: refuse,
    writeZeroes: refuse,
    trim: refuse,
    flush: () => Promise.resolve(),
    cache: (offsetBytes, lengthBytes) => device.cache(offsetBytes, lengthBytes),
    allocation: (offsetBytes, lengthBytes, extentCountMax) => device.allocation(offsetBytes, lengthBytes, extentCountMax),
  };
}

async function serve(t: { teardown(callback: () => Promise<void>): void }, devices: Record<string, BlockDevice>): Promise<number> {
  const exports = new ExportTable();
  for (const [name, device] of Object.entries(devices)) exports.add(name, device);
  const server = new NbdServer({ exports });
  const address = await server.listen({ kind: 'tcp', host: '127.0.0.1', port: 0 });
  t.teardown(() => server.close());
  return address.kind === 'tcp' ? address.port : 0;
}

t.test('a read-only export: flags, EPERM for writes, FLUSH accepted, reads served', async (t) => {
  if (!requireTools(t, ['nbdinfo', 'qemu-io', 'nbdsh'])) return;
  const directory = temporaryDirectory(t);
  await Volume.create(`${directory}/vol`, { name: 'vol', sizeBytes: 64 * MiB });
  const volume = await Volume.open(`${directory}/vol`);
  t.teardown(() => volume.close());
  await volume.write(0, Buffer.alloc(65536, 0x61), { fua: true });
  const port = await serve(t, { view: readOnly(volume) });
  const uri = `nbd://127.0.0.1:${port}/view`;

  t.equal((await run('nbdinfo', ['--is=read-only', uri])).code, 0, 'nbdinfo says read-only');
  t.equal((await run('nbdinfo', ['--can=trim', uri])).code, 2, 'no TRIM offered on a read-only export');
  const read = await run('qemu-io', ['-r', '-f', 'raw', uri, '-c', 'read -P 0x61 0 64k']);
  t.equal(read.code, 0, read.stderr);
  const script = `
h.set_strict_mode(0)
h.flush()  # the Linux kernel sends FLUSH to read-only devices too
errors = {}
for name, call in [("write", lambda: h.pwrite(b"x" * 512, 0)), ("trim", lambda: h.trim(512, 0)), ("zero", lambda: h.zero(512, 0))]:
    try:
        call()
        errors[name] = "ok"
    except nbd.Error as error:
        errors[name] = error.errno
assert errors == {"write": "EPERM", "trim": "EPERM", "zero": "EPERM"}, errors
assert h.pread(512, 0) == b"a" * 512
print("ok")
`;
  const result = await runNbdsh(['-u', uri], script);
  t.equal(result.code, 0, result.stdout + result.stderr);
});

t.test('a 5 GiB volume takes TRIM and WRITE_ZEROES of 4 GiB - 1 bytes in one request', async (t) => {
  if (!requireTools(t, ['nbdsh'])) return;
  const directory = temporaryDirectory(t);
  await Volume.create(`${directory}/big`, { name: 'big', sizeBytes: 5 * GiB });
  const volume = await Volume.open(`${directory}/big`);
  t.teardown(() => volume.close());
  const port = await serve(t, { big: volume });
  const script = `
top = 0xffffffff
h.pwrite(b"\\x5a" * 4096, 0)
h.pwrite(b"\\x5b" * 4096, top - 4096 + 1)
h.pwrite(b"\\x5c" * 4096, top + 1)
h.trim(top, 0)
assert h.pread(4096, 0) == b"\\x00" * 4096
assert h.pread(4096, top - 4096 + 1) == b"\\x00" * 4095 + b"\\x5b", "the trim ends one byte short of 4 GiB"
assert h.pread(4096, top + 1) == b"\\x5c" * 4096, "the byte after the trimmed range is kept"
h.pwrite(b"\\x5d" * 4096, 4096)
h.zero(top, 0, nbd.CMD_FLAG_FUA)
assert h.pread(4096, 4096) == b"\\x00" * 4096
h.flush()
print("ok")
`;
  const result = await runNbdsh(['-u', `nbd://127.0.0.1:${port}/big`], script);
  t.equal(result.code, 0, result.stdout + result.stderr);
});
