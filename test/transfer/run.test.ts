// runTransfer's periodic checkpoint, which runs beside the copy. Invariants: a checkpoint that
// fails (a target whose FLUSH fails, or times out) ends the transfer with its error and stops the
// copy at the next piece; its rejection is never left unobserved, since an unhandled rejection
// ends the process and every job and volume in it.

import t from 'tap';
import type { Endpoint } from '../../transfer/endpoints.js';
import { wholePlan } from '../../transfer/plans.js';
import { runTransfer } from '../../transfer/run.js';
import { sleep } from '../support/waits.js';

const MiB = 1024 * 1024;

function slowSource(sizeBytes: number, readDelayMs: number, counter: { reads: number }): Endpoint {
  return {
    sizeBytes,
    description: 'a slow source',
    read: async (_offsetBytes, lengthBytes) => {
      counter.reads++;
      await sleep(readDelayMs);
      return Buffer.alloc(lengthBytes, 1);
    },
    write: async () => undefined,
    writeZeroes: async () => undefined,
    flush: async () => undefined,
    close: async () => undefined,
  };
}

function targetWhoseFlushFails(sizeBytes: number): Endpoint {
  return {
    sizeBytes,
    description: 'a target whose FLUSH fails',
    read: async (_offsetBytes, lengthBytes) => Buffer.alloc(lengthBytes),
    write: async () => undefined,
    writeZeroes: async () => undefined,
    flush: async () => {
      await sleep(5);
      throw new Error('FLUSH failed: NBD_EIO');
    },
    close: async () => undefined,
  };
}

t.test('a failed checkpoint fails the transfer with its error, stops the copy, and leaves no unhandled rejection', async (t) => {
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown): void => void unhandled.push(reason);
  process.on('unhandledRejection', onUnhandled);
  t.teardown(() => void process.off('unhandledRejection', onUnhandled));

  const sizeBytes = 256 * MiB;
  const counter = { reads: 0 };
  const pieces = wholePlan(sizeBytes, MiB);
  const transfer = runTransfer({
    source: slowSource(sizeBytes, 50, counter),
    target: targetWhoseFlushFails(sizeBytes),
    plan: pieces,
    mode: 'write',
    verify: false,
    checkpointIntervalMs: 20,
  });
  await t.rejects(transfer, /FLUSH failed: NBD_EIO/);
  await sleep(50);
  t.same(unhandled, [], 'no rejection went unobserved');
  t.ok(counter.reads < pieces.length / 2, `the copy stopped early (${counter.reads} of ${pieces.length} pieces read)`);
});
