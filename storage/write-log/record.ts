// The write-log record: a 48-byte header and an optional payload, protected by one CRC32C.
// Grammar, constants and a worked example: docs/formats/write-log.md.

import { crc32c } from 'cdp-native';

export const recordMagic = 0x43445052; // 'CDPR'
/** Version 2 adds compressed payloads (flag snappy); version 1 records are read as before. */
export const recordFormatVersion = 2;
const oldestReadableRecordVersion = 1;
export const recordHeaderBytes = 48;

/** What a record means. The numbers are on disk: never renumber. */
export const RecordKind = {
  /** Data written at offsetBytes; the payload holds it. */
  data: 1,
  /** The range reads as zeroes from here on (WRITE_ZEROES); no payload. */
  zeroes: 2,
  /** The range was discarded (TRIM); it reads as zeroes from here on; no payload. */
  trim: 3,
  /** A named point in time or another event; JSON payload; no effect on data. */
  mark: 4,
  /** An I/O error on the live image or the log; JSON payload; no effect on data. */
  error: 5,
} as const;
export type RecordKind = (typeof RecordKind)[keyof typeof RecordKind];

/** Per-record flag bits. On disk: never reuse a bit. */
export const RecordFlag = {
  /** The client asked for this write to be durable before its reply (FUA). */
  fua: 0x01,
  /**
   * Version 2 data records: the payload is framed and Snappy-compressed (payload-codec.ts);
   * lengthBytes is the size of the data.
   */
  snappy: 0x02,
} as const;
const knownRecordFlags = RecordFlag.fua | RecordFlag.snappy;

export interface RecordHeader {
  kind: RecordKind;
  flags: number;
  sequence: number;
  timestampMicros: number;
  offsetBytes: number;
  lengthBytes: number;
  payloadBytes: number;
}

/** Offsets of the header fields, as documented in docs/formats/write-log.md. */
const field = {
  magic: 0,
  version: 4,
  kind: 6,
  flags: 7,
  sequence: 8,
  timestampMicros: 16,
  offsetBytes: 24,
  lengthBytes: 32,
  payloadBytes: 40,
  checksum: 44,
} as const;

export function kindName(kind: number): string {
  for (const [name, value] of Object.entries(RecordKind)) if (value === kind) return name;
  return `unknown(${kind})`;
}

function isKnownKind(kind: number): kind is RecordKind {
  return kind >= RecordKind.data && kind <= RecordKind.error;
}

function writeUint64(target: Buffer, at: number, value: number): void {
  target.writeUInt32BE(Math.floor(value / 0x1_0000_0000), at);
  target.writeUInt32BE(value >>> 0, at + 4);
}

function readUint64(source: Buffer, at: number): number {
  return source.readUInt32BE(at) * 0x1_0000_0000 + source.readUInt32BE(at + 4);
}

/**
 * Encode a header into target at byte `at` and seal it with the CRC32C of the header and the
 * stored payload (its pieces in order). The payload itself is not copied here: the caller places
 * it right after the header.
 */
export function encodeRecordHeader(target: Buffer, at: number, header: RecordHeader, payload: readonly Buffer[]): void {
  target.writeUInt32BE(recordMagic, at + field.magic);
  target.writeUInt16BE(recordFormatVersion, at + field.version);
  target.writeUInt8(header.kind, at + field.kind);
  target.writeUInt8(header.flags, at + field.flags);
  writeUint64(target, at + field.sequence, header.sequence);
  writeUint64(target, at + field.timestampMicros, header.timestampMicros);
  writeUint64(target, at + field.offsetBytes, header.offsetBytes);
  writeUint64(target, at + field.lengthBytes, header.lengthBytes);
  target.writeUInt32BE(header.payloadBytes, at + field.payloadBytes);
  let checksum = crc32c(target.subarray(at, at + field.checksum));
  for (const piece of payload) checksum = crc32c(piece, checksum);
  target.writeUInt32BE(checksum, at + field.checksum);
}

export type HeaderProblem =
  | 'zero' // all-zero bytes where a header would start: the clean end of the log
  | 'magic'
  | 'version'
  | 'kind'
  | 'flags'
  | 'lengths';

/** Decode and sanity-check a header (not its checksum: that needs the payload, see verifyRecord). */
export function decodeRecordHeader(source: Buffer, at: number): RecordHeader | HeaderProblem {
  const magic = source.readUInt32BE(at + field.magic);
  if (magic !== recordMagic) {
    // Only a wholly zero header is the clean end; a partly zero one is a header torn across sectors.
    return isZero(source, at, recordHeaderBytes) ? 'zero' : 'magic';
  }
  const version = source.readUInt16BE(at + field.version);
  if (version < oldestReadableRecordVersion || version > recordFormatVersion) return 'version';
  const kind = source.readUInt8(at + field.kind);
  if (!isKnownKind(kind)) return 'kind';
  const flags = source.readUInt8(at + field.flags);
  // Version 1 reserved the snappy bit; only version 2 data records use it.
  if ((flags & ~(version === 1 ? RecordFlag.fua : knownRecordFlags)) !== 0) return 'flags';
  if ((flags & RecordFlag.snappy) !== 0 && kind !== RecordKind.data) return 'flags';
  const header: RecordHeader = {
    kind,
    flags,
    sequence: readUint64(source, at + field.sequence),
    timestampMicros: readUint64(source, at + field.timestampMicros),
    offsetBytes: readUint64(source, at + field.offsetBytes),
    lengthBytes: readUint64(source, at + field.lengthBytes),
    payloadBytes: source.readUInt32BE(at + field.payloadBytes),
  };
  if (!lengthsAreConsistent(header)) return 'lengths';
  return header;
}

function lengthsAreConsistent(header: RecordHeader): boolean {
  switch (header.kind) {
    case RecordKind.data:
      // A compressed payload is stored only when it is smaller than the data.
      return (header.flags & RecordFlag.snappy) !== 0
        ? header.payloadBytes > 0 && header.payloadBytes < header.lengthBytes
        : header.payloadBytes === header.lengthBytes && header.lengthBytes > 0;
    case RecordKind.zeroes:
    case RecordKind.trim:
      return header.payloadBytes === 0 && header.lengthBytes > 0;
    case RecordKind.mark:
    case RecordKind.error:
      return true;
  }
}

function isZero(source: Buffer, at: number, lengthBytes: number): boolean {
  for (let index = at; index < at + lengthBytes; index++) if (source[index] !== 0) return false;
  return true;
}

/** True when the stored checksum matches the header bytes and the payload. */
export function verifyRecord(headerBytes: Buffer, at: number, payload: Buffer | null): boolean {
  const headerChecksum = crc32c(headerBytes.subarray(at, at + field.checksum));
  const checksum = payload === null || payload.length === 0 ? headerChecksum : crc32c(payload, headerChecksum);
  return checksum === headerBytes.readUInt32BE(at + field.checksum);
}

/** Does this record change data (and so belong to replays and the live image)? */
export function changesData(kind: RecordKind): boolean {
  return kind === RecordKind.data || kind === RecordKind.zeroes || kind === RecordKind.trim;
}
