// The expiry rule: which instants of a volume's history are kept right now. An instant is kept
// when it lies in the continuous region (the last `keepAll` of history, every instant), or when
// it is a kept point: a tier's boundary (hourly, daily, ...) within the tier's reach, a snapshot
// (until deleted, or until its own expiry), or an instant an open view holds. Everything else is
// expired: requests for it are refused, and the records only it needed are reclaimed.
//
// Instants are compared by their last data-changing record (two sequences with only marks
// between them show the same volume), and never go back past the horizon, the oldest instant the
// base image holds.

import type { RetentionPolicy } from './policy.js';
import { retainedTimes } from './policy.js';

/** A kept instant older than the continuous region. */
export interface KeptPoint {
  /** The last data-changing record at or before the instant (the canonical sequence). */
  sequence: number;
  /** The instant's time, as asked for (a tier boundary, a snapshot's time). */
  micros: number;
  /** Coarser points are merged later: the tier's index for tier points, -1 for snapshots and holds. */
  grade: number;
  /** Space pressure never expires a pinned snapshot. */
  pinned: boolean;
  /** Why it is kept, for people: "hourly", "snapshot before-deploy", "held: export vol0@seq12". */
  reasons: string[];
}

export interface KeptSet {
  computedAtMicros: number;
  /** Every instant at or after this record is kept (canonical sequence) ... */
  continuousFromSequence: number;
  /** ... which is the state at this time. */
  continuousFromMicros: number;
  /** Kept points older than the continuous region, oldest first, one per sequence. */
  points: KeptPoint[];
}

export interface SnapshotForRetention {
  name: string;
  sequence: number;
  micros: number;
  pinned: boolean;
  /** 0: kept until deleted. */
  expiresMicros: number;
}

export interface HoldForRetention {
  sequence: number;
  description: string;
}

export interface KeptSetInput {
  policy: RetentionPolicy;
  nowMicros: number;
  /** Tier points before the volume was made are not points of it. */
  createdMicros: number;
  /** The oldest instant still held (the base image's); nothing before it exists. */
  horizonSequence: number;
  /** Space pressure moved the continuous region's start forward to here (0: no pressure). */
  pressureFloorSequence: number;
  snapshots: readonly SnapshotForRetention[];
  holds: readonly HoldForRetention[];
  /** The last data-changing record at or before a time (the index). */
  sequenceAt(micros: number): Promise<number>;
  /** The canonical sequence of a record, or null when the instant is gone (inside a packed interval). */
  canonical(sequence: number): Promise<number | null>;
}

export async function computeKeptSet(input: KeptSetInput): Promise<KeptSet> {
  const times = retainedTimes(input.policy, input.nowMicros);
  const policyContinuous = await input.sequenceAt(times.continuousFromMicros);
  const continuousFromSequence = Math.max(policyContinuous, input.pressureFloorSequence, input.horizonSequence);
  const bySequence = new Map<number, KeptPoint>();
  const add = async (sequence: number, point: Omit<KeptPoint, 'sequence'>): Promise<void> => {
    if (sequence < input.horizonSequence) return;
    // Compare the canonical sequence, as isKept does: a snapshot mark can be the continuous
    // region's first record while the instant it shows (its last data record) lies just before.
    const canonical = await input.canonical(sequence);
    if (canonical === null || canonical < input.horizonSequence || canonical >= continuousFromSequence) return;
    // Space pressure gives up unpinned points below its floor, which relievePressureStep sets just
    // past a kept point's canonical sequence: compared raw, a snapshot mark right after its last
    // write sits at the floor and was never given up.
    if (!point.pinned && canonical < input.pressureFloorSequence) return;
    const existing = bySequence.get(canonical);
    if (existing === undefined) {
      bySequence.set(canonical, { ...point, sequence: canonical });
      return;
    }
    existing.grade = Math.max(existing.grade, point.grade);
    existing.pinned ||= point.pinned;
    existing.reasons.push(...point.reasons);
  };
  const tierName = (tier: number): string => {
    const every = input.policy.tiers[tier]!.every;
    return typeof every === 'number' ? `every ${every} s` : every;
  };
  for (const point of times.points) {
    if (point.micros < input.createdMicros || point.micros >= input.nowMicros) continue;
    await add(await input.sequenceAt(point.micros), { micros: point.micros, grade: point.tier, pinned: false, reasons: [tierName(point.tier)] });
  }
  for (const snapshot of input.snapshots) {
    if (snapshot.expiresMicros !== 0 && snapshot.expiresMicros <= input.nowMicros) continue;
    await add(snapshot.sequence, { micros: snapshot.micros, grade: -1, pinned: snapshot.pinned, reasons: [`snapshot ${snapshot.name}`] });
  }
  for (const hold of input.holds) {
    await add(hold.sequence, { micros: 0, grade: -1, pinned: false, reasons: [`held: ${hold.description}`] });
  }
  const points = [...bySequence.values()].sort((left, right) => left.sequence - right.sequence);
  const continuousFromMicros = Math.max(times.continuousFromMicros, 0);
  return { computedAtMicros: input.nowMicros, continuousFromSequence, continuousFromMicros, points };
}

/** Is the instant (its canonical sequence) kept? */
export function isKept(set: KeptSet, canonicalSequence: number): boolean {
  if (canonicalSequence >= set.continuousFromSequence) return true;
  return set.points.some((point) => point.sequence === canonicalSequence);
}

/** The kept instants on either side of a sequence (for the "expired" answer). */
export function nearestKept(set: KeptSet, sequence: number): { before: KeptPoint | null; after: { sequence: number; micros: number } | null } {
  let before: KeptPoint | null = null;
  let after: { sequence: number; micros: number } | null = null;
  for (const point of set.points) {
    if (point.sequence <= sequence) before = point;
    else if (after === null) after = { sequence: point.sequence, micros: point.micros };
  }
  after ??= { sequence: set.continuousFromSequence, micros: set.continuousFromMicros };
  return { before, after };
}

/** The oldest kept instant: the horizon may move up to here. */
export function oldestKept(set: KeptSet): number {
  return set.points[0]?.sequence ?? set.continuousFromSequence;
}
