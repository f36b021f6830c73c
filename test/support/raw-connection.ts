// A hand-driven NBD connection for tests of bad input and negotiation: send any bytes, read the
// server's parsed messages one by one, see whether the server hung up.

import net from 'node:net';
import { ClientParser, serializeRequestHeader, type ServerMessage } from 'nbd-protocol-ts';

export class RawConnection {
  readonly parser = new ClientParser();
  protected socket: net.Socket;
  private readonly messages: ServerMessage[] = [];
  private wake: (() => void) | null = null;
  closed = false;

  constructor(socket: net.Socket) {
    this.socket = socket;
    this.listen(socket);
  }

  /** Connect and read the greeting. */
  static async open<T extends RawConnection>(this: new (socket: net.Socket) => T, address: net.NetConnectOpts): Promise<T> {
    const socket = net.createConnection(address);
    await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    const connection = new this(socket);
    const greeting = await connection.next();
    if (greeting?.kind !== 'greeting') throw new Error('no greeting');
    return connection;
  }

  protected readonly onData = (chunk: Buffer): void => {
    this.parser.push(chunk);
    for (let message = this.parser.next(); message !== undefined; message = this.parser.next()) {
      this.messages.push(message);
      if (message.kind === 'fatal') break;
    }
    this.wake?.();
  };

  /** Read messages from this socket (a TLS socket replaces the plain one after STARTTLS). */
  protected listen(socket: net.Socket): void {
    socket.on('data', this.onData);
    socket.on('close', () => {
      this.closed = true;
      this.wake?.();
    });
    socket.on('error', () => undefined);
  }

  send(...buffers: Buffer[]): void {
    for (const buffer of buffers) this.socket.write(buffer);
  }

  /** Send a request (and its payload), registered with the parser, which frames and checks its reply. */
  request(type: number, flags: number, cookie: bigint, offsetBytes: number, lengthBytes: number, payload?: Buffer): void {
    this.parser.expectReply(cookie, { type, flags, offsetBytes, lengthBytes });
    this.send(serializeRequestHeader(type, flags, cookie, offsetBytes, lengthBytes), ...(payload === undefined ? [] : [payload]));
  }

  /** The next message, or undefined once the server has closed and nothing is left. */
  async next(timeoutMs = 5000): Promise<ServerMessage | undefined> {
    const deadline = Date.now() + timeoutMs;
    while (this.messages.length === 0 && !this.closed && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, 50);
      });
      this.wake = null;
    }
    return this.messages.shift();
  }

  /** The reply type of the next option reply (or 'closed'). */
  async replyType(): Promise<number | 'closed'> {
    const message = await this.next();
    if (message === undefined) return 'closed';
    if (message.kind !== 'optionReply') throw new Error(`expected an option reply, got ${message.kind}`);
    return message.replyType;
  }

  /** Whether the server closed the connection within the time. */
  async waitClosed(timeoutMs = 5000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    return this.closed;
  }

  destroy(): void {
    this.socket.destroy();
  }
}
