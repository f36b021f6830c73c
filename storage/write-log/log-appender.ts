// Writing batches into log segments with O_DIRECT: the log goes to disk without passing through
// the page cache (where it would push out the live image and pile up dirty pages), in whole
// 4 KiB blocks. Records are packed, so a batch rarely ends on a block boundary: the partial
// block at the end of the log is kept here and written again, completed, with the next batch.
// A torn rewrite of that block can only lose the new bytes: its sectors hold the old bytes or
// the new ones, and the old ones are the same in both.

import { assert } from '../errors.js';
import type { FileSystem } from '../io/file-system.js';
import type { SegmentRun } from './batch.js';
import { logBlockBytes, segmentFileName, type OpenSegment } from './segment.js';

/** Durable writes up to this size are made on the event loop. */
const syncWriteBytesMax = 64 * 1024;

interface TailBlock {
  segment: OpenSegment;
  /** Offset of the partial block at the end of the log (a multiple of logBlockBytes). */
  blockOffsetBytes: number;
  /** The log's bytes from blockOffsetBytes up to the append position. */
  bytes: Buffer;
}

export class LogAppender {
  private tail: TailBlock;

  private constructor(tail: TailBlock) {
    this.tail = tail;
  }

  /** Start appending to `segment` at appendOffsetBytes, reading back the partial block before it. */
  static resume(fileSystem: FileSystem, logDirectory: string, segment: OpenSegment, appendOffsetBytes: number): LogAppender {
    const blockOffsetBytes = alignDown(appendOffsetBytes);
    const bytes = Buffer.alloc(appendOffsetBytes - blockOffsetBytes);
    if (bytes.length > 0) {
      const reader = fileSystem.open(`${logDirectory}/${segmentFileName(segment.segmentNumber)}`, { readOnly: true });
      try {
        reader.readSync(bytes, blockOffsetBytes);
      } finally {
        reader.close();
      }
    }
    return new LogAppender({ segment, blockOffsetBytes, bytes });
  }

  /**
   * Write one run of a batch. Runs come in log order, each starting where the log ends. With
   * `durable` the write is durable when it resolves (RWF_DSYNC): only when nothing else written
   * to the log waits for a sync.
   */
  async write(run: SegmentRun, durable = false): Promise<void> {
    if (run.segment !== this.tail.segment) {
      // A new segment: appends start right after its header, on a block boundary.
      assert(run.startOffsetBytes % logBlockBytes === 0, 'a new segment is appended from a block boundary');
      this.tail = { segment: run.segment, blockOffsetBytes: run.startOffsetBytes, bytes: Buffer.alloc(0) };
    }
    const { blockOffsetBytes, bytes: prefix } = this.tail;
    assert(blockOffsetBytes + prefix.length === run.startOffsetBytes, 'runs continue the log without gaps');
    // A small durable write (a FLUSH's few records) is done here: the disk's answer comes back
    // sooner than a worker thread's would.
    if (durable && run.lengthBytes <= syncWriteBytesMax) run.segment.handle.writeAlignedSync(prefix, run.buffers, blockOffsetBytes, logBlockBytes, true);
    else await run.segment.handle.writeAligned(prefix, run.buffers, blockOffsetBytes, logBlockBytes, durable);
    const endBytes = run.startOffsetBytes + run.lengthBytes;
    const newBlockOffsetBytes = alignDown(endBytes);
    this.tail = {
      segment: run.segment,
      blockOffsetBytes: newBlockOffsetBytes,
      bytes: lastBytes(prefix, run.buffers, endBytes - newBlockOffsetBytes),
    };
  }
}

function alignDown(offsetBytes: number): number {
  return offsetBytes - (offsetBytes % logBlockBytes);
}

/** A copy of the last `count` bytes of prefix ++ buffers. */
function lastBytes(prefix: Buffer, buffers: readonly Buffer[], count: number): Buffer {
  const result = Buffer.alloc(count);
  let remaining = count;
  for (let index = buffers.length - 1; index >= -1 && remaining > 0; index--) {
    const source = index >= 0 ? buffers[index]! : prefix;
    const take = Math.min(remaining, source.length);
    source.copy(result, remaining - take, source.length - take);
    remaining -= take;
  }
  assert(remaining === 0, 'the tail lies within the bytes written');
  return result;
}
