// NBD over TLS and per-export access control, with real clients against the real appliance:
// `cdp-nbd tls generate` makes the certificates; nbdinfo (nbds:// with tls-certificates=DIR) and
// qemu-img/qemu-io (tls-creds-x509) attach over TLS; a raw client drives the spec's corner cases.
// Invariants checked: in required mode nothing but STARTTLS and ABORT is answered before TLS,
// and EXPORT_NAME before TLS hangs up; STARTTLS is acknowledged once; plaintext pipelined after
// STARTTLS and failed handshakes cost only that connection; a TLS-only export refuses plaintext
// clients with ERR_TLS_REQD; an allowlist refuses other clients with ERR_POLICY, and the refusal
// is logged; the server keeps serving everyone else.

import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import {
  ClientFlag,
  OptionReplyType,
  decodeOptionErrorMessage,
  serializeAbortOption,
  serializeClientFlags,
  serializeExportNameOption,
  serializeGoOption,
  serializeListOption,
  serializeStartTlsOption,
} from 'nbd-protocol-ts';
import { cliEnvironment, cliPath, startAppliance, type Appliance } from '../support/appliance.js';
import { subscribe } from '../support/event-stream.js';
import { RawConnection } from '../support/raw-connection.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools, run } from '../support/tools.js';

/** Certificates for the whole file: a CA, the server, clients alice and bob; and a stranger's CA. */
function makeCertificates(directory: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return run(process.execPath, [cliPath, 'tls', 'generate', '--out', directory, '--client', 'alice', '--client', 'bob']);
}

function tlsArguments(certificates: string, extra: string[] = []): string[] {
  return [
    '--tls-cert',
    path.join(certificates, 'server-cert.pem'),
    '--tls-key',
    path.join(certificates, 'server-key.pem'),
    '--tls-ca',
    path.join(certificates, 'ca-cert.pem'),
    ...extra,
  ];
}

function nbds(appliance: Appliance, exportName: string, credentials: string): string {
  return `nbds://127.0.0.1:${appliance.nbdPort}/${exportName}?tls-certificates=${credentials}`;
}

function qemuTlsArguments(appliance: Appliance, exportName: string, credentials: string): string[] {
  return [
    '--object',
    `tls-creds-x509,id=tls0,endpoint=client,dir=${credentials}`,
    '--image-opts',
    `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${appliance.nbdPort},export=${exportName},tls-creds=tls0`,
  ];
}

/** A hand-driven client: plaintext options, then STARTTLS and the same parser over TLS. */
class RawClient extends RawConnection {
  static async plain(port: number): Promise<RawClient> {
    const client = await RawClient.open({ host: '127.0.0.1', port });
    client.send(serializeClientFlags(ClientFlag.C_FIXED_NEWSTYLE | ClientFlag.C_NO_ZEROES));
    return client;
  }

  /** Send STARTTLS; after its ACK, run the handshake with these credentials (or raw bytes instead). */
  async startTls(credentials: { ca: Buffer; cert?: Buffer; key?: Buffer } | { garbage: Buffer }): Promise<'secure' | 'closed'> {
    this.send(serializeStartTlsOption());
    const ack = await this.next();
    if (ack?.kind !== 'optionReply' || ack.replyType !== OptionReplyType.ACK) throw new Error('STARTTLS was not acknowledged');
    this.socket.off('data', this.onData);
    if (this.parser.startTls() !== 0) throw new Error('plaintext after the ACK');
    if ('garbage' in credentials) {
      this.socket.on('data', () => undefined);
      this.socket.write(credentials.garbage);
      return this.mustClose();
    }
    const secure = tls.connect({ socket: this.socket, host: '127.0.0.1', ...credentials });
    const outcome = await new Promise<'secure' | 'closed'>((resolve) => {
      secure.once('secureConnect', () => resolve('secure'));
      secure.once('error', () => resolve('closed'));
      secure.once('close', () => resolve('closed'));
    });
    this.socket = secure;
    this.listen(secure);
    if (outcome === 'closed') this.closed = true;
    return outcome;
  }

  /** Wait for the server to hang up; it must. */
  async mustClose(): Promise<'closed'> {
    if (!(await this.waitClosed())) throw new Error('the server did not close the connection');
    return 'closed';
  }
}

/**
 * nbdinfo of a refused attach. libnbd 1.14 prints only "Operation not supported"; with
 * LIBNBD_DEBUG=1 it also prints the server's error message, which is what a user reads.
 */
function nbdinfoRefused(uri: string, extra: string[] = []): ReturnType<typeof run> {
  return run('nbdinfo', [...extra, uri], { env: { ...process.env, LIBNBD_DEBUG: '1' } });
}

/** The first log entry that matches, waiting a little for the server's stderr to arrive. */
async function logEntry(appliance: Appliance, matches: (entry: Record<string, unknown>) => boolean): Promise<Record<string, unknown> | undefined> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const found = appliance.logEntries().find(matches);
    if (found !== undefined) return found;
    await new Promise((resolve) => setTimeout(resolve, 40));
  }
  return undefined;
}

function openFileCount(pid: number): number {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}

t.test('tls generate writes a CA, a server certificate for 127.0.0.1 and localhost, and client folders', async (t) => {
  if (!requireTools(t, ['openssl'])) return;
  const certificates = path.join(temporaryDirectory(t), 'tls');
  const generated = await makeCertificates(certificates);
  t.equal(generated.code, 0, generated.stderr);
  for (const file of ['ca-cert.pem', 'ca-key.pem', 'server-cert.pem', 'server-key.pem', 'client-cert.pem', 'client-key.pem']) {
    t.ok(fs.existsSync(path.join(certificates, file)), file);
  }
  for (const client of ['alice', 'bob']) {
    for (const file of ['ca-cert.pem', 'client-cert.pem', 'client-key.pem']) t.ok(fs.existsSync(path.join(certificates, 'clients', client, file)), `${client}/${file}`);
  }
  for (const key of ['ca-key.pem', 'server-key.pem', 'client-key.pem', 'clients/bob/client-key.pem']) {
    t.equal(fs.statSync(path.join(certificates, key)).mode & 0o777, 0o600, `${key} is private`);
  }
  const server = await run('openssl', ['x509', '-in', path.join(certificates, 'server-cert.pem'), '-noout', '-ext', 'subjectAltName,extendedKeyUsage']);
  t.match(server.stdout, /IP Address:127\.0\.0\.1/);
  t.match(server.stdout, /DNS:localhost/);
  t.match(server.stdout, /TLS Web Server Authentication/);
  const verify = await run('openssl', ['verify', '-CAfile', path.join(certificates, 'ca-cert.pem'), path.join(certificates, 'server-cert.pem'), path.join(certificates, 'clients/bob/client-cert.pem')]);
  t.equal(verify.code, 0, verify.stdout + verify.stderr);
  const subject = await run('openssl', ['x509', '-in', path.join(certificates, 'client-cert.pem'), '-noout', '-subject']);
  t.match(subject.stdout, /CN ?= ?alice/, 'the top folder holds the first client');

  const serverBefore = fs.readFileSync(path.join(certificates, 'server-cert.pem'));
  const again = await run(process.execPath, [cliPath, 'tls', 'generate', '--out', certificates, '--client', 'carol']);
  t.equal(again.code, 0, again.stderr);
  t.match(again.stdout, /reused the CA/);
  t.same(fs.readFileSync(path.join(certificates, 'server-cert.pem')), serverBefore, 'without --host the server certificate is kept');
  t.match((await run('openssl', ['x509', '-in', path.join(certificates, 'client-cert.pem'), '-noout', '-subject'])).stdout, /CN ?= ?alice/, 'and the top folder still holds the first client');
  const carol = await run('openssl', ['verify', '-CAfile', path.join(certificates, 'ca-cert.pem'), path.join(certificates, 'clients/carol/client-cert.pem')]);
  t.equal(carol.code, 0, 'a later client is signed by the same CA');
  const badName = await run(process.execPath, [cliPath, 'tls', 'generate', '--out', certificates, '--client', '../x']);
  t.not(badName.code, 0, 'a client name that is not a plain name is refused');
});

t.test('required mode: nbdinfo and qemu over TLS, plaintext clients refused, bad handshakes survived', async (t) => {
  if (!requireTools(t, ['openssl', 'nbdinfo', 'qemu-img', 'qemu-io'])) return;
  const directory = temporaryDirectory(t);
  const certificates = path.join(directory, 'tls');
  t.equal((await makeCertificates(certificates)).code, 0);
  const stranger = path.join(directory, 'stranger');
  t.equal((await makeCertificates(stranger)).code, 0, 'a second, unrelated CA');
  const appliance = await startAppliance(t, {
    dataDirectory: path.join(directory, 'data'),
    extraArguments: ['--tls', 'required', ...tlsArguments(certificates, ['--tls-verify-clients'])],
  });
  const alice = path.join(certificates, 'clients/alice');

  const info = await run('nbdinfo', ['--json', nbds(appliance, 'vol0', alice)]);
  t.equal(info.code, 0, info.stderr);
  t.match(JSON.parse(info.stdout), { TLS: true, exports: [{ 'export-name': 'vol0', 'export-size': 64 * 1024 * 1024 }] }, 'nbdinfo attaches over TLS');
  const list = await run('nbdinfo', ['--list', '--json', `nbds://127.0.0.1:${appliance.nbdPort}?tls-certificates=${alice}`]);
  t.equal(list.code, 0, list.stderr);
  t.match(list.stdout, /"export-name": "vol0"/, 'LIST over TLS');

  const plain = await nbdinfoRefused(appliance.uri());
  t.not(plain.code, 0, 'nbdinfo without TLS fails');
  t.match(plain.stderr, /server error message: this server requires TLS: send NBD_OPT_STARTTLS first/, 'with the server saying why');
  const plainList = await run('nbdinfo', ['--list', `nbd://127.0.0.1:${appliance.nbdPort}`]);
  t.not(plainList.code, 0, 'no export list before TLS');
  t.match(plainList.stderr, /server replied with error to list request/, 'the server refused the list (nbdinfo connected)');
  const noCertificate = path.join(directory, 'ca-only');
  fs.mkdirSync(noCertificate);
  fs.copyFileSync(path.join(certificates, 'ca-cert.pem'), path.join(noCertificate, 'ca-cert.pem'));
  const anonymous = await run('nbdinfo', [nbds(appliance, 'vol0', noCertificate)]);
  t.not(anonymous.code, 0, 'with --tls-verify-clients a client without a certificate is refused');
  t.match(anonymous.stderr, /A TLS fatal alert has been received/, 'by the server, in the TLS handshake');
  const foreign = await run('nbdinfo', [nbds(appliance, 'vol0', path.join(stranger, 'clients/alice'))]);
  t.not(foreign.code, 0, 'a client of another CA does not trust the server (nor the server it)');
  t.match(foreign.stderr, /gnutls_handshake: Error in the certificate verification/, 'the client does not trust the server\'s certificate');

  const qemuInfo = await run('qemu-img', ['info', '--output=json', ...qemuTlsArguments(appliance, 'vol0', alice)]);
  t.equal(qemuInfo.code, 0, qemuInfo.stderr);
  t.match(JSON.parse(qemuInfo.stdout), { 'virtual-size': 64 * 1024 * 1024 }, 'qemu-img info over TLS');
  const qemuIo = await run('qemu-io', [...qemuTlsArguments(appliance, 'vol0', alice), '-c', 'write -P 0xa5 0 1M', '-c', 'flush', '-c', 'read -P 0xa5 0 1M', '-c', 'read -P 0 1M 64k']);
  t.equal(qemuIo.code, 0, qemuIo.stderr);
  t.notMatch(qemuIo.stdout, /Pattern verification failed|error|failed/i, qemuIo.stdout);

  // The spec's corner cases by hand.
  const ca = fs.readFileSync(path.join(certificates, 'ca-cert.pem'));
  const cert = fs.readFileSync(path.join(alice, 'client-cert.pem'));
  const key = fs.readFileSync(path.join(alice, 'client-key.pem'));
  const before = await RawClient.plain(appliance.nbdPort);
  before.send(serializeListOption());
  t.equal(await before.replyType(), OptionReplyType.ERR_TLS_REQD, 'LIST before TLS: ERR_TLS_REQD');
  before.send(serializeGoOption('vol0'));
  t.equal(await before.replyType(), OptionReplyType.ERR_TLS_REQD, 'GO before TLS: ERR_TLS_REQD');
  t.equal(await before.startTls({ ca, cert, key }), 'secure', 'STARTTLS after refusals still works');
  before.send(serializeStartTlsOption());
  t.equal(await before.replyType(), OptionReplyType.ERR_INVALID, 'STARTTLS over TLS: ERR_INVALID');
  before.send(serializeGoOption('vol0'));
  const infoReply = await before.next();
  t.ok(infoReply?.kind === 'optionReply' && infoReply.replyType === OptionReplyType.INFO, 'GO over TLS succeeds');
  for (let reply = await before.next(); reply?.kind === 'optionReply' && reply.replyType !== OptionReplyType.ACK; reply = await before.next());
  const token = appliance.token;
  const attached = (await (await fetch(`${appliance.httpBase}/api/v1/exports`, { headers: { authorization: `Bearer ${token}` } })).json()) as { exports: Array<{ uri: string; clients: unknown[] }> };
  t.match(attached.exports[0]?.clients, [{ tls: true, certificate: 'alice' }], 'the API shows the attached client runs TLS, with its certificate name');
  before.destroy();

  const exportName = await RawClient.plain(appliance.nbdPort);
  exportName.send(serializeExportNameOption('vol0'));
  t.equal(await exportName.mustClose(), 'closed', 'EXPORT_NAME before TLS: the server hangs up');
  const abort = await RawClient.plain(appliance.nbdPort);
  abort.send(serializeAbortOption());
  t.equal(await abort.replyType(), OptionReplyType.ACK, 'ABORT before TLS is acknowledged');

  const filesBefore = openFileCount(appliance.child.pid!);
  const pipelined = await RawClient.plain(appliance.nbdPort);
  pipelined.send(Buffer.concat([serializeStartTlsOption(), serializeListOption()]));
  t.equal(await pipelined.mustClose(), 'closed', 'plaintext pipelined after STARTTLS: dropped');
  const garbage = await RawClient.plain(appliance.nbdPort);
  t.equal(await garbage.startTls({ garbage: Buffer.from('this is not a TLS client hello, just bytes\r\n'.repeat(8)) }), 'closed', 'a bad handshake: dropped');
  const untrusting = await RawClient.plain(appliance.nbdPort);
  t.equal(await untrusting.startTls({ ca: fs.readFileSync(path.join(stranger, 'ca-cert.pem')) }), 'closed', 'a client that rejects the server certificate');
  const uncertified = await RawClient.plain(appliance.nbdPort);
  await uncertified.startTls({ ca });
  uncertified.send(serializeGoOption('vol0'));
  t.equal(await uncertified.replyType(), 'closed', 'no client certificate with --tls-verify-clients: dropped');

  const exported = (await (await fetch(`${appliance.httpBase}/api/v1/exports`, { headers: { authorization: `Bearer ${token}` } })).json()) as { exports: Array<{ uri: string }> };
  t.equal(exported.exports[0]?.uri, `nbds://127.0.0.1:${appliance.nbdPort}/vol0`, 'export URIs say nbds:// when TLS is required');
  t.ok(await logEntry(appliance, (entry) => entry.msg === 'cdp-nbd is serving' && entry.tls === 'required' && typeof entry.tlsCertificateValidTo === 'string'), 'the start-up log names the mode and when the certificate expires');
  const still = await run('nbdinfo', ['--size', nbds(appliance, 'vol0', alice)]);
  t.equal(still.stdout.trim(), String(64 * 1024 * 1024), 'the server still serves TLS clients');
  // The server closes dropped sockets as it gets to them: poll (for a bounded time) rather than sleep.
  const deadlineMs = Date.now() + 10_000;
  while (openFileCount(appliance.child.pid!) > filesBefore + 2 && Date.now() < deadlineMs) await new Promise((resolve) => setTimeout(resolve, 50));
  t.ok(openFileCount(appliance.child.pid!) <= filesBefore + 2, 'dropped connections leave no open files behind');
  const failures = appliance.logEntries().filter((entry) => entry.msg === 'TLS handshake failed');
  t.ok(failures.length >= 2, `failed handshakes are logged (${failures.map((entry) => String(entry.reason)).join('; ')})`);
  t.ok(await logEntry(appliance, (entry) => entry.msg === 'TLS started' && entry.certificate === 'alice'), 'the client certificate name is logged');
  t.equal(await appliance.stop(), 0, 'clean shutdown');
});

t.test('selective mode: TLS-only exports, allowlists by certificate name, address and unix socket, on volumes and views', async (t) => {
  if (!requireTools(t, ['openssl', 'nbdinfo'])) return;
  const directory = temporaryDirectory(t);
  const certificates = path.join(directory, 'tls');
  t.equal((await makeCertificates(certificates)).code, 0);
  const dataDirectory = path.join(directory, 'data');
  for (const [volume, size] of [['vol0', '64M'], ['vol1', '16M']] as const) {
    const created = await run(process.execPath, [cliPath, 'volume', 'create', volume, '--size', size, '--data', dataDirectory]);
    t.equal(created.code, 0, created.stderr);
  }
  const appliance = await startAppliance(t, {
    dataDirectory,
    extraArguments: ['--tls', 'selective', ...tlsArguments(certificates), '--allow', 'vol0=cn:alice,unix', '--tls-only', 'vol1', '--allow', 'vol2=10.0.0.0/8'],
  });
  const alice = path.join(certificates, 'clients/alice');
  const bob = path.join(certificates, 'clients/bob');
  t.ok(await logEntry(appliance, (entry) => entry.msg === 'an access policy names a volume that does not exist (yet)' && entry.volume === 'vol2'), 'a policy for a missing volume is reported');
  const token = appliance.token;
  const { events, socket: eventSocket } = await subscribe(appliance, token);
  t.teardown(() => eventSocket.close());

  const refused = await nbdinfoRefused(appliance.uri('vol0'));
  t.not(refused.code, 0, 'a plaintext TCP client is not on vol0\'s allowlist');
  t.match(refused.stderr, /server error message: export "vol0" does not allow client 127\.0\.0\.1 \(no verified client certificate\)/, 'the server says why');
  const refusal = await logEntry(appliance, (entry) => entry.msg === 'access refused' && entry.export === 'vol0');
  t.ok(refusal, 'the refusal is logged');
  t.match(String(refusal?.reason), /127\.0\.0\.1/, 'with the client address');
  for (let attempt = 0; attempt < 50 && !events.some((event) => event.type === 'access-refused'); attempt++) await new Promise((resolve) => setTimeout(resolve, 40));
  t.match(events.find((event) => event.type === 'access-refused'), { export: 'vol0', remote: /^127\.0\.0\.1:/, certificate: null, reason: /does not allow/ }, 'and sent to the events websocket');
  const viaUnix = await run('nbdinfo', ['--size', appliance.unixUri('vol0')]);
  t.equal(viaUnix.stdout.trim(), String(64 * 1024 * 1024), 'the unix rule lets local socket clients in');
  const asAlice = await run('nbdinfo', ['--size', nbds(appliance, 'vol0', alice)]);
  t.equal(asAlice.stdout.trim(), String(64 * 1024 * 1024), `cn:alice over TLS is allowed ${asAlice.stderr}`);
  const asBob = await nbdinfoRefused(nbds(appliance, 'vol0', bob));
  t.not(asBob.code, 0, 'bob is not');
  t.match(asBob.stderr, /does not allow client 127\.0\.0\.1 \(certificate bob\)/);
  t.ok(await logEntry(appliance, (entry) => entry.msg === 'access refused' && entry.certificate === 'bob'), 'logged with the certificate name');

  // A certificate that says CN=alice but comes from another CA gives no name (no --tls-verify-clients here).
  const stranger = path.join(directory, 'stranger');
  t.equal((await makeCertificates(stranger)).code, 0);
  const impostor = path.join(directory, 'impostor');
  fs.mkdirSync(impostor);
  fs.copyFileSync(path.join(certificates, 'ca-cert.pem'), path.join(impostor, 'ca-cert.pem'));
  for (const file of ['client-cert.pem', 'client-key.pem']) fs.copyFileSync(path.join(stranger, 'clients/alice', file), path.join(impostor, file));
  const asImpostor = await nbdinfoRefused(nbds(appliance, 'vol0', impostor));
  t.not(asImpostor.code, 0, 'a foreign certificate named alice is not alice');
  t.match(asImpostor.stderr, /does not allow client 127\.0\.0\.1 \(no verified client certificate\)/);
  t.ok(await logEntry(appliance, (entry) => entry.msg === 'TLS started' && entry.certificate === null && typeof entry.certificateProblem === 'string'), 'the unverified certificate is logged as a problem');
  const plainVol1 = await nbdinfoRefused(appliance.uri('vol1'));
  t.not(plainVol1.code, 0, 'a TLS-only export refuses a plaintext client');
  t.match(plainVol1.stderr, /server error message: export "vol1" requires TLS/, 'the server says TLS is needed');
  const tlsVol1 = await run('nbdinfo', ['--size', nbds(appliance, 'vol1', bob)]);
  t.equal(tlsVol1.stdout.trim(), String(16 * 1024 * 1024), 'and serves it over TLS');
  const plainList = await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${appliance.nbdPort}`]);
  t.equal(plainList.code, 0, plainList.stderr);
  t.same((JSON.parse(plainList.stdout) as { exports: unknown[] }).exports, [], 'LIST without TLS leaves out exports this client may not use');
  const tlsList = await run('nbdinfo', ['--list', '--json', `nbds://127.0.0.1:${appliance.nbdPort}?tls-certificates=${alice}`]);
  t.same((JSON.parse(tlsList.stdout) as { exports: Array<{ 'export-name': string }> }).exports.map((entry) => entry['export-name']), ['vol0', 'vol1'], 'alice over TLS sees both');

  const raw = await RawClient.plain(appliance.nbdPort);
  raw.send(serializeGoOption('vol1'));
  const tlsRequired = await raw.next();
  t.ok(tlsRequired?.kind === 'optionReply' && tlsRequired.replyType === OptionReplyType.ERR_TLS_REQD, 'GO on a TLS-only export: ERR_TLS_REQD');
  raw.send(serializeGoOption('vol0'));
  const policy = await raw.next();
  t.ok(policy?.kind === 'optionReply' && policy.replyType === OptionReplyType.ERR_POLICY, 'GO on a refused export: ERR_POLICY');
  if (policy?.kind === 'optionReply') t.match(decodeOptionErrorMessage(policy.data), /does not allow client 127\.0\.0\.1/);
  raw.send(serializeExportNameOption('vol0'));
  t.equal(await raw.replyType(), 'closed', 'EXPORT_NAME on a refused export: the server hangs up');

  // A view export with an allowlist of its own, through the API, kept in exports.json.
  const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
  const snapshot = await fetch(`${appliance.httpBase}/api/v1/volumes/vol1/snapshots`, { method: 'POST', headers, body: JSON.stringify({ name: 'before' }) });
  t.equal(snapshot.status, 201, await snapshot.text());
  const badRule = await fetch(`${appliance.httpBase}/api/v1/exports`, { method: 'POST', headers, body: JSON.stringify({ volume: 'vol1', snapshot: 'before', allow: ['not-an-address'] }) });
  t.equal(badRule.status, 400, 'a bad allow rule is refused');
  const view = await fetch(`${appliance.httpBase}/api/v1/exports`, {
    method: 'POST',
    headers,
    body: JSON.stringify({ volume: 'vol1', snapshot: 'before', name: 'vol1-before', allow: ['cn:bob', '192.0.2.0/24'] }),
  });
  t.equal(view.status, 201);
  t.match(await view.json(), { name: 'vol1-before', allow: ['cn:bob', '192.0.2.0/24'], tlsOnly: true, inheritAccess: true }, 'TLS-only, as its volume is');
  const kept = JSON.parse(fs.readFileSync(path.join(dataDirectory, 'exports.json'), 'utf8')) as { exports: Array<{ name: string; allow?: string[] }> };
  t.same(kept.exports.find((entry) => entry.name === 'vol1-before')?.allow, ['cn:bob', '192.0.2.0/24'], 'the allowlist is kept in exports.json');
  const fromCli = await run(process.execPath, [cliPath, 'export', 'create', 'vol1', '--snapshot', 'before', '--name', 'vol1-cli', '--allow', 'cn:alice', '--allow', 'unix', '--tls-only', '--api', appliance.httpBase, '--json'], { env: cliEnvironment(appliance) });
  t.equal(fromCli.code, 0, fromCli.stderr);
  t.match(JSON.parse(fromCli.stdout), { name: 'vol1-cli', allow: ['cn:alice', 'unix'], tlsOnly: true }, 'cdp-nbd export create --allow --tls-only');
  const viewAsBob = await run('nbdinfo', ['--size', nbds(appliance, 'vol1-before', bob)]);
  t.equal(viewAsBob.stdout.trim(), String(16 * 1024 * 1024), `bob may read the view ${viewAsBob.stderr}`);
  const viewAsAlice = await nbdinfoRefused(nbds(appliance, 'vol1-before', alice));
  t.not(viewAsAlice.code, 0, 'alice may not');
  t.match(viewAsAlice.stderr, /does not allow client 127\.0\.0\.1 \(certificate alice\)/);
  t.ok(await logEntry(appliance, (entry) => entry.msg === 'access refused' && entry.export === 'vol1-before' && entry.certificate === 'alice'), 'logged');
  const metrics = await (await fetch(`${appliance.httpBase}/metrics`, { headers })).text();
  const counter = (pattern: RegExp): number => Number(pattern.exec(metrics)?.[1] ?? -1);
  t.ok(counter(/^cdp_nbd_access_refusals_total (\d+)$/m) >= 4, 'refusals are counted in /metrics');
  t.ok(counter(/^cdp_nbd_tls_handshakes_total\{result="ok"\} (\d+)$/m) >= 5, 'and TLS handshakes');
  t.equal(counter(/^cdp_nbd_tls_handshakes_total\{result="failed"\} (\d+)$/m), 0, 'none failed here');
  t.equal(await appliance.stop(), 0);

  const restarted = await startAppliance(t, { dataDirectory, extraArguments: ['--tls', 'selective', ...tlsArguments(certificates)] });
  const afterRestart = await run('nbdinfo', [nbds(restarted, 'vol1-before', alice)]);
  t.not(afterRestart.code, 0, 'the view keeps its allowlist across a restart');
  t.match(afterRestart.stderr, /server replied with error to opt_go request: Operation not supported for export: vol1-before/, 'refused by the server at NBD_OPT_GO');
  const listed = (await (await fetch(`${restarted.httpBase}/api/v1/exports`, { headers })).json()) as { exports: Array<{ name: string; allow: string[] }> };
  t.same(listed.exports.find((entry) => entry.name === 'vol1-before')?.allow, ['cn:bob', '192.0.2.0/24']);
  t.equal(await restarted.stop(), 0);

  // Restarted without TLS: the TLS-only view is kept, and refused to everyone, fail-closed.
  const plainServer = await startAppliance(t, { dataDirectory });
  const survivors = (await (await fetch(`${plainServer.httpBase}/api/v1/exports`, { headers })).json()) as { exports: Array<{ name: string; tlsOnly: boolean }> };
  t.match(survivors.exports.find((entry) => entry.name === 'vol1-cli'), { tlsOnly: true }, 'the TLS-only view survives a restart without TLS');
  const viaUnixSocket = await nbdinfoRefused(plainServer.unixUri('vol1-cli'));
  t.not(viaUnixSocket.code, 0, 'and nobody may attach to it, not even an allowed unix-socket client');
  t.match(viaUnixSocket.stderr, /is TLS-only and this server does not offer TLS/);
});

t.test('serve refuses bad TLS and access options before opening anything; TLS-only views need TLS on', async (t) => {
  if (!requireTools(t, ['openssl'])) return;
  const directory = temporaryDirectory(t);
  const certificates = path.join(directory, 'tls');
  t.equal((await makeCertificates(certificates)).code, 0);
  const serve = (extra: string[]): ReturnType<typeof run> =>
    run(process.execPath, [cliPath, 'serve', '--data', path.join(directory, 'refused'), '--nbd-listen', '127.0.0.1:0', '--http-listen', 'none', ...extra], { timeoutMs: 20_000 });
  const cases: Array<[string[], RegExp]> = [
    [['--tls', 'sometimes'], /--tls is one of off, required, selective/],
    [['--tls', 'required'], /--tls required needs --tls-cert FILE and --tls-key FILE/],
    [['--tls', 'required', '--tls-cert', path.join(certificates, 'server-cert.pem')], /--tls-cert FILE and --tls-key FILE go together/],
    [['--tls-cert', path.join(certificates, 'server-cert.pem'), '--tls-key', path.join(certificates, 'server-key.pem')], /need --tls required or --tls selective/],
    [['--tls', 'selective', ...tlsArguments(certificates).slice(0, 4), '--tls-verify-clients'], /--tls-verify-clients needs --tls-ca/],
    [['--tls', 'required', '--tls-cert', path.join(certificates, 'server-cert.pem'), '--tls-key', path.join(certificates, 'ca-key.pem')], /TLS credentials are unusable/],
    [['--tls', 'required', '--tls-cert', path.join(directory, 'missing.pem'), '--tls-key', path.join(certificates, 'server-key.pem')], /cannot read the TLS certificate .*missing\.pem: ENOENT/],
    [['--tls-only', 'vol0'], /--tls-only vol0 needs --tls selective or required/],
    [['--allow', 'vol0'], /--allow vol0: it is VOLUME=RULE/],
    [['--allow', 'vol0=10.0.0.0/40'], /prefix length must be 0 to 32/],
    [['--allow', 'vol0=somewhere'], /is not an IP address, a CIDR block/],
  ];
  for (const [extra, message] of cases) {
    const refused = await serve(extra);
    t.equal(refused.code, 1, extra.join(' '));
    t.match(refused.stderr, message, `says why: ${refused.stderr.trim()}`);
  }
  t.notOk(fs.existsSync(path.join(directory, 'refused', 'volumes')), 'no volume was made');

  const appliance = await startAppliance(t, { dataDirectory: path.join(directory, 'data') });
  const token = appliance.token;
  const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
  await fetch(`${appliance.httpBase}/api/v1/volumes/vol0/snapshots`, { method: 'POST', headers, body: JSON.stringify({ name: 'one' }) });
  const tlsOnly = await fetch(`${appliance.httpBase}/api/v1/exports`, { method: 'POST', headers, body: JSON.stringify({ volume: 'vol0', snapshot: 'one', tlsOnly: true }) });
  t.equal(tlsOnly.status, 400, 'a TLS-only export on a server without TLS is refused');
  t.match(await tlsOnly.json(), { error: { code: 'invalid-request', message: /needs the NBD server to offer TLS/ } });
  const listed = (await (await fetch(`${appliance.httpBase}/api/v1/exports`, { headers })).json()) as { exports: Array<{ name: string; allow: string[]; tlsOnly: boolean }> };
  t.match(listed.exports, [{ name: 'vol0', allow: [], tlsOnly: false }], 'exports show their (open) policy');
});
