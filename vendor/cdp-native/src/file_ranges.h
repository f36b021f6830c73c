/* Byte ranges of an open file: fallocate (punch hole, zero range, allocate),
 * lseek SEEK_DATA / SEEK_HOLE, and the preferred block size.
 * See README.md. Each function returns 0 or the errno of the failed call. */
#ifndef CDP_NATIVE_FILE_RANGES_H
#define CDP_NATIVE_FILE_RANGES_H

#include <stdint.h>

/* fallocate(PUNCH_HOLE | KEEP_SIZE): the range reads as zeroes, its blocks are freed. */
int file_punch_hole(int fd, int64_t offset_bytes, int64_t length_bytes);

/* fallocate(ZERO_RANGE | KEEP_SIZE): the range reads as zeroes and stays allocated. */
int file_zero_range(int fd, int64_t offset_bytes, int64_t length_bytes);

/* fallocate(0): reserves blocks for the range, extending the file if it ends past the end. */
int file_allocate(int fd, int64_t offset_bytes, int64_t length_bytes);

/* lseek(SEEK_DATA) / lseek(SEEK_HOLE); *found_bytes is -1 where lseek fails with ENXIO
 * (offset at or past the end of the file, or no data after it). */
int file_seek_data(int fd, int64_t offset_bytes, int64_t *found_bytes);
int file_seek_hole(int fd, int64_t offset_bytes, int64_t *found_bytes);

/* fstat's st_blksize. */
int file_block_size(int fd, int64_t *block_size_bytes);

#endif
