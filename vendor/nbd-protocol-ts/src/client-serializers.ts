// What a client sends: client flags, options and compact request headers
// (proto.md "Newstyle negotiation", "Option types", "Request message").
// Used by our tools and tests. A WRITE payload is never copied into the
// header: the caller writes the 28-byte header and then its own buffer.
import { Magic, OptionType, WireSize } from './constants.js';
import { buildExportNameData, buildInfoOrGoData, buildMetaContextData } from './option-data.js';
import { assertCookie, assertUint16, assertUint32, assertUint64, writeUint64FromNumber } from './wire-integers.js';

/** The u32 client flags (ClientFlag bits) sent after the greeting. */
export function serializeClientFlags(flags: number): Buffer {
  assertUint32(flags, 'flags');
  const message = Buffer.allocUnsafe(WireSize.CLIENT_FLAGS);
  message.writeUInt32BE(flags, 0);
  return message;
}

/** Any option: IHAVEOPT, u32 option, u32 data length, data. */
export function serializeOption(option: number, data?: Buffer): Buffer {
  assertUint32(option, 'option');
  const dataLengthBytes = data === undefined ? 0 : data.length;
  const message = Buffer.allocUnsafe(WireSize.OPTION_HEADER + dataLengthBytes);
  message.writeBigUInt64BE(Magic.IHAVEOPT, 0);
  message.writeUInt32BE(option, 8);
  message.writeUInt32BE(dataLengthBytes, 12);
  if (data !== undefined) data.copy(message, WireSize.OPTION_HEADER);
  return message;
}

export function serializeExportNameOption(exportName: string): Buffer {
  return serializeOption(OptionType.EXPORT_NAME, buildExportNameData(exportName));
}

export function serializeAbortOption(): Buffer {
  return serializeOption(OptionType.ABORT);
}

export function serializeListOption(): Buffer {
  return serializeOption(OptionType.LIST);
}

/** STARTTLS carries no data; the TLS upgrade itself is the caller's job. */
export function serializeStartTlsOption(): Buffer {
  return serializeOption(OptionType.STARTTLS);
}

export function serializeInfoOption(exportName: string, infoTypes: readonly number[] = []): Buffer {
  return serializeOption(OptionType.INFO, buildInfoOrGoData(exportName, infoTypes));
}

export function serializeGoOption(exportName: string, infoTypes: readonly number[] = []): Buffer {
  return serializeOption(OptionType.GO, buildInfoOrGoData(exportName, infoTypes));
}

export function serializeStructuredReplyOption(): Buffer {
  return serializeOption(OptionType.STRUCTURED_REPLY);
}

export function serializeListMetaContextOption(exportName: string, queries: readonly string[] = []): Buffer {
  return serializeOption(OptionType.LIST_META_CONTEXT, buildMetaContextData(exportName, queries));
}

export function serializeSetMetaContextOption(exportName: string, queries: readonly string[]): Buffer {
  return serializeOption(OptionType.SET_META_CONTEXT, buildMetaContextData(exportName, queries));
}

/**
 * The 28-byte compact request header: magic, u16 flags, u16 type, u64
 * cookie, u64 offset, u32 length. For WRITE, the caller sends
 * `lengthBytes` bytes of payload right after it.
 */
export function serializeRequestHeader(
  type: number,
  flags: number,
  cookie: bigint,
  offsetBytes: number,
  lengthBytes: number,
): Buffer {
  assertUint16(type, 'type');
  assertUint16(flags, 'flags');
  assertCookie(cookie);
  assertUint64(offsetBytes, 'offsetBytes');
  assertUint32(lengthBytes, 'lengthBytes');
  const header = Buffer.allocUnsafe(WireSize.REQUEST_HEADER);
  header.writeUInt32BE(Magic.REQUEST, 0);
  header.writeUInt16BE(flags, 4);
  header.writeUInt16BE(type, 6);
  header.writeBigUInt64BE(cookie, 8);
  writeUint64FromNumber(header, offsetBytes, 16);
  header.writeUInt32BE(lengthBytes, 24);
  return header;
}
