// Changes to a retention policy as an administrator gives them (`cdp-nbd retention set`, the serve
// flags): what is given replaces what the policy had, the rest stays. Pure; the result is checked
// by validateRetentionPolicy where it is stored.

import { nominalPeriodSeconds, type RetentionPolicy, type RetentionTier, type TierEvery } from './policy.js';

export interface RetentionPolicyChanges {
  keepAllSeconds?: number;
  /** Drop every tier before `tiers` is applied. */
  clearTiers?: boolean;
  /** Per period: keep its points this long (adding the tier if the policy has none of that period), or null to drop the tier. */
  tiers?: Array<{ every: TierEvery; keepSeconds: number | null }>;
  maxHistoryBytes?: number;
  reserve?: RetentionPolicy['reserve'];
  requiredWindowSeconds?: number;
}

/** True when the changes change nothing whatever the policy (no field given). */
export function retentionChangesAreEmpty(changes: RetentionPolicyChanges): boolean {
  return Object.values(changes).every((value) => value === undefined || value === false || (Array.isArray(value) && value.length === 0));
}

/** The policy with the changes made; tiers end up ordered from the finest period to the coarsest. */
export function changeRetentionPolicy(policy: RetentionPolicy, changes: RetentionPolicyChanges): RetentionPolicy {
  let tiers: RetentionTier[] = changes.clearTiers === true ? [] : policy.tiers.map((tier) => ({ ...tier }));
  for (const change of changes.tiers ?? []) {
    tiers = tiers.filter((tier) => tier.every !== change.every);
    if (change.keepSeconds !== null) tiers.push({ every: change.every, keepSeconds: change.keepSeconds });
  }
  tiers.sort((left, right) => nominalPeriodSeconds(left.every) - nominalPeriodSeconds(right.every));
  return {
    keepAllSeconds: changes.keepAllSeconds ?? policy.keepAllSeconds,
    tiers,
    maxHistoryBytes: changes.maxHistoryBytes ?? policy.maxHistoryBytes,
    reserve: { ...(changes.reserve ?? policy.reserve) },
    requiredWindowSeconds: changes.requiredWindowSeconds ?? policy.requiredWindowSeconds,
  };
}
