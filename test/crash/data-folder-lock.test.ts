// The data folder's lock (issue 10 §6), on the real appliance: an flock on data/cdp-nbd.lock that
// the kernel releases when the process dies.
//
// Invariants checked:
//   1. A second appliance on the same folder, while the first serves, is refused and exits, naming
//      the holder's pid; the first keeps serving.
//   2. After kill -9 of the holder a new appliance starts at once (no stale lock).
//   3. A lock file naming a live process that does not hold the lock (a pid reused after a power
//      loss, or in a container) does not keep the appliance from starting.
//   4. After an orderly stop a new appliance starts.

import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { cliPath, startAppliance } from '../support/appliance.js';
import { temporaryDirectory } from '../support/temporary-directory.js';

/** Run `serve` on a folder expected to be locked: resolves with its exit code and what it printed. */
async function serveRefused(dataDirectory: string): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, [cliPath, 'serve', '--data', dataDirectory, '--nbd-listen', '127.0.0.1:0', '--http-listen', '127.0.0.1:0', '--volume-size', '64M'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  const [code] = (await once(child, 'exit')) as [number | null];
  clearTimeout(killer);
  return { code, stderr };
}

async function healthStatus(httpBase: string): Promise<number> {
  return (await fetch(`${httpBase}/health`)).status;
}

t.test('one appliance per data folder; the lock dies with its holder', async (t) => {
  const dataDirectory = temporaryDirectory(t);
  const lockPath = path.join(dataDirectory, 'cdp-nbd.lock');
  const first = await startAppliance(t, { dataDirectory });
  t.equal(fs.readFileSync(lockPath, 'utf8').trim(), String(first.child.pid), 'the lock file names the holder');

  const second = await serveRefused(dataDirectory);
  t.not(second.code, 0, 'a second appliance on the same folder exits');
  t.match(second.stderr, new RegExp(`data folder .* is in use by process ${first.child.pid}`), 'naming the holder');
  t.equal(await healthStatus(first.httpBase), 200, 'the first keeps serving');

  await first.kill();
  t.ok(fs.existsSync(lockPath), 'kill -9 leaves the lock file behind');
  const afterKill = await startAppliance(t, { dataDirectory });
  t.equal(await healthStatus(afterKill.httpBase), 200, 'a new appliance starts at once after kill -9');
  t.equal(await afterKill.stop(), 0);

  // A pid that belongs to a live process that holds no lock: this test's own, and init's.
  for (const livePid of [process.pid, 1]) {
    fs.writeFileSync(lockPath, `${livePid}\n`);
    const reused = await startAppliance(t, { dataDirectory });
    t.equal(await healthStatus(reused.httpBase), 200, `a lock file naming live process ${livePid} does not block the start`);
    t.equal(await reused.stop(), 0, 'and it stops cleanly');
  }
  t.equal(fs.readFileSync(lockPath, 'utf8'), '', 'an orderly stop empties the lock file');
  const afterStop = await startAppliance(t, { dataDirectory });
  t.equal(await healthStatus(afterStop.httpBase), 200, 'a new appliance starts after an orderly stop');
  t.equal(await afterStop.stop(), 0);
});
