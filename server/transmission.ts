// The transmission phase (proto.md "Transmission", "Request types", "Error values"): every
// request is validated here, once, and turned into a BlockDevice call and a reply. Errors reach
// the wire through one function, wireErrno.

import {
  BASE_ALLOCATION_CONTEXT,
  CommandFlag,
  CommandType,
  Errno,
  ReplyFlag,
  StateFlag,
  commandTypeName,
  serializeBlockStatusChunk,
  serializeErrorChunk,
  serializeNoneChunk,
  serializeOffsetDataHeader,
  serializeSimpleReplyHeader,
  type RequestMessage,
} from 'nbd-protocol-ts';
import { StorageError, storageLimits } from '../storage/index.js';
import { serverLimits } from './limits.js';
import type { Negotiated } from './negotiation.js';

/** A structured reply chunk's header, and one extent of a BLOCK_STATUS chunk (proto.md). */
const structuredReplyHeaderBytes = 20;
const blockStatusExtentBytes = 8;

/** Where replies go: the connection writes them to the socket in order of arrival here. */
export interface ReplySink {
  send(buffers: readonly Buffer[]): void;
}

/** A request refused at the edge, with the errno the spec asks for and a message for people. */
class RequestRefusal {
  constructor(
    readonly errno: number,
    readonly message: string,
  ) {}
}

/** The command flags each command may carry (FUA is accepted on every command, as the spec says). */
const allowedFlags: Record<number, number> = {
  [CommandType.READ]: CommandFlag.FUA | CommandFlag.DF,
  [CommandType.WRITE]: CommandFlag.FUA,
  [CommandType.FLUSH]: CommandFlag.FUA,
  [CommandType.TRIM]: CommandFlag.FUA,
  [CommandType.CACHE]: CommandFlag.FUA,
  [CommandType.WRITE_ZEROES]: CommandFlag.FUA | CommandFlag.NO_HOLE | CommandFlag.FAST_ZERO,
  [CommandType.BLOCK_STATUS]: CommandFlag.FUA | CommandFlag.REQ_ONE,
};

/** Map any error to the NBD error value of its reply. The one place this decision is made. */
export function wireErrno(error: unknown): number {
  if (error instanceof RequestRefusal) return error.errno;
  if (error instanceof StorageError) {
    switch (error.code) {
      case 'EPERM':
        return Errno.EPERM;
      case 'ENOSPC':
        return Errno.ENOSPC;
      case 'EINVAL':
        return Errno.EINVAL;
      case 'ENOTSUP':
        return Errno.ENOTSUP;
      case 'ESHUTDOWN':
        return Errno.ESHUTDOWN;
      default:
        return Errno.EIO;
    }
  }
  return Errno.EIO;
}

function messageOf(error: unknown): string {
  return error instanceof Error || error instanceof RequestRefusal ? error.message : String(error);
}

export class Transmission {
  private readonly negotiated: Negotiated;
  private readonly sink: ReplySink;
  private readonly sizeBytes: number;
  shuttingDown = false;

  constructor(negotiated: Negotiated, sink: ReplySink) {
    this.negotiated = negotiated;
    this.sink = sink;
    this.sizeBytes = negotiated.entry.device.sizeBytes;
  }

  /** Serve one request (never DISC: the connection handles that). Never rejects. */
  async serve(request: RequestMessage): Promise<void> {
    try {
      const refusal = this.validate(request);
      if (refusal !== null) throw refusal;
      await this.execute(request);
    } catch (error) {
      this.sendError(request, wireErrno(error), messageOf(error));
    }
  }

  /**
   * The most bytes the request's reply can take, its payload aside: what the connection asks
   * the memory budget for before serving it (a READ too long to serve is answered with an error).
   */
  replyBytesMax(request: RequestMessage): number {
    if (request.type === CommandType.READ && request.lengthBytes <= serverLimits.payloadBytesMax) {
      return request.lengthBytes + serverLimits.readReplyHeaderBytesMax;
    }
    if (request.type === CommandType.BLOCK_STATUS && this.negotiated.contexts.length > 0) {
      const chunkBytesMax = structuredReplyHeaderBytes + 4 + blockStatusExtentBytes * this.extentCountMax(request.flags);
      return Math.max(serverLimits.smallReplyBytesMax, this.negotiated.contexts.length * chunkBytesMax);
    }
    return serverLimits.smallReplyBytesMax;
  }

  /**
   * Extents per context in one BLOCK_STATUS reply: REQ_ONE asks for one; otherwise as many as
   * fit the reply's bound when shared by every selected context (at least one each, which the
   * protocol allows: the client asks again for the rest).
   */
  private extentCountMax(flags: number): number {
    if ((flags & CommandFlag.REQ_ONE) !== 0) return 1;
    const shareBytes = serverLimits.blockStatusReplyBytesMax / Math.max(1, this.negotiated.contexts.length);
    return Math.max(1, Math.min(serverLimits.blockStatusExtentCountMax, Math.floor(shareBytes / blockStatusExtentBytes)));
  }

  /** Answer a WRITE whose payload was over the limit (the parser skipped it). */
  refuseOversizedWrite(cookie: bigint, lengthBytes: number): void {
    this.sendError(
      { type: CommandType.WRITE, cookie },
      Errno.EINVAL,
      `write of ${lengthBytes} bytes is over the maximum payload of ${serverLimits.payloadBytesMax}`,
    );
  }

  /** Every rule a request must pass before it reaches the device. */
  private validate(request: RequestMessage): RequestRefusal | null {
    const { type, flags, offsetBytes, lengthBytes } = request;
    const device = this.negotiated.entry.device;
    const allowed = allowedFlags[type];
    if (allowed === undefined) return new RequestRefusal(Errno.EINVAL, `unknown command ${type}`);
    if (this.shuttingDown) return new RequestRefusal(Errno.ESHUTDOWN, 'the server is shutting down');
    if ((flags & ~allowed) !== 0) {
      return new RequestRefusal(Errno.EINVAL, `flags 0x${flags.toString(16)} are not valid for ${commandTypeName(type)}`);
    }
    if ((flags & CommandFlag.DF) !== 0 && !this.negotiated.structuredReplies) {
      return new RequestRefusal(Errno.EINVAL, 'DF needs structured replies');
    }
    if (type === CommandType.FLUSH) {
      return offsetBytes === 0 && lengthBytes === 0 ? null : new RequestRefusal(Errno.EINVAL, 'FLUSH takes offset 0 and length 0');
    }
    const writes = type === CommandType.WRITE || type === CommandType.WRITE_ZEROES || type === CommandType.TRIM;
    if (writes && device.readOnly) return new RequestRefusal(Errno.EPERM, `export ${this.negotiated.entry.name} is read-only`);
    if (offsetBytes + lengthBytes > this.sizeBytes) {
      // Writes past the end are ENOSPC; reads, trims and the rest are EINVAL (proto.md "Error values").
      const errno = type === CommandType.WRITE || type === CommandType.WRITE_ZEROES ? Errno.ENOSPC : Errno.EINVAL;
      return new RequestRefusal(errno, `range ${offsetBytes}+${lengthBytes} is past the end of the export (${this.sizeBytes} bytes)`);
    }
    if (type === CommandType.READ && lengthBytes > serverLimits.payloadBytesMax) {
      return new RequestRefusal(Errno.EINVAL, `read of ${lengthBytes} bytes is over the maximum of ${serverLimits.payloadBytesMax}`);
    }
    if ((type === CommandType.TRIM || type === CommandType.WRITE_ZEROES) && lengthBytes > storageLimits.zeroLengthBytesMax) {
      return new RequestRefusal(Errno.EINVAL, `length ${lengthBytes} is over the maximum of ${storageLimits.zeroLengthBytesMax}`);
    }
    if (type === CommandType.BLOCK_STATUS && this.negotiated.contexts.length === 0) {
      return new RequestRefusal(Errno.EINVAL, 'BLOCK_STATUS needs a metadata context selected for this export');
    }
    if (type === CommandType.BLOCK_STATUS && lengthBytes === 0) {
      return new RequestRefusal(Errno.EINVAL, 'BLOCK_STATUS needs a length above zero');
    }
    return null;
  }

  private async execute(request: RequestMessage): Promise<void> {
    const { type, flags, offsetBytes, lengthBytes } = request;
    const device = this.negotiated.entry.device;
    const fua = (flags & CommandFlag.FUA) !== 0;
    switch (type) {
      case CommandType.READ:
        return this.read(request);
      case CommandType.WRITE:
        if (lengthBytes > 0) await device.write(offsetBytes, request.payload!, { fua });
        return this.sendDone(request);
      case CommandType.FLUSH:
        await device.flush();
        return this.sendDone(request);
      case CommandType.TRIM:
        if (lengthBytes > 0) await device.trim(offsetBytes, lengthBytes, { fua });
        return this.sendDone(request);
      case CommandType.WRITE_ZEROES:
        if (lengthBytes > 0) {
          await device.writeZeroes(offsetBytes, lengthBytes, {
            fua,
            noHole: (flags & CommandFlag.NO_HOLE) !== 0,
            fastZero: (flags & CommandFlag.FAST_ZERO) !== 0,
          });
        }
        return this.sendDone(request);
      case CommandType.CACHE:
        if (lengthBytes > 0) await device.cache(offsetBytes, lengthBytes);
        return this.sendDone(request);
      case CommandType.BLOCK_STATUS:
        return this.blockStatus(request);
    }
  }

  private async read(request: RequestMessage): Promise<void> {
    const { cookie, offsetBytes, lengthBytes } = request;
    const data = lengthBytes > 0 ? await this.negotiated.entry.device.read(offsetBytes, lengthBytes) : Buffer.alloc(0);
    if (!this.negotiated.structuredReplies) {
      this.sink.send([serializeSimpleReplyHeader(cookie, 0), data]);
    } else if (lengthBytes === 0) {
      this.sink.send([serializeNoneChunk(cookie)]);
    } else {
      this.sink.send([serializeOffsetDataHeader(cookie, ReplyFlag.DONE, offsetBytes, data.length), data]);
    }
  }

  private async blockStatus(request: RequestMessage): Promise<void> {
    const { cookie, flags, offsetBytes, lengthBytes } = request;
    const extentCountMax = this.extentCountMax(flags);
    const contexts = this.negotiated.contexts;
    const extentLists = await Promise.all(contexts.map((context) => this.contextExtents(context.name, offsetBytes, lengthBytes, extentCountMax)));
    const chunks = contexts.map((context, index) =>
      serializeBlockStatusChunk(cookie, index === contexts.length - 1 ? ReplyFlag.DONE : 0, context.id, extentLists[index]!),
    );
    this.sink.send(chunks);
  }

  /** Extents of one metadata context; at least one (status 0 is always a true answer). */
  private async contextExtents(context: string, offsetBytes: number, lengthBytes: number, extentCountMax: number): Promise<Array<{ lengthBytes: number; flags: number }>> {
    const device = this.negotiated.entry.device;
    let extents: Array<{ lengthBytes: number; flags: number }>;
    if (context === BASE_ALLOCATION_CONTEXT) {
      const statuses = await device.allocation(offsetBytes, lengthBytes, extentCountMax);
      extents = statuses.map((status) => ({ lengthBytes: status.lengthBytes, flags: (status.hole ? StateFlag.HOLE : 0) | (status.zero ? StateFlag.ZERO : 0) }));
    } else if (device.contextStatus !== undefined) {
      extents = await device.contextStatus(context, offsetBytes, lengthBytes, extentCountMax);
    } else {
      extents = [];
    }
    if (extents.length === 0) extents.push({ lengthBytes, flags: 0 });
    return extents;
  }

  private sendDone(request: RequestMessage): void {
    this.sink.send([serializeSimpleReplyHeader(request.cookie, 0)]);
  }

  private sendError(request: { type: number; cookie: bigint }, errno: number, message: string): void {
    if (this.negotiated.structuredReplies) {
      this.sink.send([serializeErrorChunk(request.cookie, ReplyFlag.DONE, errno, message)]);
    } else {
      // Simple replies carry no message; a failed READ sends no data (proto.md "Simple replies").
      this.sink.send([serializeSimpleReplyHeader(request.cookie, errno)]);
    }
  }
}

