// volume.json: what a volume is (size, region and segment sizes, identity) and the folder layout
// around it. Written at creation, and again only to raise its format version; the format version
// guards every later reader.

import { randomBytes } from 'node:crypto';
import { StorageError } from './errors.js';
import { readWholeFile, writeFileAtomic, type FileSystem } from './io/file-system.js';
import { GiB, MiB, storageLimits } from './limits.js';

/**
 * 2: the log may hold version 2 records (compressed payloads, docs/formats/write-log.md) and the
 * index extents may carry the compressed bit (docs/formats/delta-map.md). A version 1 volume is
 * raised to 2 when it is opened, before anything is appended, so that older code refuses it
 * rather than misread it.
 */
export const volumeFormatVersion = 2;
const oldestReadableVolumeVersion = 1;

export interface VolumeConfig {
  formatVersion: number;
  name: string;
  /** 32 hex digits; also stamped into every log segment header. */
  volumeId: string;
  sizeBytes: number;
  regionSizeBytes: number;
  segmentSizeBytes: number;
  createdMicros: number;
}

/** The files of one volume inside its folder (DESIGN.md "One volume on disk"). */
export function volumePaths(directory: string) {
  return {
    directory,
    config: `${directory}/volume.json`,
    primary: `${directory}/primary.img`,
    drl: `${directory}/drl`,
    log: `${directory}/log`,
    index: `${directory}/index`,
    retention: `${directory}/retention.json`,
    /** Packed intervals of history (docs/formats/pack.md). */
    packs: `${directory}/packs`,
    /** The volume as it was at the horizon, the oldest kept instant (docs/decisions/0007-history-lifecycle.md). */
    base: `${directory}/base.img`,
  };
}

export type VolumePaths = ReturnType<typeof volumePaths>;

const volumeNamePattern = /^[a-z0-9][a-z0-9._-]*$/;

/** Names become folder names and NBD export names: keep them plain and safe. */
export function validateVolumeName(name: string): string | null {
  if (name.length === 0 || name.length > storageLimits.volumeNameLengthMax) {
    return `a volume name has 1 to ${storageLimits.volumeNameLengthMax} characters`;
  }
  if (!volumeNamePattern.test(name)) return 'a volume name uses a-z, 0-9, ".", "_" and "-", and starts with a letter or digit';
  return null;
}

export function validateVolumeSize(sizeBytes: number): string | null {
  if (!Number.isSafeInteger(sizeBytes)) return 'the size must be a whole number of bytes';
  if (sizeBytes < storageLimits.volumeSizeBytesMin || sizeBytes > storageLimits.volumeSizeBytesMax) {
    return `the size must be between ${storageLimits.volumeSizeBytesMin} and ${storageLimits.volumeSizeBytesMax} bytes`;
  }
  if (sizeBytes % storageLimits.volumeSizeAlignmentBytes !== 0) {
    return `the size must be a multiple of ${storageLimits.volumeSizeAlignmentBytes} bytes`;
  }
  return null;
}

/** Why a write-log segment size is refused, in words; null when it is sound. */
export function validateSegmentSize(segmentSizeBytes: number): string | null {
  const { segmentSizeBytesMin, segmentSizeBytesMax, volumeSizeAlignmentBytes } = storageLimits;
  if (!Number.isSafeInteger(segmentSizeBytes) || segmentSizeBytes < segmentSizeBytesMin || segmentSizeBytes > segmentSizeBytesMax) {
    return `the segment size must be between ${segmentSizeBytesMin / MiB} MiB and ${segmentSizeBytesMax / GiB} GiB`;
  }
  if (segmentSizeBytes % volumeSizeAlignmentBytes !== 0) return `the segment size must be a multiple of ${volumeSizeAlignmentBytes} bytes`;
  return null;
}

export function newVolumeId(): string {
  return randomBytes(16).toString('hex');
}

export async function writeVolumeConfig(fileSystem: FileSystem, path: string, config: VolumeConfig): Promise<void> {
  await writeFileAtomic(fileSystem, path, Buffer.from(`${JSON.stringify(config, null, 2)}\n`));
}

export function readVolumeConfig(fileSystem: FileSystem, path: string): VolumeConfig {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readWholeFile(fileSystem, path).toString('utf8'));
  } catch (error) {
    throw new StorageError('ECORRUPT', `${path}: not readable JSON`, { cause: error });
  }
  const config = parsed as Partial<VolumeConfig>;
  const version = config.formatVersion;
  if (typeof version !== 'number' || version < oldestReadableVolumeVersion || version > volumeFormatVersion) {
    throw new StorageError('ECORRUPT', `${path}: unsupported volume format version ${String(config.formatVersion)}`);
  }
  const numbers = ['sizeBytes', 'regionSizeBytes', 'segmentSizeBytes', 'createdMicros'] as const;
  for (const key of numbers) {
    if (!Number.isSafeInteger(config[key])) throw new StorageError('ECORRUPT', `${path}: ${key} is missing or not a number`);
  }
  if (typeof config.name !== 'string' || typeof config.volumeId !== 'string' || !/^[0-9a-f]{32}$/.test(config.volumeId)) {
    throw new StorageError('ECORRUPT', `${path}: name or volumeId is missing`);
  }
  return config as VolumeConfig;
}

/** Raise an older volume.json to the current format version (durably), before the volume changes. */
export async function upgradeVolumeConfig(fileSystem: FileSystem, path: string, config: VolumeConfig): Promise<VolumeConfig> {
  if (config.formatVersion === volumeFormatVersion) return config;
  const upgraded = { ...config, formatVersion: volumeFormatVersion };
  await writeVolumeConfig(fileSystem, path, upgraded);
  return upgraded;
}
