// Payloads of option replies: REP_SERVER, REP_INFO (EXPORT, NAME,
// DESCRIPTION, BLOCK_SIZE), REP_META_CONTEXT and error messages
// (proto.md "Option reply types"). Builders are used by the server
// serializers; decoders by clients. Each layout lives here once, so both
// directions cannot drift apart.
import { InfoType } from './constants.js';
import { ProtocolError } from './errors.js';
import { decodeName, decodeText, encodeName, encodeText } from './protocol-string.js';
import { assertUint16, assertUint32, assertUint64, readUint64AsNumber, writeUint64FromNumber } from './wire-integers.js';

export interface ServerReplyData {
  exportName: string;
  /** Human-readable text after the name; '' when absent. */
  description: string;
}

export interface BlockSizeConstraints {
  minimumBytes: number;
  preferredBytes: number;
  /** 0xffffffff means "no inherent limit". */
  maximumBytes: number;
}

export type InfoReplyData =
  | { kind: 'export'; sizeBytes: number; transmissionFlags: number }
  | { kind: 'name'; exportName: string }
  | { kind: 'description'; description: string }
  | ({ kind: 'blockSize' } & BlockSizeConstraints)
  /** An info type this codec does not know; clients MUST ignore it. */
  | { kind: 'unknown'; infoType: number; data: Buffer };

export interface MetaContextReplyData {
  contextId: number;
  contextName: string;
}

export function buildServerReplyData(exportName: string, description = ''): Buffer {
  const name = encodeName(exportName, 'exportName');
  const text = encodeText(description);
  const data = Buffer.allocUnsafe(4 + name.length + text.length);
  data.writeUInt32BE(name.length, 0);
  name.copy(data, 4);
  text.copy(data, 4 + name.length);
  return data;
}

export function decodeServerReplyData(data: Buffer): ServerReplyData | ProtocolError {
  if (data.length < 4) return new ProtocolError('TRUNCATED', `REP_SERVER data of ${data.length} bytes is shorter than 4`);
  const nameLengthBytes = data.readUInt32BE(0);
  if (nameLengthBytes > data.length - 4) {
    return new ProtocolError('TRUNCATED', `export name length ${nameLengthBytes} runs past REP_SERVER data`);
  }
  const exportName = decodeName(data, 4, 4 + nameLengthBytes);
  if (exportName instanceof ProtocolError) return exportName;
  return { exportName, description: decodeText(data, 4 + nameLengthBytes, data.length) };
}

export function buildInfoExportData(sizeBytes: number, transmissionFlags: number): Buffer {
  assertUint64(sizeBytes, 'sizeBytes');
  assertUint16(transmissionFlags, 'transmissionFlags');
  const data = Buffer.allocUnsafe(12);
  data.writeUInt16BE(InfoType.EXPORT, 0);
  writeUint64FromNumber(data, sizeBytes, 2);
  data.writeUInt16BE(transmissionFlags, 10);
  return data;
}

export function buildInfoNameData(exportName: string): Buffer {
  return prefixInfoType(InfoType.NAME, encodeName(exportName, 'exportName'));
}

export function buildInfoDescriptionData(description: string): Buffer {
  return prefixInfoType(InfoType.DESCRIPTION, encodeText(description));
}

export function buildInfoBlockSizeData(constraints: BlockSizeConstraints): Buffer {
  assertUint32(constraints.minimumBytes, 'minimumBytes');
  assertUint32(constraints.preferredBytes, 'preferredBytes');
  assertUint32(constraints.maximumBytes, 'maximumBytes');
  const data = Buffer.allocUnsafe(14);
  data.writeUInt16BE(InfoType.BLOCK_SIZE, 0);
  data.writeUInt32BE(constraints.minimumBytes, 2);
  data.writeUInt32BE(constraints.preferredBytes, 6);
  data.writeUInt32BE(constraints.maximumBytes, 10);
  return data;
}

/** Decodes any REP_INFO payload; unknown info types come back as 'unknown'. */
export function decodeInfoReplyData(data: Buffer): InfoReplyData | ProtocolError {
  if (data.length < 2) return new ProtocolError('TRUNCATED', `REP_INFO data of ${data.length} bytes is shorter than 2`);
  const infoType = data.readUInt16BE(0);
  switch (infoType) {
    case InfoType.EXPORT:
      if (data.length !== 12) return badLength('NBD_INFO_EXPORT', data.length, 12);
      return { kind: 'export', sizeBytes: readUint64AsNumber(data, 2), transmissionFlags: data.readUInt16BE(10) };
    case InfoType.NAME: {
      const exportName = decodeName(data, 2, data.length);
      if (exportName instanceof ProtocolError) return exportName;
      return { kind: 'name', exportName };
    }
    case InfoType.DESCRIPTION:
      return { kind: 'description', description: decodeText(data, 2, data.length) };
    case InfoType.BLOCK_SIZE:
      if (data.length !== 14) return badLength('NBD_INFO_BLOCK_SIZE', data.length, 14);
      return {
        kind: 'blockSize',
        minimumBytes: data.readUInt32BE(2),
        preferredBytes: data.readUInt32BE(6),
        maximumBytes: data.readUInt32BE(10),
      };
    default:
      return { kind: 'unknown', infoType, data: data.subarray(2) };
  }
}

export function buildMetaContextReplyData(contextId: number, contextName: string): Buffer {
  assertUint32(contextId, 'contextId');
  const name = encodeName(contextName, 'contextName');
  const data = Buffer.allocUnsafe(4 + name.length);
  data.writeUInt32BE(contextId, 0);
  name.copy(data, 4);
  return data;
}

export function decodeMetaContextReplyData(data: Buffer): MetaContextReplyData | ProtocolError {
  if (data.length < 4) return new ProtocolError('TRUNCATED', `REP_META_CONTEXT data of ${data.length} bytes is shorter than 4`);
  const contextName = decodeName(data, 4, data.length);
  if (contextName instanceof ProtocolError) return contextName;
  return { contextId: data.readUInt32BE(0), contextName };
}

/** The optional message of an error reply, decoded leniently ('' when absent). */
export function decodeOptionErrorMessage(data: Buffer): string {
  return decodeText(data, 0, data.length);
}

function prefixInfoType(infoType: number, payload: Buffer): Buffer {
  const data = Buffer.allocUnsafe(2 + payload.length);
  data.writeUInt16BE(infoType, 0);
  payload.copy(data, 2);
  return data;
}

function badLength(what: string, actualBytes: number, expectedBytes: number): ProtocolError {
  return new ProtocolError('BAD_LENGTH', `${what} payload is ${actualBytes} bytes, must be ${expectedBytes}`);
}
