// The server's access rules and its TLS answers, in-process and without sockets: allowlist
// parsing and matching (server/access.ts), and what negotiation.ts answers in each TLS mode
// before and after STARTTLS. Invariants: a bad rule never parses; an empty allowlist lets
// everyone in and a non-empty one only matching clients; in required mode no option but
// STARTTLS and ABORT is answered before TLS; a TLS-less server never sends ERR_TLS_REQD;
// STARTTLS is acknowledged once and resets what was negotiated in plaintext.

import t from 'tap';
import {
  OptionReplyType,
  OptionType,
  buildInfoOrGoData,
  buildMetaContextData,
  buildExportNameData,
  decodeOptionErrorMessage,
} from 'nbd-protocol-ts';
import { accessAllows, normaliseAddress, parseAccessPolicy, type ClientIdentity } from '../../server/access.js';
import { ExportTable } from '../../server/exports.js';
import { Negotiation, type OptionOutcome } from '../../server/negotiation.js';
import type { TlsMode } from '../../server/tls.js';
import type { BlockDevice } from '../../storage/index.js';
import { chance, pick, randomInteger, seededRandom } from '../support/seeded-random.js';

const plainClient: ClientIdentity = { address: '127.0.0.1', certificateName: null };

t.test('allow rules: addresses, CIDR blocks, certificate names, the unix socket', async (t) => {
  const policy = parseAccessPolicy([' 192.0.2.7 ', '10.0.0.0/8', '2001:db8::/32', 'cn:alice', 'CN:backup host', 'unix']);
  t.same(policy.allow, ['192.0.2.7', '10.0.0.0/8', '2001:db8::/32', 'cn:alice', 'cn:backup host', 'unix']);
  const allows = (client: Partial<ClientIdentity>): boolean => accessAllows(policy, { address: null, certificateName: null, ...client });
  t.ok(allows({ address: '192.0.2.7' }), 'a listed address');
  t.notOk(allows({ address: '192.0.2.8' }), 'its neighbour');
  t.ok(allows({ address: '10.255.0.1' }), 'inside a /8');
  t.notOk(allows({ address: '11.0.0.1' }), 'outside it');
  t.ok(allows({ address: '2001:db8:1::5' }), 'inside an IPv6 block');
  t.notOk(allows({ address: '2001:db9::5' }), 'outside it');
  t.ok(allows({ address: '203.0.113.1', certificateName: 'alice' }), 'a certificate name from anywhere');
  t.ok(allows({ address: '203.0.113.1', certificateName: 'backup host' }), 'CN: is case-insensitive, the name is not');
  t.notOk(allows({ address: '203.0.113.1', certificateName: 'Alice' }));
  t.ok(allows({ address: null }), 'the unix rule lets socket clients in');
  t.notOk(accessAllows(parseAccessPolicy(['10.0.0.0/8']), { address: null, certificateName: null }), 'without it they are out');
  t.ok(accessAllows(parseAccessPolicy([]), { address: '203.0.113.1', certificateName: null }), 'an empty allowlist lets everyone in');
  t.equal(normaliseAddress('::ffff:10.1.2.3'), '10.1.2.3', 'IPv4-mapped IPv6 is compared as IPv4');
  t.ok(allows({ address: normaliseAddress('::ffff:10.1.2.3') }));
  t.equal(normaliseAddress(undefined), null);
  t.equal(parseAccessPolicy([], { tlsOnly: true }).tlsOnly, true);
});

t.test('bad allow rules are refused with a message', async (t) => {
  for (const rule of ['not-an-address', '10.0.0.0/33', '2001:db8::/129', '10.0.0.0/', '10.0.0.0/x', '300.1.1.1', 'cn:', 'cn:../etc', 'cn:' + 'a'.repeat(65), '*']) {
    t.throws(() => parseAccessPolicy([rule]), /allow rule/, `"${rule}"`);
  }
  t.throws(() => parseAccessPolicy(Array.from({ length: 257 }, (_, index) => `10.0.${index >> 8}.${index & 255}`)), /at most 256/);
});

/** A device the negotiation can describe; no I/O happens here. */
function device(description: string): BlockDevice {
  const never = (): Promise<never> => Promise.reject(new Error('no I/O in this test'));
  return {
    sizeBytes: 1 << 20,
    readOnly: false,
    description,
    capabilities: { flush: true, fua: true, trim: true, writeZeroes: true, fastZero: true, cache: true, multiConnection: true },
    read: never,
    write: never,
    writeZeroes: never,
    trim: never,
    flush: never,
    cache: never,
    allocation: never,
  };
}

function table(): ExportTable {
  const exports = new ExportTable();
  exports.add('open', device('open'));
  exports.add('secret', device('secret'), 'secret', parseAccessPolicy(['cn:alice']));
  exports.add('tls-only', device('tls-only'), 'tls-only', parseAccessPolicy([], { tlsOnly: true }));
  return exports;
}

/** Reply types of an outcome's replies, in order (u32 at byte 12 of each option reply). */
function replyTypes(outcome: OptionOutcome): number[] {
  return outcome.replies.map((reply) => reply.readUInt32BE(12));
}

function negotiation(mode: TlsMode, client = plainClient): Negotiation {
  const negotiating = new Negotiation(table(), mode, client);
  negotiating.acceptClientFlags(3);
  return negotiating;
}

const go = (name: string): Buffer => buildInfoOrGoData(name, []);

t.test('required mode: only STARTTLS and ABORT before TLS; everything after', async (t) => {
  const negotiating = negotiation('required');
  for (const [option, data] of [
    [OptionType.LIST, Buffer.alloc(0)],
    [OptionType.INFO, go('open')],
    [OptionType.GO, go('open')],
    [OptionType.STRUCTURED_REPLY, Buffer.alloc(0)],
    [OptionType.LIST_META_CONTEXT, buildMetaContextData('open', [])],
    [99, Buffer.alloc(0)],
  ] as const) {
    t.same(replyTypes(negotiating.handleOption(option, data)), [OptionReplyType.ERR_TLS_REQD], `option ${option} before TLS`);
  }
  t.match(negotiation('required').handleOption(OptionType.EXPORT_NAME, buildExportNameData('open')), { kind: 'close', replies: [] }, 'EXPORT_NAME before TLS hangs up');
  t.match(negotiation('required').handleOption(OptionType.ABORT, Buffer.alloc(0)), { kind: 'close' }, 'ABORT is honoured');
  t.same(replyTypes(negotiating.handleOption(OptionType.STARTTLS, Buffer.from([1]))), [OptionReplyType.ERR_INVALID], 'STARTTLS with data');
  const start = negotiating.handleOption(OptionType.STARTTLS, Buffer.alloc(0));
  t.equal(start.kind, 'startTls');
  t.same(replyTypes(start), [OptionReplyType.ACK]);
  negotiating.tlsStarted(null);
  t.same(replyTypes(negotiating.handleOption(OptionType.STARTTLS, Buffer.alloc(0))), [OptionReplyType.ERR_INVALID], 'STARTTLS again');
  t.throws(() => negotiating.tlsStarted(null), TypeError, 'TLS cannot start twice');
  const listed = negotiating.handleOption(OptionType.LIST, Buffer.alloc(0));
  t.equal(listed.replies.length, 3, 'LIST over TLS: open and tls-only (secret needs cn:alice), then ACK');
  t.equal(negotiating.handleOption(OptionType.GO, go('tls-only')).kind, 'transmission', 'GO on a TLS-only export over TLS');
});

t.test('STARTTLS resets structured replies and metadata contexts', async (t) => {
  const negotiating = negotiation('selective');
  t.same(replyTypes(negotiating.handleOption(OptionType.STRUCTURED_REPLY, Buffer.alloc(0))), [OptionReplyType.ACK]);
  t.equal(replyTypes(negotiating.handleOption(OptionType.SET_META_CONTEXT, buildMetaContextData('open', ['base:allocation'])))[0], OptionReplyType.META_CONTEXT);
  t.equal(negotiating.handleOption(OptionType.STARTTLS, Buffer.alloc(0)).kind, 'startTls');
  negotiating.tlsStarted('alice');
  const after = negotiating.handleOption(OptionType.GO, go('open'));
  t.match(after, { kind: 'transmission', negotiated: { structuredReplies: false, contexts: [] } }, 'nothing from plaintext carries over');
});

t.test('selective mode: TLS-only exports need TLS; allowlists need a matching client', async (t) => {
  const negotiating = negotiation('selective');
  const listed = negotiating.handleOption(OptionType.LIST, Buffer.alloc(0));
  t.equal(listed.replies.length, 2, 'LIST before TLS shows only the open export');
  const tlsOnly = negotiating.handleOption(OptionType.GO, go('tls-only'));
  t.same(replyTypes(tlsOnly), [OptionReplyType.ERR_TLS_REQD]);
  t.match(tlsOnly, { refusal: { kind: 'tls', export: 'tls-only' } });
  const secret = negotiating.handleOption(OptionType.INFO, go('secret'));
  t.same(replyTypes(secret), [OptionReplyType.ERR_POLICY]);
  t.match(secret, { refusal: { kind: 'access', export: 'secret' } }, 'the refusal goes to the log');
  t.match(decodeOptionErrorMessage(secret.replies[0]!.subarray(20)), /does not allow client 127\.0\.0\.1 \(no verified client certificate\)/);
  t.same(replyTypes(negotiating.handleOption(OptionType.LIST_META_CONTEXT, buildMetaContextData('secret', []))), [OptionReplyType.ERR_INVALID], 'meta contexts need structured replies first');
  negotiating.handleOption(OptionType.STRUCTURED_REPLY, Buffer.alloc(0));
  t.same(replyTypes(negotiating.handleOption(OptionType.LIST_META_CONTEXT, buildMetaContextData('secret', []))), [OptionReplyType.ERR_POLICY], 'nor its metadata contexts');
  t.match(negotiating.handleOption(OptionType.EXPORT_NAME, buildExportNameData('secret')), { kind: 'close', refusal: { kind: 'access' } }, 'EXPORT_NAME on a refused export hangs up');

  const alice = negotiation('selective');
  alice.handleOption(OptionType.STARTTLS, Buffer.alloc(0));
  alice.tlsStarted('alice');
  t.equal(alice.handleOption(OptionType.GO, go('secret')).kind, 'transmission', 'alice, verified, may use the secret export');
  const bob = negotiation('selective');
  bob.handleOption(OptionType.STARTTLS, Buffer.alloc(0));
  bob.tlsStarted('bob');
  t.same(replyTypes(bob.handleOption(OptionType.GO, go('secret'))), [OptionReplyType.ERR_POLICY], 'bob may not');
});

t.test('off mode: STARTTLS is refused by policy, and ERR_TLS_REQD is never sent', async (t) => {
  const negotiating = negotiation('off');
  t.same(replyTypes(negotiating.handleOption(OptionType.STARTTLS, Buffer.alloc(0))), [OptionReplyType.ERR_POLICY]);
  t.same(replyTypes(negotiating.handleOption(OptionType.GO, go('tls-only'))), [OptionReplyType.ERR_POLICY], 'a TLS-only export on a TLS-less server');
  t.equal(negotiating.handleOption(OptionType.GO, go('open')).kind, 'transmission');
});

t.test('required mode, random options before TLS: nothing but STARTTLS and ABORT gets anything but ERR_TLS_REQD', async (t) => {
  const seed = Number(process.env.TLS_FUZZ_SEED ?? Date.now() % 1_000_000);
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const options = [...Object.values(OptionType), 0, 12, 0x7fffffff, 0xffffffff];
  let violations = 0;
  for (let round = 0; round < 2000; round++) {
    const option = pick(random, options);
    const data = chance(random, 0.5) ? Buffer.alloc(0) : Buffer.from(Array.from({ length: randomInteger(random, 1, 40) }, () => randomInteger(random, 0, 255)));
    const outcome = negotiation('required').handleOption(option, data);
    const types = replyTypes(outcome);
    const allowed =
      option === OptionType.STARTTLS
        ? (data.length === 0 && outcome.kind === 'startTls') || (data.length > 0 && types[0] === OptionReplyType.ERR_INVALID)
        : option === OptionType.ABORT
          ? outcome.kind === 'close'
          : option === OptionType.EXPORT_NAME
            ? outcome.kind === 'close' && outcome.replies.length === 0
            : outcome.kind === 'reply' && types.length === 1 && types[0] === OptionReplyType.ERR_TLS_REQD;
    if (!allowed) {
      violations++;
      t.fail(`option ${option} with ${data.length} bytes: ${outcome.kind} ${types.map((type) => type.toString(16)).join(',')}`);
      if (violations > 5) break;
    }
  }
  t.equal(violations, 0, `seed ${seed}: 2000 random options answered as FORCEDTLS requires`);
});
