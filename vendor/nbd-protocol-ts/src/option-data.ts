// Payloads of the options a client sends: EXPORT_NAME, STARTTLS, INFO/GO and
// LIST/SET_META_CONTEXT (proto.md "Option types"). Parsers are for the
// server and validate lengths exactly, because the spec requires
// NBD_REP_ERR_INVALID for a syntactically invalid option rather than a
// guess; they return the ProtocolError so the server can put its message
// in that reply. Builders are for the client.
import { ProtocolError } from './errors.js';
import { decodeName, encodeName } from './protocol-string.js';
import { assertUint16 } from './wire-integers.js';

export interface ExportNameData {
  exportName: string;
}

export interface InfoOrGoData {
  exportName: string;
  /** Requested NBD_INFO_* types, as sent (duplicates and unknowns kept). */
  infoTypes: number[];
}

export interface MetaContextData {
  exportName: string;
  /** Queries such as 'base:allocation' or 'qemu:'; syntax is left to the server. */
  queries: string[];
}

/** EXPORT_NAME data is the name itself; its length is the option length. */
export function parseExportNameData(data: Buffer): ExportNameData | ProtocolError {
  const exportName = decodeName(data, 0, data.length);
  if (exportName instanceof ProtocolError) return exportName;
  return { exportName };
}

/** STARTTLS carries nothing; the spec's answer to data with it is ERR_INVALID. */
export type StartTlsData = Record<string, never>;

/** STARTTLS data must be empty (proto.md "NBD_OPT_STARTTLS"). */
export function parseStartTlsData(data: Buffer): StartTlsData | ProtocolError {
  if (data.length !== 0) return new ProtocolError('BAD_LENGTH', `STARTTLS takes no data, got ${data.length} bytes`);
  return {};
}

/** INFO and GO data: u32 name length, name, u16 count, count × u16 info type. */
export function parseInfoOrGoData(data: Buffer): InfoOrGoData | ProtocolError {
  if (data.length < 6) return truncated(`INFO/GO data of ${data.length} bytes is shorter than 6`);
  const nameLengthBytes = data.readUInt32BE(0);
  if (nameLengthBytes > data.length - 6) {
    return truncated(`export name length ${nameLengthBytes} runs past ${data.length}-byte INFO/GO data`);
  }
  const nameEndBytes = 4 + nameLengthBytes;
  const exportName = decodeName(data, 4, nameEndBytes);
  if (exportName instanceof ProtocolError) return exportName;
  const infoTypeCount = data.readUInt16BE(nameEndBytes);
  const listStartBytes = nameEndBytes + 2;
  const listLengthBytes = data.length - listStartBytes;
  if (listLengthBytes < infoTypeCount * 2) {
    return truncated(`${infoTypeCount} info requests need ${infoTypeCount * 2} bytes, ${listLengthBytes} remain`);
  }
  if (listLengthBytes > infoTypeCount * 2) {
    return new ProtocolError('TRAILING_BYTES', `${listLengthBytes - infoTypeCount * 2} bytes after ${infoTypeCount} info requests`);
  }
  const infoTypes: number[] = [];
  for (let index = 0; index < infoTypeCount; index++) {
    infoTypes.push(data.readUInt16BE(listStartBytes + index * 2));
  }
  return { exportName, infoTypes };
}

/** LIST/SET_META_CONTEXT data: u32 name length, name, u32 count, count × (u32 length, query). */
export function parseMetaContextData(data: Buffer): MetaContextData | ProtocolError {
  if (data.length < 8) return truncated(`meta context data of ${data.length} bytes is shorter than 8`);
  const nameLengthBytes = data.readUInt32BE(0);
  if (nameLengthBytes > data.length - 8) {
    return truncated(`export name length ${nameLengthBytes} runs past ${data.length}-byte meta context data`);
  }
  const exportName = decodeName(data, 4, 4 + nameLengthBytes);
  if (exportName instanceof ProtocolError) return exportName;
  const queryCount = data.readUInt32BE(4 + nameLengthBytes);
  const queries: string[] = [];
  let positionBytes = 8 + nameLengthBytes;
  // The count comes from the peer: the loop is bounded by the data (each
  // query needs at least 4 bytes), never by preallocating `queryCount`.
  for (let index = 0; index < queryCount; index++) {
    if (data.length - positionBytes < 4) return truncated(`query ${index} of ${queryCount} is missing`);
    const queryLengthBytes = data.readUInt32BE(positionBytes);
    positionBytes += 4;
    if (queryLengthBytes > data.length - positionBytes) {
      return truncated(`query ${index} length ${queryLengthBytes} runs past the data`);
    }
    const query = decodeName(data, positionBytes, positionBytes + queryLengthBytes);
    if (query instanceof ProtocolError) return query;
    queries.push(query);
    positionBytes += queryLengthBytes;
  }
  if (positionBytes !== data.length) {
    return new ProtocolError('TRAILING_BYTES', `${data.length - positionBytes} bytes after ${queryCount} queries`);
  }
  return { exportName, queries };
}

export function buildExportNameData(exportName: string): Buffer {
  return encodeName(exportName, 'exportName');
}

export function buildInfoOrGoData(exportName: string, infoTypes: readonly number[]): Buffer {
  const name = encodeName(exportName, 'exportName');
  if (infoTypes.length > 0xffff) throw new TypeError('at most 65535 info requests fit in INFO/GO');
  const data = Buffer.allocUnsafe(4 + name.length + 2 + infoTypes.length * 2);
  data.writeUInt32BE(name.length, 0);
  name.copy(data, 4);
  let positionBytes = 4 + name.length;
  data.writeUInt16BE(infoTypes.length, positionBytes);
  positionBytes += 2;
  for (const infoType of infoTypes) {
    assertUint16(infoType, 'info type');
    data.writeUInt16BE(infoType, positionBytes);
    positionBytes += 2;
  }
  return data;
}

export function buildMetaContextData(exportName: string, queries: readonly string[]): Buffer {
  const name = encodeName(exportName, 'exportName');
  const encodedQueries = queries.map((query) => encodeName(query, 'query'));
  const queriesLengthBytes = encodedQueries.reduce((sum, query) => sum + 4 + query.length, 0);
  const data = Buffer.allocUnsafe(8 + name.length + queriesLengthBytes);
  data.writeUInt32BE(name.length, 0);
  name.copy(data, 4);
  let positionBytes = 4 + name.length;
  data.writeUInt32BE(encodedQueries.length, positionBytes);
  positionBytes += 4;
  for (const query of encodedQueries) {
    data.writeUInt32BE(query.length, positionBytes);
    query.copy(data, positionBytes + 4);
    positionBytes += 4 + query.length;
  }
  return data;
}

function truncated(message: string): ProtocolError {
  return new ProtocolError('TRUNCATED', message);
}
