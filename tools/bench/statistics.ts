// Summaries of repeated measurements: medians (robust to the 1.5-2x round-to-round noise of this
// machine kind) with the minimum and maximum beside them.

export interface Summary {
  median: number;
  min: number;
  max: number;
  count: number;
}

export function summarize(values: number[]): Summary | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  return { median: medianOfSorted(sorted), min: sorted[0]!, max: sorted[sorted.length - 1]!, count: sorted.length };
}

/** The median of values in any order (0 for none). */
export function median(values: number[]): number {
  return summarize(values)?.median ?? 0;
}

/** Median of values sorted ascending; the mean of the middle two for an even count. */
function medianOfSorted(sorted: number[]): number {
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}
