// The history lifecycle on a real appliance (`cdp-nbd serve` as a child process) with a real
// client: the CLI's snapshot commands (create --pin --expires, list, pin, unpin, expire, and
// nonsense refused by name); qemu-io writes under a policy of second-long tiers until history
// expires, which the events websocket tells and the log says; then the CLI refuses an export and
// a restore at an expired instant in words, with the nearest kept instants, `retention show`
// tells where history stands, and the metrics count the expiry.

import t from 'tap';
import type { RetentionPolicy } from '../../storage/index.js';
import { apiRequest } from '../support/api.js';
import { cliEnvironment, cliPath, startAppliance, type Appliance } from '../support/appliance.js';
import { readToken, subscribe, waitForEvent } from '../support/event-stream.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { requireTools, run } from '../support/tools.js';
import { waitFor } from '../support/wait.js';

function cli(appliance: Appliance, args: string[]): ReturnType<typeof run> {
  return run(process.execPath, [cliPath, ...args, '--api', appliance.httpBase], { timeoutMs: 30_000, env: cliEnvironment(appliance) });
}

const time = String.raw`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z`;

t.test('snapshot commands: pin, expiry, and nonsense refused by name', async (t) => {
  const appliance = await startAppliance(t, { dataDirectory: `${temporaryDirectory(t)}/data` });
  const created = await cli(appliance, ['snapshot', 'create', 'vol0', 'keep', '--pin', '--expires', '7d', '--note', 'a week']);
  t.equal(created.code, 0, created.stderr);
  t.match(created.stdout, new RegExp(`^snapshot keep of vol0 at ${time} \\(sequence \\d+\\), pinned, expires at ${time}\\n$`));
  const listed = await cli(appliance, ['snapshot', 'list', 'vol0']);
  t.match(listed.stdout, new RegExp(`^name\\ttime\\tsequence\\tpinned\\texpires\\tnote\\nkeep\\t${time}\\t\\d+\\tyes\\t${time}\\ta week\\n$`), 'the list shows the pin and the expiry');
  const steps: Array<[string[], RegExp]> = [
    [['unpin', 'vol0', 'keep'], new RegExp(`^snapshot keep of vol0, expires at ${time}\\n$`)],
    [['expire', 'vol0', 'keep', '--never'], /^snapshot keep of vol0: kept until deleted, not pinned\n$/],
    [['expire', 'vol0', 'keep', '--at', '2099-01-02T03:04:05Z'], /^snapshot keep of vol0, expires at 2099-01-02T03:04:05.000000Z\n$/],
    [['pin', 'vol0', 'keep'], /^snapshot keep of vol0, pinned, expires at 2099-01-02T03:04:05.000000Z\n$/],
    [['expire', 'vol0', 'keep', '--in', '30d'], new RegExp(`^snapshot keep of vol0, pinned, expires at ${time}\\n$`)],
  ];
  for (const [args, output] of steps) {
    const result = await cli(appliance, ['snapshot', ...args]);
    t.equal(result.code, 0, result.stderr);
    t.match(result.stdout, output, args.join(' '));
  }
  const json = JSON.parse((await cli(appliance, ['snapshot', 'list', 'vol0', '--json'])).stdout) as Array<{ pinned: boolean; expiresTime: string }>;
  t.match(json, [{ name: 'keep', pinned: true, expiresTime: new RegExp(time) }]);

  const refused: Array<[string[], RegExp]> = [
    [['expire', 'vol0', 'keep'], /^cdp-nbd: snapshot expire: give one of --in DURATION, --at RFC3339 or --never\n$/],
    [['expire', 'vol0', 'keep', '--in', '7d', '--never'], /give one of --in DURATION, --at RFC3339 or --never/],
    [['expire', 'vol0', 'keep', '--in', '0'], /^cdp-nbd: --in 0: a snapshot expires at least a second from now\n$/],
    [['expire', 'vol0', 'keep', '--in', 'a week'], /^cdp-nbd: --in: "a week" is not a duration \(examples: 30s/],
    [['create', 'vol0', 'other', '--expires', 'soon'], /^cdp-nbd: --expires: "soon" is neither a duration \(7d\) nor an RFC 3339 time \(2026-12-31T00:00:00Z\)\n$/],
    [['create', 'vol0', 'other', '--expires', '2020-01-01T00:00:00Z'], /^cdp-nbd: the expiry time 2020-01-01T00:00:00.000000Z has already passed \(invalid-request\)\n$/],
    [['pin', 'vol0', 'keep', '--never'], /^cdp-nbd: snapshot pin: unknown option --never; it is an option of snapshot expire \(cdp-nbd snapshot --help lists them\)\n$/],
    [['pin', 'vol0', 'nope'], /^cdp-nbd: volume vol0 has no snapshot named nope \(not-found\)\n$/],
  ];
  for (const [args, message] of refused) {
    const result = await cli(appliance, ['snapshot', ...args]);
    t.equal(result.code, 1, args.join(' '));
    t.match(result.stderr, message, result.stderr.trim());
  }
  const unknownAction = await cli(appliance, ['snapshot', 'keep', 'vol0']);
  t.equal(unknownAction.code, 2, 'an unknown action');
  t.match(unknownAction.stderr, /^cdp-nbd snapshot: unknown action "keep"/);
  t.same(
    (JSON.parse((await cli(appliance, ['snapshot', 'list', 'vol0', '--json'])).stdout) as Array<{ name: string }>).map((snapshot) => snapshot.name),
    ['keep'],
    'nothing refused was made',
  );
  t.equal(await appliance.stop(), 0);
});

t.test('history expires under a short policy: websocket event, log line, expired instants refused in words, retention show, metrics', async (t) => {
  if (!requireTools(t, ['qemu-io'])) return;
  const files = temporaryDirectory(t);
  const appliance = await startAppliance(t, { dataDirectory: `${temporaryDirectory(t)}/data`, fileRoots: [files] });
  const { events, socket } = await subscribe(appliance, readToken(appliance));
  t.teardown(() => socket.close());
  const policy = (await apiRequest(appliance, 'GET', '/api/v1/volumes/vol0/retention')).json as unknown as RetentionPolicy;
  const put = await apiRequest(appliance, 'PUT', '/api/v1/volumes/vol0/retention', { ...policy, keepAllSeconds: 4, tiers: [{ every: 1, keepSeconds: 10 }], requiredWindowSeconds: 0 });
  t.equal(put.status, 200, JSON.stringify(put.json));

  // Writes in three different seconds: the tier points between them are kept for 10 s, then folded away.
  const write = await run('qemu-io', ['-f', 'raw', appliance.uri(), '-c', 'write -P 1 0 4k', '-c', 'write -P 2 4k 4k', '-c', 'sleep 1100', '-c', 'write -P 3 8k 4k', '-c', 'sleep 1100', '-c', 'write -P 4 12k 4k']);
  t.equal(write.code, 0, write.stderr);
  const expired = await waitForEvent(events, (event) => event.type === 'history-expired' && event.volume === 'vol0', 'history-expired', 90_000);
  t.match(expired, { reason: 'policy', horizonMicros: Number, reclaimedBytes: Number, micros: Number }, 'the websocket tells of history expiring');
  const logLine = await waitFor('the log line', () => appliance.logEntries().find((entry) => entry['type'] === 'history-expired'), 10_000);
  t.match(logLine, { level: 30, volume: 'vol0', msg: new RegExp(`^history of volume vol0 before ${time} expired \\(by its retention policy\\)$`) }, 'and the log says it, at info');

  const export1 = await cli(appliance, ['export', 'create', 'vol0', '--sequence', '1']);
  t.equal(export1.code, 1, 'an export of the first write, folded away');
  t.match(
    export1.stderr,
    new RegExp(`^cdp-nbd: sequence 1 of volume vol0 is no longer kept by its retention policy; the nearest kept instants? (is|are) ${time} \\(sequence \\d+\\)( and ${time} \\(sequence \\d+\\))? \\(expired\\)\\n$`),
    export1.stderr.trim(),
  );
  const restore = await cli(appliance, ['restore', 'vol0', '--sequence', '1', '--to', `${files}/restored.img`]);
  t.equal(restore.code, 1, 'a restore from it');
  t.match(restore.stderr, /sequence 1 of volume vol0 is no longer kept by its retention policy; the nearest kept instant/, restore.stderr.trim());

  const shown = await cli(appliance, ['retention', 'show', 'vol0']);
  t.equal(shown.code, 0, shown.stderr);
  const lines = shown.stdout.split('\nnow:\n')[1]?.split('\n') ?? [];
  t.match(lines[0], new RegExp(`^  oldest recoverable instant ${time}: a protected window of \\d+ (s|min);$`), 'the oldest recoverable instant and the window, in words');
  t.match(lines[1], new RegExp(`^  every write kept from ${time}; points every 1 s from ${time};$`), 'where the regions start');
  t.match(lines[2], /^ {2}history takes [\d.]+ (B|KiB|MiB|GiB) of its [\d.]+ (MiB|GiB|TiB) cap \(log [\d.]+ \w+, packs [\d.]+ \w+, base image [\d.]+ \w+, index [\d.]+ \w+\);$/, 'the bytes by part');
  t.match(lines[3], /^ {2}the file system has [\d.]+ \w+ free of [\d.]+ \w+, [\d.]+ \w+ of it kept in reserve;$/);
  t.match(lines[4], /^ {2}at the current rate \([\d.]+ \w+\/s of log\) the policy would keep about [\d.]+ \w+;$/);
  t.match(lines[5], /^ {2}reclaimed [\d.]+ \w+ so far: [1-9]\d* packs, \d+ merges, [1-9]\d* folds, \d+ log segments deleted; expiry took [\d.]+ s, compaction [\d.]+ s; 0 failures$/, 'what the lifecycle did');

  const metrics = await fetch(`${appliance.httpBase}/metrics`, { headers: { authorization: `Bearer ${readToken(appliance)}` } }).then((response) => response.text());
  const folds = /^cdp_history_expiry_operations_total\{volume="vol0"\} (\d+)$/m.exec(metrics);
  t.ok(folds !== null && Number(folds[1]) >= 1, 'the metrics count the expiry');
  t.match(metrics, /^cdp_history_oldest_timestamp_seconds\{volume="vol0"\} \d+(\.\d+)?$/m);
  t.equal(await appliance.stop(), 0);
});
