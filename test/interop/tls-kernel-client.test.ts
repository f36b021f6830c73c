// The Linux kernel's NBD client over TLS, in the tiny test VM (test/support/vm.ts): nbd-client
// runs the STARTTLS handshake with GnuTLS (-cacertfile, -certfile, -keyfile) and hands the kernel
// a socket it proxies. Against an appliance with --tls required --tls-verify-clients and an
// allowlist (cn:alice): a plaintext attach is refused, alice attaches and writes seeded data that
// reads back in the guest and, on this machine, through nbdcopy over TLS; bob, whose certificate
// is valid but not on the allowlist, is refused, and the refusal is logged. The guest reaches this
// machine as 10.0.2.2, which the server certificate names.

import t from 'tap';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { cliPath, startAppliance } from '../support/appliance.js';
import { seededRandom } from '../support/seeded-random.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools, run } from '../support/tools.js';
import { bootVm, buildTestVm } from '../support/vm.js';

const MiB = 1024 * 1024;

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

t.test('nbd-client with TLS and a client certificate: refused in plaintext and off the allowlist, served to alice', async (t) => {
  if (!requireTools(t, ['qemu-system-x86_64', 'cpio', 'openssl', 'nbdcopy'])) return;
  const image = buildTestVm();
  const directory = temporaryDirectory(t);
  const certificates = path.join(directory, 'tls');
  const generated = await run(process.execPath, [cliPath, 'tls', 'generate', '--out', certificates, '--host', '10.0.2.2', '--host', '127.0.0.1', '--client', 'alice', '--client', 'bob']);
  t.equal(generated.code, 0, generated.stderr);
  const appliance = await startAppliance(t, {
    dataDirectory: path.join(directory, 'data'),
    volumeSize: '16M',
    extraArguments: [
      '--tls', 'required',
      '--tls-cert', path.join(certificates, 'server-cert.pem'),
      '--tls-key', path.join(certificates, 'server-key.pem'),
      '--tls-ca', path.join(certificates, 'ca-cert.pem'),
      '--tls-verify-clients',
      '--allow', 'vol0=cn:alice',
    ],
  });
  const random = seededRandom(Number(process.env.VM_TEST_SEED ?? 5));
  const data = Buffer.alloc(2 * MiB);
  for (let index = 0; index < data.length; index++) data[index] = Math.floor(random() * 256);
  const credentials = (client: string): Record<string, Buffer> =>
    Object.fromEntries(['ca-cert.pem', 'client-cert.pem', 'client-key.pem'].map((file) => [`${client}/${file}`, fs.readFileSync(path.join(certificates, 'clients', client, file))]));
  const attach = (client: string): string =>
    `nbd-client 10.0.2.2 ${appliance.nbdPort} /dev/nbd0 -N vol0 -timeout 20 -cacertfile /test/${client}/ca-cert.pem -certfile /test/${client}/client-cert.pem -keyfile /test/${client}/client-key.pem`;

  const vm = bootVm(t, image, {
    files: { 'data.bin': data, ...credentials('alice'), ...credentials('bob') },
    timeoutMs: 300_000,
    script: `
if nbd-client 10.0.2.2 ${appliance.nbdPort} /dev/nbd0 -N vol0 -timeout 20 >/tmp/plain.log 2>&1; then
  echo "@@ plain attached"; nbd-client -d /dev/nbd0
else
  echo "@@ plain refused"
fi
${attach('alice')}
echo "@@ size $(blockdev --getsize64 /dev/nbd0)"
dd if=/test/data.bin of=/dev/nbd0 bs=65536 2>/dev/null
sync
echo 3 > /proc/sys/vm/drop_caches
echo "@@ readback $(dd if=/dev/nbd0 bs=65536 count=32 2>/dev/null | sha256sum | cut -d' ' -f1)"
nbd-client -d /dev/nbd0
echo "@@ detached"
if ${attach('bob')} >/tmp/bob.log 2>&1; then
  echo "@@ bob attached"; nbd-client -d /dev/nbd0
else
  echo "@@ bob refused"
fi
`,
  });
  const result = await vm.finished;
  t.equal(result.scriptStatus, 0, `guest script exit status (${vm.accelerator}, boot ${result.bootMs} ms, run ${result.durationMs} ms)`, {
    tail: result.scriptStatus === 0 ? undefined : result.tail,
  });
  t.equal(vm.markers('plain').map((marker) => marker.values[0]).join(), 'refused', 'a plaintext nbd-client is refused');
  t.equal(Number(vm.markers('size')[0]?.values[0]), 16 * MiB, 'alice attached over TLS: the kernel sees the volume');
  t.equal(vm.markers('readback')[0]?.values[0], sha256(data), 'what the kernel wrote reads back through it');
  t.equal(vm.markers('detached').length, 1);
  t.equal(vm.markers('bob').map((marker) => marker.values[0]).join(), 'refused', 'bob is not on the allowlist');

  const copy = path.join(directory, 'copy.img');
  const copied = await run('nbdcopy', [`nbds://127.0.0.1:${appliance.nbdPort}/vol0?tls-certificates=${path.join(certificates, 'clients/alice')}`, copy]);
  t.equal(copied.code, 0, copied.stderr);
  t.equal(sha256(fs.readFileSync(copy).subarray(0, data.length)), sha256(data), 'the appliance holds what the kernel wrote');
  const entries = appliance.logEntries();
  t.ok(entries.some((entry) => entry.msg === 'TLS started' && entry.certificate === 'alice'), 'alice started TLS');
  t.ok(entries.some((entry) => entry.msg === 'access refused' && entry.certificate === 'bob'), "bob's refusal is logged");
  t.comment(`VM (${vm.accelerator}): boot ${result.bootMs} ms, whole run ${result.durationMs} ms`);
});
