// The cdp-nbd command line's entry point. libuv's worker pool is sized before anything uses it:
// the live image is written by several workers at once (storage/primary-image.ts) while others
// write the log, sync, and read.
process.env.UV_THREADPOOL_SIZE ??= '8';
await import('./commands.js');
