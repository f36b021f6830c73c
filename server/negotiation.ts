// The handshake phase of one connection (proto.md "Fixed newstyle negotiation", "Option types"):
// client flags, then options until the client chooses an export, aborts, or is dropped.
// This file decides what to answer; connection.ts moves the bytes.

import {
  BASE_ALLOCATION_CONTEXT,
  ClientFlag,
  HandshakeFlag,
  InfoType,
  OptionReplyType,
  OptionType,
  TransmissionFlag,
  isProtocolError,
  parseExportNameData,
  parseInfoOrGoData,
  parseMetaContextData,
  serializeAckReply,
  serializeExportNameReply,
  serializeInfoBlockSizeReply,
  serializeInfoDescriptionReply,
  serializeInfoExportReply,
  serializeInfoNameReply,
  serializeMetaContextReply,
  serializeOptionErrorReply,
  serializeServerReply,
  unknownClientFlags,
} from 'nbd-protocol-ts';
import type { ExportEntry, ExportTable } from './exports.js';
import { serverLimits } from './limits.js';

export const offeredHandshakeFlags = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES;

/** A metadata context selected by SET_META_CONTEXT, with the ID we gave it. */
export interface SelectedContext {
  id: number;
  name: string;
}

/** What the client and we agreed on, carried into transmission. */
export interface Negotiated {
  entry: ExportEntry;
  structuredReplies: boolean;
  /** Contexts for BLOCK_STATUS: empty unless selected for this very export. */
  contexts: SelectedContext[];
  transmissionFlags: number;
}

export type OptionOutcome =
  | { kind: 'reply'; replies: Buffer[] }
  | { kind: 'transmission'; replies: Buffer[]; negotiated: Negotiated }
  /** Close the connection after sending the replies (ABORT, or an EXPORT_NAME we cannot serve). */
  | { kind: 'close'; replies: Buffer[]; reason: string };

export class Negotiation {
  private readonly exports: ExportTable;
  private noZeroes = false;
  private structuredReplies = false;
  private contexts: SelectedContext[] = [];
  private contextsExportName: string | null = null;
  private optionCount = 0;
  shuttingDown = false;

  constructor(exports: ExportTable) {
    this.exports = exports;
  }

  /** Returns a reason to drop the connection, or null if the client flags are acceptable. */
  acceptClientFlags(flags: number): string | null {
    const unknown = unknownClientFlags(flags, offeredHandshakeFlags);
    if (unknown !== 0) return `client sent unknown flags 0x${unknown.toString(16)}`;
    this.noZeroes = (flags & ClientFlag.C_NO_ZEROES) !== 0;
    return null;
  }

  tooBig(option: number, lengthBytes: number): OptionOutcome {
    return reply(serializeOptionErrorReply(option, OptionReplyType.ERR_TOO_BIG, `option data of ${lengthBytes} bytes is over the limit of ${serverLimits.optionDataBytesMax}`));
  }

  handleOption(option: number, data: Buffer): OptionOutcome {
    this.optionCount++;
    if (this.optionCount > serverLimits.optionCountMax) {
      return { kind: 'close', replies: [], reason: `more than ${serverLimits.optionCountMax} options` };
    }
    if (this.shuttingDown && option !== OptionType.ABORT) {
      return reply(serializeOptionErrorReply(option, OptionReplyType.ERR_SHUTDOWN, 'the server is shutting down'));
    }
    switch (option) {
      case OptionType.EXPORT_NAME:
        return this.exportName(data);
      case OptionType.ABORT:
        return { kind: 'close', replies: [serializeAckReply(option)], reason: 'client aborted negotiation' };
      case OptionType.LIST:
        return this.list(data);
      case OptionType.STARTTLS:
        return reply(serializeOptionErrorReply(option, OptionReplyType.ERR_POLICY, 'TLS is not configured on this server'));
      case OptionType.INFO:
      case OptionType.GO:
        return this.infoOrGo(option, data);
      case OptionType.STRUCTURED_REPLY:
        if (data.length !== 0) return invalid(option, 'STRUCTURED_REPLY takes no data');
        this.structuredReplies = true;
        return reply(serializeAckReply(option));
      case OptionType.LIST_META_CONTEXT:
      case OptionType.SET_META_CONTEXT:
        return this.metaContext(option, data);
      default:
        return reply(serializeOptionErrorReply(option, OptionReplyType.ERR_UNSUP, `option ${option} is not supported`));
    }
  }

  private exportName(data: Buffer): OptionOutcome {
    const parsed = parseExportNameData(data);
    if (isProtocolError(parsed)) return { kind: 'close', replies: [], reason: `bad EXPORT_NAME: ${parsed.message}` };
    const entry = this.exports.lookup(parsed.exportName);
    // EXPORT_NAME cannot carry an error: the protocol's only answer is to hang up.
    if (entry === undefined) return { kind: 'close', replies: [], reason: `no export named "${parsed.exportName}"` };
    const negotiated = this.settle(entry);
    return { kind: 'transmission', replies: [serializeExportNameReply(entry.device.sizeBytes, negotiated.transmissionFlags, this.noZeroes)], negotiated };
  }

  private list(data: Buffer): OptionOutcome {
    if (data.length !== 0) return invalid(OptionType.LIST, 'LIST takes no data');
    const replies = this.exports.list().map((entry) => serializeServerReply(entry.name, entry.description));
    replies.push(serializeAckReply(OptionType.LIST));
    return { kind: 'reply', replies };
  }

  private infoOrGo(option: number, data: Buffer): OptionOutcome {
    const parsed = parseInfoOrGoData(data);
    if (isProtocolError(parsed)) return invalid(option, parsed.message);
    const entry = this.exports.lookup(parsed.exportName);
    if (entry === undefined) {
      return reply(serializeOptionErrorReply(option, OptionReplyType.ERR_UNKNOWN, `no export named "${parsed.exportName}"`));
    }
    const flags = this.transmissionFlags(entry);
    const replies = [serializeInfoExportReply(option, entry.device.sizeBytes, flags)];
    const requested = new Set(parsed.infoTypes);
    if (requested.has(InfoType.NAME)) replies.push(serializeInfoNameReply(option, entry.name));
    if (requested.has(InfoType.DESCRIPTION)) replies.push(serializeInfoDescriptionReply(option, entry.description));
    // Our constraints are the protocol's defaults, so sending them unasked is harmless and helps.
    replies.push(
      serializeInfoBlockSizeReply(option, {
        minimumBytes: serverLimits.blockSizeMinBytes,
        preferredBytes: serverLimits.blockSizePreferredBytes,
        maximumBytes: serverLimits.payloadBytesMax,
      }),
    );
    replies.push(serializeAckReply(option));
    if (option === OptionType.INFO) return { kind: 'reply', replies };
    return { kind: 'transmission', replies, negotiated: this.settle(entry) };
  }

  private metaContext(option: number, data: Buffer): OptionOutcome {
    const isSet = option === OptionType.SET_META_CONTEXT;
    if (isSet) {
      this.contexts = []; // SET replaces the selection even when it fails
      this.contextsExportName = null;
    }
    if (!this.structuredReplies) return invalid(option, 'negotiate structured replies first');
    const parsed = parseMetaContextData(data);
    if (isProtocolError(parsed)) return invalid(option, parsed.message);
    const entry = this.exports.lookup(parsed.exportName);
    if (entry === undefined) {
      return reply(serializeOptionErrorReply(option, OptionReplyType.ERR_UNKNOWN, `no export named "${parsed.exportName}"`));
    }
    const matched = matchContexts(availableContexts(entry), parsed.queries, isSet);
    if (matched === null) return invalid(option, 'every query must start with a namespace and a colon');
    const replies: Buffer[] = [];
    if (isSet) {
      this.contexts = matched.map((name, index) => ({ id: index + 1, name }));
      this.contextsExportName = entry.name;
      for (const context of this.contexts) replies.push(serializeMetaContextReply(option, context.id, context.name));
    } else {
      for (const name of matched) replies.push(serializeMetaContextReply(option, 0, name));
    }
    replies.push(serializeAckReply(option));
    return { kind: 'reply', replies };
  }

  private transmissionFlags(entry: ExportEntry): number {
    const { device } = entry;
    const capabilities = device.capabilities;
    let flags = TransmissionFlag.HAS_FLAGS | TransmissionFlag.SEND_FLUSH;
    if (capabilities.fua) flags |= TransmissionFlag.SEND_FUA;
    if (capabilities.cache) flags |= TransmissionFlag.SEND_CACHE;
    if (capabilities.multiConnection) flags |= TransmissionFlag.CAN_MULTI_CONN;
    if (this.structuredReplies) flags |= TransmissionFlag.SEND_DF;
    if (device.readOnly) {
      flags |= TransmissionFlag.READ_ONLY;
    } else {
      if (capabilities.trim) flags |= TransmissionFlag.SEND_TRIM;
      if (capabilities.writeZeroes) flags |= TransmissionFlag.SEND_WRITE_ZEROES;
      if (capabilities.writeZeroes && capabilities.fastZero) flags |= TransmissionFlag.SEND_FAST_ZERO;
    }
    return flags;
  }

  private settle(entry: ExportEntry): Negotiated {
    return {
      entry,
      structuredReplies: this.structuredReplies,
      contexts: this.contextsExportName === entry.name ? this.contexts : [],
      transmissionFlags: this.transmissionFlags(entry),
    };
  }
}

function reply(buffer: Buffer): OptionOutcome {
  return { kind: 'reply', replies: [buffer] };
}

function invalid(option: number, message: string): OptionOutcome {
  return reply(serializeOptionErrorReply(option, OptionReplyType.ERR_INVALID, message));
}

/** The metadata contexts an export offers: base:allocation, and whatever its device adds. */
export function availableContexts(entry: ExportEntry): string[] {
  return [BASE_ALLOCATION_CONTEXT, ...(entry.device.metaContexts?.() ?? [])];
}

/**
 * Contexts matching the queries: LIST with no queries lists all, and a query with an empty leaf
 * ("base:") lists its namespace; SET selects exact names only. Unknown namespaces are ignored.
 * Null when a query has no namespace.
 */
export function matchContexts(available: readonly string[], queries: readonly string[], isSet: boolean): string[] | null {
  if (queries.length === 0) return isSet ? [] : [...available];
  const matched = new Set<string>();
  for (const query of queries) {
    const colon = query.indexOf(':');
    if (colon <= 0) return null;
    const leafIsEmpty = colon === query.length - 1;
    for (const name of available) {
      if (name === query || (!isSet && leafIsEmpty && name.startsWith(query))) matched.add(name);
    }
  }
  return [...matched];
}
