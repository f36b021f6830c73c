/* Aligned writes for O_DIRECT, and reads that never wait for the disk. See aligned_write.h. */
#include "aligned_write.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

/* Staging buffers this large come straight from mmap and go straight back: glibc would keep
 * freed large blocks in per-thread arenas, and the process would hold on to them. */
#define STAGING_MMAP_BYTES_MIN (64 * 1024)

static uint8_t *staging_allocate(size_t alignment, size_t bytes) {
  if (bytes >= STAGING_MMAP_BYTES_MIN && alignment <= 4096) {
    void *memory = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return memory == MAP_FAILED ? NULL : memory;
  }
  void *memory = NULL;
  return posix_memalign(&memory, alignment, bytes) == 0 ? memory : NULL;
}

static void staging_free(uint8_t *memory, size_t alignment, size_t bytes) {
  if (bytes >= STAGING_MMAP_BYTES_MIN && alignment <= 4096) munmap(memory, bytes);
  else free(memory);
}

#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif
#ifndef RWF_DSYNC
#define RWF_DSYNC 0x00000002
#endif

struct aligned_write *aligned_write_new(size_t count) {
  struct aligned_write *request = calloc(1, sizeof *request);
  if (request == NULL) return NULL;
  request->count = count;
  request->pieces = calloc(count > 0 ? count : 1, sizeof *request->pieces);
  request->piece_bytes = calloc(count > 0 ? count : 1, sizeof *request->piece_bytes);
  if (request->pieces == NULL || request->piece_bytes == NULL) {
    aligned_write_free(request);
    return NULL;
  }
  return request;
}

void aligned_write_execute(struct aligned_write *request) {
  size_t total_bytes = request->prefix_bytes;
  for (size_t index = 0; index < request->count; index++) total_bytes += request->piece_bytes[index];
  size_t alignment = request->alignment_bytes;
  size_t padded_bytes = (total_bytes + alignment - 1) / alignment * alignment;
  if (padded_bytes == 0) return;
  uint8_t *staging = staging_allocate(alignment, padded_bytes);
  if (staging == NULL) {
    request->error_number = ENOMEM;
    return;
  }
  size_t filled = 0;
  if (request->prefix_bytes > 0) memcpy(staging, request->prefix, request->prefix_bytes);
  filled += request->prefix_bytes;
  for (size_t index = 0; index < request->count; index++) {
    memcpy(staging + filled, request->pieces[index], request->piece_bytes[index]);
    filled += request->piece_bytes[index];
  }
  memset(staging + filled, 0, padded_bytes - filled);

  size_t written = 0;
  while (written < padded_bytes) {
    struct iovec piece = {.iov_base = staging + written, .iov_len = padded_bytes - written};
    ssize_t result = pwritev2(request->fd, &piece, 1, (off_t)(request->position_bytes + (int64_t)written),
                              request->durable ? RWF_DSYNC : 0);
    if (result < 0) {
      if (errno == EINTR) continue;
      request->error_number = errno;
      break;
    }
    if (result == 0) {
      request->error_number = EIO;
      break;
    }
    written += (size_t)result;
  }
  staging_free(staging, alignment, padded_bytes);
}

void aligned_write_free(struct aligned_write *request) {
  if (request == NULL) return;
  free(request->pieces);
  free(request->piece_bytes);
  free(request);
}

int64_t read_without_waiting(int fd, uint8_t *target, size_t length_bytes, int64_t position_bytes) {
  struct iovec piece = {.iov_base = target, .iov_len = length_bytes};
  for (;;) {
    ssize_t result = preadv2(fd, &piece, 1, (off_t)position_bytes, RWF_NOWAIT);
    if (result >= 0) return result;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL) return 0;
    return -(int64_t)errno;
  }
}
