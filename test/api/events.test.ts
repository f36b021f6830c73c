// The events websocket on the real appliance: a console subscribed to /api/v1/events sees a
// client attach, its writes as a write rate, a snapshot, an export created and deleted, and the
// client leave, in that order; the upgrade takes a ticket from POST /api/v1/events/ticket, once.

import t from 'tap';
import { apiRequest } from '../support/api.js';
import { startAppliance, type Appliance } from '../support/appliance.js';
import { eventsUrl, eventTicket, readToken, subscribe, upgradeStatus, waitForEvent } from '../support/event-stream.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools, run } from '../support/tools.js';

async function api(appliance: Appliance, method: string, route: string, body?: unknown): Promise<number> {
  return (await apiRequest(appliance, method, route, body)).status;
}

t.test('events: attach, write rate, snapshot, export, detach', async (t) => {
  if (!requireTools(t, ['qemu-io'])) return;
  const appliance = await startAppliance(t, { dataDirectory: `${temporaryDirectory(t)}/data` });
  const { events, socket } = await subscribe(appliance, readToken(appliance));
  t.teardown(() => socket.close());

  // A client that stays attached for a little over a second, so a write-rate report sees its writes.
  const write = await run('qemu-io', ['-f', 'raw', appliance.uri(), '-c', 'write -P 0x5a 0 1M', '-c', 'sleep 1500', '-c', 'write -P 0x5b 1M 1M']);
  t.equal(write.code, 0, write.stderr);
  const connected = await waitForEvent(events, (event) => event.type === 'client-connected', 'client-connected');
  t.equal(connected.export, 'vol0');
  t.match(connected.remote, /127\.0\.0\.1/);
  const disconnected = await waitForEvent(events, (event) => event.type === 'client-disconnected', 'client-disconnected');
  t.equal(disconnected.connection, connected.connection, 'the same connection leaves');
  t.ok((disconnected.micros as number) > (connected.micros as number), 'after it came');
  const busy = await waitForEvent(events, (event) => event.type === 'write-rate' && (event.bytesPerSecond as number) > 0, 'non-zero write-rate');
  t.equal(busy.volume, 'vol0');
  const reportedBytes = events
    .filter((event) => event.type === 'write-rate' && event.volume === 'vol0')
    .reduce((sum, event) => sum + (event.bytesPerSecond as number), 0);
  t.ok(reportedBytes <= 2 * 1024 * 1024, `write-rate reports never count more than was written (${reportedBytes})`);

  t.equal(await api(appliance, 'POST', '/api/v1/volumes/vol0/snapshots', { name: 'evt', note: 'from the test' }), 201);
  const snapshot = await waitForEvent(events, (event) => event.type === 'snapshot-created', 'snapshot-created');
  t.match(snapshot, { volume: 'vol0', name: 'evt', note: 'from the test' });
  t.type(snapshot.sequence, 'number');

  t.equal(await api(appliance, 'POST', '/api/v1/exports', { volume: 'vol0', snapshot: 'evt' }), 201);
  t.match(await waitForEvent(events, (event) => event.type === 'export-created', 'export-created'), { name: 'vol0@evt', volume: 'vol0', writable: false });
  t.equal(await api(appliance, 'DELETE', '/api/v1/exports/vol0@evt'), 204);
  t.match(await waitForEvent(events, (event) => event.type === 'export-deleted', 'export-deleted'), { name: 'vol0@evt' });

  // The disk's own fullness may raise a history-usage alert at any time: it is not part of this order.
  const order = events.map((event) => event.type).filter((type) => type !== 'write-rate' && type !== 'history-usage');
  t.same(order, ['client-connected', 'client-disconnected', 'snapshot-created', 'export-created', 'export-deleted'], 'in the order they happened');
  t.equal(await appliance.stop(), 0);
});

t.test('events: the upgrade needs a ticket, good once; a token in the URL is refused', async (t) => {
  const appliance = await startAppliance(t, { dataDirectory: `${temporaryDirectory(t)}/data` });
  const ticket = await eventTicket(appliance, appliance.token);
  const cases: Array<[string, string]> = [
    ['no ticket', `${appliance.httpBase.replace(/^http/, 'ws')}/api/v1/events`],
    ['a wrong ticket', eventsUrl(appliance, 'wrong-ticket')],
    ['the token itself in the URL', `${appliance.httpBase.replace(/^http/, 'ws')}/api/v1/events?token=${encodeURIComponent(appliance.token)}`],
    ['a token as the ticket', eventsUrl(appliance, appliance.token)],
  ];
  for (const [what, url] of cases) t.equal(await upgradeStatus(url), 401, `${what} is refused`);
  t.equal(await upgradeStatus(eventsUrl(appliance, ticket)), 101, 'the ticket opens the stream');
  t.equal(await upgradeStatus(eventsUrl(appliance, ticket)), 401, 'once');
  t.equal(await appliance.stop(), 0);
});
