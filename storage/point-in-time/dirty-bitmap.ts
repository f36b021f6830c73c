// Changed-block tracking in the shape qemu and libnbd already read: the metadata context
// `qemu:dirty-bitmap:<snapshot>` marks (bit 0, "dirty") the bytes written after the snapshot, up
// to the device's own instant (now for the live volume). It comes from the delta maps, so it
// survives restarts and needs no bitmap kept in memory.

import { StorageError } from '../errors.js';
import type { ContextExtent } from '../block-device.js';
import type { DeltaMapIndex } from '../index/delta-map-index.js';

export const dirtyBitmapPrefix = 'qemu:dirty-bitmap:';
const dirtyFlag = 1;

export interface SnapshotInstant {
  name: string;
  sequence: number;
}

export function dirtyBitmapContext(snapshotName: string): string {
  return `${dirtyBitmapPrefix}${snapshotName}`;
}

/** Extents of [offsetBytes, +lengthBytes): dirty where written in (snapshot, uptoSequence]. */
export async function dirtyBitmapStatus(
  index: DeltaMapIndex,
  snapshots: readonly SnapshotInstant[],
  context: string,
  uptoSequence: number,
  offsetBytes: number,
  lengthBytes: number,
  extentCountMax: number,
): Promise<ContextExtent[]> {
  const name = context.startsWith(dirtyBitmapPrefix) ? context.slice(dirtyBitmapPrefix.length) : null;
  const snapshot = snapshots.find((candidate) => candidate.name === name);
  if (snapshot === undefined) throw new StorageError('EINVAL', `no metadata context ${context} on this device`);
  const endBytes = offsetBytes + lengthBytes;
  const changed = await index.changedBetween(snapshot.sequence, uptoSequence, offsetBytes, endBytes);
  const extents: ContextExtent[] = [];
  let position = offsetBytes;
  for (const [start, end] of changed) {
    if (extents.length >= extentCountMax) break;
    if (start > position) extents.push({ lengthBytes: start - position, flags: 0 });
    if (extents.length >= extentCountMax) break;
    extents.push({ lengthBytes: end - Math.max(start, position), flags: dirtyFlag });
    position = end;
  }
  if (position < endBytes && extents.length < extentCountMax) extents.push({ lengthBytes: endBytes - position, flags: 0 });
  return extents;
}
