// TLS for our NBD client (proto.md "TLS support"): the client's credentials, read once at
// start-up, and the in-session upgrade: STARTTLS, its ACK, then the handshake on the same socket,
// after which negotiation starts over on the TLS socket (nbd-client.ts).

import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { OptionReplyType, OptionType, decodeOptionErrorMessage, serializeStartTlsOption, type ClientParser } from 'nbd-protocol-ts';

/** The client's side of TLS: whom it trusts, and what it shows servers that verify clients. */
export interface NbdClientTls {
  /** CA certificates (PEM) the server's certificate must chain to. */
  ca: Buffer;
  /** A client certificate (PEM) and its key, for servers that verify clients; both or neither. */
  certificate: Buffer | null;
  key: Buffer | null;
}

/** What the upgrade needs of the negotiation's message reader. */
interface OptionReplies {
  expectOptionReply(option: number): Promise<{ replyType: number; data: Buffer }>;
  /** Stop reading from the socket (it throws when messages are left unread). */
  release(): void;
}

/**
 * STARTTLS, its ACK, then the TLS handshake on the same socket (proto.md "TLS support"); the
 * negotiation starts over on the TLS socket. The server's certificate must chain to the CA and
 * name serverName (a DNS name or an IP address in its subjectAltName).
 */
export async function startClientTls(socket: net.Socket, parser: ClientParser, messages: OptionReplies, options: NbdClientTls & { serverName: string }): Promise<tls.TLSSocket> {
  socket.write(serializeStartTlsOption());
  const reply = await messages.expectOptionReply(OptionType.STARTTLS);
  if (reply.replyType !== OptionReplyType.ACK) throw new Error(`the server refused STARTTLS: ${decodeOptionErrorMessage(reply.data) || reply.replyType}`);
  messages.release();
  if (parser.startTls() !== 0) throw new Error('the server sent plaintext after acknowledging STARTTLS');
  const secure = tls.connect({
    socket,
    host: options.serverName,
    ...(net.isIP(options.serverName) === 0 ? { servername: options.serverName } : {}),
    ca: options.ca,
    ...(options.certificate === null ? {} : { cert: options.certificate }),
    ...(options.key === null ? {} : { key: options.key }),
    minVersion: 'TLSv1.2',
  });
  await new Promise<void>((resolve, reject) => {
    secure.once('secureConnect', resolve);
    secure.once('error', (error) => reject(new Error(`TLS with ${options.serverName} failed: ${error.message}`)));
  });
  return secure;
}

/**
 * Read and check the client's TLS files once (at start-up): a CA, and optionally a client
 * certificate with its key. Throws Error naming the file that is wrong.
 */
export function loadNbdClientTls(files: { caFile: string; certificateFile: string | null; keyFile: string | null }): NbdClientTls {
  if ((files.certificateFile === null) !== (files.keyFile === null)) throw new TypeError('a client certificate and its key go together');
  const read = (file: string, what: string): Buffer => {
    try {
      return fs.readFileSync(file);
    } catch (error) {
      throw new Error(`cannot read the ${what} ${file}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`);
    }
  };
  const credentials: NbdClientTls = {
    ca: read(files.caFile, 'CA certificate'),
    certificate: files.certificateFile === null ? null : read(files.certificateFile, 'client certificate'),
    key: files.keyFile === null ? null : read(files.keyFile, 'client key'),
  };
  try {
    new X509Certificate(credentials.ca); // createSecureContext takes a CA file that holds no certificate
    tls.createSecureContext({ ca: credentials.ca, ...(credentials.certificate === null ? {} : { cert: credentials.certificate, key: credentials.key! }) });
  } catch (error) {
    throw new Error(`the client TLS files are unusable: ${error instanceof Error ? error.message : String(error)}`);
  }
  return credentials;
}

