// Clients that pipeline reads and never read a reply, against the real appliance with a 64 MiB
// memory budget. Invariants:
// - with eight such clients asking for 96 MiB each, the memory the server holds stays within its
//   stated bound and the shared part within the budget (give or take what arrived in one read per
//   socket), and its resident memory grows by far less than the 700 MiB they asked for;
// - while they hold the budget, a well-behaved client is served: our codec's client and qemu-io;
// - the stall timeout ends every client whose replies wait unread, and one that stopped half way
//   through a WRITE, while a client that is only idle, with nothing pending, stays attached.

import t from 'tap';
import { ClientFlag, CommandType, Errno, OptionReplyType, serializeClientFlags, serializeGoOption, serializeRequestHeader } from 'nbd-protocol-ts';
import { NbdClient } from '../../transfer/nbd-client.js';
import { apiRequest } from '../support/api.js';
import { startAppliance, type Appliance } from '../support/appliance.js';
import { readMetrics, residentBytes, sample } from '../support/metrics.js';
import { RawConnection } from '../support/raw-connection.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools, run } from '../support/tools.js';
import { waitFor } from '../support/wait.js';
import { sleep } from '../support/waits.js';

const MiB = 1024 * 1024;
const KiB = 1024;
const budgetBytes = 64 * MiB;
const volumeBytes = 64 * MiB;

/** Clients attached to vol0, as the API lists them. */
async function attachedCount(appliance: Appliance): Promise<number> {
  const exports = await apiRequest(appliance, 'GET', '/api/v1/exports');
  return (exports.json['exports'] as Array<{ name: string; clients: unknown[] }>).find((entry) => entry.name === 'vol0')?.clients.length ?? 0;
}

/**
 * A raw client attached to vol0 that can stop reading from its socket. Once it stops, it cannot
 * see the server close the connection either: the server's side (/metrics, the API) says.
 */
class StuckClient extends RawConnection {
  static async attach(appliance: Appliance): Promise<StuckClient> {
    const client = await StuckClient.open({ host: '127.0.0.1', port: appliance.nbdPort });
    client.send(serializeClientFlags(ClientFlag.C_FIXED_NEWSTYLE | ClientFlag.C_NO_ZEROES), serializeGoOption('vol0'));
    for (;;) {
      const message = await client.next();
      if (message === undefined) throw new Error('closed during GO');
      if (message.kind === 'optionReply' && message.replyType === OptionReplyType.ACK) {
        client.parser.enterTransmission();
        return client;
      }
      if (message.kind === 'optionReply' && message.replyType >= 0x80000000) throw new Error(`GO refused: ${message.replyType}`);
    }
  }

  /** Pipeline READs of 1 MiB, `count` of them, and never read a reply. */
  pipelineReads(count: number): void {
    this.socket.pause();
    const headers = Array.from({ length: count }, (_, index) => serializeRequestHeader(CommandType.READ, 0, BigInt(index + 1), (index * MiB) % volumeBytes, MiB));
    this.send(Buffer.concat(headers));
  }

  /** Read about `bytesPerTurn` every `intervalMs`, and no more (the socket is paused in between). */
  readSlowly(bytesPerTurn: number, intervalMs: number): NodeJS.Timeout {
    let readBytes = 0;
    this.socket.pause();
    this.socket.on('data', (chunk: Buffer) => {
      readBytes += chunk.length;
      if (readBytes >= bytesPerTurn) this.socket.pause();
    });
    return setInterval(() => {
      readBytes = 0;
      this.socket.resume();
    }, intervalMs);
  }

  /** A WRITE header for 1 MiB and 100 KiB of its payload, then nothing. */
  sendHalfAWrite(): void {
    this.send(serializeRequestHeader(CommandType.WRITE, 0, 1n, 0, MiB), Buffer.alloc(100 * KiB, 0x77));
  }
}

t.test('eight clients that never read their replies: the budget holds, others are served', async (t) => {
  if (!requireTools(t, ['qemu-io'])) return;
  const appliance = await startAppliance(t, {
    dataDirectory: temporaryDirectory(t),
    // The stall timeout is far away here: this part is about memory while they are stuck.
    extraArguments: ['--memory-budget', '64M', '--stall-timeout', '10m'],
  });
  const pid = appliance.child.pid!;
  const residentBefore = residentBytes(pid);
  const stuck = await Promise.all(Array.from({ length: 8 }, () => StuckClient.attach(appliance)));
  t.teardown(() => stuck.forEach((client) => client.destroy()));
  for (const client of stuck) client.pipelineReads(96);

  // Settled: the budget used up and what the server holds no longer changing (sampled 1 s apart).
  let previousHeldBytes = -1;
  const metrics = await waitFor('the stuck clients to use up the budget and the server to settle', async () => {
    const now = await readMetrics(appliance);
    const held = sample(now, 'cdp_nbd_connection_memory_bytes');
    const settled = sample(now, 'cdp_nbd_connection_memory_shared_bytes') >= budgetBytes - 2 * MiB && held === previousHeldBytes;
    previousHeldBytes = held;
    return settled ? now : undefined;
  }, 120_000, 1000);
  const heldBytes = sample(metrics, 'cdp_nbd_connection_memory_bytes');
  const sharedBytes = sample(metrics, 'cdp_nbd_connection_memory_shared_bytes');
  t.equal(sample(metrics, 'cdp_nbd_connection_memory_budget_bytes'), budgetBytes, 'the budget is the one given');
  t.ok(heldBytes <= sample(metrics, 'cdp_nbd_connection_memory_bound_bytes'), `held ${(heldBytes / MiB).toFixed(1)} MiB: within the stated bound`);
  t.ok(sharedBytes <= budgetBytes + stuck.length * 128 * KiB, `shared ${(sharedBytes / MiB).toFixed(1)} MiB: within the budget, give or take a read per socket`);
  t.ok(heldBytes <= budgetBytes + stuck.length * (2 * MiB + 128 * KiB), 'each stuck client holds at most its floor beyond the budget');
  t.ok(sample(metrics, 'cdp_nbd_connections_waiting_for_memory') >= 1, 'stuck clients wait for memory');
  const residentGrowth = residentBytes(pid) - residentBefore;
  t.ok(residentGrowth < 256 * MiB, `resident memory grew by ${(residentGrowth / MiB).toFixed(1)} MiB, not by the 700 MiB of replies asked for`);

  const client = await NbdClient.connect({ kind: 'tcp', host: '127.0.0.1', port: appliance.nbdPort }, { exportName: 'vol0' });
  const data = Buffer.alloc(MiB, 0x3c);
  await client.write(8 * MiB, data, { fua: true });
  t.ok((await client.read(8 * MiB, MiB)).equals(data), 'our client writes and reads 1 MiB while the budget is used up');
  await client.disconnect();
  const qemu = await run('qemu-io', ['-f', 'raw', appliance.uri(), '-c', 'write -P 0x5a 2M 1M', '-c', 'read -P 0x5a 2M 1M'], { timeoutMs: 60_000 });
  t.equal(qemu.code, 0, `qemu-io writes and reads 1 MiB too: ${qemu.stdout}${qemu.stderr}`);
  t.notOk(qemu.stdout.includes('Pattern verification failed'), 'and reads back what it wrote');
  const after = await readMetrics(appliance);
  t.equal(await attachedCount(appliance), stuck.length, 'the stuck clients were still attached meanwhile');
  t.ok(sample(after, 'cdp_nbd_connections_waiting_for_memory') >= 1, 'and still waiting for memory');
});

t.test('the stall timeout ends clients that read no replies or stop half way through a request; idle ones stay', async (t) => {
  const appliance = await startAppliance(t, {
    dataDirectory: temporaryDirectory(t),
    extraArguments: ['--memory-budget', '64M', '--stall-timeout', '3s'],
  });
  const idle = await NbdClient.connect({ kind: 'tcp', host: '127.0.0.1', port: appliance.nbdPort }, { exportName: 'vol0' });
  t.teardown(() => idle.disconnect().catch(() => undefined));
  const readers = await Promise.all([StuckClient.attach(appliance), StuckClient.attach(appliance)]);
  const halfWriter = await StuckClient.attach(appliance);
  t.teardown(() => [...readers, halfWriter].forEach((client) => client.destroy()));
  for (const reader of readers) reader.pipelineReads(96);
  halfWriter.sendHalfAWrite();

  const metrics = await waitFor('the stalled clients to be disconnected', async () => {
    const now = await readMetrics(appliance);
    const dropped = sample(now, 'cdp_nbd_connections_dropped_total{reason="writeStall"}') + sample(now, 'cdp_nbd_connections_dropped_total{reason="receiveStall"}');
    return dropped >= 3 ? now : undefined;
  });
  t.equal(sample(metrics, 'cdp_nbd_connections_dropped_total{reason="writeStall"}'), 2, 'both clients that read no replies, for replies that did not move');
  t.equal(sample(metrics, 'cdp_nbd_connections_dropped_total{reason="receiveStall"}'), 1, 'the one that stopped half way through a WRITE, for a request that did not grow');
  t.equal(sample(metrics, 'cdp_nbd_connection_memory_shared_bytes'), 0, 'what they held is free');
  const stallLines = () => appliance.logEntries().filter((entry) => entry['msg'] === 'dropping connection' && /bytes of replies|part of a request/.test(String(entry['reason'])));
  t.ok(await waitFor('the drops to be logged', () => (stallLines().length === 3 ? true : undefined)), 'each drop is logged with its reason');

  await sleep(3 * 3000); // three stall timeouts of doing nothing at all
  t.equal(await attachedCount(appliance), 1, 'the idle client is still attached');
  t.equal((await idle.read(0, 4096)).length, 4096, 'and is served');
});

t.test('waiting for memory is not stalling, and a slow sender is not a stalled one', async (t) => {
  // Two clients send 32 MiB WRITEs a byte every half second: slow, but never stalled, and their
  // reservations hold the whole budget. A client asks for an 8 MiB read and sends half of its
  // next request in the same packet: the read waits for memory, so the server stops reading with
  // half a request received. That is the server's doing, not a stall: three stall timeouts later
  // the client is still attached, and it is served once the slow writers go.
  const appliance = await startAppliance(t, { dataDirectory: temporaryDirectory(t), extraArguments: ['--memory-budget', '64M', '--stall-timeout', '3s'] });
  const slowWriters = await Promise.all([StuckClient.attach(appliance), StuckClient.attach(appliance)]);
  t.teardown(() => slowWriters.forEach((client) => client.destroy()));
  for (const writer of slowWriters) writer.send(serializeRequestHeader(CommandType.WRITE, 0, 1n, 0, 32 * MiB));
  const trickle = setInterval(() => slowWriters.forEach((writer) => writer.send(Buffer.from([0x55]))), 500);
  t.teardown(() => clearInterval(trickle));
  await waitFor('the slow writers to reserve the budget', async () => (sample(await readMetrics(appliance), 'cdp_nbd_connection_memory_shared_bytes') >= budgetBytes - 8 * MiB ? true : undefined));

  const reader = await StuckClient.attach(appliance);
  t.teardown(() => reader.destroy());
  const first = serializeRequestHeader(CommandType.READ, 0, 1n, 0, 8 * MiB);
  const second = serializeRequestHeader(CommandType.READ, 0, 2n, 8 * MiB, 8 * MiB);
  reader.parser.expectReply(1n, { type: CommandType.READ, flags: 0, offsetBytes: 0, lengthBytes: 8 * MiB });
  reader.parser.expectReply(2n, { type: CommandType.READ, flags: 0, offsetBytes: 8 * MiB, lengthBytes: 8 * MiB });
  reader.send(Buffer.concat([first, second.subarray(0, 14)]));
  await waitFor('the reader to wait for memory', async () => (sample(await readMetrics(appliance), 'cdp_nbd_connections_waiting_for_memory') >= 1 ? true : undefined));
  await sleep(3 * 3000); // three stall timeouts
  const metrics = await readMetrics(appliance);
  t.equal(sample(metrics, 'cdp_nbd_connections_dropped_total{reason="receiveStall"}') + sample(metrics, 'cdp_nbd_connections_dropped_total{reason="writeStall"}'), 0, 'no one was dropped: not the slow writers, not the waiting reader');
  t.equal(await attachedCount(appliance), 3);

  clearInterval(trickle);
  for (const writer of slowWriters) writer.destroy();
  reader.send(second.subarray(14));
  // Replies may come in any order (proto.md): each read once, whole.
  const replies = [await reader.next(60_000), await reader.next(60_000)];
  for (const cookie of [1n, 2n]) {
    const reply = replies.find((message) => message?.kind === 'simpleReply' && message.cookie === cookie);
    t.ok(reply?.kind === 'simpleReply' && reply.error === 0 && reply.data?.length === 8 * MiB, `read ${cookie} is served once the slow writers are gone`);
  }
});

t.test('a client that reads its replies slowly is not a stalled one', async (t) => {
  // Two 16 MiB replies, read 1 MiB every quarter second: about 8 s, when the stall timeout is 3 s.
  // Whole writes finish only at the end (they may go as one batch), but the kernel takes their
  // bytes all along: that is progress.
  const appliance = await startAppliance(t, { dataDirectory: temporaryDirectory(t), extraArguments: ['--stall-timeout', '3s'] });
  const reader = await StuckClient.attach(appliance);
  t.teardown(() => reader.destroy());
  const pump = reader.readSlowly(MiB, 250);
  t.teardown(() => clearInterval(pump));
  for (const [index, cookie] of [1n, 2n].entries()) reader.parser.expectReply(cookie, { type: CommandType.READ, flags: 0, offsetBytes: index * 16 * MiB, lengthBytes: 16 * MiB });
  reader.send(serializeRequestHeader(CommandType.READ, 0, 1n, 0, 16 * MiB), serializeRequestHeader(CommandType.READ, 0, 2n, 16 * MiB, 16 * MiB));
  const replies = [await reader.next(120_000), await reader.next(120_000)];
  for (const cookie of [1n, 2n]) {
    const reply = replies.find((message) => message?.kind === 'simpleReply' && message.cookie === cookie);
    t.ok(reply?.kind === 'simpleReply' && reply.error === 0 && reply.data?.length === 16 * MiB, `read ${cookie} arrives whole (in either order)`);
  }
  t.equal(sample(await readMetrics(appliance), 'cdp_nbd_connections_dropped_total{reason="writeStall"}'), 0, 'the slow reader was not dropped');
  t.equal(await attachedCount(appliance), 1);
});

t.test('on shutdown, a request waiting for memory is answered ESHUTDOWN', async (t) => {
  // The memory is held by clients that read no replies: shutting down does not free it (their
  // replies never drain; the grace period ends them), so only answering at once helps the waiter.
  const appliance = await startAppliance(t, { dataDirectory: temporaryDirectory(t), extraArguments: ['--memory-budget', '64M'] });
  const stuck = await Promise.all(Array.from({ length: 3 }, () => StuckClient.attach(appliance)));
  t.teardown(() => stuck.forEach((client) => client.destroy()));
  for (const client of stuck) client.pipelineReads(96);
  await waitFor('the stuck clients to use up the budget', async () => (sample(await readMetrics(appliance), 'cdp_nbd_connection_memory_shared_bytes') >= budgetBytes - 2 * MiB ? true : undefined));
  const reader = await StuckClient.attach(appliance);
  t.teardown(() => reader.destroy());
  reader.parser.expectReply(1n, { type: CommandType.READ, flags: 0, offsetBytes: 0, lengthBytes: 8 * MiB });
  reader.send(serializeRequestHeader(CommandType.READ, 0, 1n, 0, 8 * MiB));
  await waitFor('the read to wait for memory', async () => (sample(await readMetrics(appliance), 'cdp_nbd_connections_waiting_for_memory') >= 1 ? true : undefined));
  const stopped = appliance.stop();
  const reply = await reader.next(60_000);
  t.ok(reply?.kind === 'simpleReply' && reply.cookie === 1n && reply.error === Errno.ESHUTDOWN, `the waiting read is answered ESHUTDOWN (${JSON.stringify(reply?.kind === 'simpleReply' ? { cookie: String(reply.cookie), error: reply.error } : (reply?.kind ?? 'closed'))})`);
  t.equal(await stopped, 0, 'and the appliance stops cleanly (the stuck clients are cut after the grace period)');
});
