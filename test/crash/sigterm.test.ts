// Orderly shutdown under load: SIGTERM while clients write (without FLUSH) makes the appliance
// stop accepting, finish what is in flight, make everything durable and exit 0. Invariant: after
// a restart every write that was acknowledged — flushed or not — reads back, and the volume
// needs no replay.

import t from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { NbdClient } from '../../transfer/nbd-client.js';
import { startAppliance } from '../support/appliance.js';
import { temporaryDirectory } from '../support/temporary-directory.js';

t.test('SIGTERM under write load loses no acknowledged write', async (t) => {
  const dataDirectory = temporaryDirectory(t);
  const appliance = await startAppliance(t, { dataDirectory });
  const acknowledged = new Map<number, number>(); // block -> fill byte of its last acknowledged write
  let stop = false;
  const lanes: Promise<void>[] = [];
  const clients = await Promise.all([0, 1].map(() => NbdClient.connect({ kind: 'unix', path: appliance.nbdSocket }, { exportName: 'vol0' })));
  let counter = 0;
  for (const client of clients) {
    for (let lane = 0; lane < 8; lane++) {
      // Each lane owns its blocks, so acknowledgements per block are in order.
      const laneIndex = lanes.length;
      lanes.push(
        (async () => {
          while (!stop) {
            const block = laneIndex + 16 * Math.floor(Math.random() * 1024);
            const fill = 1 + (counter++ % 255);
            try {
              await client.write(block * 4096, Buffer.alloc(4096, fill));
              acknowledged.set(block, fill);
            } catch {
              return; // the server is shutting down: unacknowledged writes may or may not land
            }
          }
        })(),
      );
    }
  }
  // SIGTERM once writes are being acknowledged (polled, not a fixed sleep: a busy machine may take
  // longer to get the lanes going).
  const deadlineMs = Date.now() + 30_000;
  while (acknowledged.size <= 200 && Date.now() < deadlineMs) await sleep(20);
  const exitCode = await appliance.stop();
  stop = true;
  await Promise.all(lanes);
  t.equal(exitCode, 0, 'the appliance exits 0 after SIGTERM');
  t.ok(acknowledged.size > 100, `writes were acknowledged before the signal (${acknowledged.size} blocks)`);

  const again = await startAppliance(t, { dataDirectory });
  const opened = again.logEntries().find((entry) => entry.msg === 'volume opened');
  t.equal(opened?.replayedRecords, 0, 'an orderly stop leaves nothing to replay');
  const reader = await NbdClient.connect({ kind: 'unix', path: again.nbdSocket }, { exportName: 'vol0' });
  const wrong: number[] = [];
  for (const [block, fill] of acknowledged) {
    const data = await reader.read(block * 4096, 4096);
    if (!data.equals(Buffer.alloc(4096, fill))) wrong.push(block);
  }
  await reader.disconnect();
  t.same(wrong.slice(0, 10), [], 'every acknowledged write is there');
});
