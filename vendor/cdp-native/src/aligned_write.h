/* One write of a prefix and a list of buffers, copied into an aligned, zero-padded staging buffer
 * on a libuv worker thread, as O_DIRECT needs: the write-log writer rewrites the partial block at
 * the end of the log with every batch, so the bytes before the batch come along as the prefix. */
#ifndef CDP_NATIVE_ALIGNED_WRITE_H
#define CDP_NATIVE_ALIGNED_WRITE_H

#include <stddef.h>
#include <stdint.h>

#include <node_api.h>

struct aligned_write {
  napi_async_work work;
  napi_deferred deferred;
  /* Keeps the JavaScript prefix and buffer array (and so their memory) alive until completion. */
  napi_ref prefix_reference;
  napi_ref buffers_reference;
  int fd;
  int64_t position_bytes;
  size_t alignment_bytes;
  const uint8_t *prefix;
  size_t prefix_bytes;
  size_t count;
  const uint8_t **pieces;
  size_t *piece_bytes;
  /* Write with RWF_DSYNC: durable (data and the metadata to find it) when the call returns. */
  int durable;
  int error_number;
};

struct aligned_write *aligned_write_new(size_t count);
/* Runs on the worker thread: touches only the request, never JavaScript. */
void aligned_write_execute(struct aligned_write *request);
void aligned_write_free(struct aligned_write *request);

/* pread with RWF_NOWAIT: bytes read from the page cache without waiting for the disk, 0 when
 * nothing could be read without blocking (or the kernel lacks RWF_NOWAIT), -errno on error. */
int64_t read_without_waiting(int fd, uint8_t *target, size_t length_bytes, int64_t position_bytes);

#endif
