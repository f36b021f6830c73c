// TLS for NBD (proto.md "TLS support"): the server's mode (off, required = the spec's FORCEDTLS,
// selective = SELECTIVETLS), its X.509 credentials, and the in-session upgrade of one socket
// after the ACK to NBD_OPT_STARTTLS. The handshake runs in Node's tls module; negotiation.ts
// decides what to answer, connection.ts moves the bytes.

import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import type net from 'node:net';
import tls from 'node:tls';

export const tlsModes = ['off', 'required', 'selective'] as const;
export type TlsMode = (typeof tlsModes)[number];

export interface TlsFiles {
  certificateFile: string;
  keyFile: string;
  /** Client certificates are requested and verified against this CA when given. */
  caFile?: string | null;
  /** Refuse the handshake of a client without a certificate the CA signed (needs caFile). */
  verifyClients?: boolean;
}

/** The server's TLS settings: the mode, and the credentials when the mode is not off. */
export interface ServerTls {
  readonly mode: TlsMode;
  /** Options of the handshake engine (a tls.Server that never listens); null when off. */
  readonly engineOptions: tls.TlsOptions | null;
  /** When the server certificate expires (for the start-up log); null when off. */
  readonly certificateValidTo: Date | null;
}

export const tlsOff: ServerTls = { mode: 'off', engineOptions: null, certificateValidTo: null };

/** What the handshake told us of the client. */
export interface TlsPeer {
  protocol: string | null;
  cipher: string | null;
  /** CN of a client certificate that verified against the CA, else null. */
  certificateName: string | null;
  /** Why a presented certificate did not verify (only when clients are not required to have one). */
  certificateProblem: string | null;
}

/** Read and check the credentials once at start-up; a bad file fails here, not at a client's handshake. */
export function loadServerTls(mode: TlsMode, files: TlsFiles | null, handshakeTimeoutMs: number): ServerTls {
  if (mode === 'off') {
    if (files !== null) throw new Error('TLS certificate options need --tls required or --tls selective');
    return tlsOff;
  }
  if (files === null) throw new Error(`--tls ${mode} needs --tls-cert FILE and --tls-key FILE`);
  const caFile = files.caFile ?? null;
  const verifyClients = files.verifyClients ?? false;
  if (verifyClients && caFile === null) throw new Error('--tls-verify-clients needs --tls-ca FILE to verify them against');
  const engineOptions: tls.TlsOptions = {
    cert: readCredential(files.certificateFile, 'certificate'),
    key: readCredential(files.keyFile, 'key'),
    ...(caFile === null ? {} : { ca: readCredential(caFile, 'CA certificate'), requestCert: true, rejectUnauthorized: verifyClients }),
    minVersion: 'TLSv1.2', // proto.md: TLS 1.2 at least, older versions not by default
    handshakeTimeout: handshakeTimeoutMs,
  };
  try {
    tls.createSecureContext(engineOptions);
  } catch (error) {
    throw new Error(`TLS credentials are unusable: ${error instanceof Error ? error.message : String(error)}`);
  }
  // Every client would refuse an expired certificate: say so now rather than at each handshake.
  const certificate = new X509Certificate(engineOptions.cert as Buffer);
  const certificateValidTo = new Date(certificate.validTo);
  if (certificateValidTo.getTime() <= Date.now()) throw new Error(`the TLS certificate ${files.certificateFile} expired on ${certificateValidTo.toISOString()}`);
  return { mode, engineOptions, certificateValidTo };
}

/**
 * Run the server side of a TLS handshake on a socket whose plaintext phase is over (the ACK to
 * STARTTLS has been flushed, and nothing more is read from it in plaintext). Exactly one of the
 * handlers is called. A tls.Server that never listens is the engine: it verifies client
 * certificates and enforces the handshake timeout with Node's public API.
 */
export function startTlsSession(
  socket: net.Socket,
  settings: ServerTls,
  handlers: { secure(secureSocket: tls.TLSSocket, peer: TlsPeer): void; failed(reason: string): void },
): void {
  if (settings.engineOptions === null) throw new TypeError('startTlsSession() with TLS off');
  const engine = tls.createServer(settings.engineOptions);
  let settled = false;
  engine.once('secureConnection', (secureSocket: tls.TLSSocket) => {
    settled = true;
    handlers.secure(secureSocket, describePeer(secureSocket));
  });
  engine.once('tlsClientError', (error: Error, secureSocket: tls.TLSSocket) => {
    if (settled) return;
    settled = true;
    const problem = secureSocket.authorizationError;
    secureSocket.destroy();
    // OpenSSL's errors carry a short reason ("wrong version number") beside a long message.
    const reason = (error as Error & { reason?: string }).reason ?? error.message;
    handlers.failed(problem === undefined || problem === null ? reason : `client certificate refused: ${String(problem)}`);
  });
  engine.emit('connection', socket);
}

function describePeer(socket: tls.TLSSocket): TlsPeer {
  const cipher = socket.getCipher() as tls.CipherNameAndProtocol | null;
  const certificate = socket.getPeerCertificate();
  const commonName = certificate?.subject?.CN;
  const presented = certificate !== null && certificate !== undefined && Object.keys(certificate).length > 0;
  return {
    protocol: socket.getProtocol(),
    cipher: cipher?.name ?? null,
    certificateName: socket.authorized && typeof commonName === 'string' ? commonName : null,
    certificateProblem: presented && !socket.authorized ? String(socket.authorizationError ?? 'not verified') : null,
  };
}

function readCredential(file: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (error) {
    throw new Error(`cannot read the TLS ${what} ${file}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`);
  }
}
