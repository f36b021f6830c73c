// The handshake phase of one connection (proto.md "Fixed newstyle negotiation", "Option types"):
// client flags, then options until the client chooses an export, aborts, or is dropped.
// With TLS (proto.md "TLS support"): STARTTLS is acknowledged once, after which negotiation starts
// over on the TLS stream; in required mode every other option before it gets ERR_TLS_REQD;
// TLS-only exports and allowlists (access.ts) are checked when a client chooses an export.
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
  parseStartTlsData,
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
import { accessAllows, type ClientIdentity } from './access.js';
import type { ExportEntry, ExportTable } from './exports.js';
import { serverLimits } from './limits.js';
import type { TlsMode } from './tls.js';

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

/** A client turned away from an export, for the log: by its allowlist, or for want of TLS. */
export interface Refusal {
  kind: 'access' | 'tls';
  export: string;
  reason: string;
}

export type OptionOutcome =
  | { kind: 'reply'; replies: Buffer[]; refusal?: Refusal }
  | { kind: 'transmission'; replies: Buffer[]; negotiated: Negotiated }
  /** Send the ACK, then run the TLS handshake; negotiation goes on over TLS. */
  | { kind: 'startTls'; replies: Buffer[] }
  /** Close the connection after sending the replies (ABORT, or an EXPORT_NAME we cannot serve). */
  | { kind: 'close'; replies: Buffer[]; reason: string; refusal?: Refusal };

/** Why a client may not use an export now, with the option error that says so. */
interface Gate {
  replyType: number;
  refusal: Refusal;
}

export class Negotiation {
  private readonly exports: ExportTable;
  private readonly tlsMode: TlsMode;
  private readonly client: ClientIdentity;
  private tlsActive = false;
  private noZeroes = false;
  private structuredReplies = false;
  private contexts: SelectedContext[] = [];
  private contextsExportName: string | null = null;
  private optionCount = 0;
  shuttingDown = false;

  constructor(exports: ExportTable, tlsMode: TlsMode = 'off', client: ClientIdentity = { address: null, certificateName: null }) {
    this.exports = exports;
    this.tlsMode = tlsMode;
    this.client = { ...client };
  }

  /** The handshake after STARTTLS succeeded: negotiation starts over, with what TLS told us. */
  tlsStarted(certificateName: string | null): void {
    if (this.tlsActive) throw new TypeError('TLS started twice');
    this.tlsActive = true;
    this.client.certificateName = certificateName;
    // Nothing negotiated in plaintext carries over (NBD-REFERENCE: STARTTLS resets the state).
    this.structuredReplies = false;
    this.contexts = [];
    this.contextsExportName = null;
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
    if (this.tlsMode === 'required' && !this.tlsActive && option !== OptionType.STARTTLS && option !== OptionType.ABORT) {
      return this.tlsRequired(option);
    }
    switch (option) {
      case OptionType.EXPORT_NAME:
        return this.exportName(data);
      case OptionType.ABORT:
        return { kind: 'close', replies: [serializeAckReply(option)], reason: 'client aborted negotiation' };
      case OptionType.LIST:
        return this.list(data);
      case OptionType.STARTTLS:
        return this.startTls(data);
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

  /** FORCEDTLS before STARTTLS: every option but STARTTLS and ABORT is refused (proto.md). */
  private tlsRequired(option: number): OptionOutcome {
    // EXPORT_NAME cannot carry an error: the protocol's only answer is to hang up.
    if (option === OptionType.EXPORT_NAME) return { kind: 'close', replies: [], reason: 'EXPORT_NAME before STARTTLS on a server that requires TLS' };
    return reply(serializeOptionErrorReply(option, OptionReplyType.ERR_TLS_REQD, 'this server requires TLS: send NBD_OPT_STARTTLS first'));
  }

  private startTls(data: Buffer): OptionOutcome {
    const option = OptionType.STARTTLS;
    if (this.tlsMode === 'off') return reply(serializeOptionErrorReply(option, OptionReplyType.ERR_POLICY, 'TLS is not configured on this server'));
    if (this.tlsActive) return invalid(option, 'TLS is already running on this connection');
    const parsed = parseStartTlsData(data);
    if (isProtocolError(parsed)) return invalid(option, parsed.message);
    return { kind: 'startTls', replies: [serializeAckReply(option)] };
  }

  /** Null when this client may use the export now; else the error to answer with and why. */
  private gate(entry: ExportEntry): Gate | null {
    if (entry.policy.tlsOnly && !this.tlsActive) {
      // A TLS-less server must never send ERR_TLS_REQD (proto.md "NOTLS mode").
      if (this.tlsMode === 'off') {
        return { replyType: OptionReplyType.ERR_POLICY, refusal: { kind: 'tls', export: entry.name, reason: `export "${entry.name}" is TLS-only and this server does not offer TLS` } };
      }
      return { replyType: OptionReplyType.ERR_TLS_REQD, refusal: { kind: 'tls', export: entry.name, reason: `export "${entry.name}" requires TLS: send NBD_OPT_STARTTLS first` } };
    }
    if (!accessAllows(entry.policy, this.client)) {
      return { replyType: OptionReplyType.ERR_POLICY, refusal: { kind: 'access', export: entry.name, reason: `export "${entry.name}" does not allow ${describeClient(this.client)}` } };
    }
    return null;
  }

  private refuse(option: number, gate: Gate): OptionOutcome {
    return { kind: 'reply', replies: [serializeOptionErrorReply(option, gate.replyType, gate.refusal.reason)], refusal: gate.refusal };
  }

  private exportName(data: Buffer): OptionOutcome {
    const parsed = parseExportNameData(data);
    if (isProtocolError(parsed)) return { kind: 'close', replies: [], reason: `bad EXPORT_NAME: ${parsed.message}` };
    const entry = this.exports.lookup(parsed.exportName);
    // EXPORT_NAME cannot carry an error: the protocol's only answer is to hang up.
    if (entry === undefined) return { kind: 'close', replies: [], reason: `no export named "${parsed.exportName}"` };
    const gate = this.gate(entry);
    if (gate !== null) return { kind: 'close', replies: [], reason: gate.refusal.reason, refusal: gate.refusal };
    const negotiated = this.settle(entry);
    return { kind: 'transmission', replies: [serializeExportNameReply(entry.device.sizeBytes, negotiated.transmissionFlags, this.noZeroes)], negotiated };
  }

  private list(data: Buffer): OptionOutcome {
    if (data.length !== 0) return invalid(OptionType.LIST, 'LIST takes no data');
    // Exports this client may not use now are left out (proto.md allows it for TLS-only ones).
    const usable = this.exports.list().filter((entry) => this.gate(entry) === null);
    const replies = usable.map((entry) => serializeServerReply(entry.name, entry.description));
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
    const gate = this.gate(entry);
    if (gate !== null) return this.refuse(option, gate);
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
    const gate = this.gate(entry);
    if (gate !== null) return this.refuse(option, gate);
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

function describeClient(client: ClientIdentity): string {
  const where = client.address === null ? 'a unix-socket client' : `client ${client.address}`;
  return client.certificateName === null ? `${where} (no verified client certificate)` : `${where} (certificate ${client.certificateName})`;
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
