/* fallocate and lseek SEEK_DATA / SEEK_HOLE on Linux (README.md, "File ranges").
 * Other systems build, but the fallocate calls fail with EOPNOTSUPP there. */
#include "file_ranges.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(sizeof(off_t) == 8, "off_t must be 64 bits (_FILE_OFFSET_BITS=64)");

#if defined(__linux__)

#include <linux/falloc.h>

static int fallocate_retrying(int fd, int mode, int64_t offset_bytes, int64_t length_bytes) {
  int result;
  do {
    result = fallocate(fd, mode, (off_t)offset_bytes, (off_t)length_bytes);
  } while (result != 0 && errno == EINTR);
  return result == 0 ? 0 : errno;
}

#else

#define FALLOC_FL_KEEP_SIZE 0x01
#define FALLOC_FL_PUNCH_HOLE 0x02
#define FALLOC_FL_ZERO_RANGE 0x10

static int fallocate_retrying(int fd, int mode, int64_t offset_bytes, int64_t length_bytes) {
  (void)fd, (void)mode, (void)offset_bytes, (void)length_bytes;
  return EOPNOTSUPP;
}

#endif

int file_punch_hole(int fd, int64_t offset_bytes, int64_t length_bytes) {
  return fallocate_retrying(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset_bytes,
                            length_bytes);
}

int file_zero_range(int fd, int64_t offset_bytes, int64_t length_bytes) {
  return fallocate_retrying(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset_bytes,
                            length_bytes);
}

int file_allocate(int fd, int64_t offset_bytes, int64_t length_bytes) {
  return fallocate_retrying(fd, 0, offset_bytes, length_bytes);
}

static int seek(int fd, int64_t offset_bytes, int whence, int64_t *found_bytes) {
  off_t found = lseek(fd, (off_t)offset_bytes, whence);
  if (found >= 0) {
    *found_bytes = found;
    return 0;
  }
  if (errno == ENXIO) {
    *found_bytes = -1;
    return 0;
  }
  return errno;
}

int file_seek_data(int fd, int64_t offset_bytes, int64_t *found_bytes) {
  return seek(fd, offset_bytes, SEEK_DATA, found_bytes);
}

int file_seek_hole(int fd, int64_t offset_bytes, int64_t *found_bytes) {
  return seek(fd, offset_bytes, SEEK_HOLE, found_bytes);
}

int file_block_size(int fd, int64_t *block_size_bytes) {
  struct stat status;
  if (fstat(fd, &status) != 0) return errno;
  *block_size_bytes = status.st_blksize;
  return 0;
}
