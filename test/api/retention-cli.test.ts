// The retention policy on a real appliance (`cdp-nbd serve` as a child process): the serve flags
// set the default volume's policy when it is made and change it at later starts; `cdp-nbd
// retention show|set` read and change it over the API; the policy survives restarts; a volume
// without retention.json gets the defaults; nonsense is refused with the reason, by the CLI and by
// serve. Also the duration parser the CLI reads its options with.

import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { GiB, MiB, defaultRetentionPolicy, type RetentionPolicy } from '../../storage/index.js';
import { describeDuration, formatDuration, parseDuration } from '../../tools/durations.js';
import { apiRequest } from '../support/api.js';
import { cliEnvironment, cliPath, startAppliance, type Appliance } from '../support/appliance.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { run } from '../support/tools.js';

const day = 86_400;

t.test('durations: 30s 15m 24h 7d 8w 6M 2y, and back', async (t) => {
  const cases: Array<[string, number]> = [
    ['30s', 30],
    ['15m', 900],
    ['24h', day],
    ['7d', 7 * day],
    ['8w', 56 * day],
    ['6M', 180 * day],
    ['2y', 730 * day],
    ['3600', 3600],
    ['0', 0],
    [' 12 h ', 12 * 3600],
  ];
  for (const [text, seconds] of cases) t.equal(parseDuration(text), seconds, text);
  for (const text of ['', '-1d', '1.5h', '7days', '7D', 'h', '2 y 3 d']) {
    t.throws(() => parseDuration(text), { message: /is not a duration \(examples: 30s, 15m, 24h, 7d, 8w, 6M, 2y \(M is 30 days, y 365 days/ }, `"${text}" refused`);
  }
  t.throws(() => parseDuration('99999999999999999y'), { message: /too long/ });
  const written: Array<[number, string, string]> = [
    [0, '0s', '0 s'],
    [45, '45s', '45 s'],
    [900, '15m', '15 min'],
    [day, '24h', '24 h'],
    [36 * 3600, '36h', '36 h'],
    [2 * day, '2d', '2 days'],
    [7 * day, '7d', '7 days'],
    [14 * day, '2w', '2 weeks'],
    [30 * day, '30d', '30 days'],
    [56 * day, '8w', '8 weeks'],
    [180 * day, '6M', '6 months'],
    [365 * day, '1y', '1 year'],
  ];
  for (const [seconds, short, words] of written) {
    t.equal(formatDuration(seconds), short, `${seconds} s written short`);
    t.equal(parseDuration(formatDuration(seconds)), seconds, `${short} reads back`);
    t.equal(describeDuration(seconds), words, `${seconds} s in words`);
  }
});

async function retentionOf(appliance: Appliance): Promise<RetentionPolicy> {
  const response = await apiRequest(appliance, 'GET', '/api/v1/volumes/vol0/retention');
  return response.json as unknown as RetentionPolicy;
}

function cli(appliance: Appliance, args: string[]): ReturnType<typeof run> {
  return run(process.execPath, [cliPath, ...args, '--api', appliance.httpBase], { timeoutMs: 30_000, env: cliEnvironment(appliance) });
}

t.test('serve flags, retention show and set, restarts, and a volume made before retention.json', async (t) => {
  const dataDirectory = temporaryDirectory(t);
  const flags = ['--keep-all', '2h', '--hourly', '3d', '--monthly', '6M', '--max-history', '1G', '--reserve', '10G', '--required-window', '1h'];
  let appliance = await startAppliance(t, { dataDirectory, extraArguments: flags });
  const fromFlags: RetentionPolicy = {
    keepAllSeconds: 7200,
    tiers: [
      { every: 'hourly', keepSeconds: 3 * day },
      { every: 'daily', keepSeconds: 30 * day },
      { every: 'monthly', keepSeconds: 180 * day },
    ],
    maxHistoryBytes: GiB,
    reserve: { bytes: 10 * GiB },
    requiredWindowSeconds: 3600,
  };
  t.same(await retentionOf(appliance), fromFlags, 'the flags, made to the defaults when serve creates the default volume');

  const shown = await cli(appliance, ['retention', 'show', 'vol0']);
  t.equal(shown.code, 0, shown.stderr);
  t.equal(
    shown.stdout.split('\nnow:\n')[0],
    [
      'retention of vol0:',
      '  keep every write for 2 h, then hourly points for 3 days, daily points for 30 days, monthly points for 6 months;',
      '  history capped at 1 GiB; keep 10 GiB free;',
      '  warn when less than 1 h of history can be recovered',
    ].join('\n'),
    'show reads like a sentence, then where history stands (retention-status.test.ts)',
  );
  const shownJson = await cli(appliance, ['retention', 'show', 'vol0', '--json']);
  t.same(JSON.parse(shownJson.stdout).policy, fromFlags, 'show --json: the volume\'s retention object');

  const set = await cli(appliance, ['retention', 'set', 'vol0', '--daily', '60d', '--monthly', 'none', '--weekly', '12w', '--reserve', '5%']);
  t.equal(set.code, 0, set.stderr);
  t.match(set.stdout, /then hourly points for 3 days, daily points for 2 months, weekly points for 12 weeks;\n  history capped at 1 GiB; keep 5% of the file system free;/, 'set prints the new policy');
  const afterSet: RetentionPolicy = {
    ...fromFlags,
    tiers: [
      { every: 'hourly', keepSeconds: 3 * day },
      { every: 'daily', keepSeconds: 60 * day },
      { every: 'weekly', keepSeconds: 84 * day },
    ],
    reserve: { percent: 5 },
  };
  t.same(await retentionOf(appliance), afterSet, 'only what was given changed; the weekly tier found its place by period');

  const refused = await cli(appliance, ['retention', 'set', 'vol0', '--hourly', '90d']);
  t.equal(refused.code, 1, 'nonsense: exit 1');
  t.match(refused.stderr, /retention policy: tier 2 \(daily\): kept for 5184000 s, not longer than the finer tier before it \(7776000 s\) \(invalid-request\)/, refused.stderr.trim());
  const unknown = await cli(appliance, ['retention', 'set', 'vol0', '--hourlies', '3d']);
  t.equal(unknown.code, 1);
  t.match(unknown.stderr, /retention set: unknown option --hourlies/);
  const badDuration = await cli(appliance, ['retention', 'set', 'vol0', '--keep-all', '2 fortnights']);
  t.match(badDuration.stderr, /--keep-all: "2 fortnights" is not a duration/);
  const noVolume = await cli(appliance, ['retention', 'show', 'nope']);
  t.match(noVolume.stderr, /no volume named nope \(not-found\)/);
  t.same(await retentionOf(appliance), afterSet, 'nothing refused changed the policy');

  t.equal(await appliance.stop(), 0);
  appliance = await startAppliance(t, { dataDirectory });
  t.same(await retentionOf(appliance), afterSet, 'kept across a restart without flags');

  t.equal(await appliance.stop(), 0);
  appliance = await startAppliance(t, { dataDirectory, extraArguments: ['--keep-all', '4h'] });
  t.same(await retentionOf(appliance), { ...afterSet, keepAllSeconds: 4 * 3600 }, 'a flag at a later start changes what it names; the rest stays as stored');
  t.equal(await appliance.stop(), 0);

  const nonsense = await run(process.execPath, [cliPath, 'serve', '--data', dataDirectory, '--nbd-listen', '127.0.0.1:0', '--http-listen', 'none', '--keep-all', '100d'], { timeoutMs: 30_000 });
  t.equal(nonsense.code, 1, 'serve refuses flags that make nonsense of the stored policy');
  t.match(nonsense.stderr, /default volume vol0: retention policy: tier 1 \(hourly\): kept for 259200 s, not longer than keepAllSeconds \(8640000 s\)/, nonsense.stderr.trim());
  const badFlag = await run(process.execPath, [cliPath, 'serve', '--data', dataDirectory, '--http-listen', 'none', '--reserve', 'lots'], { timeoutMs: 30_000 });
  t.match(badFlag.stderr, /--reserve: "lots" is not a size/, 'a flag that does not parse is named');
  const badSegment = await run(process.execPath, [cliPath, 'serve', '--data', path.join(dataDirectory, 'other'), '--http-listen', 'none', '--segment-size', '1M'], { timeoutMs: 30_000 });
  t.equal(badSegment.code, 1, 'serve refuses a segment size out of bounds');
  t.match(badSegment.stderr, /--segment-size: the segment size must be between 64 MiB and 4 GiB/, badSegment.stderr.trim());
  t.notOk(fs.existsSync(path.join(dataDirectory, 'other')), 'and makes nothing');

  fs.rmSync(path.join(dataDirectory, 'volumes/vol0/retention.json'));
  appliance = await startAppliance(t, { dataDirectory });
  const defaults = await retentionOf(appliance);
  t.same({ ...defaults, maxHistoryBytes: 0 }, { ...defaultRetentionPolicy(0), maxHistoryBytes: 0 }, 'a volume without retention.json gets the defaults at its next open');
  t.ok(defaults.maxHistoryBytes > 64 * MiB, 'with a cap from the free space');
  t.ok(fs.existsSync(path.join(dataDirectory, 'volumes/vol0/retention.json')), 'written to retention.json');
  t.equal(await appliance.stop(), 0);
});
