// Bad input at the wire: malformed handshakes, out-of-range and oversized requests, unknown
// commands, and random or mutated byte streams. Invariants: every case gets the answer the spec
// asks for (an error reply, or a hard disconnect where no error can be sent); the server process
// never dies; a well-formed client is served normally afterwards.

import t, { type Test } from 'tap';
import net from 'node:net';
import {
  ClientFlag,
  CommandType,
  Errno,
  OptionReplyType,
  OptionType,
  serializeClientFlags,
  serializeExportNameOption,
  serializeGoOption,
  serializeOption,
  serializeRequestHeader,
  serializeStructuredReplyOption,
} from 'nbd-protocol-ts';
import { NbdClient } from '../../transfer/nbd-client.js';
import { startAppliance, type Appliance } from '../support/appliance.js';
import { RawConnection } from '../support/raw-connection.js';
import { seededRandom } from '../support/seeded-random.js';
import { temporaryDirectory } from '../support/temporary-directory.js';

async function expectOptionReply(t: Tap, connection: RawConnection, option: number, replyType: number, what: string): Promise<void> {
  const message = await connection.next();
  t.equal(message?.kind === 'optionReply' ? message.replyType : `not a reply: ${message?.kind}`, replyType, what);
  if (message?.kind === 'optionReply') t.equal(message.option, option, `${what}: reply names the option`);
}

type Tap = Test;

async function wellFormedClientWorks(t: Tap, appliance: Appliance): Promise<void> {
  const client = await NbdClient.connect({ kind: 'unix', path: appliance.nbdSocket }, { exportName: 'vol0' });
  const data = Buffer.alloc(4096, 0x3c);
  await client.write(0, data, { fua: true });
  t.ok((await client.read(0, 4096)).equals(data), 'a well-formed client is served afterwards');
  await client.disconnect();
}

t.test('handshake: bad client flags, bad option magic, unknown and oversized options', async (t) => {
  const appliance = await startAppliance(t, { dataDirectory: temporaryDirectory(t) });

  const badFlags = await RawConnection.open({ path: appliance.nbdSocket });
  badFlags.send(serializeClientFlags(0x80));
  t.ok(await badFlags.waitClosed(), 'unknown client flag: the server drops the connection');

  const badMagic = await RawConnection.open({ path: appliance.nbdSocket });
  badMagic.send(serializeClientFlags(ClientFlag.C_FIXED_NEWSTYLE), Buffer.from('NOTIHAVEOPT_____', 'latin1'));
  t.ok(await badMagic.waitClosed(), 'bad option magic: dropped');

  const options = await RawConnection.open({ path: appliance.nbdSocket });
  options.send(serializeClientFlags(ClientFlag.C_FIXED_NEWSTYLE | ClientFlag.C_NO_ZEROES));
  options.send(serializeOption(0x7777));
  await expectOptionReply(t, options, 0x7777, OptionReplyType.ERR_UNSUP, 'unknown option: ERR_UNSUP');
  const tooBig = Buffer.alloc(16);
  Buffer.from('IHAVEOPT', 'latin1').copy(tooBig);
  tooBig.writeUInt32BE(OptionType.INFO, 8);
  tooBig.writeUInt32BE(1024 * 1024, 12);
  options.send(tooBig, Buffer.alloc(1024 * 1024, 0xee));
  await expectOptionReply(t, options, OptionType.INFO, OptionReplyType.ERR_TOO_BIG, 'oversized option: ERR_TOO_BIG, and its data is skipped');
  const truncatedInfo = Buffer.alloc(10);
  truncatedInfo.writeUInt32BE(4, 0); // name length 4
  truncatedInfo.write('vol0', 4);
  truncatedInfo.writeUInt16BE(5, 8); // claims 5 info requests, sends none
  options.send(serializeOption(OptionType.INFO, truncatedInfo));
  await expectOptionReply(t, options, OptionType.INFO, OptionReplyType.ERR_INVALID, 'INFO whose count disagrees with its length: ERR_INVALID');
  options.send(serializeOption(OptionType.LIST, Buffer.from('x')));
  await expectOptionReply(t, options, OptionType.LIST, OptionReplyType.ERR_INVALID, 'LIST with data: ERR_INVALID');
  options.send(serializeOption(OptionType.SET_META_CONTEXT, Buffer.alloc(8)));
  await expectOptionReply(t, options, OptionType.SET_META_CONTEXT, OptionReplyType.ERR_INVALID, 'SET_META_CONTEXT before STRUCTURED_REPLY: ERR_INVALID');
  options.send(serializeOption(OptionType.STARTTLS));
  const tls = await options.next();
  t.ok(tls?.kind === 'optionReply' && tls.replyType >= 0x80000000, 'STARTTLS without TLS configured: an error reply');
  options.send(serializeGoOption('no-such-volume'));
  await expectOptionReply(t, options, OptionType.GO, OptionReplyType.ERR_UNKNOWN, 'GO for an unknown export: ERR_UNKNOWN');
  options.send(serializeGoOption('vol0'));
  let reply = await options.next();
  while (reply?.kind === 'optionReply' && reply.replyType === OptionReplyType.INFO) reply = await options.next();
  t.ok(reply?.kind === 'optionReply' && reply.replyType === OptionReplyType.ACK, 'after all that, GO still works on the same connection');
  options.destroy();

  const exportName = await RawConnection.open({ path: appliance.nbdSocket });
  exportName.send(serializeClientFlags(ClientFlag.C_FIXED_NEWSTYLE), serializeExportNameOption('no-such-volume'));
  t.ok(await exportName.waitClosed(), 'EXPORT_NAME of an unknown export: hard disconnect (it cannot carry an error)');

  await wellFormedClientWorks(t, appliance);
});

t.test('transmission: EXPORT_NAME path, unknown command, oversized write, bad magic', async (t) => {
  const appliance = await startAppliance(t, { dataDirectory: temporaryDirectory(t) });
  for (const noZeroes of [false, true]) {
    const connection = await RawConnection.open({ path: appliance.nbdSocket });
    connection.send(serializeClientFlags(ClientFlag.C_FIXED_NEWSTYLE | (noZeroes ? ClientFlag.C_NO_ZEROES : 0)), serializeExportNameOption('vol0'));
    connection.parser.expectExportNameReply(noZeroes);
    const attached = await connection.next();
    t.equal(attached?.kind === 'exportNameReply' ? attached.sizeBytes : undefined, 64 * 1024 * 1024, `EXPORT_NAME reply (noZeroes ${noZeroes})`);
    connection.parser.enterTransmission();

    connection.request(42, 0, 1n, 0, 0);
    const unknown = await connection.next();
    t.equal(unknown?.kind === 'simpleReply' ? unknown.error : undefined, Errno.EINVAL, 'unknown command: EINVAL');

    connection.request(CommandType.WRITE, 0, 2n, 0, 33 * 1024 * 1024, Buffer.alloc(33 * 1024 * 1024, 1));
    const oversized = await connection.next(15000);
    t.equal(oversized?.kind === 'simpleReply' ? oversized.error : undefined, Errno.EINVAL, 'write over 32 MiB: EINVAL, payload skipped');

    connection.request(CommandType.WRITE, 0x40, 3n, 0, 512, Buffer.alloc(512));
    const badFlag = await connection.next();
    t.equal(badFlag?.kind === 'simpleReply' ? badFlag.error : undefined, Errno.EINVAL, 'unknown command flag: EINVAL');

    connection.request(CommandType.FLUSH, 0, 4n, 4096, 0);
    const badFlush = await connection.next();
    t.equal(badFlush?.kind === 'simpleReply' ? badFlush.error : undefined, Errno.EINVAL, 'FLUSH with an offset: EINVAL');

    connection.request(CommandType.READ, 0, 5n, 0, 512);
    const read = await connection.next();
    t.equal(read?.kind === 'simpleReply' ? read.data?.length : undefined, 512, 'the connection still serves reads');

    connection.send(Buffer.alloc(28, 0x99));
    t.ok(await connection.waitClosed(), 'bad request magic: dropped (framing is lost)');
  }
  await wellFormedClientWorks(t, appliance);
});

t.test('structured replies: errors carry a message', async (t) => {
  const appliance = await startAppliance(t, { dataDirectory: temporaryDirectory(t) });
  const client = await NbdClient.connect({ kind: 'unix', path: appliance.nbdSocket }, { exportName: 'vol0', structuredReplies: true });
  await t.rejects(client.read(64 * 1024 * 1024, 512), /EINVAL.*past the end/, 'error chunk with a readable message');
  await t.rejects(client.raw(CommandType.BLOCK_STATUS, 0, 0, 4096), /EINVAL.*metadata context/, 'BLOCK_STATUS without a context: EINVAL');
  await client.disconnect();
});

t.test('fuzz: random and mutated streams never bring the server down', async (t) => {
  const appliance = await startAppliance(t, { dataDirectory: temporaryDirectory(t) });
  const seed = Number(process.env.FUZZ_SEED ?? Date.now() % 1_000_000);
  const random = seededRandom(seed);
  t.comment(`seed ${seed}`);
  const valid = Buffer.concat([
    serializeClientFlags(ClientFlag.C_FIXED_NEWSTYLE | ClientFlag.C_NO_ZEROES),
    serializeStructuredReplyOption(),
    serializeOption(OptionType.LIST),
    serializeGoOption('vol0'),
    serializeRequestHeader(CommandType.WRITE, 1, 1n, 4096, 512),
    Buffer.alloc(512, 7),
    serializeRequestHeader(CommandType.READ, 0, 2n, 0, 8192),
    serializeRequestHeader(CommandType.BLOCK_STATUS, 0, 3n, 0, 65536),
    serializeRequestHeader(CommandType.WRITE_ZEROES, 0, 4n, 0, 4096),
    serializeRequestHeader(CommandType.TRIM, 0, 5n, 8192, 4096),
    serializeRequestHeader(CommandType.FLUSH, 0, 6n, 0, 0),
    serializeRequestHeader(CommandType.DISC, 0, 7n, 0, 0),
  ]);
  const iterations = 300;
  for (let iteration = 0; iteration < iterations; iteration++) {
    let stream: Buffer;
    if (random() < 0.3) {
      stream = Buffer.alloc(1 + Math.floor(random() * 400));
      for (let index = 0; index < stream.length; index++) stream[index] = Math.floor(random() * 256);
    } else {
      stream = Buffer.from(valid);
      const mutations = 1 + Math.floor(random() * 6);
      for (let mutation = 0; mutation < mutations; mutation++) {
        const position = Math.floor(random() * stream.length);
        const action = random();
        if (action < 0.6) stream[position] = Math.floor(random() * 256);
        else if (action < 0.8) stream = Buffer.concat([stream.subarray(0, position), stream.subarray(position + 1 + Math.floor(random() * 8))]);
        else stream = stream.subarray(0, position);
      }
    }
    const socket = net.createConnection(appliance.nbdSocket);
    socket.on('error', () => undefined);
    socket.on('data', () => undefined);
    await new Promise((resolve) => socket.once('connect', resolve));
    // Send in random pieces, then close.
    let offset = 0;
    while (offset < stream.length) {
      const piece = 1 + Math.floor(random() * 64);
      socket.write(stream.subarray(offset, offset + piece));
      offset += piece;
    }
    socket.end();
    await new Promise((resolve) => {
      socket.once('close', resolve);
      setTimeout(() => {
        socket.destroy();
        resolve(undefined);
      }, 2000);
    });
  }
  t.equal(appliance.child.exitCode, null, `the server is still running after ${iterations} hostile connections`);
  await wellFormedClientWorks(t, appliance);
});
