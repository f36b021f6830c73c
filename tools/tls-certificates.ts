// `cdp-nbd tls generate`: a lab certificate authority, a server certificate (subjectAltName for
// the hosts clients dial) and client certificates (CN = the name allowlists match with cn:NAME),
// made with the openssl command line. Files are named as GnuTLS x509 credential folders expect
// (ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem), so the output
// folder works as libnbd's tls-certificates=DIR and qemu's tls-creds-x509 dir=DIR as it is.
// For a lab or a test rig: a production CA keeps its key elsewhere. See docs/tls.md.

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { certificateNameProblem } from '../server/access.js';

export interface CertificateRequest {
  outDirectory: string;
  /**
   * Names and addresses the server certificate is valid for (subjectAltName). Absent: keep the
   * server certificate DIR has, or make one for the defaults when it has none.
   */
  hosts?: string[];
  /** Client certificate names (CN); with a new CA the first also goes to the top folder. */
  clients: string[];
  caValidDays?: number;
  certificateValidDays?: number;
}

export interface GeneratedCertificates {
  caCreated: boolean;
  files: string[];
}

export const certificateDefaults = {
  hosts: ['127.0.0.1', 'localhost'],
  clients: ['client'],
  caValidDays: 3650,
  certificateValidDays: 825,
} as const;

const usage = `Usage: cdp-nbd tls generate --out DIR [--host NAME]... [--client NAME]... [--days N]

Makes a lab CA and certificates for NBD over TLS with openssl, in DIR:
  ca-cert.pem ca-key.pem            the CA (reused when DIR already has one)
  server-cert.pem server-key.pem    the server's, for --host names and addresses (default
                                    ${certificateDefaults.hosts.join(', ')}); kept on later runs without --host
  clients/NAME/                     ca-cert.pem client-cert.pem client-key.pem for each --client
                                    (default "${certificateDefaults.clients[0]}" when the CA is new)
  client-cert.pem client-key.pem    the first client's (new CA only), so DIR itself is a client folder

Serve:   cdp-nbd serve --tls required --tls-cert DIR/server-cert.pem --tls-key DIR/server-key.pem --tls-ca DIR/ca-cert.pem
Clients: nbdinfo 'nbds://HOST:10809/vol0?tls-certificates=DIR/clients/NAME'
         qemu-img info --object tls-creds-x509,id=tls0,endpoint=client,dir=DIR/clients/NAME \\
           --image-opts driver=nbd,server.type=inet,server.host=HOST,server.port=10809,export=vol0,tls-creds=tls0
Allow a client by its certificate: cdp-nbd serve ... --allow vol0=cn:NAME`;

/** `cdp-nbd tls ACTION`: only `generate` for now. */
export async function runTlsCommand(argv: string[]): Promise<number> {
  const [action, ...rest] = argv;
  const { values } = parseArgs({
    args: rest,
    options: {
      out: { type: 'string' },
      host: { type: 'string', multiple: true },
      client: { type: 'string', multiple: true },
      days: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help || action !== 'generate' || values.out === undefined) {
    process.stdout.write(`${usage}\n`);
    return values.help ? 0 : 2;
  }
  const days = values.days === undefined ? certificateDefaults.certificateValidDays : Number(values.days);
  if (!Number.isInteger(days) || days < 1 || days > 36500) throw new Error('--days is a whole number of days, 1 to 36500');
  const generated = generateCertificates({
    outDirectory: values.out,
    hosts: values.host,
    clients: values.client ?? [],
    certificateValidDays: days,
  });
  process.stdout.write(`${generated.caCreated ? 'created a new CA' : 'reused the CA'} in ${values.out}\n`);
  for (const file of generated.files) process.stdout.write(`wrote ${file}\n`);
  return 0;
}

/**
 * Write the CA (unless DIR has one), the server certificate (unless DIR has one and no hosts are
 * given), and the client certificates. With a new CA and no client named, one client "client" is
 * made so DIR works as a client folder at once.
 */
export function generateCertificates(request: CertificateRequest): GeneratedCertificates {
  const hostProblems = (request.hosts ?? []).map(hostProblem).filter((problem) => problem !== null);
  if (request.hosts !== undefined && request.hosts.length === 0) throw new Error('the server certificate needs at least one --host');
  if (hostProblems.length > 0) throw new Error(hostProblems.join('; '));
  for (const client of request.clients) {
    const problem = certificateNameProblem(client);
    if (problem !== null) throw new Error(`--client "${client}": ${problem}`);
  }
  requireOpenssl();
  const directory = request.outDirectory;
  fs.mkdirSync(directory, { recursive: true });
  const workDirectory = fs.mkdtempSync(path.join(os.tmpdir(), 'cdp-nbd-tls-'));
  try {
    const files: string[] = [];
    const caCertificate = path.join(directory, 'ca-cert.pem');
    const caKey = path.join(directory, 'ca-key.pem');
    const caCreated = !(fs.existsSync(caCertificate) && fs.existsSync(caKey));
    if (caCreated) {
      writeKey(caKey);
      const config = writeConfig(workDirectory, 'ca', 'cdp-nbd lab CA', ['basicConstraints = critical, CA:TRUE', 'keyUsage = critical, keyCertSign, cRLSign', 'subjectKeyIdentifier = hash']);
      openssl(['req', '-new', '-x509', '-config', config, '-extensions', 'ext', '-key', caKey, '-days', String(request.caValidDays ?? certificateDefaults.caValidDays), '-set_serial', serialNumber(), '-out', caCertificate]);
      files.push(caCertificate, caKey);
    }
    const signer = { caCertificate, caKey, workDirectory, validDays: request.certificateValidDays ?? certificateDefaults.certificateValidDays };

    if (caCreated || request.hosts !== undefined || !fs.existsSync(path.join(directory, 'server-cert.pem'))) {
      const hosts = request.hosts ?? [...certificateDefaults.hosts];
      const subjectAltName = hosts.map((host) => (net.isIP(host) === 0 ? `DNS:${host}` : `IP:${host}`)).join(', ');
      files.push(...issue(signer, directory, 'server', hosts[0]!, ['extendedKeyUsage = serverAuth', `subjectAltName = ${subjectAltName}`]));
    }

    const clients = request.clients.length === 0 && caCreated ? [...certificateDefaults.clients] : request.clients;
    for (const [index, client] of clients.entries()) {
      const clientDirectory = path.join(directory, 'clients', client);
      fs.mkdirSync(clientDirectory, { recursive: true });
      fs.copyFileSync(caCertificate, path.join(clientDirectory, 'ca-cert.pem'));
      const written = issue(signer, clientDirectory, 'client', client, ['extendedKeyUsage = clientAuth']);
      files.push(path.join(clientDirectory, 'ca-cert.pem'), ...written);
      if (index === 0 && caCreated) {
        for (const file of written) {
          const top = path.join(directory, path.basename(file));
          fs.copyFileSync(file, top);
          if (file.endsWith('-key.pem')) fs.chmodSync(top, 0o600);
          files.push(top);
        }
      }
    }
    return { caCreated, files };
  } finally {
    fs.rmSync(workDirectory, { recursive: true, force: true });
  }
}

interface Signer {
  caCertificate: string;
  caKey: string;
  workDirectory: string;
  validDays: number;
}

/** A key and a certificate the CA signs: ROLE-key.pem and ROLE-cert.pem in the directory. */
function issue(signer: Signer, directory: string, role: 'server' | 'client', commonName: string, extensions: string[]): string[] {
  const key = path.join(directory, `${role}-key.pem`);
  const certificate = path.join(directory, `${role}-cert.pem`);
  const request = path.join(signer.workDirectory, `${role}.csr`);
  writeKey(key);
  // keyEncipherment beside digitalSignature: qemu's credential check wants both when keyUsage is present.
  const config = writeConfig(signer.workDirectory, role, commonName, [
    'basicConstraints = critical, CA:FALSE',
    'keyUsage = digitalSignature, keyEncipherment',
    'subjectKeyIdentifier = hash',
    'authorityKeyIdentifier = keyid',
    ...extensions,
  ]);
  openssl(['req', '-new', '-config', config, '-key', key, '-out', request]);
  openssl(['x509', '-req', '-in', request, '-CA', signer.caCertificate, '-CAkey', signer.caKey, '-set_serial', serialNumber(), '-days', String(signer.validDays), '-extfile', config, '-extensions', 'ext', '-out', certificate]);
  return [certificate, key];
}

/** A P-256 private key, readable by its owner only. */
function writeKey(file: string): void {
  const pem = openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256']);
  fs.rmSync(file, { force: true });
  fs.writeFileSync(file, pem, { mode: 0o600 });
}

function writeConfig(workDirectory: string, name: string, commonName: string, extensions: string[]): string {
  const file = path.join(workDirectory, `${name}.cnf`);
  const text = ['[req]', 'distinguished_name = dn', 'prompt = no', '[dn]', `CN = ${commonName}`, '[ext]', ...extensions, ''].join('\n');
  fs.writeFileSync(file, text);
  return file;
}

/** 128 random bits, positive, as openssl's -set_serial takes them. */
function serialNumber(): string {
  const bytes = randomBytes(16);
  bytes[0] = bytes[0]! & 0x7f;
  return `0x${bytes.toString('hex')}`;
}

function openssl(args: string[]): string {
  try {
    return execFileSync('openssl', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr ?? '';
    throw new Error(`openssl ${args[0]} failed: ${stderr.trim() || String(error)}`);
  }
}

function requireOpenssl(): void {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
  } catch {
    throw new Error('the openssl command is needed (Debian package openssl)');
  }
}

function hostProblem(host: string): string | null {
  if (net.isIP(host) !== 0) return null;
  if (/^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/.test(host)) return null;
  return `--host "${host}" is neither an IP address nor a DNS name`;
}
