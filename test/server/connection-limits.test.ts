// The memory budget and the connection caps on their own, with stand-in connections. Invariants:
// - a holder within its floor is always admitted; beyond it, what holders hold past their floors
//   never exceeds the budget; a refused holder waits and is told when its request fits;
// - waiters are let go smallest holding first, and only while what they asked for fits;
// - a holder removed is forgotten: late counts of it change nothing;
// - per address, no more connections than the cap; when the negotiating slots are full, a
//   newcomer from a lighter address takes the oldest slot of the heaviest, and one from the
//   heaviest is refused;
// - refusals are logged at most once per interval per reason, with the count since the last line;
// - keepalive probes start at half the dead-peer timeout and fit in it, in whole seconds;
// - serve refuses limits that break a relationship, naming it, before anything opens.
// The same code runs under the real server in negotiation-flood, stuck-readers and vanished-peer.

import t from 'tap';
import fs from 'node:fs';
import { ConnectionCaps, RefusalLog } from '../../server/connection-caps.js';
import { keepAliveSettingsOf } from '../../server/keepalive.js';
import { connectionLimitsOf, connectionMemoryBoundBytes, defaultConnectionLimits } from '../../server/limits.js';
import { cliPath } from '../support/appliance.js';
import { temporaryDirectory } from '../support/temporary-directory.js';
import { run } from '../support/tools.js';
import { MemoryBudget, type BudgetHolder } from '../../server/memory-budget.js';

const MiB = 1024 * 1024;

/** A stand-in connection: asks for bytes, takes them when admitted, asks again when told to. */
class Holder implements BudgetHolder {
  bytes = 0;
  private askedBytes = 0;
  constructor(
    readonly name: string,
    private readonly budget: MemoryBudget,
    private readonly freedOrder: string[] = [],
  ) {}
  heldBytes(): number {
    return this.bytes;
  }
  set(bytes: number): void {
    this.bytes = bytes;
    this.budget.count(this);
  }
  ask(bytes: number): boolean {
    if (!this.budget.admit(this, bytes)) {
      this.askedBytes = bytes;
      return false;
    }
    this.set(this.bytes + bytes);
    return true;
  }
  budgetFreed(): void {
    this.freedOrder.push(this.name);
    this.ask(this.askedBytes);
  }
}

t.test('the floor is always given; beyond it, the shared budget bounds what all hold', async (t) => {
  const budget = new MemoryBudget(10 * MiB, 2 * MiB);
  const holders = Array.from({ length: 6 }, (_, index) => new Holder(`h${index}`, budget));
  for (const holder of holders) t.ok(holder.ask(2 * MiB), `${holder.name}: its floor`);
  t.equal(budget.sharedBytes, 0, 'floors are not shared');
  let admittedBytes = 0;
  for (let step = 0; step < 20; step++) if (holders[step % holders.length]!.ask(MiB)) admittedBytes += MiB;
  t.equal(admittedBytes, 10 * MiB, 'exactly the budget was given beyond the floors');
  t.equal(budget.sharedBytes, 10 * MiB);
  t.equal(budget.heldBytes, 6 * 2 * MiB + 10 * MiB);
  t.equal(budget.waitingCount, holders.length, 'every holder that asked for more waits');
});

t.test('waiters go smallest first, and only while what they asked for fits', async (t) => {
  const budget = new MemoryBudget(8 * MiB, MiB);
  const freedOrder: string[] = [];
  const [big, small, middle] = ['big', 'small', 'middle'].map((name) => new Holder(name, budget, freedOrder)) as [Holder, Holder, Holder];
  big.set(7 * MiB); // 6 MiB shared
  small.set(MiB); // its floor
  middle.set(3 * MiB); // 2 MiB shared
  t.equal(budget.sharedBytes, 8 * MiB);
  t.notOk(big.ask(2 * MiB), 'big waits');
  t.notOk(middle.ask(2 * MiB), 'middle waits');
  t.notOk(small.ask(MiB), 'small waits (it would pass its floor)');
  big.set(5 * MiB); // two of big's replies drained: 2 MiB of the budget free
  t.same(freedOrder, ['small'], 'the smallest holder goes first and takes 1 MiB; what the others asked for no longer fits');
  t.equal(budget.sharedBytes, 7 * MiB);
  budget.recount();
  t.same(freedOrder, ['small'], 'nothing freed since: the others still wait');
  big.set(0);
  t.same(freedOrder, ['small', 'big', 'middle'], 'once big holds nothing, both fit, the one holding least first');
  t.ok(budget.sharedBytes <= budget.budgetBytes);
  t.equal(budget.waitingCount, 0);
});

t.test('a removed holder is forgotten', async (t) => {
  const budget = new MemoryBudget(4 * MiB, 0);
  const gone = new Holder('gone', budget);
  const waiter = new Holder('waiter', budget);
  gone.set(4 * MiB);
  t.notOk(waiter.ask(MiB));
  budget.remove(gone);
  t.equal(waiter.bytes, MiB, 'what it held is free: the waiter goes on');
  gone.set(4 * MiB); // a request of a closed connection finishing late
  t.equal(budget.heldBytes, MiB, 'late counts of a removed holder change nothing');
  t.notOk(budget.admit(gone, MiB), 'and it is never admitted again');
});

interface StandIn {
  readonly address: string | null;
  readonly name: string;
}

t.test('per-address cap, negotiating cap, and who gives up a negotiating slot', async (t) => {
  const caps = new ConnectionCaps<StandIn>({ connectionsPerAddressMax: 3, negotiatingConnectionCountMax: 4 });
  const open = (address: string | null, name: string): StandIn => {
    const connection = { address, name };
    caps.opened(connection);
    return connection;
  };
  const a1 = open('10.0.0.1', 'a1');
  const a2 = open('10.0.0.1', 'a2');
  open('10.0.0.1', 'a3');
  t.same(caps.judge('10.0.0.1'), { kind: 'refuse', reason: 'perAddress' }, 'a fourth from one address is refused');
  caps.attached(a1);
  t.same(caps.judge('10.0.0.1'), { kind: 'refuse', reason: 'perAddress' }, 'attached connections count per address too');
  caps.closed(a1);
  t.same(caps.judge('10.0.0.1'), { kind: 'accept' }, 'a closed one frees its place');
  open('10.0.0.2', 'b1');
  open('10.0.0.2', 'b2');
  t.equal(caps.negotiatingCount, 4, 'full: 10.0.0.1 and 10.0.0.2 negotiate two each');
  t.same(caps.judge('10.0.0.2'), { kind: 'refuse', reason: 'negotiating' }, 'a newcomer from an address as heavy as any is refused');
  t.same(caps.judge('10.0.0.3'), { kind: 'acceptEvicting', evicted: a2 }, 'one from a lighter address takes the oldest slot of the heaviest');
  caps.closed(a2);
  const c1 = open('10.0.0.3', 'c1');
  t.same(caps.judge('10.0.0.3'), { kind: 'refuse', reason: 'negotiating' }, 'taking a slot would not make things fairer (2 against 2): refused');
  t.same(caps.judge(null), { kind: 'acceptEvicting', evicted: { address: '10.0.0.2', name: 'b1' } }, 'unix-socket clients count as one address of their own, lighter than 10.0.0.2');
  caps.attached(c1);
  t.same(caps.judge('10.0.0.3'), { kind: 'accept' }, 'an attached connection no longer holds a negotiating slot');
  open('10.0.0.4', 'd1');
  const verdict = caps.judge('10.0.0.5');
  t.same(verdict, { kind: 'acceptEvicting', evicted: { address: '10.0.0.2', name: 'b1' } });
  if (verdict.kind === 'acceptEvicting') caps.evicted(verdict.evicted);
  open('10.0.0.5', 'e1');
  t.equal(caps.negotiatingCount, 4, 'an evicted connection gives up its slot at once, not when it has closed');
  t.not((caps.judge('10.0.0.6') as { evicted?: StandIn }).evicted?.name, 'b1', 'so a second newcomer in the same turn does not evict it again');
});

t.test('refusals are logged once per interval per reason, with the count since the last line', async (t) => {
  const lines: Array<{ fields: Record<string, unknown>; message: string }> = [];
  const record = (fields: object, message: string): void => void lines.push({ fields: fields as Record<string, unknown>, message });
  const log = new RefusalLog({ debug: record, info: record, warn: record, error: record }, 10_000);
  for (let index = 0; index < 100; index++) log.refused('perAddress', '10.0.0.1:1', 1000 + index);
  log.refused('negotiating', '10.0.0.2:1', 1500);
  log.refused('perAddress', '10.0.0.1:2', 12_000);
  t.equal(lines.length, 3, 'one line for the first refusal of each reason, one once the interval passed');
  t.same(lines.map((line) => [line.fields['reason'], line.fields['refusedSinceLastLine']]), [
    ['perAddress', 1],
    ['negotiating', 1],
    ['perAddress', 100],
  ]);
});

t.test('keepalive from the dead-peer timeout', async (t) => {
  t.same(keepAliveSettingsOf(120_000), { idleSeconds: 60, intervalSeconds: 15, probeCount: 4, userTimeoutMs: 120_000 }, 'the default: probes from 60 s, 15 s apart, given up at 2 min');
  t.same(keepAliveSettingsOf(4000), { idleSeconds: 2, intervalSeconds: 1, probeCount: 4, userTimeoutMs: 4000 }, 'a short one still counts whole seconds, at least 1');
  for (const timeoutMs of [2000, 5000, 61_000, 3_600_000]) {
    const settings = keepAliveSettingsOf(timeoutMs);
    t.ok(settings.idleSeconds + settings.probeCount * settings.intervalSeconds <= Math.max(2, timeoutMs / 1000) + settings.probeCount, `${timeoutMs} ms: the probes end near the timeout`);
  }
});

t.test('limits are checked against each other; serve refuses bad ones before opening anything', async (t) => {
  t.same(connectionLimitsOf(), defaultConnectionLimits);
  t.equal(connectionMemoryBoundBytes(defaultConnectionLimits), 512 * MiB + 512 * (2 * MiB + 128 * 1024), 'the stated bound with the defaults: 1.6 GiB');
  t.throws(() => connectionLimitsOf({ memoryBudgetBytes: 16 * MiB }), /memory budget holds a maximal request/);
  t.throws(() => connectionLimitsOf({ connectionsPerAddressMax: 0 }), /connections per address/);
  t.throws(() => connectionLimitsOf({ negotiatingConnectionCountMax: 513 }), /connections negotiating/);
  t.throws(() => connectionLimitsOf({ stallTimeoutMs: 1000 }), /stall timeout/);
  t.throws(() => connectionLimitsOf({ deadPeerTimeoutMs: 1000 }), /dead-peer timeout/);
  const directory = temporaryDirectory(t);
  for (const [option, value, problem] of [
    ['--memory-budget', '1M', /memory budget holds a maximal request/],
    ['--max-negotiating', 'many', /--max-negotiating takes a whole number/],
    ['--stall-timeout', '1s', /stall timeout/],
  ] as const) {
    const result = await run(process.execPath, [cliPath, 'serve', '--data', `${directory}/data`, '--nbd-listen', '127.0.0.1:0', '--http-listen', 'none', option, value], { timeoutMs: 30_000 });
    t.not(result.code, 0, `serve ${option} ${value} is refused`);
    t.match(result.stderr, problem);
  }
  t.notOk(fs.existsSync(`${directory}/data`), 'before anything was made');
});
