// How a `cdp-nbd serve` process says it is ready: one JSON log line on stderr with this message
// and the addresses it listens on. The serve command writes it; tests and benchmarks that start
// the appliance as a child process wait for it.

import type { ChildProcess } from 'node:child_process';

export const servingMessage = 'cdp-nbd is serving';

export interface ServingAddresses {
  /** NBD listeners: HOST:PORT, or unix:PATH. */
  nbd: string[];
  /** HOST:PORT of the HTTP API, or null when disabled. */
  http: string;
}

/**
 * Resolves with the addresses once the child has announced them; rejects if it exits first.
 * Every stderr line is also given to `onLine` (the log, for tests that read it).
 */
export function waitUntilServing(child: ChildProcess, onLine: (line: string) => void = () => undefined): Promise<ServingAddresses> {
  return new Promise((resolve, reject) => {
    const lines: string[] = [];
    let pending = '';
    child.stderr!.on('data', (chunk: Buffer) => {
      pending += chunk.toString('utf8');
      const complete = pending.split('\n');
      pending = complete.pop()!;
      for (const line of complete) {
        onLine(line);
        if (lines.length < 200) lines.push(line);
        try {
          const entry = JSON.parse(line) as { msg?: string; nbd?: string[]; http?: string };
          if (entry.msg === servingMessage) resolve({ nbd: entry.nbd!, http: entry.http! });
        } catch {
          // not a log line
        }
      }
    });
    child.once('exit', (code) => reject(new Error(`the appliance exited (${code}) before serving:\n${lines.join('\n')}`)));
  });
}
