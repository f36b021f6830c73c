// Human-readable names of protocol numbers, for logs and error messages.
// Names are the spec's (with the NBD_ prefix) so a log line can be searched
// for in doc/proto.md; unknown values print in hex instead of throwing,
// because logs are written about exactly the input we did not expect.
import {
  ChunkType,
  CommandFlag,
  CommandType,
  Errno,
  InfoType,
  OptionReplyType,
  OptionType,
  TransmissionFlag,
} from './constants.js';

type NumberTable = Readonly<Record<string, number>>;

function buildReverseTable(table: NumberTable, prefix: string): Map<number, string> {
  const names = new Map<number, string>();
  for (const [name, value] of Object.entries(table)) names.set(value, prefix + name);
  return names;
}

function hexadecimal(value: number): string {
  return '0x' + value.toString(16);
}

function nameOrUnknown(names: Map<number, string>, value: number): string {
  return names.get(value) ?? `unknown(${hexadecimal(value)})`;
}

const optionTypeNames = buildReverseTable(OptionType, 'NBD_OPT_');
const optionReplyTypeNames = buildReverseTable(OptionReplyType, 'NBD_REP_');
const infoTypeNames = buildReverseTable(InfoType, 'NBD_INFO_');
const commandTypeNames = buildReverseTable(CommandType, 'NBD_CMD_');
const chunkTypeNames = buildReverseTable(ChunkType, 'NBD_REPLY_TYPE_');
const errnoNames = buildReverseTable(Errno, 'NBD_');

/** 'NBD_OPT_GO' for 7; 'unknown(0x2a)' for values the spec does not define. */
export function optionTypeName(option: number): string {
  return nameOrUnknown(optionTypeNames, option);
}

/** 'NBD_REP_ERR_UNSUP' for 0x80000001, and so on. */
export function optionReplyTypeName(replyType: number): string {
  return nameOrUnknown(optionReplyTypeNames, replyType);
}

/** 'NBD_INFO_BLOCK_SIZE' for 3, and so on. */
export function infoTypeName(infoType: number): string {
  return nameOrUnknown(infoTypeNames, infoType);
}

/** 'NBD_CMD_WRITE' for 1, and so on. */
export function commandTypeName(type: number): string {
  return nameOrUnknown(commandTypeNames, type);
}

/** 'NBD_REPLY_TYPE_OFFSET_DATA' for 1, and so on. */
export function chunkTypeName(type: number): string {
  return nameOrUnknown(chunkTypeNames, type);
}

/** 'NBD_EINVAL' for 22; 'NBD_OK' for 0. */
export function errnoName(error: number): string {
  return error === 0 ? 'NBD_OK' : nameOrUnknown(errnoNames, error);
}

function describeFlags(table: NumberTable, flags: number): string {
  const names: string[] = [];
  let knownBits = 0;
  for (const [name, bit] of Object.entries(table)) {
    knownBits |= bit;
    if ((flags & bit) !== 0) names.push(name);
  }
  const unknownBits = (flags & ~knownBits) >>> 0;
  if (unknownBits !== 0) names.push(hexadecimal(unknownBits));
  return names.length === 0 ? '0' : names.join('|');
}

/** 'FUA|NO_HOLE' for 3; unknown bits are appended in hex. */
export function commandFlagNames(flags: number): string {
  return describeFlags(CommandFlag, flags);
}

/** 'HAS_FLAGS|SEND_FLUSH|...' for a transmission flags field. */
export function transmissionFlagNames(flags: number): string {
  return describeFlags(TransmissionFlag, flags);
}
