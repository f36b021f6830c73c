// 1,000 connections that never finish negotiation, half of them from one loopback address and the
// rest from nine others, against the real appliance with its default cap of 32 per address and
// 200 negotiating slots. Invariants:
// - no address holds more than its cap, and no more than the negotiating cap are held in all;
//   every other connection is closed by the server (at once, or when a lighter address takes its
//   slot);
// - the appliance's own accounting stays under its stated bound, and its resident memory grows by
//   little (1,000 connections' worth of half-sent options is not kept);
// - while the flood holds every slot it may, real clients are served: nbdinfo over TCP, and our
//   codec's client over TCP and over the unix socket;
// - the refusals are counted by cap in /metrics and logged at info, a line per cap per interval at
//   most, not a line each.

import t from 'tap';
import net from 'node:net';
import { ClientFlag, OptionType, serializeClientFlags } from 'nbd-protocol-ts';
import { NbdClient } from '../../transfer/nbd-client.js';
import { startAppliance } from '../support/appliance.js';
import { readMetrics, residentBytes, sample } from '../support/metrics.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools, run } from '../support/tools.js';
import { waitFor } from '../support/wait.js';

const MiB = 1024 * 1024;
const floodConnectionCount = 1000;
/** Every other connection from 127.0.0.11 (it reaches its cap), the rest spread over nine addresses. */
const floodAddressOf = (index: number): string => (index % 2 === 0 ? '127.0.0.11' : `127.0.0.${12 + ((index - 1) / 2) % 9}`);
const connectionsPerAddressMax = 32; // the default
const negotiatingMax = 200;

interface FloodConnection {
  socket: net.Socket;
  address: string;
  closed: boolean;
}

/** Connect from `localAddress` and stop somewhere in the handshake: before the flags, after them, or inside an option. */
function openFloodConnection(port: number, localAddress: string, index: number): Promise<FloodConnection> {
  return new Promise((resolve) => {
    const socket = net.createConnection({ host: '127.0.0.1', port, localAddress });
    const connection: FloodConnection = { socket, address: localAddress, closed: false };
    socket.on('error', () => undefined);
    socket.on('close', () => {
      connection.closed = true;
      resolve(connection);
    });
    socket.on('connect', () => {
      if (index % 3 >= 1) socket.write(serializeClientFlags(ClientFlag.C_FIXED_NEWSTYLE | ClientFlag.C_NO_ZEROES));
      if (index % 3 === 2) {
        // An option header claiming 60 KiB of data, and half of it.
        const header = Buffer.alloc(16);
        Buffer.from('IHAVEOPT', 'latin1').copy(header);
        header.writeUInt32BE(OptionType.GO, 8);
        header.writeUInt32BE(60 * 1024, 12);
        socket.write(Buffer.concat([header, Buffer.alloc(30 * 1024, 0x61)]));
      }
      resolve(connection);
    });
    socket.resume(); // read the greeting, and notice the close
  });
}

t.test('1,000 connections that never negotiate: caps hold, memory stays bounded, real clients are served', async (t) => {
  if (!requireTools(t, ['nbdinfo'])) return;
  const appliance = await startAppliance(t, {
    dataDirectory: temporaryDirectory(t),
    // Long enough that the flood holds its slots for the whole test.
    extraArguments: ['--max-negotiating', String(negotiatingMax), '--negotiation-timeout', '10m'],
  });
  const pid = appliance.child.pid!;
  const residentBefore = residentBytes(pid);

  const flood: FloodConnection[] = [];
  t.teardown(() => {
    for (const connection of flood) connection.socket.destroy();
  });
  const startMs = Date.now();
  for (let first = 0; first < floodConnectionCount; first += 100) {
    const batch = Array.from({ length: 100 }, (_, offset) => first + offset);
    flood.push(...(await Promise.all(batch.map((index) => openFloodConnection(appliance.nbdPort, floodAddressOf(index), index)))));
  }
  // Refused and evicted connections are closed by the server; wait until the rest is all that is left.
  const held = await waitFor('the server to settle the flood', async () => {
    const metrics = await readMetrics(appliance);
    const open = flood.filter((connection) => !connection.closed);
    return open.length === sample(metrics, 'cdp_nbd_connections_negotiating') ? open : undefined;
  });
  t.ok(held.length <= negotiatingMax, `${held.length} flood connections held open: at most the ${negotiatingMax} negotiating slots`);
  t.ok(held.length >= negotiatingMax / 2, `and the slots are used (${held.length}): the flood really fills them`);
  const perAddress = new Map<string, number>();
  for (const connection of held) perAddress.set(connection.address, (perAddress.get(connection.address) ?? 0) + 1);
  t.ok(Math.max(...perAddress.values()) <= connectionsPerAddressMax, `no address holds more than ${connectionsPerAddressMax}: ${JSON.stringify(Object.fromEntries(perAddress))}`);

  const metrics = await readMetrics(appliance);
  const refusedPerAddress = sample(metrics, 'cdp_nbd_connections_refused_total{reason="perAddress"}');
  const refusedNegotiating = sample(metrics, 'cdp_nbd_connections_refused_total{reason="negotiating"}');
  const evicted = sample(metrics, 'cdp_nbd_connections_dropped_total{reason="evicted"}');
  t.ok(refusedPerAddress > 0, `the per-address cap refused ${refusedPerAddress}`);
  t.ok(refusedNegotiating + evicted > 0, `the negotiating cap refused ${refusedNegotiating} and gave ${evicted} slots to lighter addresses`);
  t.equal(refusedPerAddress + refusedNegotiating + evicted + held.length, floodConnectionCount, 'every flood connection is held, refused or evicted');
  t.ok(sample(metrics, 'cdp_nbd_connection_memory_bytes') <= sample(metrics, 'cdp_nbd_connection_memory_bound_bytes'), 'the server holds less than its stated bound');
  const residentGrowth = residentBytes(pid) - residentBefore;
  t.ok(residentGrowth < 128 * MiB, `resident memory grew by ${(residentGrowth / MiB).toFixed(1)} MiB`);

  // Real clients while the flood holds every slot it may.
  const info = await run('nbdinfo', ['--size', appliance.uri()], { timeoutMs: 60_000 });
  t.equal(info.code, 0, `nbdinfo over TCP is served: ${info.stderr}`);
  t.equal(info.stdout.trim(), String(64 * MiB));
  for (const address of [{ kind: 'tcp' as const, host: '127.0.0.1', port: appliance.nbdPort }, { kind: 'unix' as const, path: appliance.nbdSocket }]) {
    const client = await NbdClient.connect(address, { exportName: 'vol0' });
    const data = Buffer.alloc(64 * 1024, address.kind === 'tcp' ? 0x5a : 0xa5);
    await client.write(MiB, data, { fua: true });
    t.ok((await client.read(MiB, data.length)).equals(data), `our client over ${address.kind} writes and reads back`);
    await client.disconnect();
  }

  const elapsedIntervals = Math.ceil((Date.now() - startMs) / 10_000) + 1;
  const refusalLines = appliance.logEntries().filter((entry) => typeof entry['msg'] === 'string' && (entry['msg'] as string).startsWith('refused a connection'));
  t.ok(refusalLines.length > 0, 'refusals are logged');
  t.ok(refusalLines.every((entry) => entry['level'] === 30), 'at info level');
  t.ok(refusalLines.length <= 3 * elapsedIntervals, `${refusalLines.length} lines for ${refusedPerAddress + refusedNegotiating} refusals: at most one per cap per 10 s`);
});
