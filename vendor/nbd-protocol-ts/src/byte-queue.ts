// A queue of received chunks that parsers consume from the front.
// It exists so that a parser never concatenates the whole input: bytes that
// lie inside one chunk come back as a subarray of that chunk (zero copy), and
// only a read that spans chunks is copied, once, into a buffer of exactly the
// requested size. The queue keeps references to pushed chunks, so callers
// must not reuse a chunk's memory after pushing it (net.Socket never does).

const EMPTY = Buffer.alloc(0);

// Consumed chunks are dropped by advancing an index rather than shifting the
// array, so feeding a large payload one byte at a time stays linear; the
// array is compacted once the dead prefix dominates.
const COMPACT_AFTER_DEAD_CHUNKS = 1024;

export class ByteQueue {
  private chunks: Buffer[] = [];
  private headIndex = 0;
  private headOffsetBytes = 0;
  private storedBytes = 0;

  /** Bytes received and not yet consumed. */
  get lengthBytes(): number {
    return this.storedBytes;
  }

  push(chunk: Buffer): void {
    if (!Buffer.isBuffer(chunk)) throw new TypeError('ByteQueue.push() takes a Buffer');
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.storedBytes += chunk.length;
  }

  /** Drops everything, e.g. after a fatal error. */
  clear(): void {
    this.chunks = [];
    this.headIndex = 0;
    this.headOffsetBytes = 0;
    this.storedBytes = 0;
  }

  /**
   * Removes and returns the first `lengthBytes` bytes: a view into the
   * received chunk when they lie in one chunk, else one copy.
   * The caller must have checked `lengthBytes <= this.lengthBytes`.
   */
  consume(lengthBytes: number): Buffer {
    if (lengthBytes > this.storedBytes) {
      throw new RangeError(`consume(${lengthBytes}) with only ${this.storedBytes} bytes queued`);
    }
    if (lengthBytes === 0) return EMPTY;
    const head = this.headChunk();
    const headAvailableBytes = head.length - this.headOffsetBytes;
    if (lengthBytes <= headAvailableBytes) {
      const view = head.subarray(this.headOffsetBytes, this.headOffsetBytes + lengthBytes);
      this.advance(lengthBytes);
      return view;
    }
    return this.consumeSpanning(lengthBytes);
  }

  /** Discards up to `maximumBytes` bytes; returns how many were discarded. */
  discard(maximumBytes: number): number {
    const discardedBytes = Math.min(maximumBytes, this.storedBytes);
    let remainingBytes = discardedBytes;
    while (remainingBytes > 0) {
      const head = this.headChunk();
      const stepBytes = Math.min(remainingBytes, head.length - this.headOffsetBytes);
      this.advance(stepBytes);
      remainingBytes -= stepBytes;
    }
    return discardedBytes;
  }

  /** The first four bytes as a big-endian u32, without consuming them. */
  peekUint32(): number {
    if (this.storedBytes < 4) {
      throw new RangeError(`peekUint32() with only ${this.storedBytes} bytes queued`);
    }
    const head = this.headChunk();
    if (head.length - this.headOffsetBytes >= 4) return head.readUInt32BE(this.headOffsetBytes);
    let value = 0;
    let chunkIndex = this.headIndex;
    let offsetBytes = this.headOffsetBytes;
    for (let byteIndex = 0; byteIndex < 4; byteIndex++) {
      let chunk = this.chunks[chunkIndex] as Buffer;
      if (offsetBytes === chunk.length) {
        chunkIndex++;
        offsetBytes = 0;
        chunk = this.chunks[chunkIndex] as Buffer;
      }
      value = value * 256 + (chunk[offsetBytes] as number);
      offsetBytes++;
    }
    return value;
  }

  private headChunk(): Buffer {
    return this.chunks[this.headIndex] as Buffer;
  }

  private consumeSpanning(lengthBytes: number): Buffer {
    const copy = Buffer.allocUnsafe(lengthBytes);
    let copiedBytes = 0;
    while (copiedBytes < lengthBytes) {
      const head = this.headChunk();
      const stepBytes = Math.min(lengthBytes - copiedBytes, head.length - this.headOffsetBytes);
      head.copy(copy, copiedBytes, this.headOffsetBytes, this.headOffsetBytes + stepBytes);
      this.advance(stepBytes);
      copiedBytes += stepBytes;
    }
    return copy;
  }

  // Moves the read position forward within the head chunk, dropping the
  // chunk once it is used up. Never crosses a chunk boundary by itself.
  private advance(lengthBytes: number): void {
    this.headOffsetBytes += lengthBytes;
    this.storedBytes -= lengthBytes;
    if (this.headOffsetBytes < this.headChunk().length) return;
    this.headIndex++;
    this.headOffsetBytes = 0;
    if (this.headIndex === this.chunks.length) {
      this.chunks = [];
      this.headIndex = 0;
    } else if (this.headIndex >= COMPACT_AFTER_DEAD_CHUNKS && this.headIndex * 2 >= this.chunks.length) {
      this.chunks = this.chunks.slice(this.headIndex);
      this.headIndex = 0;
    }
  }
}
