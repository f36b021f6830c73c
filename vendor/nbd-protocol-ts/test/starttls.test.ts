// STARTTLS (proto.md "TLS support", "NBD_OPT_STARTTLS"): the option's exact bytes, its data
// check, and both parsers' startTls(): plaintext pipelined after the option (or after the ACK)
// is discarded and counted, never parsed as if it came over TLS, and haggling goes on with the
// next option from the TLS stream. Every conversation is also split at every byte.
import t from 'tap';
import {
  ClientFlag,
  ClientParser,
  HandshakeFlag,
  OptionReplyType,
  OptionType,
  ServerParser,
  isProtocolError,
  optionReplyTypeName,
  optionTypeName,
  parseStartTlsData,
  serializeAckReply,
  serializeClientFlags,
  serializeGoOption,
  serializeGreeting,
  serializeListOption,
  serializeOption,
  serializeOptionErrorReply,
  serializeStartTlsOption,
  type ClientMessage,
  type ServerMessage,
} from '../src/index.js';
import { plain, splitAt } from './helpers.js';

const clientFlags = serializeClientFlags(ClientFlag.C_FIXED_NEWSTYLE | ClientFlag.C_NO_ZEROES);

/** Feed pieces to a server parser; call startTls() right after the STARTTLS option, as a server does. */
function serveUntilStartTls(pieces: Buffer[]): { parser: ServerParser; messages: ClientMessage[]; discardedBytes: number | null } {
  const parser = new ServerParser();
  const messages: ClientMessage[] = [];
  let discardedBytes: number | null = null;
  for (const piece of pieces) {
    if (discardedBytes !== null) break; // the rest would come over TLS
    parser.push(piece);
    for (let message = parser.next(); message !== undefined; message = parser.next()) {
      messages.push(message);
      if (message.kind === 'option' && message.option === OptionType.STARTTLS) {
        discardedBytes = parser.startTls();
        break;
      }
    }
  }
  return { parser, messages, discardedBytes };
}

t.test('STARTTLS is IHAVEOPT, option 5, no data', async (t) => {
  t.equal(serializeStartTlsOption().toString('hex'), '49484156454f5054' + '00000005' + '00000000');
  t.equal(optionTypeName(OptionType.STARTTLS), 'NBD_OPT_STARTTLS');
  t.equal(optionReplyTypeName(OptionReplyType.ERR_TLS_REQD), 'NBD_REP_ERR_TLS_REQD');
  t.equal(OptionReplyType.ERR_TLS_REQD, 0x80000005);
  t.equal(OptionReplyType.ERR_POLICY, 0x80000002);
});

t.test('STARTTLS data must be empty', async (t) => {
  t.same(parseStartTlsData(Buffer.alloc(0)), {});
  const withData = parseStartTlsData(Buffer.from([0]));
  t.ok(isProtocolError(withData) && withData.code === 'BAD_LENGTH', 'one byte of data is BAD_LENGTH');
});

t.test('server: STARTTLS at every split, then options from the TLS stream', async (t) => {
  const plaintext = Buffer.concat([clientFlags, serializeStartTlsOption()]);
  for (let position = 0; position <= plaintext.length; position++) {
    const { parser, messages, discardedBytes } = serveUntilStartTls(splitAt(plaintext, [position]));
    t.same(plain(messages), plain([
      { kind: 'clientFlags', flags: ClientFlag.C_FIXED_NEWSTYLE | ClientFlag.C_NO_ZEROES },
      { kind: 'option', option: OptionType.STARTTLS, data: Buffer.alloc(0) },
    ]), `split at ${position}: flags then STARTTLS`);
    t.equal(discardedBytes, 0, `split at ${position}: nothing pipelined`);
    parser.push(serializeGoOption('disk'));
    const afterTls = parser.next();
    t.ok(afterTls?.kind === 'option' && afterTls.option === OptionType.GO, `split at ${position}: GO parsed after the upgrade`);
    t.equal(parser.bufferedBytes, 0);
  }
});

t.test('server: plaintext pipelined after STARTTLS is discarded and counted, at every split', async (t) => {
  const pipelined = Buffer.concat([serializeListOption(), serializeGoOption('disk').subarray(0, 7)]);
  const plaintext = Buffer.concat([clientFlags, serializeStartTlsOption(), pipelined]);
  const startTlsEndBytes = clientFlags.length + 16;
  for (let position = startTlsEndBytes; position <= plaintext.length; position++) {
    const { parser, messages, discardedBytes } = serveUntilStartTls(splitAt(plaintext, [position]));
    t.equal(messages.length, 2, `split at ${position}: LIST never parsed`);
    t.equal(discardedBytes, position - startTlsEndBytes, `split at ${position}: the bytes that arrived before the upgrade`);
    t.equal(parser.bufferedBytes, 0);
  }
  // Everything in one chunk: the whole pipelined tail is dropped, and a fresh option parses.
  const { parser, discardedBytes } = serveUntilStartTls([plaintext]);
  t.equal(discardedBytes, pipelined.length);
  parser.push(serializeListOption());
  const next = parser.next();
  t.ok(next?.kind === 'option' && next.option === OptionType.LIST, 'haggling goes on from an option boundary');
});

t.test('server: startTls() outside option haggling is a TypeError', async (t) => {
  const fresh = new ServerParser();
  t.throws(() => fresh.startTls(), TypeError, 'before the client flags');
  const partial = new ServerParser();
  partial.push(clientFlags);
  partial.next();
  partial.push(serializeOption(OptionType.STARTTLS, Buffer.alloc(4)).subarray(0, 17)); // header read, data pending
  t.equal(partial.next(), undefined);
  t.throws(() => partial.startTls(), TypeError, 'while an option is half read');
  const transmission = new ServerParser();
  transmission.push(clientFlags);
  transmission.next();
  transmission.enterTransmission();
  t.throws(() => transmission.startTls(), TypeError, 'in transmission');
});

t.test('client: the ACK to STARTTLS, then replies from the TLS stream; plaintext after the ACK is dropped', async (t) => {
  const ack = serializeAckReply(OptionType.STARTTLS);
  const forged = serializeOptionErrorReply(OptionType.GO, OptionReplyType.ERR_POLICY, 'forged in plaintext');
  const stream = Buffer.concat([serializeGreeting(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES), ack, forged]);
  for (let position = 0; position <= stream.length; position++) {
    const parser = new ClientParser();
    const messages: ServerMessage[] = [];
    let discardedBytes: number | null = null;
    for (const piece of splitAt(stream, [position])) {
      if (discardedBytes !== null) {
        discardedBytes += piece.length; // a real client reads this piece from the TLS stream
        continue;
      }
      parser.push(piece);
      for (let message = parser.next(); message !== undefined; message = parser.next()) {
        messages.push(message);
        if (message.kind === 'optionReply' && message.option === OptionType.STARTTLS && message.replyType === OptionReplyType.ACK) {
          discardedBytes = parser.startTls();
          break;
        }
      }
    }
    t.same(messages.map((message) => message.kind), ['greeting', 'optionReply'], `split at ${position}: greeting and ACK only`);
    t.equal(discardedBytes, forged.length, `split at ${position}: the forged reply never parsed`);
    parser.push(serializeAckReply(OptionType.GO));
    const overTls = parser.next();
    t.ok(overTls?.kind === 'optionReply' && overTls.option === OptionType.GO, `split at ${position}: replies parse after the upgrade`);
  }
  const transmission = new ClientParser();
  transmission.push(serializeGreeting());
  transmission.next();
  transmission.enterTransmission();
  t.throws(() => transmission.startTls(), TypeError, 'in transmission');
});
