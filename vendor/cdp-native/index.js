// Loads the native addon built by `node-gyp rebuild` (the install script) and
// re-exports its functions by name. README.md is the specification.
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const binding = require('./build/Release/cdp_native.node');

export const crc32c = binding.crc32c;
export const crc32cv = binding.crc32cv;
export const crc32cImplementation = binding.crc32cImplementation;
export const punchHole = binding.punchHole;
export const zeroRange = binding.zeroRange;
export const allocate = binding.allocate;
export const seekData = binding.seekData;
export const seekHole = binding.seekHole;
export const blockSize = binding.blockSize;
export const pwriteBatch = binding.pwriteBatch;
export const pwriteAligned = binding.pwriteAligned;
export const preadNoWait = binding.preadNoWait;
export const pwriteAlignedSync = binding.pwriteAlignedSync;
export const limitAllocatorRetention = binding.limitAllocatorRetention;
export const setTcpKeepAlive = binding.setTcpKeepAlive;
export const setTcpUserTimeout = binding.setTcpUserTimeout;
export const lockExclusive = binding.lockExclusive;
