// `cdp-nbd log inspect`: print the records of a volume's write log (sequence, time, kind, offset,
// length, flags), checking every checksum on the way, and decoding every compressed payload it
// prints (docs/formats/write-log.md). Reads files only; safe while serving.

import { RecordFlag, RecordKind, decodePayload, formatMicros, kindName, logStart, nodeFileSystem, scanLog, volumePaths, type ScannedRecord } from '../storage/index.js';

export interface LogInspectOptions {
  volumeDirectory: string;
  fromSequence: number;
  limit: number;
  json: boolean;
  write: (line: string) => void;
}

export function inspectLog(options: LogInspectOptions): { printed: number; tear: string | null } {
  const logDirectory = volumePaths(options.volumeDirectory).log;
  const start = logStart(nodeFileSystem, logDirectory);
  if (start === null) throw new Error(`${logDirectory} holds no log segments`);
  let printed = 0;
  if (!options.json) options.write(['sequence', 'time', 'kind', 'offset', 'length', 'flags', 'detail'].join('\t'));
  const result = scanLog(nodeFileSystem, logDirectory, { from: start, withPayload: true }, (record) => {
    if (record.header.sequence < options.fromSequence || printed >= options.limit) return;
    options.write(options.json ? JSON.stringify(recordAsJson(record)) : recordAsText(record));
    printed++;
  });
  const tear = result.tear === null ? null : `${result.tear.reason} at segment ${result.tear.position.segmentNumber} offset ${result.tear.position.offsetBytes}`;
  if (!options.json) {
    options.write(`# ${result.recordCount} records, next sequence ${result.nextSequence}${tear === null ? '' : `; log ends at a torn record: ${tear}`}`);
  }
  return { printed, tear };
}

function flagNames(flags: number): string {
  const names: string[] = [];
  if ((flags & RecordFlag.fua) !== 0) names.push('fua');
  if ((flags & RecordFlag.snappy) !== 0) names.push('snappy');
  return names.length === 0 ? '-' : names.join(',');
}

function detail(record: ScannedRecord): string {
  const { header, payload } = record;
  if ((header.kind === RecordKind.mark || header.kind === RecordKind.error) && payload !== null) return payload.toString('utf8');
  if (header.kind === RecordKind.data && (header.flags & RecordFlag.snappy) !== 0 && payload !== null) return compressedDetail(header.lengthBytes, header.flags, payload);
  return '';
}

/** How much a compressed payload saves, once it has decoded to its full length. */
function compressedDetail(lengthBytes: number, flags: number, payload: Buffer): string {
  try {
    decodePayload(payload, flags, lengthBytes);
  } catch (error) {
    return `stored ${payload.length} bytes that do not decode: ${error instanceof Error ? error.message : String(error)}`;
  }
  return `stored ${payload.length} bytes (${((100 * payload.length) / lengthBytes).toFixed(1)}%)`;
}

function recordAsText(record: ScannedRecord): string {
  const { header } = record;
  return [header.sequence, formatMicros(header.timestampMicros), kindName(header.kind), header.offsetBytes, header.lengthBytes, flagNames(header.flags), detail(record)].join('\t');
}

function recordAsJson(record: ScannedRecord) {
  const { header, position } = record;
  return {
    sequence: header.sequence,
    time: formatMicros(header.timestampMicros),
    timestampMicros: header.timestampMicros,
    kind: kindName(header.kind),
    offsetBytes: header.offsetBytes,
    lengthBytes: header.lengthBytes,
    payloadBytes: header.payloadBytes,
    flags: flagNames(header.flags),
    segment: position.segmentNumber,
    segmentOffsetBytes: position.offsetBytes,
    detail: detail(record) || undefined,
  };
}
