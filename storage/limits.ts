// Every bound of the storage layer in one place, with the relationships between them asserted once
// at start-up (assertStorageLimits). A limit that is not here does not exist.

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const TiB = 1024 * GiB;

export const storageLimits = {
  /** Largest volume we create: offsets stay far below Number.MAX_SAFE_INTEGER (2^53). */
  volumeSizeBytesMax: 64 * TiB,
  /** Smallest volume: one region. */
  volumeSizeBytesMin: 1 * MiB,
  /** Volume sizes are multiples of this (the logical sector). */
  volumeSizeAlignmentBytes: 4 * KiB,
  /** Largest data payload of one write (the NBD default maximum payload, 32 MiB). */
  writePayloadBytesMax: 32 * MiB,
  /** Largest effect length of one zero or trim (compact NBD requests carry a u32 length). */
  zeroLengthBytesMax: 4 * GiB,
  /** Largest single read. */
  readLengthBytesMax: 32 * MiB,

  /** Dirty region size: a power of two in this range. */
  regionSizeBytesMin: 64 * KiB,
  regionSizeBytesMax: 1 * GiB,
  regionSizeBytesDefault: 64 * MiB,
  /** Most regions per volume: larger volumes get larger regions, so the DRL stays small. */
  regionCountMax: 1 << 20,

  /** Write-log segment size (fixed per volume at creation). */
  segmentSizeBytesMin: 64 * MiB,
  segmentSizeBytesMax: 4 * GiB,
  segmentSizeBytesDefault: 256 * MiB,

  /** A batch is written out once it holds this many bytes ... */
  batchTargetBytes: 1 * MiB,
  /** ... or this long after its first record, or at once when a FLUSH/FUA waits for it. */
  batchDelayMs: 2,
  /** A batch is sealed at this size even while another is being written. */
  batchMaxBytes: 4 * MiB,
  /** Payloads up to this size are copied into the batch slab; larger ones are referenced. */
  slabCopyPayloadBytesMax: 64 * KiB,
  /** Size of one batch slab (headers and small payloads). */
  slabBytes: 2 * MiB,
  /**
   * Bytes of logged records not yet applied to the live image (the write-log buffer plus the
   * batch being written). Writes wait for room beyond it, so memory does not grow with load.
   * One maximal write always fits, on top of this.
   */
  unappliedBytesMax: 48 * MiB,

  /** Granularity of the read overlay's index over unapplied records. */
  overlayChunkBytes: 64 * KiB,
  /** Records longer than this are kept in the overlay's short list of large records. */
  overlayIndexedRecordBytesMax: 4 * MiB,

  /** Log segments are filled with zeroes ahead of the appends at most this fast, in the background. */
  segmentZeroFillBytesPerSecond: 128 * MiB,
  /** How often regions whose writes are durable everywhere are cleaned in the DRL. */
  regionCleanIntervalMs: 5000,

  /**
   * Decoded frames of compressed records (64 KiB each) a volume's views keep, so reads in small
   * pieces through one frame decompress it once.
   */
  decodedFrameCacheBytes: 4 * MiB,
  /**
   * The write path compresses records of at least this size; smaller ones go to the log as
   * written (4 KiB writes cost 22% more CPU each compressed on the event loop) and are compressed
   * when their interval is packed.
   */
  logCompressRecordBytesMin: 32 * KiB,

  /** Longest error or mark payload (JSON) kept in a log record. */
  metaPayloadBytesMax: 64 * KiB,
  /** Longest volume name. */
  volumeNameLengthMax: 64,
  /** Most volumes in one data folder. */
  volumeCountMax: 256,
} as const;

export type StorageLimits = typeof storageLimits;

/** Bounds of the delta-map index and of reading history (docs/formats/delta-map.md). */
export const indexLimits = {
  /** A level-0 window is cut at this many data-changing records ... */
  windowRecordsMax: 4096,
  /** ... or once its first record is this old ... */
  windowAgeMicrosMax: 10_000_000,
  /** ... and always right after a snapshot mark. Merged maps have this many children. */
  fanout: 4,
  /** Chunks written per LevelDB batch while merging. */
  mergeBatchChunks: 256,
  /** The chunks of the index: 1 MiB, or larger so there are at most 2^20. */
  chunkBytesMin: 1 * MiB,
  chunkCountMax: 1 << 20,
  /** How often the history checks whether a window is due to be cut. */
  cutCheckIntervalMs: 1000,
  /**
   * Most records the tail holds in memory (about 300 bytes each: some 20 MiB). Past it a write
   * waits for the cut in progress, and is refused with ENOSPC while cuts fail
   * (docs/decisions/0012-index-cut-failures.md).
   */
  tailRecordCountMax: 16 * 4096,
  /** A failed cut is tried again after this long, doubled after every failure in a row ... */
  cutRetryDelayMsMin: 500,
  /** ... up to this long. */
  cutRetryDelayMsMax: 30_000,
  /** Extents a point-in-time view keeps resolved (about 100 bytes each). */
  viewCachedExtentCountMax: 1 << 20,
  /** Log files a history reader keeps open at once. */
  openLogFileCountMax: 64,
  /** Longest note of a snapshot. */
  snapshotNoteBytesMax: 1024,
} as const;

/** Bounds of the history lifecycle: packs, the base image, expiry (docs/decisions/0007-history-lifecycle.md). */
export const lifecycleLimits = {
  /** Packs are written and read in pieces of this size. */
  packWriteBytes: 1 * MiB,
  /** Most intervals (packed spans between kept points) a volume keeps: tier points, snapshots and holds. */
  intervalCountMax: 8192,
  /** Most named snapshots a volume keeps. */
  snapshotCountMax: 4096,
  /** Expiry and packing read and write history at most this fast, unless space runs short. */
  ioBytesPerSecond: 64 * MiB,
  /** How often the lifecycle looks at the policy, the clock and the free space. */
  checkIntervalMs: 5000,
  /**
   * Passes the log's next segment waits for at most while it would break the history's cap or the
   * free-space reserve (each frees what it can, or gives up the oldest kept history).
   */
  segmentRoomPassesMax: 8,
  /** Intervals merged in one pass at most (a run longer than this merges in several). */
  mergeRunIntervalsMax: 64,
  /** A run of intervals whose inner points all expired merges once it is this long, even before its coarser point closes it. */
  mergeRunIntervalsDue: 32,
  /** Keys per LevelDB batch while an interval's extents are put or deleted. */
  indexBatchKeys: 256,
  /** Expired fine windows are folded or packed once they span this long, or are this many, unless space is short ... */
  foldSpanMicrosMin: 60_000_000,
  foldWindowCountMin: 64,
  /** ... and at most this many in one operation (bounds one operation's time). */
  foldWindowCountMax: 4096,
} as const;

function isPowerOfTwo(value: number): boolean {
  return Number.isInteger(value) && value > 0 && (value & (value - 1)) === 0;
}

/** Assert the relationships the code relies on; called once when the storage layer starts. */
export function assertStorageLimits(limits: StorageLimits = storageLimits): void {
  const checks: Array<[boolean, string]> = [
    [limits.volumeSizeBytesMax < Number.MAX_SAFE_INTEGER / 2, 'volume offsets must be exact numbers'],
    [isPowerOfTwo(limits.regionSizeBytesMin) && isPowerOfTwo(limits.regionSizeBytesMax), 'region bounds are powers of two'],
    [isPowerOfTwo(limits.regionSizeBytesDefault), 'default region size is a power of two'],
    [limits.volumeSizeBytesMin >= limits.regionSizeBytesMin, 'a volume holds at least one region'],
    [limits.segmentSizeBytesMin > limits.slabBytes, 'a segment holds more than one slab'],
    [limits.slabCopyPayloadBytesMax * 4 <= limits.slabBytes, 'copied payloads are small against the slab'],
    [limits.batchTargetBytes <= limits.batchMaxBytes, 'the write-now size is below the sealing size'],
    [limits.batchMaxBytes * 4 <= limits.unappliedBytesMax, 'several batches fit the unapplied budget'],
    // 4096 is the segment header, 48 a record header (write-log.md): the largest record fits a segment.
    [limits.writePayloadBytesMax + 4096 + 48 <= limits.segmentSizeBytesMin, 'records fit a segment'],
    [isPowerOfTwo(limits.overlayChunkBytes), 'overlay chunk is a power of two'],
    [limits.overlayIndexedRecordBytesMax >= limits.slabCopyPayloadBytesMax, 'small records are indexed'],
    // 64 KiB is the frame of a compressed payload (write-log.md): the cache holds a record's worth of reads.
    [limits.decodedFrameCacheBytes >= 16 * 64 * KiB, 'the decoded-frame cache holds several frames'],
  ];
  for (const [holds, what] of checks) {
    if (!holds) throw new Error(`storage limits are inconsistent: ${what}`);
  }
  assertIndexLimits();
}

/** The index's limits: a full tail holds several windows, so cuts in progress do not stall writes. */
function assertIndexLimits(limits: typeof indexLimits = indexLimits): void {
  const checks: Array<[boolean, string]> = [
    [limits.tailRecordCountMax >= 4 * limits.windowRecordsMax, 'the tail holds several windows before writes wait'],
    [limits.cutRetryDelayMsMin > 0 && limits.cutRetryDelayMsMin <= limits.cutRetryDelayMsMax, 'the cut retry delays are ordered'],
  ];
  for (const [holds, what] of checks) {
    if (!holds) throw new Error(`index limits are inconsistent: ${what}`);
  }
}
