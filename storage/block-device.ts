// What the server knows of storage: every export is a BlockDevice. The live volume, a
// point-in-time view and a clone all implement it; the server needs nothing else.
//
// Callers validate requests at the edge (ranges inside the device, lengths within the limits);
// implementations assert those preconditions and report everything else as a StorageError.

export interface WriteOptions {
  /** Force unit access: resolve only once the data is durable. */
  fua: boolean;
}

export interface ZeroOptions extends WriteOptions {
  /** The client asked that the range stay allocated (NBD NO_HOLE). */
  noHole: boolean;
  /** Fail with ENOTSUP unless zeroing is faster than writing zeroes (NBD FAST_ZERO). */
  fastZero: boolean;
}

/** One extent of base:allocation status. */
export interface AllocationStatus {
  lengthBytes: number;
  /** Not allocated in the backing storage. */
  hole: boolean;
  /** Reads as zeroes. */
  zero: boolean;
}

/** One extent of a metadata context other than base:allocation (flags as the context defines). */
export interface ContextExtent {
  lengthBytes: number;
  flags: number;
}

export interface BlockDeviceCapabilities {
  flush: boolean;
  fua: boolean;
  trim: boolean;
  writeZeroes: boolean;
  fastZero: boolean;
  cache: boolean;
  /** FLUSH and FUA on one connection cover writes completed on every connection. */
  multiConnection: boolean;
}

export interface BlockDevice {
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  /** One line for people: what this device is (volume, instant). */
  readonly description: string;
  readonly capabilities: BlockDeviceCapabilities;

  read(offsetBytes: number, lengthBytes: number): Promise<Buffer>;
  write(offsetBytes: number, data: Buffer, options: WriteOptions): Promise<void>;
  writeZeroes(offsetBytes: number, lengthBytes: number, options: ZeroOptions): Promise<void>;
  trim(offsetBytes: number, lengthBytes: number, options: WriteOptions): Promise<void>;
  /** Resolve once every write completed before this call is durable. */
  flush(): Promise<void>;
  /** A prefetch hint; never changes what is read. */
  cache(offsetBytes: number, lengthBytes: number): Promise<void>;
  /** base:allocation of a range: at most extentCountMax extents, covering a prefix of it. */
  allocation(offsetBytes: number, lengthBytes: number, extentCountMax: number): Promise<AllocationStatus[]>;
  /** Metadata contexts the device offers besides base:allocation (e.g. qemu:dirty-bitmap:NAME). */
  metaContexts?(): string[];
  /** Status of a range in one of those contexts: at most extentCountMax extents, a prefix of it. */
  contextStatus?(context: string, offsetBytes: number, lengthBytes: number, extentCountMax: number): Promise<ContextExtent[]>;
}
