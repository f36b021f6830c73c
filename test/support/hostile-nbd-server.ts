// A small NBD server for tests of our client against broken and hostile peers: it speaks just
// enough of the protocol (the greeting, STRUCTURED_REPLY, SET_META_CONTEXT, GO with
// NBD_INFO_EXPORT) to bring a client into transmission, then answers each request as the test's
// behaviour says: honestly from an in-memory disk, or with a bad chunk, a wrong cookie, garbage,
// a half reply, or silence. It runs in the test's process on loopback TCP.

import net from 'node:net';
import {
  ChunkType,
  ClientFlag,
  CommandType,
  Magic,
  OptionReplyType,
  OptionType,
  ReplyFlag,
  ServerParser,
  TransmissionFlag,
  isProtocolError,
  parseMetaContextData,
  serializeAckReply,
  serializeGreeting,
  serializeInfoExportReply,
  serializeMetaContextReply,
  serializeOptionErrorReply,
  serializeSimpleReplyHeader,
  type RequestMessage,
} from 'nbd-protocol-ts';

interface Teardown {
  teardown(callback: () => void | Promise<void>): void;
}

/** What the server does with one request in transmission. */
export type Behaviour = (request: RequestMessage, peer: Peer) => void;

/** The server's side of one connection, for behaviours. */
export interface Peer {
  /** Whether the client negotiated structured replies. */
  readonly structuredReplies: boolean;
  /** Requests this connection has seen, this one included. */
  readonly requestCount: number;
  /** Answer as a correct server would, from the in-memory disk. */
  honest(request: RequestMessage): void;
  send(...buffers: Buffer[]): void;
  close(): void;
}

export interface HostileServerOptions {
  sizeBytes: number;
  behaviour: Behaviour;
  /** Acknowledge NBD_OPT_STRUCTURED_REPLY (default true); otherwise answer ERR_UNSUP. */
  structuredReplies?: boolean;
  /** Say nothing at all after accepting a connection: not even the greeting. */
  silentHandshake?: boolean;
  /** Keep the connection open after NBD_CMD_DISC instead of closing it. */
  ignoreDisconnect?: boolean;
  /** NBD_INFO_EXPORT replies sent for GO before its ACK (default 1). */
  goInfoReplyCount?: number;
  /** Bytes sent right after the ACK to GO, before any request. */
  afterGoAck?: Buffer;
}

export interface HostileServer {
  readonly port: number;
  /** nbd://127.0.0.1:PORT/EXPORT */
  uri(exportName?: string): string;
  /** Connections accepted so far. */
  readonly connectionCount: number;
  close(): Promise<void>;
}

export async function startHostileNbdServer(t: Teardown, options: HostileServerOptions): Promise<HostileServer> {
  const disk = Buffer.alloc(options.sizeBytes);
  const sockets = new Set<net.Socket>();
  let connectionCount = 0;
  // Half-open sockets stay open after the client's FIN, so a server can ignore NBD_CMD_DISC.
  const server = net.createServer({ allowHalfOpen: options.ignoreDisconnect === true }, (socket) => {
    connectionCount++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    if (options.silentHandshake === true) return;
    serveConnection(socket, disk, options);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  const close = async (): Promise<void> => {
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  t.teardown(close);
  return {
    port,
    uri: (exportName = 'disk') => `nbd://127.0.0.1:${port}/${exportName}`,
    get connectionCount() {
      return connectionCount;
    },
    close,
  };
}

function serveConnection(socket: net.Socket, disk: Buffer, options: HostileServerOptions): void {
  const parser = new ServerParser();
  let structuredReplies = false;
  let requestCount = 0;
  const transmissionFlags = TransmissionFlag.HAS_FLAGS | TransmissionFlag.SEND_FLUSH | TransmissionFlag.SEND_WRITE_ZEROES;
  const peer: Peer = {
    get structuredReplies() {
      return structuredReplies;
    },
    get requestCount() {
      return requestCount;
    },
    honest: (request) => answerHonestly(socket, disk, request, structuredReplies),
    send: (...buffers) => {
      for (const buffer of buffers) if (!socket.destroyed) socket.write(buffer);
    },
    close: () => socket.destroy(),
  };
  socket.write(serializeGreeting());
  socket.on('data', (chunk: Buffer) => {
    parser.push(chunk);
    for (let message = parser.next(); message !== undefined && !socket.destroyed; message = parser.next()) {
      if (message.kind === 'fatal' || message.kind === 'optionTooBig' || message.kind === 'writeTooBig') return socket.destroy();
      if (message.kind === 'clientFlags') {
        if ((message.flags & ClientFlag.C_FIXED_NEWSTYLE) === 0) socket.destroy();
      } else if (message.kind === 'option') {
        if (message.option === OptionType.STRUCTURED_REPLY) {
          structuredReplies = options.structuredReplies ?? true;
          socket.write(structuredReplies ? serializeAckReply(message.option) : serializeOptionErrorReply(message.option, OptionReplyType.ERR_UNSUP));
        } else if (message.option === OptionType.SET_META_CONTEXT) {
          const data = parseMetaContextData(message.data);
          if (isProtocolError(data)) return socket.destroy();
          data.queries.forEach((query, index) => socket.write(serializeMetaContextReply(message.option, index + 1, query)));
          socket.write(serializeAckReply(message.option));
        } else if (message.option === OptionType.GO) {
          const infoReply = serializeInfoExportReply(message.option, disk.length, transmissionFlags);
          socket.write(Buffer.concat(Array.from({ length: options.goInfoReplyCount ?? 1 }, () => infoReply)));
          socket.write(Buffer.concat([serializeAckReply(message.option), options.afterGoAck ?? Buffer.alloc(0)]));
          parser.enterTransmission();
        } else {
          socket.write(serializeOptionErrorReply(message.option, OptionReplyType.ERR_UNSUP));
        }
      } else if (message.kind === 'request') {
        if (message.type === CommandType.DISC) return options.ignoreDisconnect === true ? undefined : socket.end();
        requestCount++;
        options.behaviour(message, peer);
      }
    }
  });
}

function answerHonestly(socket: net.Socket, disk: Buffer, request: RequestMessage, structuredReplies: boolean): void {
  const { type, cookie, offsetBytes, lengthBytes } = request;
  if (type === CommandType.READ) {
    const data = disk.subarray(offsetBytes, offsetBytes + lengthBytes);
    if (!structuredReplies) return void socket.write(Buffer.concat([serializeSimpleReplyHeader(cookie, 0), data]));
    return void socket.write(chunk(cookie, ReplyFlag.DONE, ChunkType.OFFSET_DATA, offsetDataPayload(offsetBytes, data)));
  }
  if (type === CommandType.WRITE && request.payload !== undefined) request.payload.copy(disk, offsetBytes);
  if (type === CommandType.WRITE_ZEROES) disk.fill(0, offsetBytes, offsetBytes + lengthBytes);
  socket.write(serializeSimpleReplyHeader(cookie, 0));
}

// Raw wire pieces behaviours build from: any field value, consistent or not.

export function chunk(cookie: bigint, flags: number, type: number, payload: Buffer, declaredLengthBytes = payload.length): Buffer {
  const header = Buffer.alloc(20);
  header.writeUInt32BE(Magic.STRUCTURED_REPLY, 0);
  header.writeUInt16BE(flags, 4);
  header.writeUInt16BE(type, 6);
  header.writeBigUInt64BE(cookie, 8);
  header.writeUInt32BE(declaredLengthBytes, 16);
  return Buffer.concat([header, payload]);
}

export function offsetDataPayload(offsetBytes: number | bigint, data: Buffer): Buffer {
  const payload = Buffer.alloc(8 + data.length);
  payload.writeBigUInt64BE(BigInt(offsetBytes), 0);
  data.copy(payload, 8);
  return payload;
}

export function simpleReply(cookie: bigint, error: number, data: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([serializeSimpleReplyHeader(cookie, error), data]);
}
