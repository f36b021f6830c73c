// The API's secrets on the real appliance over HTTPS (certificates from `cdp-nbd tls generate`),
// with tokens made and revoked by the real `cdp-nbd token` command while it runs. Invariants: no
// token, a wrong one or a revoked one gets 401; a token too weak gets 403 forbidden-role naming the
// role needed; an events ticket opens the websocket once; no secret ever reaches the log, which
// does record the requests (with the ticket redacted); the token file holds hashes only, mode
// 0600; a first start names the token file and how to make a token; a plaintext api-token of an
// earlier version keeps working as admin and is removed; the host script snapshots with an
// operator token over HTTPS; the API refuses to listen beyond
// loopback without TLS unless told, and then warns.

import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { generateCertificates } from '../../tools/tls-certificates.js';
import { apiRequest } from '../support/api.js';
import { cliPath, startAppliance, type Appliance } from '../support/appliance.js';
import { eventsUrl, eventTicket, upgradeStatus } from '../support/event-stream.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools, run } from '../support/tools.js';

const sha256 = (text: string): string => createHash('sha256').update(text).digest('hex');

function makeCertificates(directory: string): { certificateFile: string; keyFile: string; caFile: string } {
  generateCertificates({ outDirectory: directory, clients: [] });
  return { certificateFile: path.join(directory, 'server-cert.pem'), keyFile: path.join(directory, 'server-key.pem'), caFile: path.join(directory, 'ca-cert.pem') };
}

function cdpNbd(args: string[], env: NodeJS.ProcessEnv = {}): ReturnType<typeof run> {
  const environment = { ...process.env, ...env };
  for (const name of ['CDP_NBD_TOKEN', 'CDP_NBD_TOKEN_FILE', 'CDP_NBD_CA', 'CDP_NBD_API']) if (!(name in env)) delete environment[name];
  return run(process.execPath, [cliPath, ...args], { timeoutMs: 30_000, env: environment });
}

async function status(appliance: Appliance, method: string, route: string, token: string | null, body?: unknown): Promise<{ status: number; code: unknown; message: unknown }> {
  const response = await apiRequest(appliance, method, route, body, { token });
  const error = response.json.error as { code?: unknown; message?: unknown } | undefined;
  return { status: response.status, code: error?.code, message: error?.message };
}

t.test('the API over HTTPS: roles, revocation, tickets, and no token in the log', async (t) => {
  if (!requireTools(t, ['openssl'])) return;
  const directory = temporaryDirectory(t);
  const https = makeCertificates(path.join(directory, 'tls'));
  const dataDirectory = path.join(directory, 'data');
  const appliance = await startAppliance(t, { dataDirectory, https });
  t.match(appliance.httpBase, /^https:\/\/127\.0\.0\.1:\d+$/);

  // Tokens made with the command line while the appliance runs.
  const readFile = path.join(directory, 'read.token');
  const madeReader = await cdpNbd(['token', 'create', 'reader', '--role', 'read', '--out', readFile, '--data', dataDirectory]);
  t.equal(madeReader.code, 0, madeReader.stderr);
  t.equal(fs.statSync(readFile).mode & 0o777, 0o600, '--out FILE is readable by its owner only');
  const reader = fs.readFileSync(readFile, 'utf8').trim();
  const madeOperator = await cdpNbd(['token', 'create', 'ops', '--role', 'operator', '--data', dataDirectory]);
  t.equal(madeOperator.code, 0, madeOperator.stderr);
  const operator = madeOperator.stdout.trim();
  t.match(operator, /^[A-Za-z0-9_-]{43}$/, 'token create prints the token alone on stdout');
  const admin = appliance.token;
  const listed = await cdpNbd(['token', 'list', '--data', dataDirectory]);
  t.match(listed.stdout, /reader\tread\t.*\nops\toperator\t/s, 'token list names each token and its role');
  t.notOk(listed.stdout.includes(reader) || listed.stdout.includes(operator), 'and shows no secret');

  const cases: Array<[string, string, string | null, unknown, number, string | null]> = [
    ['no token', 'GET /api/v1/volumes', null, undefined, 401, 'unauthorized'],
    ['a wrong token', 'GET /api/v1/volumes', `${reader}x`, undefined, 401, 'unauthorized'],
    ['the token in the URL', `GET /api/v1/volumes?token=${encodeURIComponent(admin)}`, null, undefined, 401, 'unauthorized'],
    ['read lists', 'GET /api/v1/volumes', reader, undefined, 200, null],
    ['read may not snapshot', 'POST /api/v1/volumes/vol0/snapshots', reader, { name: 'by-reader' }, 403, 'forbidden-role'],
    ['operator snapshots', 'POST /api/v1/volumes/vol0/snapshots', operator, { name: 'by-operator' }, 201, null],
    ['operator exports', 'POST /api/v1/exports', operator, { volume: 'vol0', snapshot: 'by-operator' }, 201, null],
    ['operator may not free an export of its volume', 'POST /api/v1/exports', operator, { volume: 'vol0', snapshot: 'by-operator', name: 'wide', inheritAccess: false }, 403, 'forbidden-role'],
    ['operator may not make volumes', 'POST /api/v1/volumes', operator, { name: 'vol1', sizeBytes: 8 << 20 }, 403, 'forbidden-role'],
    ['operator may not restore', 'POST /api/v1/restores', operator, { volume: 'vol0', snapshot: 'by-operator', inPlace: true }, 403, 'forbidden-role'],
    ['operator may not see jobs', 'GET /api/v1/jobs', operator, undefined, 403, 'forbidden-role'],
    ['admin makes volumes', 'POST /api/v1/volumes', admin, { name: 'vol1', sizeBytes: 8 << 20 }, 201, null],
  ];
  for (const [what, request, token, body, expectedStatus, expectedCode] of cases) {
    const [method, route] = request.split(' ') as [string, string];
    const answer = await status(appliance, method, route, token, body);
    t.equal(answer.status, expectedStatus, `${what}: ${String(answer.message ?? '')}`);
    if (expectedCode !== null) t.equal(answer.code, expectedCode, what);
  }
  t.match((await status(appliance, 'POST', '/api/v1/volumes/vol0/snapshots', reader, { name: 'x' })).message, /needs the operator role; token "reader" has the read role/, 'the refusal names the role needed');
  t.match((await status(appliance, 'POST', '/api/v1/volumes', operator, { name: 'vol2', sizeBytes: 8 << 20 })).message, /needs the admin role/);

  // The command line over HTTPS: it checks the certificate against --ca.
  const caFlags = ['--api', appliance.httpBase, '--ca', https.caFile];
  const listedByCli = await cdpNbd(['snapshot', 'list', 'vol0', ...caFlags, '--token-file', readFile, '--json']);
  t.equal(listedByCli.code, 0, listedByCli.stderr);
  t.match(listedByCli.stdout, /"by-operator"/, 'cdp-nbd snapshot list over HTTPS with a read token');
  const untrusted = await cdpNbd(['snapshot', 'list', 'vol0', '--api', appliance.httpBase, '--token-file', readFile]);
  t.equal(untrusted.code, 1, 'without --ca the certificate is not trusted');
  t.match(untrusted.stderr, /certificate/i);
  const fromEnvironment = await cdpNbd(['snapshot', 'create', 'vol0', 'by-cli'], { CDP_NBD_API: appliance.httpBase, CDP_NBD_CA: https.caFile, CDP_NBD_TOKEN: reader });
  t.equal(fromEnvironment.code, 1, 'a read token may not snapshot from the command line either');
  t.match(fromEnvironment.stderr, /needs the operator role.*\(forbidden-role\)/);
  const noToken = await cdpNbd(['snapshot', 'list', 'vol0', ...caFlags]);
  t.equal(noToken.code, 1);
  t.match(noToken.stderr, /no API token: give --token-file FILE, or set CDP_NBD_TOKEN/, 'the command line says where a token comes from');

  // The host script takes snapshots with an operator token over HTTPS, checking the certificate.
  const operatorFile = path.join(directory, 'operator.token');
  fs.writeFileSync(operatorFile, `${operator}\n`, { mode: 0o600 });
  const hostScript = path.join(path.dirname(cliPath), '../../tools/host/snapshot.sh');
  const bySnapshotScript = await run('sh', [hostScript, '--api', appliance.httpBase, '--ca', https.caFile, '--token-file', operatorFile, '--volume', 'vol0', '--name', 'from-host']);
  t.equal(bySnapshotScript.code, 0, `snapshot.sh with an operator token over HTTPS: ${bySnapshotScript.stderr}`);
  t.match(bySnapshotScript.stdout, /snapshot from-host of vol0/);
  const scriptUntrusting = await run('sh', [hostScript, '--api', appliance.httpBase, '--token-file', operatorFile, '--volume', 'vol0', '--name', 'unchecked']);
  t.equal(scriptUntrusting.code, 1, 'without --ca it does not trust the certificate');

  // Tickets for the events websocket, over wss.
  const ticket = await eventTicket(appliance, reader);
  t.equal(await upgradeStatus(eventsUrl(appliance, ticket), appliance.httpCa), 101, 'a ticket opens the event stream');
  t.equal(await upgradeStatus(eventsUrl(appliance, ticket), appliance.httpCa), 401, 'a ticket used once is refused');
  t.equal(await upgradeStatus(`${appliance.httpBase.replace(/^https/, 'wss')}/api/v1/events?token=${reader}`, appliance.httpCa), 401, 'a token in the websocket URL is refused');

  // Revoked while running: refused from the next request on, tickets made before included.
  const spareTicket = await eventTicket(appliance, operator);
  const revoked = await cdpNbd(['token', 'revoke', 'ops', '--data', dataDirectory]);
  t.equal(revoked.code, 0, revoked.stderr);
  t.equal((await status(appliance, 'POST', '/api/v1/volumes/vol0/snapshots', operator, { name: 'after-revoke' })).status, 401, 'a revoked token gets 401');
  t.equal(await upgradeStatus(eventsUrl(appliance, spareTicket), appliance.httpCa), 401, "and so does a revoked token's ticket");
  t.equal((await status(appliance, 'GET', '/api/v1/volumes', reader, undefined)).status, 200, 'the others still work');

  const tokenFile = path.join(dataDirectory, 'api-tokens.json');
  t.equal(fs.statSync(tokenFile).mode & 0o777, 0o600, 'the token file is readable by its owner only');
  const stored = fs.readFileSync(tokenFile, 'utf8');
  t.ok(stored.includes(sha256(reader)) && stored.includes(sha256(admin)), 'it holds the hashes');
  for (const secret of [reader, operator, admin]) t.notOk(stored.includes(secret), 'and no secret');

  t.equal(await appliance.stop(), 0);
  const log = appliance.output.join('\n');
  t.ok(
    appliance.logEntries().some((entry) => /ticket=REDACTED/.test(String((entry.req as { url?: string } | undefined)?.url))),
    'requests are logged, the ticket redacted',
  );
  t.ok(log.includes('token=REDACTED'), 'a token put in a URL is redacted too');
  for (const [name, secret] of [['reader', reader], ['operator', operator], ['admin', admin], ['ticket', ticket], ['spare ticket', spareTicket]] as const) {
    t.notOk(log.includes(secret), `the ${name} secret is nowhere in the log`);
  }
  t.match(appliance.logEntries().find((entry) => entry.msg === 'cdp-nbd is serving'), { httpScheme: 'https', tokenFile });
});

t.test('a first start names the token file and how to make a token; the appliance takes one made while it runs', async (t) => {
  const dataDirectory = path.join(temporaryDirectory(t), 'data');
  const appliance = await startAppliance(t, { dataDirectory, withoutToken: true });
  const hint = appliance.logEntries().find((entry) => typeof entry.msg === 'string' && entry.msg.startsWith('no API token yet'));
  t.match(hint, { level: 40, tokenFile: path.join(dataDirectory, 'api-tokens.json'), msg: /cdp-nbd token create NAME --role admin --data / });
  t.equal((await status(appliance, 'GET', '/api/v1/volumes', null)).status, 401);
  const made = await cdpNbd(['token', 'create', 'first', '--role', 'admin', '--data', dataDirectory]);
  t.equal(made.code, 0, made.stderr);
  t.equal((await status(appliance, 'GET', '/api/v1/volumes', made.stdout.trim())).status, 200, 'a token made after start works without a restart');
  t.equal(await appliance.stop(), 0);
  t.notOk(appliance.output.join('\n').includes(made.stdout.trim()), 'it is not in the log');
});

t.test('an api-token file of an earlier version keeps working as an admin token, hashed, and is removed', async (t) => {
  const dataDirectory = path.join(temporaryDirectory(t), 'data');
  fs.mkdirSync(dataDirectory);
  const legacy = 'Legacy0Token0Of0An0Earlier0Version0123456789';
  fs.writeFileSync(path.join(dataDirectory, 'api-token'), `${legacy}\n`, { mode: 0o600 });
  const appliance = await startAppliance(t, { dataDirectory });
  t.notOk(fs.existsSync(path.join(dataDirectory, 'api-token')), 'the plaintext file is gone');
  t.notOk(fs.readFileSync(path.join(dataDirectory, 'api-tokens.json'), 'utf8').includes(legacy), 'the token file has only its hash');
  t.equal((await status(appliance, 'POST', '/api/v1/volumes', legacy, { name: 'vol1', sizeBytes: 8 << 20 })).status, 201, 'it is an admin token');
  t.match(appliance.logEntries().find((entry) => entry.tokenName === 'admin'), { level: 40, tokenFile: path.join(dataDirectory, 'api-tokens.json'), role: 'admin' }, 'the migration is logged');
  t.equal(await appliance.stop(), 0);
  t.notOk(appliance.output.join('\n').includes(legacy), 'the token is not in the log');
});

t.test('serve refuses plain HTTP beyond loopback unless --http-insecure, which warns', async (t) => {
  if (!requireTools(t, ['openssl'])) return;
  const directory = temporaryDirectory(t);
  const https = makeCertificates(path.join(directory, 'tls'));
  const serve = (extra: string[]): ReturnType<typeof run> =>
    cdpNbd(['serve', '--data', path.join(directory, 'refused'), '--nbd-listen', '127.0.0.1:0', ...extra]);
  const cases: Array<[string[], RegExp]> = [
    [['--http-listen', '0.0.0.0:0'], /--http-listen 0\.0\.0\.0:0 is reachable from other machines, and API tokens would cross the network in plaintext: give --http-tls-cert FILE --http-tls-key FILE/],
    [['--http-listen', '[::]:0'], /reachable from other machines/],
    [['--http-listen', '192.0.2.10:8080'], /reachable from other machines/],
    [['--http-tls-cert', https.certificateFile], /--http-tls-cert FILE and --http-tls-key FILE go together/],
    [['--http-tls-cert', https.certificateFile, '--http-tls-key', path.join(directory, 'tls', 'ca-key.pem')], /--http-tls-cert\/--http-tls-key: TLS credentials are unusable/],
    [['--http-insecure', '--http-tls-cert', https.certificateFile, '--http-tls-key', https.keyFile], /contradict/],
  ];
  for (const [extra, message] of cases) {
    const refused = await serve(extra);
    t.equal(refused.code, 1, extra.join(' '));
    t.match(refused.stderr, message, `says why: ${refused.stderr.trim()}`);
  }
  t.notOk(fs.existsSync(path.join(directory, 'refused', 'volumes')), 'nothing was opened');

  const insecure = await startAppliance(t, { dataDirectory: path.join(directory, 'insecure'), extraArguments: ['--http-listen', '0.0.0.0:0', '--http-insecure'] });
  t.match(insecure.logEntries().find((entry) => String(entry.msg).startsWith('INSECURE')), { level: 40, msg: /plaintext beyond loopback.*--http-tls-cert/ }, 'it says so, at warn level');
  t.equal(await insecure.stop(), 0);
});
