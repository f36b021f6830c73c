/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, as in iSCSI and ext4).
 * See README.md, "crc32c". */
#ifndef CDP_NATIVE_CRC32C_H
#define CDP_NATIVE_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Chooses the implementation (once per process) and builds its tables.
 * Safe to call from several threads; every call after the first does nothing. */
void crc32c_initialize(void);

/* Continues a CRC-32C: `crc` is the finished CRC of the bytes before `data`
 * (0 for none), the result is the finished CRC of them followed by `data`. */
uint32_t crc32c_update(uint32_t crc, const uint8_t *data, size_t length_bytes);

/* "sse4.2" or "table": the implementation crc32c_update uses. */
const char *crc32c_implementation_name(void);

#endif
