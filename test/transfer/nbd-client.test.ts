// Our NBD client against broken and hostile servers (test/support/hostile-nbd-server.ts), in this
// process. Invariants: whatever the server does, the requests in flight reject with an
// NbdConnectionError whose code and message say what happened, later requests reject the same
// way, and nothing throws out of a socket handler (that would end this test process, as a bad
// OFFSET_DATA ended the appliance before the client's replies were checked); a silent server
// costs at most the timeout; an honest server is served, and an error it reports fails only
// its request.

import t from 'tap';
import { ChunkType, CommandType, Errno, ReplyFlag, serializeErrorChunk } from 'nbd-protocol-ts';
import { NbdClient, NbdConnectionError, NbdRequestError, type NbdConnectOptions } from '../../transfer/nbd-client.js';
import { nbdClientLimits } from '../../transfer/limits.js';
import { sleep, withinMs } from '../support/waits.js';
import { chunk, offsetDataPayload, simpleReply, startHostileNbdServer, type Behaviour, type HostileServer } from '../support/hostile-nbd-server.js';

const sizeBytes = 1024 * 1024;

function connect(server: HostileServer, options: Partial<NbdConnectOptions> = {}): Promise<NbdClient> {
  return NbdClient.connect({ kind: 'tcp', host: '127.0.0.1', port: server.port }, { exportName: 'disk', structuredReplies: false, ...options });
}

/** The rejection of a promise that must reject. */
async function rejectionOf(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('it did not reject');
}

interface HostileCase {
  name: string;
  structuredReplies: boolean;
  behaviour: Behaviour;
  code: string;
  /** What the message must say (the codec's code for protocol errors). */
  message: RegExp;
  /** How many of the two READs are answered before the server goes wrong (default none). */
  answeredReads?: number;
}

const hostileCases: HostileCase[] = [
  {
    name: 'OFFSET_DATA before the READ, structured replies not negotiated (crashed the process before)',
    structuredReplies: false,
    behaviour: (request, peer) => peer.send(chunk(request.cookie, ReplyFlag.DONE, ChunkType.OFFSET_DATA, offsetDataPayload(request.offsetBytes - 4096, Buffer.alloc(request.lengthBytes)))),
    code: 'PROTOCOL_ERROR',
    message: /STRUCTURED_REPLY_NOT_NEGOTIATED/,
  },
  {
    name: 'OFFSET_DATA before the READ',
    structuredReplies: true,
    behaviour: (request, peer) => peer.send(chunk(request.cookie, ReplyFlag.DONE, ChunkType.OFFSET_DATA, offsetDataPayload(request.offsetBytes - 4096, Buffer.alloc(request.lengthBytes)))),
    code: 'PROTOCOL_ERROR',
    message: /OUT_OF_RANGE.*outside the request/,
  },
  {
    name: 'OFFSET_DATA at offset 2^63',
    structuredReplies: true,
    behaviour: (request, peer) => peer.send(chunk(request.cookie, ReplyFlag.DONE, ChunkType.OFFSET_DATA, offsetDataPayload(2n ** 63n, Buffer.alloc(16)))),
    code: 'PROTOCOL_ERROR',
    message: /OUT_OF_RANGE/,
  },
  {
    name: 'OFFSET_DATA declaring 4 GiB for a small READ',
    structuredReplies: true,
    behaviour: (request, peer) => peer.send(chunk(request.cookie, ReplyFlag.DONE, ChunkType.OFFSET_DATA, Buffer.alloc(0), 0xffffffff)),
    code: 'PROTOCOL_ERROR',
    message: /OUT_OF_RANGE.*more data than the READ asked for/,
  },
  {
    name: 'a READ answered in part, then DONE',
    structuredReplies: true,
    behaviour: (request, peer) => peer.send(chunk(request.cookie, ReplyFlag.DONE, ChunkType.OFFSET_DATA, offsetDataPayload(request.offsetBytes, Buffer.alloc(request.lengthBytes / 2)))),
    code: 'PROTOCOL_ERROR',
    message: /INCOMPLETE_REPLY/,
  },
  {
    name: 'a reply with a cookie never sent',
    structuredReplies: false,
    behaviour: (request, peer) => peer.send(simpleReply(request.cookie + 1000n, 0, Buffer.alloc(request.lengthBytes))),
    code: 'PROTOCOL_ERROR',
    message: /UNKNOWN_COOKIE/,
  },
  {
    name: 'the same reply twice',
    structuredReplies: false,
    behaviour: (request, peer) => {
      const reply = simpleReply(request.cookie, 0, Buffer.alloc(request.lengthBytes));
      peer.send(reply, reply);
    },
    code: 'PROTOCOL_ERROR',
    message: /UNKNOWN_COOKIE/,
    answeredReads: 1,
  },
  {
    name: 'an error chunk whose message runs past the chunk',
    structuredReplies: true,
    behaviour: (request, peer) => {
      const bad = serializeErrorChunk(request.cookie, ReplyFlag.DONE, Errno.EIO, 'short');
      bad.writeUInt16BE(4000, 24);
      peer.send(bad);
    },
    code: 'PROTOCOL_ERROR',
    message: /TRUNCATED/,
  },
  {
    name: 'garbage',
    structuredReplies: false,
    behaviour: (_request, peer) => peer.send(Buffer.from('HTTP/1.1 400 Bad Request\r\n\r\n')),
    code: 'PROTOCOL_ERROR',
    message: /BAD_REPLY_MAGIC/,
  },
  {
    name: 'half a reply, then the connection closes',
    structuredReplies: false,
    behaviour: (request, peer) => {
      peer.send(simpleReply(request.cookie, 0, Buffer.alloc(request.lengthBytes / 2)));
      peer.close();
    },
    code: 'CLOSED',
    message: /closed the connection/,
  },
];

for (const hostile of hostileCases) {
  t.test(hostile.name, async (t) => {
    const server = await startHostileNbdServer(t, { sizeBytes, behaviour: hostile.behaviour });
    const client = await connect(server, { structuredReplies: hostile.structuredReplies });
    t.equal(client.structuredReplies, hostile.structuredReplies);
    const reads = [client.read(65536, 8192), client.read(16384, 8192)];
    const answered = hostile.answeredReads ?? 0;
    for (const read of reads.slice(0, answered)) t.equal((await read).length, 8192, 'answered before the server went wrong');
    for (const read of reads.slice(answered)) {
      const error = await rejectionOf(read);
      t.ok(error instanceof NbdConnectionError, `rejects with NbdConnectionError: ${String(error)}`);
      t.equal((error as NbdConnectionError).code, hostile.code);
      t.match((error as Error).message, hostile.message);
      t.match((error as Error).message, /127\.0\.0\.1:\d+ \(export "disk"\)/, 'the message names the server');
    }
    const later = await rejectionOf(client.read(0, 512));
    t.equal((later as NbdConnectionError).code, hostile.code, 'a later request fails the same way, without reaching the server');
    await client.disconnect();
  });
}

t.test('a server that stops answering: requests in flight fail after the request timeout', async (t) => {
  const server = await startHostileNbdServer(t, { sizeBytes, behaviour: () => undefined });
  const client = await connect(server, { requestTimeoutMs: 300 });
  const startedMs = performance.now();
  const requests = Promise.all([rejectionOf(client.read(0, 4096)), rejectionOf(client.write(0, Buffer.alloc(512))), rejectionOf(client.flush())]);
  const errors = await withinMs(requests, 10_000, 'requests to a silent server');
  const elapsedMs = performance.now() - startedMs;
  for (const error of errors) t.equal((error as NbdConnectionError).code, 'REQUEST_TIMEOUT');
  t.match((errors[0] as Error).message, /did not answer NBD_CMD_READ 0\+4096 \(nor any of the 3 requests in flight\) within 300 ms/);
  t.ok(elapsedMs >= 250 && elapsedMs < 5000, `failed after ${Math.round(elapsedMs)} ms`);
  await client.disconnect();
});

t.test('a slow server that keeps answering is not timed out, though its queue takes longer than the timeout', async (t) => {
  let answered = Promise.resolve();
  const server = await startHostileNbdServer(t, {
    sizeBytes,
    behaviour: (request, peer) => {
      answered = answered.then(() => sleep(100)).then(() => peer.honest(request));
    },
  });
  const client = await connect(server, { requestTimeoutMs: 400 });
  const startedMs = performance.now();
  const reads = await Promise.all(Array.from({ length: 12 }, (_, index) => client.read(index * 4096, 4096)));
  t.equal(reads.length, 12);
  t.ok(performance.now() - startedMs > 800, 'the last request waited well past the timeout');
  await client.disconnect();
});

t.test('a server that answers in time is not timed out', async (t) => {
  const server = await startHostileNbdServer(t, { sizeBytes, behaviour: (request, peer) => setTimeout(() => peer.honest(request), 100) });
  const client = await connect(server, { requestTimeoutMs: 1000 });
  for (let round = 0; round < 5; round++) t.equal((await client.read(0, 4096)).length, 4096);
  await client.disconnect();
});

t.test('a server that accepts and says nothing: connect fails after the connect timeout', async (t) => {
  const server = await startHostileNbdServer(t, { sizeBytes, behaviour: () => undefined, silentHandshake: true });
  const startedMs = performance.now();
  const error = await withinMs(rejectionOf(connect(server, { connectTimeoutMs: 300 })), 10_000, 'connecting to a silent server');
  t.equal((error as NbdConnectionError).code, 'CONNECT_TIMEOUT');
  t.match((error as Error).message, /did not connect and negotiate within 300 ms/);
  t.ok(performance.now() - startedMs < 5000);
});

t.test('negotiation: bytes after the ACK to GO, or a flood of option replies, fail the connect', async (t) => {
  const early = await startHostileNbdServer(t, { sizeBytes, behaviour: () => undefined, afterGoAck: simpleReply(1n, 0) });
  const earlyError = await rejectionOf(connect(early));
  t.equal((earlyError as NbdConnectionError).code, 'PROTOCOL_ERROR');
  t.match((earlyError as Error).message, /sent 16 bytes after the ACK to GO, before any request/);
  const flood = await startHostileNbdServer(t, { sizeBytes, behaviour: () => undefined, goInfoReplyCount: 10_000 });
  const floodError = await rejectionOf(connect(flood));
  t.equal((floodError as NbdConnectionError).code, 'PROTOCOL_ERROR');
  t.match((floodError as Error).message, new RegExp(`more than ${nbdClientLimits.queuedOptionReplyCountMax} option replies nobody asked for`));
});

t.test('a server that does not close after NBD_CMD_DISC is cut after the disconnect timeout', async (t) => {
  const server = await startHostileNbdServer(t, { sizeBytes, behaviour: (request, peer) => peer.honest(request), ignoreDisconnect: true });
  const client = await connect(server);
  const startedMs = performance.now();
  await withinMs(client.disconnect(), nbdClientLimits.disconnectTimeoutMs + 5000, 'disconnecting');
  const elapsedMs = performance.now() - startedMs;
  t.ok(elapsedMs >= nbdClientLimits.disconnectTimeoutMs - 500, `the server held the connection until we cut it (${Math.round(elapsedMs)} ms)`);
});

t.test('an honest server: data round-trips, an error reply fails only its request', async (t) => {
  const server = await startHostileNbdServer(t, {
    sizeBytes,
    behaviour: (request, peer) => {
      if (request.type === CommandType.READ && request.offsetBytes === 512 * 1024) return peer.send(serializeErrorChunk(request.cookie, ReplyFlag.DONE, Errno.EIO, 'bad sector'));
      peer.honest(request);
    },
  });
  for (const structuredReplies of [false, true]) {
    const client = await connect(server, { structuredReplies });
    const data = Buffer.alloc(8192, structuredReplies ? 0x5a : 0xa5);
    await client.write(4096, data);
    t.ok((await client.read(4096, 8192)).equals(data), `structured replies ${structuredReplies}: read back what was written`);
    if (structuredReplies) {
      const error = await rejectionOf(client.read(512 * 1024, 4096));
      t.ok(error instanceof NbdRequestError, 'an error chunk is a request error');
      t.match((error as Error).message, /NBD_EIO: bad sector/);
      t.ok((await client.read(4096, 8192)).equals(data), 'the connection goes on');
    }
    await client.disconnect();
  }
});

t.test('timeouts given to connect are checked', async (t) => {
  const server = await startHostileNbdServer(t, { sizeBytes, behaviour: (request, peer) => peer.honest(request) });
  await t.rejects(connect(server, { requestTimeoutMs: 0 }), TypeError);
  await t.rejects(connect(server, { connectTimeoutMs: Number.NaN }), TypeError);
});
