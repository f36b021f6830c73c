// Restores and verifications to nbds:// targets, over real TLS: `cdp-nbd tls generate` makes the
// certificates; the target is a second appliance demanding TLS and a client certificate (and
// allowing only the restoring appliance's certificate name), then qemu-nbd demanding the same.
// The result is read back with real clients (nbdcopy over nbds://, qemu-img compare).
// Invariants checked: the appliance starts TLS before anything else and checks the server
// against its --remote-tls-ca (a server of another CA is refused); it shows its
// --remote-tls-cert to servers that verify clients; a plaintext nbd:// URI to a TLS-only server
// fails rather than sending data in the clear; without --remote-tls-ca, or with CA files named in
// the request, nbds:// is refused before any connection.

import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { cliPath, startAppliance, type Appliance } from '../support/appliance.js';
import { apiRequest, type ApiResponse } from '../support/api.js';
import { startQemuNbdTls } from '../support/qemu-nbd.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools, run } from '../support/tools.js';

const MiB = 1024 * 1024;

function generateCertificates(directory: string, clients: string[]): ReturnType<typeof run> {
  return run(process.execPath, [cliPath, 'tls', 'generate', '--out', directory, ...clients.flatMap((client) => ['--client', client])]);
}

/** The restoring appliance's client side of TLS: the CA, and its certificate named "appliance". */
function remoteTlsArguments(certificates: string): string[] {
  const client = path.join(certificates, 'clients/appliance');
  return ['--remote-tls-ca', path.join(certificates, 'ca-cert.pem'), '--remote-tls-cert', path.join(client, 'client-cert.pem'), '--remote-tls-key', path.join(client, 'client-key.pem')];
}

function restore(appliance: Appliance, target: string, extra: Record<string, unknown> = {}): Promise<ApiResponse> {
  return apiRequest(appliance, 'POST', '/api/v1/restores?wait=true', { volume: 'vol0', snapshot: 'good', target, ...extra });
}

async function qemuIo(uri: string, commands: string[]): Promise<void> {
  const result = await run('qemu-io', ['-f', 'raw', uri, ...commands.flatMap((command) => ['-c', command])]);
  if (result.code !== 0) throw new Error(`qemu-io: ${result.stderr}`);
}

async function compare(left: string, right: string): Promise<{ code: number; text: string }> {
  const result = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', left, right]);
  return { code: result.code, text: `${result.stdout}${result.stderr}` };
}

t.test('restore and verify onto nbds:// targets: another appliance, then qemu-nbd; servers of another CA and plaintext refused', async (t) => {
  if (!requireTools(t, ['openssl', 'qemu-io', 'qemu-img', 'qemu-nbd', 'nbdcopy'])) return;
  const directory = temporaryDirectory(t);
  const certificates = path.join(directory, 'tls');
  const made = await generateCertificates(certificates, ['appliance']);
  t.equal(made.code, 0, made.stderr);
  const stranger = path.join(directory, 'stranger');
  t.equal((await generateCertificates(stranger, ['appliance'])).code, 0, 'an unrelated CA');

  const source = await startAppliance(t, { dataDirectory: path.join(directory, 'data'), volumeSize: '16M', extraArguments: remoteTlsArguments(certificates) });
  const target = await startAppliance(t, {
    dataDirectory: path.join(directory, 'target-data'),
    volumeSize: '16M',
    extraArguments: [
      '--tls', 'required',
      '--tls-cert', path.join(certificates, 'server-cert.pem'),
      '--tls-key', path.join(certificates, 'server-key.pem'),
      '--tls-ca', path.join(certificates, 'ca-cert.pem'),
      '--tls-verify-clients',
      '--allow', 'vol0=cn:appliance',
    ],
  });
  await qemuIo(source.uri(), ['write -P 0x31 0 3M', 'write -P 0x32 9M 64k', 'write -z 12M 1M']);
  t.equal((await apiRequest(source, 'POST', '/api/v1/volumes/vol0/snapshots', { name: 'good' })).status, 201);
  await qemuIo(source.uri(), ['write -P 0x33 1M 1M']);
  const view = await apiRequest(source, 'POST', '/api/v1/exports', { volume: 'vol0', snapshot: 'good' });
  t.equal(view.status, 201, JSON.stringify(view.json));
  const atSnapshot = path.join(directory, 'at-snapshot.img');
  t.equal((await run('nbdcopy', [view.json.uri as string, atSnapshot])).code, 0, 'the snapshot, read by a real client');

  // Another appliance: TLS required, client certificates verified, only cn:appliance allowed.
  const nbds = `nbds://127.0.0.1:${target.nbdPort}/vol0`;
  const restored = await restore(source, nbds);
  t.equal(restored.status, 200, JSON.stringify(restored.json));
  t.match(restored.json, { state: 'done', result: { verification: { mismatches: [] } } }, JSON.stringify(restored.json.result));
  const readBack = path.join(directory, 'read-back.img');
  const copied = await run('nbdcopy', [`${nbds}?tls-certificates=${path.join(certificates, 'clients/appliance')}`, readBack]);
  t.equal(copied.code, 0, `nbdcopy over TLS: ${copied.stderr}`);
  const equal = await compare(atSnapshot, readBack);
  t.equal(equal.code, 0, `the target holds the snapshot, read with nbdcopy over nbds://: ${equal.text}`);
  const verified = await apiRequest(source, 'POST', '/api/v1/verify?wait=true', { volume: 'vol0', snapshot: 'good', against: nbds });
  t.match(verified.json, { state: 'done', result: { identical: true } }, `verify against the nbds:// target: ${JSON.stringify(verified.json.result)}`);

  const plaintext = await restore(source, `nbd://127.0.0.1:${target.nbdPort}/vol0`);
  t.equal(plaintext.status, 400, 'nbd:// to a server that demands TLS fails rather than going in the clear');
  t.match((plaintext.json.error as { message: string }).message, /requires TLS/);

  // qemu-nbd demanding TLS and a client certificate: a server that is not ours.
  const disk = path.join(directory, 'qemu-disk.img');
  fs.writeFileSync(disk, crypto.randomBytes(16 * MiB));
  const qemu = await startQemuNbdTls(t, disk, certificates);
  const ontoQemu = await restore(source, qemu.uri);
  t.equal(ontoQemu.status, 200, JSON.stringify(ontoQemu.json));
  t.match(ontoQemu.json, { state: 'done', result: { verification: { mismatches: [] } } });
  await qemu.stop();
  const onQemu = await compare(atSnapshot, disk);
  t.equal(onQemu.code, 0, `qemu-nbd's file holds the snapshot: ${onQemu.text}`);

  // A server whose certificate another CA signed is not trusted.
  const strangerDisk = path.join(directory, 'stranger-disk.img');
  fs.writeFileSync(strangerDisk, Buffer.alloc(0));
  fs.truncateSync(strangerDisk, 16 * MiB);
  const impostor = await startQemuNbdTls(t, strangerDisk, stranger);
  const refused = await restore(source, impostor.uri);
  t.equal(refused.status, 400, JSON.stringify(refused.json));
  t.match((refused.json.error as { message: string }).message, /TLS with 127\.0\.0\.1 failed: .*certificate/i);
  t.same(fs.readFileSync(strangerDisk), Buffer.alloc(16 * MiB), 'nothing was written to it');
});

t.test('nbds:// without --remote-tls-ca, or with CA files named in the request, is refused before any connection', async (t) => {
  const directory = temporaryDirectory(t);
  const appliance = await startAppliance(t, { dataDirectory: path.join(directory, 'data'), volumeSize: '16M' });
  t.equal((await apiRequest(appliance, 'POST', '/api/v1/volumes/vol0/snapshots', { name: 'good' })).status, 201);
  // Port 1: nothing listens there, so a refusal that names the option was made before connecting.
  const noCa = await restore(appliance, 'nbds://127.0.0.1:1/vol0');
  t.equal(noCa.status, 400);
  t.match(noCa.json.error, { code: 'invalid-request', message: /nbds:\/\/ needs the appliance started with --remote-tls-ca FILE/ });
  const namedFiles = await restore(appliance, 'nbds://127.0.0.1:1/vol0?tls-certificates=/etc/ssl/private');
  t.equal(namedFiles.status, 400);
  t.match(namedFiles.json.error, { code: 'invalid-request', message: /nbds:\/\/ takes no query/ });

  const halfConfigured = await run(process.execPath, [cliPath, 'serve', '--data', path.join(directory, 'other'), '--nbd-listen', '127.0.0.1:0', '--http-listen', '127.0.0.1:0', '--remote-tls-cert', '/nonexistent'], { timeoutMs: 30_000 });
  t.equal(halfConfigured.code, 1);
  t.match(halfConfigured.stderr, /--remote-tls-cert FILE and --remote-tls-key FILE go together/);
  const badCa = path.join(directory, 'not-a-ca.pem');
  fs.writeFileSync(badCa, 'not a certificate');
  const unusable = await run(process.execPath, [cliPath, 'serve', '--data', path.join(directory, 'other'), '--nbd-listen', '127.0.0.1:0', '--http-listen', '127.0.0.1:0', '--remote-tls-ca', badCa], { timeoutMs: 30_000 });
  t.equal(unusable.code, 1);
  t.match(unusable.stderr, /--remote-tls-\*: the client TLS files are unusable/);
});
