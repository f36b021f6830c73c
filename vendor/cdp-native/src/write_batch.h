/* A batch of positioned writes done on a libuv worker thread: adjacent writes are joined into
 * one pwritev, partial writes and EINTR are retried, the first failure stops the batch. */
#ifndef CDP_NATIVE_WRITE_BATCH_H
#define CDP_NATIVE_WRITE_BATCH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include <node_api.h>

struct write_batch {
  napi_async_work work;
  napi_deferred deferred;
  /* Keeps the JavaScript array of buffers (and so their memory) alive until completion. */
  napi_ref buffers_reference;
  int fd;
  size_t count;
  struct iovec *pieces;
  int64_t *positions;
  /* 0, or the errno of the first failed write. */
  int error_number;
};

struct write_batch *write_batch_new(int fd, size_t count);
void write_batch_set(struct write_batch *batch, size_t index, const uint8_t *bytes,
                     size_t length_bytes, int64_t position_bytes);
/* Runs on the worker thread: touches only the batch, never JavaScript. */
void write_batch_execute(struct write_batch *batch);
void write_batch_free(struct write_batch *batch);

#endif
