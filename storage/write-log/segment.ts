// Write-log segment files: log/<segment number, 16 digits>.wlog. Each starts with a 4 KiB header
// block, then records back to back; the rest of the file is preallocated and reads as zeroes.
// Grammar and constants: docs/formats/write-log.md.

import { crc32c } from 'cdp-native';
import type { FileHandle, FileSystem } from '../io/file-system.js';
import { StorageError } from '../errors.js';

export const segmentMagic = Buffer.from('CDPWLOG\n', 'latin1');
export const segmentFormatVersion = 1;
export const segmentHeaderBytes = 4096;
const segmentHeaderChecksummedBytes = 56;

export interface SegmentHeader {
  segmentNumber: number;
  segmentSizeBytes: number;
  volumeId: Buffer; // 16 bytes
  createdMicros: number;
}

export function segmentFileName(segmentNumber: number): string {
  return `${String(segmentNumber).padStart(16, '0')}.wlog`;
}

/** The segment number of a file name, or undefined if the name is not a segment's. */
export function parseSegmentFileName(name: string): number | undefined {
  const match = /^(\d{16})\.wlog$/.exec(name);
  return match ? Number(match[1]) : undefined;
}

export function encodeSegmentHeader(header: SegmentHeader): Buffer {
  const block = Buffer.alloc(segmentHeaderBytes);
  segmentMagic.copy(block, 0);
  block.writeUInt16BE(segmentFormatVersion, 8);
  block.writeUInt16BE(segmentHeaderBytes / 1024, 10); // header size in KiB
  block.writeBigUInt64BE(BigInt(header.segmentNumber), 16);
  block.writeBigUInt64BE(BigInt(header.segmentSizeBytes), 24);
  header.volumeId.copy(block, 32, 0, 16);
  block.writeBigUInt64BE(BigInt(header.createdMicros), 48);
  block.writeUInt32BE(crc32c(block.subarray(0, segmentHeaderChecksummedBytes)), segmentHeaderChecksummedBytes);
  return block;
}

export function decodeSegmentHeader(block: Buffer): SegmentHeader | string {
  if (block.length < segmentHeaderChecksummedBytes + 4) return 'short header';
  if (!block.subarray(0, 8).equals(segmentMagic)) return 'bad magic';
  const checksum = crc32c(block.subarray(0, segmentHeaderChecksummedBytes));
  if (checksum !== block.readUInt32BE(segmentHeaderChecksummedBytes)) return 'bad header checksum';
  const version = block.readUInt16BE(8);
  if (version !== segmentFormatVersion) return `unsupported segment format version ${version}`;
  return {
    segmentNumber: Number(block.readBigUInt64BE(16)),
    segmentSizeBytes: Number(block.readBigUInt64BE(24)),
    volumeId: Buffer.from(block.subarray(32, 48)),
    createdMicros: Number(block.readBigUInt64BE(48)),
  };
}

export interface OpenSegment {
  readonly segmentNumber: number;
  readonly sizeBytes: number;
  /** Opened for reading, or (mode 'append') with O_DIRECT for the log writer's aligned writes. */
  readonly handle: FileHandle;
}

/** How a segment is opened: to read it, to append to it (O_DIRECT), or to repair its tail. */
export type SegmentMode = 'read' | 'append' | 'repair';

/** Log writes bypass the page cache in whole blocks of this size (docs/formats/write-log.md). */
export const logBlockBytes = 4096;

/**
 * Create, preallocate and make durable a new empty segment. Space is reserved up front so that
 * appending records never meets a full disk: running out of space shows up here, before any
 * write that depends on it is accepted.
 */
export async function createSegment(
  fileSystem: FileSystem,
  logDirectory: string,
  header: SegmentHeader,
): Promise<OpenSegment> {
  const path = `${logDirectory}/${segmentFileName(header.segmentNumber)}`;
  const temporaryPath = `${path}.new`;
  fileSystem.remove(temporaryPath);
  const handle = fileSystem.open(temporaryPath, { create: true, exclusive: true });
  try {
    await handle.allocate(0, header.segmentSizeBytes);
    handle.writeSync(encodeSegmentHeader(header), 0);
    await handle.datasync();
  } catch (error) {
    handle.close();
    fileSystem.remove(temporaryPath);
    throw error;
  }
  handle.close();
  fileSystem.rename(temporaryPath, path);
  await fileSystem.syncDirectory(logDirectory);
  return openSegment(fileSystem, logDirectory, header.segmentNumber, 'append');
}

/** Open an existing segment and check its header (read through the page cache first). */
export function openSegment(fileSystem: FileSystem, logDirectory: string, segmentNumber: number, mode: SegmentMode): OpenSegment {
  const path = `${logDirectory}/${segmentFileName(segmentNumber)}`;
  const reader = fileSystem.open(path, { readOnly: true });
  const block = Buffer.alloc(segmentHeaderBytes);
  let readBytes: number;
  try {
    readBytes = reader.readSync(block, 0);
  } finally {
    if (mode !== 'read') reader.close();
  }
  const header = decodeSegmentHeader(block.subarray(0, readBytes));
  const problem =
    typeof header === 'string' ? header : header.segmentNumber !== segmentNumber ? `header says segment ${header.segmentNumber}` : null;
  if (problem !== null) {
    if (mode === 'read') reader.close();
    throw new StorageError('ECORRUPT', `${path}: ${problem}`);
  }
  const handle = mode === 'read' ? reader : fileSystem.open(path, { direct: mode === 'append' });
  return { segmentNumber, sizeBytes: (header as SegmentHeader).segmentSizeBytes, handle };
}

/** Segment numbers present in the log directory, ascending. */
export function listSegments(fileSystem: FileSystem, logDirectory: string): number[] {
  if (!fileSystem.exists(logDirectory)) return [];
  return fileSystem
    .list(logDirectory)
    .map(parseSegmentFileName)
    .filter((segmentNumber): segmentNumber is number => segmentNumber !== undefined)
    .sort((left, right) => left - right);
}
