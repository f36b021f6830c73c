// Every number the NBD protocol puts on the wire: magics, flags, option and
// reply types, info types, commands, chunk types, errors and limits.
// Source: NetworkBlockDevice/nbd doc/proto.md, section "Values" and the
// message layouts under "Handshake" and "Transmission". The extended-header
// values (EXTENDED_HEADERS, PAYLOAD_LEN, BLOCK_STATUS_EXT, ...) are kept so
// logs can name them, although the parsers do not support that mode.
// Names keep the spec's spelling (minus the NBD_ prefix) so they can be
// searched for in the spec.

/** The IANA-reserved TCP port for newstyle negotiation. */
export const DEFAULT_PORT = 10809;

/** Magic numbers. 64-bit magics are bigints; 32-bit ones are numbers. */
export const Magic = {
  /** 'NBDMAGIC', first field of the greeting (also called INIT_PASSWD). */
  INIT_PASSWD: 0x4e42444d41474943n,
  /** 'IHAVEOPT', second field of the greeting and prefix of every option. */
  IHAVEOPT: 0x49484156454f5054n,
  /** Prefix of every fixed-newstyle option reply. */
  OPTION_REPLY: 0x3e889045565a9n,
  /** Oldstyle negotiation magic; recognised only to report it clearly. */
  CLISERV: 0x00420281861253n,
  REQUEST: 0x25609513,
  EXTENDED_REQUEST: 0x21e41c71,
  SIMPLE_REPLY: 0x67446698,
  STRUCTURED_REPLY: 0x668e33ef,
  EXTENDED_REPLY: 0x6e8a278c,
  /** Reserved: historic request magic; never valid on the wire. */
  HISTORIC_REQUEST: 0x12560953,
  /** Reserved: historic reply magic; never valid on the wire. */
  HISTORIC_REPLY: 0x96744668,
  /** Reserved: used by nbd-server in its transaction log only. */
  TRANSACTION_LOG: 0x25609514,
} as const;

/** Handshake flags (u16), sent by the server in the greeting. */
export const HandshakeFlag = {
  FIXED_NEWSTYLE: 1 << 0,
  NO_ZEROES: 1 << 1,
} as const;

/** Client flags (u32), sent by the client right after the greeting. */
export const ClientFlag = {
  C_FIXED_NEWSTYLE: 1 << 0,
  C_NO_ZEROES: 1 << 1,
} as const;

/** Transmission flags (u16), sent with the export size. */
export const TransmissionFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
  BLOCK_STATUS_PAYLOAD: 1 << 12,
} as const;

/** Option types (u32) sent by the client during option haggling. */
export const OptionType = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  /** Withdrawn; listed so logs can name it. */
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

/** Bit 31 marks every option reply type that is an error. */
export const OPTION_REPLY_ERROR_BIT = 0x80000000;

/** True for NBD_REP_ERR_* reply types, including ones this codec does not know. */
export function isOptionReplyError(replyType: number): boolean {
  return ((replyType & OPTION_REPLY_ERROR_BIT) >>> 0) !== 0;
}

/** Option reply types (u32). Error types have bit 31 set. */
export const OptionReplyType = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_PLATFORM: 0x80000004,
  ERR_TLS_REQD: 0x80000005,
  ERR_UNKNOWN: 0x80000006,
  ERR_SHUTDOWN: 0x80000007,
  ERR_BLOCK_SIZE_REQD: 0x80000008,
  ERR_TOO_BIG: 0x80000009,
  ERR_EXT_HEADER_REQD: 0x8000000a,
} as const;

/** Information types (u16) requested by INFO/GO and carried in REP_INFO. */
export const InfoType = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3,
} as const;

/** Request types (u16) of the transmission phase. */
export const CommandType = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
  RESIZE: 8,
} as const;

/** Command flags (u16) of a request. */
export const CommandFlag = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
  PAYLOAD_LEN: 1 << 5,
} as const;

/** Structured reply flags (u16). */
export const ReplyFlag = {
  DONE: 1 << 0,
} as const;

/** Bit 15 marks every structured reply chunk type that is an error. */
export const CHUNK_TYPE_ERROR_BIT = 0x8000;

/** True for error chunk types, including unknown ones, which a client may survive. */
export function isErrorChunkType(type: number): boolean {
  return (type & CHUNK_TYPE_ERROR_BIT) !== 0;
}

/** Structured reply chunk types (u16). Error types have bit 15 set. */
export const ChunkType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  BLOCK_STATUS_EXT: 6,
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002,
} as const;

/** Error values (u32) of simple replies and error chunks. */
export const Errno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

/** Status flags of the base:allocation metadata context. */
export const StateFlag = {
  HOLE: 1 << 0,
  ZERO: 1 << 1,
} as const;

/** The one metadata context the spec itself defines. */
export const BASE_ALLOCATION_CONTEXT = 'base:allocation';

/** Fixed sizes of wire structures, in bytes. */
export const WireSize = {
  GREETING: 18,
  CLIENT_FLAGS: 4,
  OPTION_HEADER: 16,
  OPTION_REPLY_HEADER: 20,
  /** Size u64 + transmission flags u16 of the EXPORT_NAME reply. */
  EXPORT_NAME_REPLY: 10,
  /** Reserved zeroes after the EXPORT_NAME reply unless NO_ZEROES. */
  EXPORT_NAME_REPLY_ZEROES: 124,
  REQUEST_HEADER: 28,
  EXTENDED_REQUEST_HEADER: 32,
  SIMPLE_REPLY_HEADER: 16,
  STRUCTURED_REPLY_HEADER: 20,
  EXTENDED_REPLY_HEADER: 32,
} as const;

/** Limits the spec sets. */
export const ProtocolLimit = {
  /** Longest string (export name, message, context name) in bytes. */
  STRING_MAX_BYTES: 4096,
  /** Payload size any peer SHOULD accept without calling it denial of service. */
  PAYLOAD_SAFE_BYTES: 2 ** 25,
  /** The largest u32, used e.g. as "no limit" maximum block size. */
  UINT32_MAX: 0xffffffff,
} as const;
