// The API's tokens on real files (appliance/api-tokens.ts), the events tickets and the log
// redaction (api/auth.ts), and every route's role through app.inject(). Invariants: the token file
// never holds a secret, only SHA-256 hashes, and is never readable by others, not even while it is
// written; a token made or revoked counts at the next request of a running store; two writers never
// lose each other's token; a ticket works once and not after its lifetime; a read token can change
// nothing, an operator token can change snapshots and exports only.

import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import Fastify from 'fastify';
import { createToken, listTokens, migrateLegacyToken, revokeToken, tokenFilePath, tokenLimits, TokenStore, type ApiRole } from '../../appliance/api-tokens.js';
import { EventTickets, redactUrl, requireRoles, ticketLimits } from '../../api/auth.js';
import { callAs, errorCode, startApi, type Method } from '../support/api-app.js';
import { temporaryDirectory } from '../support/temporary-directory.js';

const sha256 = (text: string): string => createHash('sha256').update(text).digest('hex');

t.test('the token file: hashes only, mode 0600, no temporary files left', async (t) => {
  const directory = temporaryDirectory(t);
  const made = createToken(directory, { name: 'ops', role: 'operator' });
  t.match(made.secret, /^[A-Za-z0-9_-]{43}$/, '256 random bits, base64url');
  const text = fs.readFileSync(tokenFilePath(directory), 'utf8');
  t.notOk(text.includes(made.secret), 'the secret is not in the file');
  t.ok(text.includes(sha256(made.secret)), 'its SHA-256 is');
  t.equal(fs.statSync(tokenFilePath(directory)).mode & 0o777, 0o600, 'readable by its owner only');
  t.same(fs.readdirSync(directory), ['api-tokens.json'], 'no temporary or lock file is left');
  t.same(
    listTokens(directory).map((token) => [token.name, token.role]),
    [['ops', 'operator']],
  );
  t.notOk('sha256' in listTokens(directory)[0]!, 'listing shows no hashes');

  t.throws(() => createToken(directory, { name: 'ops', role: 'read' }), { code: 'EEXIST' }, 'names are unique');
  t.throws(() => createToken(directory, { name: '../x', role: 'read' }), { code: 'EINVAL' });
  t.throws(() => createToken(directory, { name: 'x', role: 'root' as ApiRole }), { code: 'EINVAL' });
  t.throws(() => revokeToken(directory, 'nobody'), { code: 'ENOENT' });
});

t.test('a running store sees tokens made and revoked at once; a damaged file keeps the tokens read before', async (t) => {
  const directory = temporaryDirectory(t);
  const problems: string[] = [];
  const store = new TokenStore(directory, (problem) => problems.push(problem));
  t.equal(store.authenticate('anything'), null, 'no file: no token');
  const admin = createToken(directory, { name: 'admin', role: 'admin' }).secret;
  t.match(store.authenticate(admin), { name: 'admin', role: 'admin' }, 'a token made after the store opened');
  t.equal(store.authenticate(`${admin}x`), null, 'a near miss');
  t.equal(store.authenticate(''), null, 'nothing');
  const reader = createToken(directory, { name: 'reader', role: 'read' }).secret;
  t.match(store.authenticate(reader), { name: 'reader', role: 'read' });
  revokeToken(directory, 'reader');
  t.equal(store.authenticate(reader), null, 'revoked: refused at the next request');
  t.ok(store.authenticate(admin), 'the others stay');

  fs.writeFileSync(tokenFilePath(directory), '{"formatVersion": 1, "tokens": [{"name": "x"}]}');
  t.ok(store.authenticate(admin), 'a damaged file: the tokens read before stay in force');
  t.ok(store.authenticate(admin), 'asked again');
  t.equal(problems.length, 1, 'reported once');
  t.match(problems[0], /token 0 is malformed/);
  t.throws(() => createToken(directory, { name: 'y', role: 'read' }), /malformed/, 'and no writer overwrites it');
});

t.test('two writers at once lose nothing; an abandoned lock is taken over', async (t) => {
  const directory = temporaryDirectory(t);
  const module = new URL('../../dist/appliance/api-tokens.js', import.meta.url).href;
  const countPerWriter = 25;
  const writer = (prefix: string): Promise<void> =>
    new Promise((resolve, reject) => {
      const script = `const { createToken } = await import(${JSON.stringify(module)}); for (let i = 0; i < ${countPerWriter}; i++) createToken(${JSON.stringify(directory)}, { name: '${prefix}' + i, role: 'read' });`;
      execFile(process.execPath, ['--input-type=module', '-e', script], (error, _stdout, stderr) => (error === null ? resolve() : reject(new Error(stderr))));
    });
  await Promise.all([writer('a'), writer('b')]);
  t.equal(listTokens(directory).length, 2 * countPerWriter, 'every token of both writers is there');
  t.same(fs.readdirSync(directory), ['api-tokens.json'], 'no temporary or lock file is left');

  const lockPath = `${tokenFilePath(directory)}.lock`;
  fs.writeFileSync(lockPath, '12345\n');
  const longAgo = new Date(Date.now() - tokenLimits.lockStaleMs - 1000);
  fs.utimesSync(lockPath, longAgo, longAgo);
  createToken(directory, { name: 'after-a-crash', role: 'read' });
  t.ok(listTokens(directory).some((token) => token.name === 'after-a-crash'), 'a lock older than lockStaleMs is taken over');
});

t.test('an api-token file of an earlier version becomes an admin token and is removed', async (t) => {
  const directory = temporaryDirectory(t);
  t.equal(migrateLegacyToken(directory), null, 'nothing to do without one');
  createToken(directory, { name: 'admin', role: 'read' });
  fs.writeFileSync(path.join(directory, 'api-token'), 'old-secret-0123456789\n', { mode: 0o600 });
  t.equal(migrateLegacyToken(directory), 'admin-2', 'named admin-2, admin being taken');
  t.notOk(fs.existsSync(path.join(directory, 'api-token')), 'the plaintext file is gone');
  t.match(new TokenStore(directory).authenticate('old-secret-0123456789'), { name: 'admin-2', role: 'admin' }, 'the old token still works, as admin');
  t.notOk(fs.readFileSync(tokenFilePath(directory), 'utf8').includes('old-secret'), 'kept hashed');
  fs.writeFileSync(path.join(directory, 'api-token'), 'old-secret-0123456789\n');
  t.equal(migrateLegacyToken(directory), 'admin-2', 'the same token again: not added twice');
  t.equal(listTokens(directory).length, 2);
});

t.test('events tickets: once, briefly, bounded', async (t) => {
  const tickets = new EventTickets();
  const caller = { name: 'a', role: 'read' as const, sha256: sha256('a') };
  const { ticket, expiresInSeconds } = tickets.issue(caller, 1000);
  t.equal(expiresInSeconds, ticketLimits.lifetimeMs / 1000);
  t.equal(tickets.redeem('not-a-ticket', 1001), null);
  t.equal(tickets.redeem(ticket, 1001), caller.sha256, 'names the token it was made for');
  t.equal(tickets.redeem(ticket, 1002), null, 'used up');
  const late = tickets.issue(caller, 1000).ticket;
  t.equal(tickets.redeem(late, 1000 + ticketLimits.lifetimeMs), null, 'expired');
  const first = tickets.issue(caller, 2000).ticket;
  for (let index = 0; index < ticketLimits.outstandingCountMax; index++) tickets.issue(caller, 2000);
  t.equal(tickets.outstandingCount, ticketLimits.outstandingCountMax, 'never more outstanding than the limit');
  t.equal(tickets.redeem(first, 2001), null, 'the oldest went first');
});

t.test('logged URLs carry no token or ticket', async (t) => {
  t.equal(redactUrl('/api/v1/events?ticket=abc&x=1'), '/api/v1/events?ticket=REDACTED&x=1');
  t.equal(redactUrl('/api/v1/volumes?TOKEN=abc'), '/api/v1/volumes?TOKEN=REDACTED');
  t.equal(redactUrl('/a?x=1&to%6Ben=abc'), '/a?x=1&to%6Ben=REDACTED', 'an escaped name too');
  t.equal(redactUrl('/api/v1/volumes'), '/api/v1/volumes');
});

t.test('a route that declares no role stops the app from building', async (t) => {
  const app = Fastify();
  requireRoles(app);
  t.throws(() => app.get('/api/v1/forgotten', async () => 'x'), { name: 'TypeError', message: /declares no role/ });
  t.throws(() => app.get('/health', { config: { role: 'read' } }, async () => 'x'), /is open and declares role/);
  await app.close();
});

t.test('every route answers a token too weak with 403 forbidden-role naming the role needed', async (t) => {
  const { app } = await startApi(t);
  const routes: Array<[ApiRole, Method, string, unknown?]> = [
    ['read', 'GET', '/api/v1/volumes'],
    ['read', 'GET', '/api/v1/volumes/vol0'],
    ['read', 'GET', '/api/v1/volumes/vol0/snapshots'],
    ['read', 'GET', '/api/v1/volumes/vol0/timeline'],
    ['read', 'GET', '/api/v1/volumes/vol0/retention'],
    ['read', 'GET', '/api/v1/exports'],
    ['read', 'GET', '/metrics'],
    ['read', 'GET', '/api/docs'],
    ['read', 'POST', '/api/v1/events/ticket'],
    ['operator', 'POST', '/api/v1/volumes/vol0/snapshots', { name: 'one' }],
    ['operator', 'PATCH', '/api/v1/volumes/vol0/snapshots/one', { pinned: true }],
    ['operator', 'POST', '/api/v1/exports', { volume: 'vol0', snapshot: 'one' }],
    ['operator', 'DELETE', '/api/v1/exports/vol0@one'],
    ['operator', 'DELETE', '/api/v1/volumes/vol0/snapshots/one'],
    ['admin', 'POST', '/api/v1/volumes', { name: 'vol1', sizeBytes: 8 * 1024 * 1024 }],
    ['admin', 'PUT', '/api/v1/volumes/vol1/retention', { keepAllSeconds: 3600, tiers: [], maxHistoryBytes: 1024 ** 3, reserve: { percent: 5 }, requiredWindowSeconds: 0 }],
    ['admin', 'DELETE', '/api/v1/volumes/vol1'],
    ['admin', 'GET', '/api/v1/jobs'],
    ['admin', 'GET', '/api/v1/jobs/nope'],
    ['admin', 'DELETE', '/api/v1/jobs/nope'],
    ['admin', 'POST', '/api/v1/verify', { volume: 'vol0' }],
    ['admin', 'POST', '/api/v1/restores', { volume: 'vol0', snapshot: 'nope', inPlace: true }],
    ['admin', 'POST', '/api/v1/seeds', { volume: 'vol0', from: 'nbd://127.0.0.1:1/none' }],
  ];
  const weaker: Record<ApiRole, ApiRole[]> = { read: [], operator: ['read'], admin: ['read', 'operator'] };
  for (const [needed, method, url, body] of routes) {
    t.equal((await callAs(app, null, method, url, body)).statusCode, 401, `${method} ${url} without a token`);
    for (const role of weaker[needed]) {
      const refused = await callAs(app, role, method, url, body);
      t.equal(refused.statusCode, 403, `${method} ${url} with a ${role} token`);
      t.equal(errorCode(refused), 'forbidden-role');
      t.match(refused.json(), { error: { message: new RegExp(`needs the ${needed} role; token "test-${role}" has the ${role} role`), details: { roleNeeded: needed, role } } });
    }
    const allowed = await callAs(app, needed, method, url, body);
    t.not(allowed.statusCode, 401, `${method} ${url} with a ${needed} token is let in`);
    t.not(allowed.statusCode, 403, `${method} ${url} with a ${needed} token: ${allowed.body.slice(0, 200)}`);
  }
  const docs = (await callAs(app, 'read', 'GET', '/api/docs')).json() as { paths: Record<string, Record<string, { description?: string }>> };
  t.match(docs.paths['/api/v1/volumes/{volume}/snapshots']?.post?.description, /Needs a token of role operator or stronger/, 'the OpenAPI document says which role');
  t.equal((await callAs(app, null, 'GET', '/api/v1/nowhere')).statusCode, 401, 'an unknown path needs a token too');
  t.equal((await callAs(app, 'read', 'GET', '/api/v1/nowhere')).statusCode, 404);

  const narrowing = await callAs(app, 'operator', 'POST', '/api/v1/exports', { volume: 'vol0', at: Date.now() * 1000, allow: ['unix'], tlsOnly: false });
  t.equal(narrowing.statusCode, 201, `an operator may narrow an export's access: ${narrowing.body}`);
  const widening = await callAs(app, 'operator', 'POST', '/api/v1/exports', { volume: 'vol0', at: Date.now() * 1000, name: 'wide', inheritAccess: false });
  t.equal(widening.statusCode, 403, 'but not free it of its volume');
  t.equal(errorCode(widening), 'forbidden-role');
  t.match(widening.json(), { error: { message: /inheritAccess false\) needs the admin role/ } });
  t.equal((await callAs(app, 'admin', 'POST', '/api/v1/exports', { volume: 'vol0', at: Date.now() * 1000, name: 'wide', inheritAccess: false })).statusCode, 201, 'an admin may');
});
