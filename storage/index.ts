// The storage layer's public surface. Other layers (server, api, tools) import storage only
// from here; everything else in this folder is private to it.

export type { AllocationStatus, BlockDevice, BlockDeviceCapabilities, ContextExtent, WriteOptions, ZeroOptions } from './block-device.js';
export { StorageError, type StorageErrorCode } from './errors.js';
export { storageLimits, lifecycleLimits, assertStorageLimits, KiB, MiB, GiB, TiB } from './limits.js';
export { formatMicros } from './clock.js';
export { Volume, type CreateVolumeOptions, type LogCompression, type OpenVolumeOptions, type VolumeStatistics } from './volume.js';
export { PayloadEncoder, isAllZero, decodePayload, frameEncodingsOf, FrameEncoding, payloadFrameBytes } from './write-log/payload-codec.js';
export { VolumeHistory, validateSnapshotName, type InstantSpecification } from './point-in-time/history.js';
export { PointInTimeView } from './point-in-time/view.js';
export { Clone } from './point-in-time/clone.js';
export { dirtyBitmapContext, dirtyBitmapPrefix } from './point-in-time/dirty-bitmap.js';
export type { SnapshotRecord } from './index/delta-map-index.js';
export { VolumeStore } from './volume-store.js';
export { verifyVolume, type VolumeVerifyReport, type BadRecord } from './verify.js';
export { validateSegmentSize, validateVolumeName, validateVolumeSize, volumePaths, type VolumeConfig } from './volume-config.js';
export {
  retentionFormatVersion,
  retentionLimits,
  calendarTierPeriods,
  defaultRetentionPolicy,
  validateRetentionPolicy,
  nominalPeriodSeconds,
  retainedSecondsMax,
  retainedTimes,
  reserveBytes,
  describeEvery,
  type RetentionPolicy,
  type RetentionTier,
  type TierEvery,
  type RetainedTimes,
  type TierPoint,
} from './retention/policy.js';
export type { LifecycleEvent, LifecycleStatistics, RetentionStatus } from './retention/lifecycle.js';
export { changeRetentionPolicy, retentionChangesAreEmpty, type RetentionPolicyChanges } from './retention/policy-changes.js';
export type { RetentionPolicyListener } from './retention/policy-file.js';
export type { RecoveryReport } from './recovery.js';
export type { QuarantineReport, QuarantineKind } from './quarantine.js';
export { RecordKind, RecordFlag, kindName, type RecordHeader } from './write-log/record.js';
export { scanLog, logStart, type ScannedRecord, type LogScanResult } from './write-log/log-reader.js';
export type { LogPosition } from './write-log/batch.js';
export { writeFileAtomic, type FileSystem, type FileHandle } from './io/file-system.js';
export { nodeFileSystem } from './io/node-file-system.js';
// What history takes on disk and what a pack holds, read from outside the process (tools/bench/retention.ts).
export { measureHistoryBytes, type HistoryBytes } from './retention/space.js';
export { decodePackHeader, packHeaderBytes, parsePackFileName, type PackHeader } from './retention/pack-file.js';
