// Access rules follow the data: an export of a volume's past (vol@snapshot, vol@time, a clone)
// keeps the volume's allowlist and TLS-only flag, checked with nbdinfo against the real
// appliance. Invariants: a view or clone is never usable by a client the volume refuses unless an
// admin made it with inheritAccess false; its own rules only narrow; this holds for exports kept
// across a restart; serve warns of every export open to anyone beyond loopback.

import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { createToken } from '../../appliance/api-tokens.js';
import { generateCertificates } from '../../tools/tls-certificates.js';
import { apiRequest } from '../support/api.js';
import { cliPath, startAppliance, type Appliance } from '../support/appliance.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools, run } from '../support/tools.js';

const volumeSizeBytes = 64 * 1024 * 1024;

/** nbdinfo --size; LIBNBD_DEBUG shows the server's reason for a refusal on stderr. */
function nbdinfoSize(uri: string): ReturnType<typeof run> {
  return run('nbdinfo', ['--size', uri], { env: { ...process.env, LIBNBD_DEBUG: '1' } });
}

function plaintext(appliance: Appliance, exportName: string): string {
  return `nbd://127.0.0.1:${appliance.nbdPort}/${exportName}`;
}

function overTls(appliance: Appliance, exportName: string, credentials: string): string {
  return `nbds://127.0.0.1:${appliance.nbdPort}/${exportName}?tls-certificates=${credentials}`;
}

t.test('views and clones of a TLS-only volume with an allowlist keep both, unless an admin frees them', async (t) => {
  if (!requireTools(t, ['openssl', 'nbdinfo'])) return;
  const directory = temporaryDirectory(t);
  const certificates = path.join(directory, 'tls');
  generateCertificates({ outDirectory: certificates, clients: ['alice', 'bob'] });
  const alice = path.join(certificates, 'clients/alice');
  const bob = path.join(certificates, 'clients/bob');
  const dataDirectory = path.join(directory, 'data');
  const serveArguments = [
    '--tls',
    'selective',
    '--tls-cert',
    path.join(certificates, 'server-cert.pem'),
    '--tls-key',
    path.join(certificates, 'server-key.pem'),
    '--tls-ca',
    path.join(certificates, 'ca-cert.pem'),
    '--tls-only',
    'vol0',
    '--allow',
    'vol0=cn:alice,unix',
  ];
  const appliance = await startAppliance(t, { dataDirectory, extraArguments: serveArguments });
  const operator = createToken(dataDirectory, { name: 'ops', role: 'operator' }).secret;
  const asOperator = (method: string, route: string, body?: unknown) => apiRequest(appliance, method, route, body, { token: operator });

  t.equal((await asOperator('POST', '/api/v1/volumes/vol0/snapshots', { name: 'snap' })).status, 201);
  const view = await asOperator('POST', '/api/v1/exports', { volume: 'vol0', snapshot: 'snap' });
  t.equal(view.status, 201, JSON.stringify(view.json));
  t.match(view.json, { name: 'vol0@snap', tlsOnly: true, allow: ['cn:alice', 'unix'], inheritAccess: true }, "the view shows its volume's policy");
  const clone = await asOperator('POST', '/api/v1/exports', { volume: 'vol0', at: Date.now() * 1000, writable: true, name: 'vol0-clone' });
  t.equal(clone.status, 201, JSON.stringify(clone.json));
  t.match(clone.json, { kind: 'clone', tlsOnly: true, allow: ['cn:alice', 'unix'] }, 'so does a clone of an instant');

  for (const name of ['vol0@snap', 'vol0-clone']) {
    const plain = await nbdinfoSize(plaintext(appliance, name));
    t.not(plain.code, 0, `${name}: a plaintext client is refused`);
    t.match(plain.stderr, new RegExp(`export "${name}" requires TLS`), 'because the volume is TLS-only');
    const unix = await nbdinfoSize(appliance.unixUri(name));
    t.not(unix.code, 0, `${name}: so is a unix-socket client without TLS, which the allowlist names`);
    const asAlice = await nbdinfoSize(overTls(appliance, name, alice));
    t.equal(asAlice.stdout.trim(), String(volumeSizeBytes), `${name}: alice over TLS is let in ${asAlice.stderr.slice(-300)}`);
    const asBob = await nbdinfoSize(overTls(appliance, name, bob));
    t.not(asBob.code, 0, `${name}: bob, whom the volume does not allow, is refused`);
    t.match(asBob.stderr, /does not allow client 127\.0\.0\.1 \(certificate bob\)/);
  }

  // Rules of its own narrow: bob is on the view's list but not the volume's; alice the reverse.
  const narrowed = await asOperator('POST', '/api/v1/exports', { volume: 'vol0', snapshot: 'snap', name: 'narrowed', allow: ['cn:bob'], tlsOnly: false });
  t.equal(narrowed.status, 201, JSON.stringify(narrowed.json));
  t.match(narrowed.json, { tlsOnly: true, allow: ['cn:bob'], inheritAccess: true }, 'tlsOnly false does not lift the volume\'s TLS-only');
  t.not((await nbdinfoSize(overTls(appliance, 'narrowed', bob))).code, 0, 'bob is refused: the volume does not allow him');
  t.not((await nbdinfoSize(overTls(appliance, 'narrowed', alice))).code, 0, 'alice is refused: the view does not allow her');

  // Only an admin may free an export of its volume's policy.
  const wideRequest = { volume: 'vol0', snapshot: 'snap', name: 'wide', inheritAccess: false };
  const refused = await asOperator('POST', '/api/v1/exports', wideRequest);
  t.equal(refused.status, 403);
  t.match(refused.json, { error: { code: 'forbidden-role', details: { roleNeeded: 'admin' } } });
  const wide = await apiRequest(appliance, 'POST', '/api/v1/exports', wideRequest);
  t.equal(wide.status, 201, JSON.stringify(wide.json));
  t.match(wide.json, { tlsOnly: false, allow: [], inheritAccess: false });
  t.equal((await nbdinfoSize(plaintext(appliance, 'wide'))).stdout.trim(), String(volumeSizeBytes), "the admin's export is open, as asked");

  const kept = JSON.parse(fs.readFileSync(path.join(dataDirectory, 'exports.json'), 'utf8')) as { exports: Array<Record<string, unknown>> };
  t.notOk('tlsOnly' in kept.exports.find((entry) => entry.name === 'vol0@snap')!, "exports.json keeps the view's own rules only: the volume's come from serve at each start");
  t.match(kept.exports.find((entry) => entry.name === 'wide'), { inheritAccess: false });
  t.equal(await appliance.stop(), 0);

  const restarted = await startAppliance(t, { dataDirectory, extraArguments: serveArguments });
  t.not((await nbdinfoSize(plaintext(restarted, 'vol0@snap'))).code, 0, 'after a restart the view still refuses plaintext clients');
  t.not((await nbdinfoSize(overTls(restarted, 'vol0-clone', bob))).code, 0, 'and the clone bob');
  t.equal((await nbdinfoSize(plaintext(restarted, 'wide'))).code, 0, "and the admin's export stays open");
  t.equal(await restarted.stop(), 0);
});

t.test('serve warns of each export reachable beyond loopback with no allowlist and no TLS', async (t) => {
  const dataDirectory = path.join(temporaryDirectory(t), 'data');
  for (const volume of ['vol0', 'vol1']) {
    const created = await run(process.execPath, [cliPath, 'volume', 'create', volume, '--size', '16M', '--data', dataDirectory]);
    t.equal(created.code, 0, created.stderr);
  }
  const loopback = await startAppliance(t, { dataDirectory });
  t.equal(loopback.logEntries().filter((entry) => String(entry.msg).startsWith('export open to anyone')).length, 0, 'on loopback: no warning');
  t.equal(await loopback.stop(), 0);

  const exposed = await startAppliance(t, { dataDirectory, extraArguments: ['--nbd-listen', '0.0.0.0:0', '--allow', 'vol1=10.0.0.0/8'] });
  const warnings = exposed.logEntries().filter((entry) => String(entry.msg).startsWith('export open to anyone'));
  t.match(warnings, [{ level: 40, export: 'vol0', nbd: [/^0\.0\.0\.0:\d+$/] }], 'vol0 is open; vol1 has an allowlist');
  t.equal(warnings.length, 1);
  t.equal(await exposed.stop(), 0);
});
