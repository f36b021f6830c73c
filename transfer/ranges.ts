// Byte ranges for transfers: cutting plans into requests, and a bounded record of the ranges a
// transfer wrote or found different (kept for the final verification and for reports).

/** A half-open byte range [startBytes, endBytes). */
export interface ByteRange {
  startBytes: number;
  endBytes: number;
}

/**
 * Ranges of a sorted, non-overlapping list joined where the gap between them is at most
 * `gapBytesMax`, then cut into pieces of at most `pieceBytesMax`. Joining re-sends a little
 * unchanged data to turn many small writes into few sequential ones (seed 000's coalescing).
 */
export function coalesce(ranges: Iterable<ByteRange>, gapBytesMax: number, pieceBytesMax: number): ByteRange[] {
  const joined: ByteRange[] = [];
  for (const range of ranges) {
    const last = joined[joined.length - 1];
    if (last !== undefined && range.startBytes - last.endBytes <= gapBytesMax && range.endBytes - last.startBytes <= pieceBytesMax) {
      last.endBytes = Math.max(last.endBytes, range.endBytes);
    } else {
      joined.push({ startBytes: range.startBytes, endBytes: range.endBytes });
    }
  }
  return joined.flatMap((range) => split(range, pieceBytesMax));
}

/** A range cut into consecutive pieces of at most pieceBytes, aligned to multiples of pieceBytes. */
export function split(range: ByteRange, pieceBytes: number): ByteRange[] {
  const pieces: ByteRange[] = [];
  let start = range.startBytes;
  while (start < range.endBytes) {
    const end = Math.min(range.endBytes, (Math.floor(start / pieceBytes) + 1) * pieceBytes);
    pieces.push({ startBytes: start, endBytes: end });
    start = end;
  }
  return pieces;
}

/**
 * Sorted, non-overlapping ranges with at most `rangeCountMax` entries. Ranges are added in
 * increasing order; past the bound the two closest neighbours are joined, so the set may grow to
 * cover bytes never added (a superset: verifying it re-reads a little more, never less).
 */
export class BoundedRangeSet {
  private readonly ranges: ByteRange[] = [];
  private exactBytes = 0;
  /** True once joining made the set cover bytes that were never added. */
  widened = false;

  constructor(private readonly rangeCountMax: number) {}

  add(startBytes: number, endBytes: number): void {
    if (startBytes >= endBytes) return;
    this.exactBytes += endBytes - startBytes;
    const last = this.ranges[this.ranges.length - 1];
    if (last !== undefined && startBytes <= last.endBytes) {
      last.endBytes = Math.max(last.endBytes, endBytes);
      return;
    }
    this.ranges.push({ startBytes, endBytes });
    if (this.ranges.length > this.rangeCountMax) this.joinClosest();
  }

  /** Bytes added (before any joining). */
  get addedBytes(): number {
    return this.exactBytes;
  }

  list(): readonly ByteRange[] {
    return this.ranges;
  }

  /**
   * Join across the smallest gaps until half the bound is left: one O(n log n) pass every
   * rangeCountMax / 2 additions, instead of a scan on every addition past the bound.
   */
  private joinClosest(): void {
    const targetCount = Math.max(1, Math.floor(this.rangeCountMax / 2));
    const gaps = this.ranges.slice(1).map((range, index) => range.startBytes - this.ranges[index]!.endBytes);
    const threshold = [...gaps].sort((a, b) => a - b)[this.ranges.length - targetCount - 1]!;
    let joinsLeft = this.ranges.length - targetCount;
    const joined: ByteRange[] = [this.ranges[0]!];
    for (let index = 1; index < this.ranges.length; index++) {
      const range = this.ranges[index]!;
      if (joinsLeft > 0 && gaps[index - 1]! <= threshold) {
        joined[joined.length - 1]!.endBytes = range.endBytes;
        joinsLeft--;
      } else {
        joined.push(range);
      }
    }
    this.ranges.length = 0;
    this.ranges.push(...joined);
    this.widened = true;
  }

  static from(ranges: readonly ByteRange[], rangeCountMax: number): BoundedRangeSet {
    const set = new BoundedRangeSet(rangeCountMax);
    for (const range of ranges) set.add(range.startBytes, range.endBytes);
    return set;
  }
}
