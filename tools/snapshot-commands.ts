// `cdp-nbd snapshot create|list|delete|pin|unpin|expire`: named marks in a volume's log, on the
// running appliance over the API. A snapshot is kept until deleted or until its own expiry time;
// a pinned one survives space pressure (docs/formats/retention.md).

import { parseArgs } from 'node:util';
import { parseInstant } from '../appliance/instant.js';
import { actionUsage, apiClientOf, apiOptions, apiOptionsUsage } from './api-client.js';
import { durationExamples, parseDuration } from './durations.js';

export const snapshotUsage = `  cdp-nbd snapshot create VOLUME NAME [--note TEXT] [--pin] [--expires 7d|RFC3339]
  cdp-nbd snapshot list VOLUME
  cdp-nbd snapshot delete VOLUME NAME
  cdp-nbd snapshot pin|unpin VOLUME NAME
  cdp-nbd snapshot expire VOLUME NAME (--in 7d | --at RFC3339 | --never)`;

const help = `cdp-nbd snapshot: named points in a volume's history (talks to a running appliance)

Usage:
${snapshotUsage}

A snapshot is kept until it is deleted, or until its expiry time (--expires at creation, or
"snapshot expire" later). When history must shrink for space, the oldest history goes first,
snapshots too, unless pinned. Deleting a snapshot drops its name; the history stays as long as
the retention policy keeps it.
DURATION is ${durationExamples}.

Each takes ${apiOptionsUsage}, and --json. Listing needs a read token; the others an operator token.`;

const actionOptions = {
  create: { note: { type: 'string', default: '' }, pin: { type: 'boolean', default: false }, expires: { type: 'string' } },
  list: {},
  delete: {},
  pin: {},
  unpin: {},
  expire: { in: { type: 'string' }, at: { type: 'string' }, never: { type: 'boolean', default: false } },
} as const;

type Action = keyof typeof actionOptions;

export interface SnapshotJson {
  name: string;
  sequence: number;
  time: string;
  note: string;
  pinned: boolean;
  expiresTime: string | null;
}

export async function runSnapshot(argv: string[]): Promise<number> {
  const [action, ...rest] = argv;
  if (!isAction(action)) return actionUsage('snapshot', action, 'which action?', help);
  const { values, positionals } = parseSnapshotArguments(action, rest);
  if (values.help) {
    process.stdout.write(`${help}\n`);
    return 0;
  }
  const [volume, name, ...extra] = positionals;
  const wanted = action === 'list' ? 1 : 2;
  if (positionals.length !== wanted) {
    process.stderr.write(`cdp-nbd snapshot ${action}: give ${action === 'list' ? 'VOLUME' : 'VOLUME and NAME'}${extra.length > 0 ? ` (not also ${extra.join(' ')})` : ''}\n\n${help}\n`);
    return 2;
  }
  const client = apiClientOf(values);
  const given = values as Record<string, unknown>;
  const base = `/api/v1/volumes/${encodeURIComponent(volume!)}/snapshots`;
  const print = (value: unknown, text: string): void => void process.stdout.write(values.json ? `${JSON.stringify(value, null, 2)}\n` : `${text}\n`);
  switch (action) {
    case 'create': {
      const body = { name, note: given['note'], ...(given['pin'] === true ? { pinned: true } : {}), ...expiryOf('--expires', given['expires'] as string | undefined) };
      const snapshot = await client.request<SnapshotJson>('POST', base, body);
      print(snapshot, `snapshot ${snapshot.name} of ${volume} at ${snapshot.time} (sequence ${snapshot.sequence})${keptWords(snapshot)}`);
      return 0;
    }
    case 'list': {
      const { snapshots } = await client.request<{ snapshots: SnapshotJson[] }>('GET', base);
      const rows = snapshots.map((snapshot) => [snapshot.name, snapshot.time, snapshot.sequence, snapshot.pinned ? 'yes' : 'no', snapshot.expiresTime ?? 'never', snapshot.note].join('\t'));
      print(snapshots, ['name\ttime\tsequence\tpinned\texpires\tnote', ...rows].join('\n'));
      return 0;
    }
    case 'delete':
      await client.request('DELETE', `${base}/${encodeURIComponent(name!)}`);
      print({ deleted: name }, `deleted snapshot ${name} of ${volume}`);
      return 0;
    default: {
      const snapshot = await client.request<SnapshotJson>('PATCH', `${base}/${encodeURIComponent(name!)}`, updateOf(action, given));
      print(snapshot, `snapshot ${snapshot.name} of ${volume}${keptWords(snapshot) || ': kept until deleted, not pinned'}`);
      return 0;
    }
  }
}

function isAction(action: string | undefined): action is Action {
  return action !== undefined && Object.hasOwn(actionOptions, action);
}

/** The change pin, unpin or expire asks for. */
function updateOf(action: 'pin' | 'unpin' | 'expire', values: Record<string, unknown>): Record<string, unknown> {
  if (action !== 'expire') return { pinned: action === 'pin' };
  const given = (['in', 'at', 'never'] as const).filter((option) => values[option] !== undefined && values[option] !== false);
  if (given.length !== 1) throw new Error('snapshot expire: give one of --in DURATION, --at RFC3339 or --never');
  if (values['never'] === true) return { expiresAt: null };
  if (values['in'] !== undefined) return expiryOf('--in', values['in'] as string, 'duration');
  return expiryOf('--at', values['at'] as string, 'time');
}

/** expiresInSeconds from a duration, or expiresAt from an instant; {} when not given. */
function expiryOf(option: string, text: string | undefined, only?: 'duration' | 'time'): Record<string, unknown> {
  if (text === undefined) return {};
  if (only !== 'time' && /^\s*\d+\s*[smhdwMy]?\s*$/.test(text)) {
    const seconds = parseDuration(text);
    if (seconds === 0) throw new Error(`${option} 0: a snapshot expires at least a second from now`);
    return { expiresInSeconds: seconds };
  }
  if (only === 'duration') throw new Error(`${option}: "${text}" is not a duration (examples: ${durationExamples})`);
  try {
    parseInstant(text);
  } catch {
    throw new Error(`${option}: "${text}" is neither a duration (7d) nor an RFC 3339 time (2026-12-31T00:00:00Z)`);
  }
  return { expiresAt: text };
}

function keptWords(snapshot: SnapshotJson): string {
  const words = [...(snapshot.pinned ? ['pinned'] : []), ...(snapshot.expiresTime === null ? [] : [`expires at ${snapshot.expiresTime}`])];
  return words.length === 0 ? '' : `, ${words.join(', ')}`;
}

/** The options of one action; another action's option is refused by name. */
function parseSnapshotArguments(action: Action, args: string[]) {
  try {
    return parseArgs({ args, allowPositionals: true, options: { ...apiOptions, ...actionOptions[action] } });
  } catch (error) {
    const unknown = /Unknown option '([^']+)'/.exec(error instanceof Error ? error.message : '');
    if (unknown === null) throw error;
    const owner = (Object.keys(actionOptions) as Action[]).find((candidate) => unknown[1]!.replace(/^-+/, '') in actionOptions[candidate]);
    throw new Error(`snapshot ${action}: unknown option ${unknown[1]}${owner === undefined ? '' : `; it is an option of snapshot ${owner}`} (cdp-nbd snapshot --help lists them)`);
  }
}
