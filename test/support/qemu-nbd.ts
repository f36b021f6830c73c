// qemu-nbd serving a raw file on a unix socket, or over TCP with TLS: a real NBD server standing
// in for a host's disk (a restore target, a verification peer) in tests and benchmarks.

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';

export interface QemuNbd {
  readonly uri: string;
  readonly child: ChildProcess;
  stop(): Promise<void>;
}

interface Teardown {
  teardown(callback: () => void | Promise<void>): void;
}

export async function startQemuNbd(t: Teardown, imagePath: string, socketPath: string, exportName = 'disk'): Promise<QemuNbd> {
  fs.rmSync(socketPath, { force: true });
  const child = spawn('qemu-nbd', ['-f', 'raw', '-x', exportName, '-k', socketPath, '--persistent', '--shared=8', '--cache=writeback', imagePath], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  for (let attempt = 0; !fs.existsSync(socketPath); attempt++) {
    if (child.exitCode !== null || attempt > 200) throw new Error(`qemu-nbd did not start: ${stderr}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  const stop = async (): Promise<void> => {
    if (child.exitCode === null) child.kill('SIGTERM');
    await exited;
  };
  t.teardown(stop);
  return { uri: `nbd+unix:///${exportName}?socket=${socketPath}`, child, stop };
}

/**
 * qemu-nbd on 127.0.0.1 demanding TLS, with the x509 credentials in credentialsDirectory
 * (ca-cert.pem, server-cert.pem, server-key.pem, as `cdp-nbd tls generate` writes them); clients
 * must show a certificate the CA signed. The URI is nbds://127.0.0.1:PORT/EXPORT.
 */
export async function startQemuNbdTls(t: Teardown, imagePath: string, credentialsDirectory: string, exportName = 'disk'): Promise<QemuNbd> {
  const port = await freePort();
  const child = spawn(
    'qemu-nbd',
    [
      '-f', 'raw', '-x', exportName, '-b', '127.0.0.1', '-p', String(port), '--persistent', '--shared=8', '--cache=writeback',
      '--object', `tls-creds-x509,id=tls0,endpoint=server,dir=${credentialsDirectory},verify-peer=on`, '--tls-creds', 'tls0',
      imagePath,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  for (let attempt = 0; !(await accepts(port)); attempt++) {
    if (child.exitCode !== null || attempt > 200) throw new Error(`qemu-nbd did not start: ${stderr}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  const stop = async (): Promise<void> => {
    if (child.exitCode === null) child.kill('SIGTERM');
    await exited;
  };
  t.teardown(stop);
  return { uri: `nbds://127.0.0.1:${port}/${exportName}`, child, stop };
}

/** A TCP port nothing listened on a moment ago. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}
