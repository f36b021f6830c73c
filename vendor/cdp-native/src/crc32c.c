/* CRC-32C, two implementations behind one entry point (README.md, "crc32c"):
 * - x86-64 with SSE4.2: the crc32 instruction, 8 bytes per step, over three
 *   independent streams so that its 3-cycle latency is hidden, the three
 *   partial CRCs joined with precomputed "append N zero bytes" tables
 *   (Mark Adler's method);
 * - anywhere else: slicing-by-8 tables.
 * CDP_NATIVE_CRC32C=table in the environment forces the tables, so that they
 * can be tested and measured on x86-64. */
#include "crc32c.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CRC32C_HAVE_SSE42 1
#include <nmmintrin.h>
#endif

#define CRC32C_POLYNOMIAL 0x82F63B78u

/* Stream lengths for the three-way SSE4.2 loop: long ones for large buffers,
 * short ones so that a 4 KiB record still runs mostly three-way. Both must be
 * powers of two (crc32c_zeros_operator) and multiples of 8. */
#define STREAM_LONG_BYTES 8192
#define STREAM_SHORT_BYTES 256

typedef uint32_t (*crc32c_function)(uint32_t crc, const uint8_t *data, size_t length_bytes);

static pthread_once_t initialize_once = PTHREAD_ONCE_INIT;
static crc32c_function crc32c_selected;
static const char *crc32c_selected_name;

/* slicing_table[k][b]: CRC register after byte b followed by k zero bytes. */
static uint32_t slicing_table[8][256];

static uint64_t load_u64(const uint8_t *bytes) {
  uint64_t word;
  memcpy(&word, bytes, sizeof word);
  return word;
}

static uint32_t crc32c_table_byte(uint32_t register_value, uint8_t byte) {
  return slicing_table[0][(register_value ^ byte) & 0xff] ^ (register_value >> 8);
}

static uint32_t crc32c_table(uint32_t crc, const uint8_t *data, size_t length_bytes) {
  uint32_t register_value = ~crc;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  while (length_bytes >= 8) {
    uint64_t word = load_u64(data) ^ register_value;
    register_value = slicing_table[7][word & 0xff] ^
                     slicing_table[6][(word >> 8) & 0xff] ^
                     slicing_table[5][(word >> 16) & 0xff] ^
                     slicing_table[4][(word >> 24) & 0xff] ^
                     slicing_table[3][(word >> 32) & 0xff] ^
                     slicing_table[2][(word >> 40) & 0xff] ^
                     slicing_table[1][(word >> 48) & 0xff] ^
                     slicing_table[0][word >> 56];
    data += 8;
    length_bytes -= 8;
  }
#endif
  while (length_bytes > 0) {
    register_value = crc32c_table_byte(register_value, *data);
    data++;
    length_bytes--;
  }
  return ~register_value;
}

static void build_slicing_table(void) {
  for (uint32_t byte = 0; byte < 256; byte++) {
    uint32_t register_value = byte;
    for (int bit = 0; bit < 8; bit++) {
      register_value = (register_value >> 1) ^ (CRC32C_POLYNOMIAL & (0u - (register_value & 1)));
    }
    slicing_table[0][byte] = register_value;
  }
  for (uint32_t byte = 0; byte < 256; byte++) {
    for (int k = 1; k < 8; k++) {
      uint32_t previous = slicing_table[k - 1][byte];
      slicing_table[k][byte] = (previous >> 8) ^ slicing_table[0][previous & 0xff];
    }
  }
}

#ifdef CRC32C_HAVE_SSE42

/* zeros_long[k][b], zeros_short[k][b]: the CRC register b << (8 * k) after
 * STREAM_LONG_BYTES (STREAM_SHORT_BYTES) zero bytes. The operator is linear,
 * so four lookups shift a whole register. */
static uint32_t zeros_long[4][256];
static uint32_t zeros_short[4][256];

/* A 32x32 matrix over GF(2): column n is the image of bit n. */
static uint32_t gf2_matrix_times(const uint32_t matrix[32], uint32_t vector) {
  uint32_t sum = 0;
  for (int n = 0; vector != 0; n++, vector >>= 1) {
    if (vector & 1) sum ^= matrix[n];
  }
  return sum;
}

static void gf2_matrix_square(uint32_t square[32], const uint32_t matrix[32]) {
  for (int n = 0; n < 32; n++) square[n] = gf2_matrix_times(matrix, matrix[n]);
}

/* The operator that appends length_bytes zero bytes to a CRC register;
 * length_bytes is a power of two. */
static void crc32c_zeros_operator(uint32_t zeros_operator[32], size_t length_bytes) {
  uint32_t one_zero_bit[32];
  one_zero_bit[0] = CRC32C_POLYNOMIAL;
  for (int n = 1; n < 32; n++) one_zero_bit[n] = 1u << (n - 1);

  uint32_t squared[32];
  memcpy(zeros_operator, one_zero_bit, sizeof one_zero_bit);
  for (size_t bits = 1; bits < length_bytes * 8; bits *= 2) {
    gf2_matrix_square(squared, zeros_operator);
    memcpy(zeros_operator, squared, sizeof squared);
  }
}

static void build_zeros_table(uint32_t table[4][256], size_t length_bytes) {
  uint32_t zeros_operator[32];
  crc32c_zeros_operator(zeros_operator, length_bytes);
  for (uint32_t byte = 0; byte < 256; byte++) {
    for (int k = 0; k < 4; k++) table[k][byte] = gf2_matrix_times(zeros_operator, byte << (8 * k));
  }
}

static uint32_t crc32c_shift(uint32_t table[4][256], uint32_t register_value) {
  return table[0][register_value & 0xff] ^ table[1][(register_value >> 8) & 0xff] ^
         table[2][(register_value >> 16) & 0xff] ^ table[3][register_value >> 24];
}

/* Runs the register over stream_bytes * 3 bytes as three streams at a time,
 * for as long as that many remain. */
__attribute__((target("sse4.2"))) static uint64_t crc32c_sse42_three_way(
    uint64_t register_value, const uint8_t **data, size_t *length_bytes, size_t stream_bytes,
    uint32_t zeros[4][256]) {
  while (*length_bytes >= stream_bytes * 3) {
    const uint8_t *first = *data;
    const uint8_t *end = first + stream_bytes;
    uint64_t second_register = 0;
    uint64_t third_register = 0;
    do {
      register_value = _mm_crc32_u64(register_value, load_u64(first));
      second_register = _mm_crc32_u64(second_register, load_u64(first + stream_bytes));
      third_register = _mm_crc32_u64(third_register, load_u64(first + stream_bytes * 2));
      first += 8;
    } while (first < end);
    register_value = crc32c_shift(zeros, (uint32_t)register_value) ^ (uint32_t)second_register;
    register_value = crc32c_shift(zeros, (uint32_t)register_value) ^ (uint32_t)third_register;
    *data += stream_bytes * 3;
    *length_bytes -= stream_bytes * 3;
  }
  return register_value;
}

__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc, const uint8_t *data,
                                                               size_t length_bytes) {
  uint64_t register_value = (uint32_t)~crc;
  register_value = crc32c_sse42_three_way(register_value, &data, &length_bytes, STREAM_LONG_BYTES,
                                          zeros_long);
  register_value = crc32c_sse42_three_way(register_value, &data, &length_bytes, STREAM_SHORT_BYTES,
                                          zeros_short);
  while (length_bytes >= 8) {
    register_value = _mm_crc32_u64(register_value, load_u64(data));
    data += 8;
    length_bytes -= 8;
  }
  uint32_t register_low = (uint32_t)register_value;
  while (length_bytes > 0) {
    register_low = _mm_crc32_u8(register_low, *data);
    data++;
    length_bytes--;
  }
  return ~register_low;
}

static int cpu_has_sse42(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("sse4.2");
}

static int table_forced_by_environment(void) {
  const char *choice = getenv("CDP_NATIVE_CRC32C");
  return choice != NULL && strcmp(choice, "table") == 0;
}

#endif /* CRC32C_HAVE_SSE42 */

static void initialize(void) {
  build_slicing_table();
  crc32c_selected = crc32c_table;
  crc32c_selected_name = "table";
#ifdef CRC32C_HAVE_SSE42
  if (cpu_has_sse42() && !table_forced_by_environment()) {
    build_zeros_table(zeros_long, STREAM_LONG_BYTES);
    build_zeros_table(zeros_short, STREAM_SHORT_BYTES);
    crc32c_selected = crc32c_sse42;
    crc32c_selected_name = "sse4.2";
  }
#endif
}

void crc32c_initialize(void) { pthread_once(&initialize_once, initialize); }

uint32_t crc32c_update(uint32_t crc, const uint8_t *data, size_t length_bytes) {
  return crc32c_selected(crc, data, length_bytes);
}

const char *crc32c_implementation_name(void) { return crc32c_selected_name; }
