/* Positioned writes in bulk, off the JavaScript thread. See write_batch.h. */
#include "write_batch.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

struct write_batch *write_batch_new(int fd, size_t count) {
  struct write_batch *batch = calloc(1, sizeof *batch);
  if (batch == NULL) return NULL;
  batch->fd = fd;
  batch->count = count;
  batch->pieces = calloc(count > 0 ? count : 1, sizeof *batch->pieces);
  batch->positions = calloc(count > 0 ? count : 1, sizeof *batch->positions);
  if (batch->pieces == NULL || batch->positions == NULL) {
    write_batch_free(batch);
    return NULL;
  }
  return batch;
}

void write_batch_set(struct write_batch *batch, size_t index, const uint8_t *bytes,
                     size_t length_bytes, int64_t position_bytes) {
  batch->pieces[index].iov_base = (void *)bytes;
  batch->pieces[index].iov_len = length_bytes;
  batch->positions[index] = position_bytes;
}

/* Write every byte of pieces[0..count) from position; returns 0 or an errno. */
static int write_all(int fd, struct iovec *pieces, size_t count, int64_t position) {
  while (count > 0) {
    if (pieces->iov_len == 0) {
      pieces++;
      count--;
      continue;
    }
    ssize_t written = pwritev(fd, pieces, (int)count, (off_t)position);
    if (written < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (written == 0) return EIO;
    position += written;
    while (count > 0 && (size_t)written >= pieces->iov_len) {
      written -= (ssize_t)pieces->iov_len;
      pieces++;
      count--;
    }
    if (count > 0 && written > 0) {
      pieces->iov_base = (uint8_t *)pieces->iov_base + written;
      pieces->iov_len -= (size_t)written;
    }
  }
  return 0;
}

void write_batch_execute(struct write_batch *batch) {
  size_t first = 0;
  while (first < batch->count) {
    size_t end = first + 1;
    int64_t next_position = batch->positions[first] + (int64_t)batch->pieces[first].iov_len;
    while (end < batch->count && end - first < IOV_MAX && batch->positions[end] == next_position) {
      next_position += (int64_t)batch->pieces[end].iov_len;
      end++;
    }
    int error_number = write_all(batch->fd, &batch->pieces[first], end - first, batch->positions[first]);
    if (error_number != 0) {
      batch->error_number = error_number;
      return;
    }
    first = end;
  }
}

void write_batch_free(struct write_batch *batch) {
  if (batch == NULL) return;
  free(batch->pieces);
  free(batch->positions);
  free(batch);
}
