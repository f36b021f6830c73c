// Retention policies for tests: second-long tiers, so seconds of a (virtual) clock fade history
// through every stage: keep-all, a fine tier, a coarse tier, the horizon.

import { MiB, type RetentionPolicy } from '../../storage/index.js';

export const secondTiersPolicy: RetentionPolicy = {
  keepAllSeconds: 2,
  tiers: [
    { every: 1, keepSeconds: 5 },
    { every: 3, keepSeconds: 12 },
  ],
  maxHistoryBytes: 64 * 1024 * MiB,
  reserve: { bytes: 0 },
  requiredWindowSeconds: 0,
};
