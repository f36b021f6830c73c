// Hosts that vanish without a FIN: nbdsh attached from another network namespace, whose link is
// then taken down, so its packets stop and nothing tells the appliance. One host is idle; the
// other keeps four 32 MiB reads outstanding and is stopped (SIGSTOP) just before the cut, so replies wait
// for it, unacknowledged, when it goes. Invariants:
// - while they are attached, an in-place restore is refused (409, clients attached);
// - the kernel finds both gone (the stall timeout is set far away, so nothing else can): the idle
//   one by keepalive probes, the busy one by TCP_USER_TIMEOUT (keepalive does not probe while
//   data is outstanding, and retransmissions alone take ~15 minutes); both connections are dropped
//   and counted as dead peers, the attachments are released, and the same in-place restore then
//   runs to the end;
// - a healthy TCP client that is only idle, nothing pending, for several dead-peer timeouts is
//   not dropped: its kernel answers the probes, and it is served after.
// Needs root (a network namespace and a veth pair, made here and removed at teardown), `ip` and
// nbdsh; a missing one fails the test.

import t from 'tap';
import { spawn } from 'node:child_process';
import { NbdClient } from '../../transfer/nbd-client.js';
import { apiRequest } from '../support/api.js';
import { startAppliance, type Appliance } from '../support/appliance.js';
import { readMetrics, sample } from '../support/metrics.js';
import { makeNetworkNamespace } from '../support/network-namespace.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools } from '../support/tools.js';
import { waitFor } from '../support/wait.js';
import { sleep } from '../support/waits.js';

const deadPeerTimeoutSeconds = 4;

async function attachedRemotes(appliance: Appliance): Promise<string[]> {
  const exports = await apiRequest(appliance, 'GET', '/api/v1/exports');
  const live = (exports.json['exports'] as Array<{ name: string; clients: Array<{ remote: string }> }>).find((entry) => entry.name === 'vol0');
  return (live?.clients ?? []).map((client) => client.remote);
}

t.test('hosts that vanish without FIN, idle or with replies in flight, are found dead and their attachments released; an idle healthy one stays', async (t) => {
  if (!requireTools(t, ['ip', 'nbdsh'])) return;
  if (process.getuid?.() !== 0) {
    t.fail('this test makes a network namespace: run it as root');
    return;
  }
  const namespace = await makeNetworkNamespace(t);
  const appliance = await startAppliance(t, {
    dataDirectory: temporaryDirectory(t),
    extraArguments: ['--nbd-listen', `${namespace.hostAddress}:0`, '--dead-peer-timeout', `${deadPeerTimeoutSeconds}s`, '--stall-timeout', '10m'],
  });
  const uri = `nbd://${namespace.hostAddress}:${appliance.nbdPort}/vol0`;
  t.equal((await apiRequest(appliance, 'POST', '/api/v1/volumes/vol0/snapshots', { name: 'before' })).status, 201);

  // nbdsh runs `python3 -m nbd`, with the libnbd bindings in Debian's python3 (tools.ts runNbdsh).
  const startHost = (script: string) => {
    const [command, ...args] = namespace.exec(['nbdsh', '-u', uri, '-c', script]);
    const host = spawn(command!, args, { env: { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` }, stdio: 'ignore' });
    t.teardown(() => {
      host.kill('SIGKILL');
    });
    return host;
  };
  startHost('import time; time.sleep(600)');
  // Four 32 MiB reads always outstanding: whenever it stops, replies are on their way to it.
  const busyHost = startHost(
    [
      'import nbd',
      'buffers = [nbd.Buffer(32 * 1024 * 1024) for _ in range(4)]',
      'cookies = [h.aio_pread(buffer, 0) for buffer in buffers]',
      'while True:',
      '    h.poll(-1)',
      '    for index, cookie in enumerate(cookies):',
      '        if h.aio_command_completed(cookie): cookies[index] = h.aio_pread(buffers[index], 0)',
    ].join('\n'),
  );
  const remotes = await waitFor('the hosts in the namespace to attach', async () => {
    const now = await attachedRemotes(appliance);
    return now.length === 2 ? now : undefined;
  });
  t.ok(remotes.every((remote) => remote.startsWith(`${namespace.peerAddress}:`)), 'attached from inside the namespace');
  const refused = await apiRequest(appliance, 'POST', '/api/v1/restores?wait=true', { volume: 'vol0', snapshot: 'before', inPlace: true });
  t.equal(refused.status, 409, 'an in-place restore is refused while they are attached');
  t.match(JSON.stringify(refused.json), /client\(s\) attached/);

  const readsBefore = sample(await readMetrics(appliance), 'cdp_nbd_reads_total{volume="vol0"}');
  await waitFor('the busy host to read', async () => (sample(await readMetrics(appliance), 'cdp_nbd_reads_total{volume="vol0"}') > readsBefore + 2 ? true : undefined));
  busyHost.kill('SIGSTOP');
  await waitFor('replies to wait for the stopped host', async () => (sample(await readMetrics(appliance), 'cdp_nbd_connection_memory_bytes') > 4 * 1024 * 1024 ? true : undefined));
  await namespace.cutOff();
  await waitFor('the vanished hosts to be dropped', async () => ((await attachedRemotes(appliance)).length === 0 ? true : undefined), 120_000);
  const metrics = await readMetrics(appliance);
  t.equal(sample(metrics, 'cdp_nbd_connections_dropped_total{reason="deadPeer"}'), 2, 'both counted as dead peers');
  t.equal(sample(metrics, 'cdp_nbd_connections_dropped_total{reason="writeStall"}') + sample(metrics, 'cdp_nbd_connections_dropped_total{reason="receiveStall"}'), 0, 'not as a stall');
  const lines = await waitFor('the drops to be logged', () => {
    const logged = appliance.logEntries().filter((entry) => entry['msg'] === 'client stopped answering (keepalive or unacknowledged replies): dropped');
    return logged.length === 2 ? logged : undefined;
  });
  t.pass(`and logged: ${lines.map((line) => String(line['error'])).join(', ')}`);
  const restored = await apiRequest(appliance, 'POST', '/api/v1/restores?wait=true', { volume: 'vol0', snapshot: 'before', inPlace: true });
  t.equal(restored.status, 200, `the in-place restore runs now${restored.status === 200 ? '' : `: ${JSON.stringify(restored.json)}`}`);
  t.equal(restored.json['state'], 'done', 'to the end');

  const healthy = await NbdClient.connect({ kind: 'tcp', host: namespace.hostAddress, port: appliance.nbdPort }, { exportName: 'vol0' });
  t.teardown(() => healthy.disconnect().catch(() => undefined));
  await sleep(3 * deadPeerTimeoutSeconds * 1000); // idle, nothing pending, for three dead-peer timeouts
  t.equal((await attachedRemotes(appliance)).length, 1, 'a healthy idle client stays attached');
  t.equal((await healthy.read(0, 4096)).length, 4096, 'and is served');
  t.equal(sample(await readMetrics(appliance), 'cdp_nbd_connections_dropped_total{reason="deadPeer"}'), 2, 'no other peer was taken for dead');
});
