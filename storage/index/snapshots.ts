// Snapshots as the index keeps them: named mark records (`S` keys of docs/formats/delta-map.md),
// written with the cut that takes their mark; until then they live in the tail.

import { snapshotKey, snapshotRange, type SnapshotRecord } from './map-keys.js';
import type { MapStore } from './map-store.js';
import type { Tail } from './tail.js';

export async function snapshotNamed(store: MapStore, tail: Tail, name: string): Promise<SnapshotRecord | null> {
  const pending = tail.snapshots.get(name);
  if (pending !== undefined) return pending;
  const value = await store.db.get(snapshotKey(name));
  return value === undefined ? null : (JSON.parse(value.toString('utf8')) as SnapshotRecord);
}

/** Every snapshot, oldest first. */
export async function allSnapshots(store: MapStore, tail: Tail): Promise<SnapshotRecord[]> {
  const byName = new Map<string, SnapshotRecord>();
  for await (const [, value] of store.db.iterator(snapshotRange)) {
    const snapshot = JSON.parse(value.toString('utf8')) as SnapshotRecord;
    byName.set(snapshot.name, snapshot);
  }
  for (const [name, pending] of tail.snapshots) {
    if (pending === null) byName.delete(name);
    else byName.set(name, pending);
  }
  return [...byName.values()].sort((left, right) => left.sequence - right.sequence);
}
