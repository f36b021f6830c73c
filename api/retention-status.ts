// The history lifecycle's figures (storage/retention/lifecycle.ts, RetentionStatus) as the API
// gives them: instants in Unix µs and RFC 3339, and each tier as the span of time its points cover.
// Their schemas are retentionRegionsProperties and retentionStatusProperties (schemas.ts).

import { formatMicros, type RetentionPolicy, type RetentionStatus } from '../storage/index.js';

/** How far back history reaches and where the continuous region and each tier start. */
export function retentionRegionsJson(status: RetentionStatus, policy: RetentionPolicy) {
  const tiers = policy.tiers.map((tier, index) => {
    const startMicros = status.tierStartsMicros[index] ?? status.oldestRecoverableMicros;
    const endMicros = index === 0 ? status.continuousFromMicros : (status.tierStartsMicros[index - 1] ?? status.continuousFromMicros);
    return { every: tier.every, keepSeconds: tier.keepSeconds, startMicros, startTime: formatMicros(startMicros), endMicros, endTime: formatMicros(endMicros) };
  });
  return {
    oldestRecoverableMicros: status.oldestRecoverableMicros,
    oldestRecoverableTime: formatMicros(status.oldestRecoverableMicros),
    protectionWindowSeconds: status.protectionWindowSeconds,
    continuousFromMicros: status.continuousFromMicros,
    continuousFromTime: formatMicros(status.continuousFromMicros),
    tiers,
  };
}

/** Everything GET /volumes/:volume reports under retention, next to the policy (the CLI reads it). */
export type RetentionStatusJson = ReturnType<typeof retentionStatusJson>;

export function retentionStatusJson(status: RetentionStatus, policy: RetentionPolicy) {
  return {
    ...retentionRegionsJson(status, policy),
    keptPointCount: status.keptPointCount,
    intervalCount: status.intervalCount,
    historyBytes: status.historyBytes,
    maxHistoryBytes: status.maxHistoryBytes,
    fileSystem: status.fileSystem,
    projectedHistoryBytes: status.projectedHistoryBytes,
    logBytesPerSecond: status.logBytesPerSecond,
    underPressure: status.underPressure,
    degradedReasons: status.degradedReasons,
    statistics: status.statistics,
  };
}
