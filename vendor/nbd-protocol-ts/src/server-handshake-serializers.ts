// What a server sends during the handshake: the greeting, option replies
// and the EXPORT_NAME reply (proto.md "Newstyle negotiation", "Fixed
// newstyle negotiation", "Option reply types"). Pure functions returning
// fresh Buffers the caller writes to the socket.
import { HandshakeFlag, Magic, OPTION_REPLY_ERROR_BIT, OptionReplyType, OptionType, WireSize } from './constants.js';
import {
  type BlockSizeConstraints,
  buildInfoBlockSizeData,
  buildInfoDescriptionData,
  buildInfoExportData,
  buildInfoNameData,
  buildMetaContextReplyData,
  buildServerReplyData,
} from './option-reply-data.js';
import { encodeText } from './protocol-string.js';
import { assertUint16, assertUint32, assertUint64, writeUint64FromNumber } from './wire-integers.js';

/** NBDMAGIC, IHAVEOPT, u16 handshake flags (default FIXED_NEWSTYLE|NO_ZEROES). */
export function serializeGreeting(
  handshakeFlags: number = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES,
): Buffer {
  assertUint16(handshakeFlags, 'handshakeFlags');
  const message = Buffer.allocUnsafe(WireSize.GREETING);
  message.writeBigUInt64BE(Magic.INIT_PASSWD, 0);
  message.writeBigUInt64BE(Magic.IHAVEOPT, 8);
  message.writeUInt16BE(handshakeFlags, 16);
  return message;
}

/** Any option reply: magic, option, reply type, u32 length, data. */
export function serializeOptionReply(option: number, replyType: number, data?: Buffer): Buffer {
  assertUint32(option, 'option');
  assertUint32(replyType, 'replyType');
  const dataLengthBytes = data === undefined ? 0 : data.length;
  const message = Buffer.allocUnsafe(WireSize.OPTION_REPLY_HEADER + dataLengthBytes);
  message.writeBigUInt64BE(Magic.OPTION_REPLY, 0);
  message.writeUInt32BE(option, 8);
  message.writeUInt32BE(replyType, 12);
  message.writeUInt32BE(dataLengthBytes, 16);
  if (data !== undefined) data.copy(message, WireSize.OPTION_REPLY_HEADER);
  return message;
}

export function serializeAckReply(option: number): Buffer {
  return serializeOptionReply(option, OptionReplyType.ACK);
}

/** One REP_SERVER entry of a LIST reply. */
export function serializeServerReply(exportName: string, description = ''): Buffer {
  return serializeOptionReply(OptionType.LIST, OptionReplyType.SERVER, buildServerReplyData(exportName, description));
}

/** REP_INFO with NBD_INFO_EXPORT; `option` is INFO or GO. */
export function serializeInfoExportReply(option: number, sizeBytes: number, transmissionFlags: number): Buffer {
  return serializeOptionReply(option, OptionReplyType.INFO, buildInfoExportData(sizeBytes, transmissionFlags));
}

export function serializeInfoNameReply(option: number, exportName: string): Buffer {
  return serializeOptionReply(option, OptionReplyType.INFO, buildInfoNameData(exportName));
}

export function serializeInfoDescriptionReply(option: number, description: string): Buffer {
  return serializeOptionReply(option, OptionReplyType.INFO, buildInfoDescriptionData(description));
}

export function serializeInfoBlockSizeReply(option: number, constraints: BlockSizeConstraints): Buffer {
  return serializeOptionReply(option, OptionReplyType.INFO, buildInfoBlockSizeData(constraints));
}

/** REP_META_CONTEXT; `option` is LIST_META_CONTEXT (id SHOULD be 0) or SET_META_CONTEXT. */
export function serializeMetaContextReply(option: number, contextId: number, contextName: string): Buffer {
  return serializeOptionReply(option, OptionReplyType.META_CONTEXT, buildMetaContextReplyData(contextId, contextName));
}

/**
 * An error reply (a reply type with bit 31 set) with an optional message,
 * cleaned of NULs and cut to 4096 bytes on a character boundary.
 */
export function serializeOptionErrorReply(option: number, errorReplyType: number, message = ''): Buffer {
  if (((errorReplyType & OPTION_REPLY_ERROR_BIT) >>> 0) === 0) {
    throw new TypeError(`reply type 0x${errorReplyType.toString(16)} is not an error type`);
  }
  const text = encodeText(message);
  return serializeOptionReply(option, errorReplyType, text.length === 0 ? undefined : text);
}

/**
 * The reply that ends a successful EXPORT_NAME: u64 size, u16 transmission
 * flags, then 124 zero bytes unless the client set C_NO_ZEROES.
 */
export function serializeExportNameReply(sizeBytes: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  assertUint64(sizeBytes, 'sizeBytes');
  assertUint16(transmissionFlags, 'transmissionFlags');
  const message = noZeroes
    ? Buffer.allocUnsafe(WireSize.EXPORT_NAME_REPLY)
    : Buffer.alloc(WireSize.EXPORT_NAME_REPLY + WireSize.EXPORT_NAME_REPLY_ZEROES);
  writeUint64FromNumber(message, sizeBytes, 0);
  message.writeUInt16BE(transmissionFlags, 8);
  return message;
}
