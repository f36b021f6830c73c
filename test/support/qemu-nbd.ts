// qemu-nbd serving a raw file on a unix socket: a real NBD server standing in for a host's disk
// (a restore target, a verification peer) in tests and benchmarks.

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';

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
