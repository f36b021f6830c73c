/* The Node-API surface of cdp-native: reads and checks the JavaScript
 * arguments, calls crc32c.c and file_ranges.c, and turns a failed system call
 * into an Error shaped like Node's fs errors. README.md is the specification. */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <malloc.h>

#include <node_api.h>

#include "crc32c.h"
#include "file_ranges.h"
#include "write_batch.h"
#include "aligned_write.h"
#include "socket_options.h"
#include "file_lock.h"

/* Largest offset or length accepted: every integer up to it is exact in a double. */
#define BYTE_COUNT_MAX 9007199254740992.0 /* 2^53 */
#define FD_MAX 2147483647.0               /* INT32_MAX */
#define CRC_MAX 4294967295.0              /* UINT32_MAX */
#define ARGUMENT_COUNT_MAX 4

/* Ends the calling callback with NULL (undefined plus a pending exception)
 * when a Node-API call fails; such failures are bugs or out-of-memory. */
#define CHECK_NAPI(env, call)                  \
  do {                                         \
    if ((call) != napi_ok) {                   \
      throw_napi_failure(env, #call);          \
      return NULL;                             \
    }                                          \
  } while (0)

struct errno_description {
  int number;
  const char *name;
  const char *message;
};

/* The errnos that fallocate(2), lseek(2), fstat(2), setsockopt(2) and flock(2) document, worded as libuv words them. */
static const struct errno_description errno_descriptions[] = {
    {EACCES, "EACCES", "permission denied"},
    {EAGAIN, "EAGAIN", "resource temporarily unavailable"},
    {EBADF, "EBADF", "bad file descriptor"},
    {EDQUOT, "EDQUOT", "disk quota exceeded"},
    {EFAULT, "EFAULT", "bad address in system call argument"},
    {EFBIG, "EFBIG", "file too large"},
    {EINTR, "EINTR", "interrupted system call"},
    {EINVAL, "EINVAL", "invalid argument"},
    {EIO, "EIO", "i/o error"},
    {EISDIR, "EISDIR", "illegal operation on a directory"},
    {ENODEV, "ENODEV", "no such device"},
    {ENOLCK, "ENOLCK", "no locks available"},
    {ENOMEM, "ENOMEM", "not enough memory"},
    {ENOSPC, "ENOSPC", "no space left on device"},
    {ENOSYS, "ENOSYS", "function not implemented"},
    {ENOTSOCK, "ENOTSOCK", "socket operation on non-socket"},
    {ENOPROTOOPT, "ENOPROTOOPT", "protocol not available"},
    {ENXIO, "ENXIO", "no such device or address"},
    {EOPNOTSUPP, "EOPNOTSUPP", "operation not supported"},
    {EOVERFLOW, "EOVERFLOW", "value too large for defined data type"},
    {EPERM, "EPERM", "operation not permitted"},
    {EROFS, "EROFS", "read-only file system"},
    {ESPIPE, "ESPIPE", "invalid seek"},
    {ETXTBSY, "ETXTBSY", "text file is busy"},
};

static const struct errno_description unknown_errno = {0, "UNKNOWN", "unknown error"};

static const struct errno_description *describe_errno(int number) {
  for (size_t i = 0; i < sizeof errno_descriptions / sizeof errno_descriptions[0]; i++) {
    if (errno_descriptions[i].number == number) return &errno_descriptions[i];
  }
  return &unknown_errno;
}

static void throw_napi_failure(napi_env env, const char *call) {
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) return;
  const napi_extended_error_info *info = NULL;
  napi_get_last_error_info(env, &info);
  char message[256];
  snprintf(message, sizeof message, "cdp-native: %s failed: %s", call,
           info != NULL && info->error_message != NULL ? info->error_message : "unknown");
  napi_throw_error(env, NULL, message);
}

/* Creates Error { message: "EBADF: bad file descriptor, fallocate", code: "EBADF",
 * errno: -9, syscall: "fallocate" }: the shape and the negative errno of Node's fs.
 * Returns NULL (with an exception pending) if that fails. */
static napi_value create_system_error(napi_env env, int error_number, const char *syscall) {
  const struct errno_description *description = describe_errno(error_number);
  char message[160];
  snprintf(message, sizeof message, "%s: %s, %s", description->name, description->message,
           syscall);
  napi_value code, message_value, error, errno_value, syscall_value;
  if (napi_create_string_utf8(env, description->name, NAPI_AUTO_LENGTH, &code) != napi_ok ||
      napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &message_value) != napi_ok ||
      napi_create_error(env, code, message_value, &error) != napi_ok ||
      napi_create_int32(env, -error_number, &errno_value) != napi_ok ||
      napi_set_named_property(env, error, "errno", errno_value) != napi_ok ||
      napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &syscall_value) != napi_ok ||
      napi_set_named_property(env, error, "syscall", syscall_value) != napi_ok) {
    throw_napi_failure(env, "creating the system error");
    return NULL;
  }
  return error;
}

static void throw_system_error(napi_env env, int error_number, const char *syscall) {
  napi_value error = create_system_error(env, error_number, syscall);
  if (error != NULL) napi_throw(env, error);
}

static const char *value_type_name(napi_valuetype type) {
  switch (type) {
    case napi_undefined: return "undefined";
    case napi_null: return "null";
    case napi_boolean: return "boolean";
    case napi_number: return "number";
    case napi_string: return "string";
    case napi_symbol: return "symbol";
    case napi_object: return "object";
    case napi_function: return "function";
    case napi_external: return "external";
    case napi_bigint: return "bigint";
  }
  return "unknown";
}

/* Writes `number` as JavaScript would print it, near enough for an error message. */
static void format_number(double number, char *text, size_t text_size) {
  if (isnan(number)) {
    snprintf(text, text_size, "NaN");
  } else if (isinf(number)) {
    snprintf(text, text_size, "%sInfinity", number < 0 ? "-" : "");
  } else {
    snprintf(text, text_size, "%.15g", number);
    if (strtod(text, NULL) != number) snprintf(text, text_size, "%.17g", number);
  }
}

/* Reads an integer in [0, maximum]; otherwise throws a TypeError and returns false. */
static bool read_integer(napi_env env, napi_value value, const char *name, double maximum,
                         const char *maximum_text, double *result) {
  napi_valuetype type;
  if (napi_typeof(env, value, &type) != napi_ok) {
    throw_napi_failure(env, "napi_typeof");
    return false;
  }
  char message[224];
  if (type != napi_number) {
    snprintf(message, sizeof message, "The \"%s\" argument must be of type number. Received %s",
             name, value_type_name(type));
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", message);
    return false;
  }
  double number;
  if (napi_get_value_double(env, value, &number) != napi_ok) {
    throw_napi_failure(env, "napi_get_value_double");
    return false;
  }
  if (!(number >= 0 && number <= maximum && floor(number) == number)) {
    char received[32];
    format_number(number, received, sizeof received);
    snprintf(message, sizeof message,
             "The \"%s\" argument must be an integer from 0 to %s. Received %s", name,
             maximum_text, received);
    napi_throw_type_error(env, "ERR_OUT_OF_RANGE", message);
    return false;
  }
  *result = number;
  return true;
}

static bool read_fd(napi_env env, napi_value value, int *fd) {
  double number;
  if (!read_integer(env, value, "fd", FD_MAX, "2147483647", &number)) return false;
  *fd = (int)number;
  return true;
}

static bool read_byte_count(napi_env env, napi_value value, const char *name, int64_t *bytes) {
  double number;
  if (!read_integer(env, value, name, BYTE_COUNT_MAX, "2^53", &number)) return false;
  *bytes = (int64_t)number;
  return true;
}

/* The optional `initial` CRC: undefined means 0. */
static bool read_initial_crc(napi_env env, napi_value value, uint32_t *crc) {
  napi_valuetype type;
  if (napi_typeof(env, value, &type) != napi_ok) {
    throw_napi_failure(env, "napi_typeof");
    return false;
  }
  if (type == napi_undefined) {
    *crc = 0;
    return true;
  }
  double number;
  if (!read_integer(env, value, "initial", CRC_MAX, "2^32 - 1", &number)) return false;
  *crc = (uint32_t)number;
  return true;
}

/* Reads a Uint8Array (Buffer included), honouring its byteOffset and byteLength.
 * `index` names an element of the argument `name` in the error, -1 names the argument. */
static bool read_bytes(napi_env env, napi_value value, const char *name, int64_t index,
                       const uint8_t **data, size_t *length_bytes) {
  bool is_typed_array = false;
  if (napi_is_typedarray(env, value, &is_typed_array) != napi_ok) {
    throw_napi_failure(env, "napi_is_typedarray");
    return false;
  }
  napi_typedarray_type type = napi_int8_array;
  void *bytes = NULL;
  if (is_typed_array &&
      napi_get_typedarray_info(env, value, &type, length_bytes, &bytes, NULL, NULL) != napi_ok) {
    throw_napi_failure(env, "napi_get_typedarray_info");
    return false;
  }
  if (!is_typed_array || type != napi_uint8_array) {
    char message[160];
    if (index < 0) {
      snprintf(message, sizeof message, "The \"%s\" argument must be an instance of Uint8Array",
               name);
    } else {
      snprintf(message, sizeof message,
               "The \"%s[%lld]\" argument must be an instance of Uint8Array", name,
               (long long)index);
    }
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", message);
    return false;
  }
  *data = bytes;
  return true;
}

/* Fills arguments[0..count) (missing ones are undefined). */
static bool read_arguments(napi_env env, napi_callback_info info, size_t count,
                           napi_value arguments[ARGUMENT_COUNT_MAX]) {
  size_t given = count;
  if (napi_get_cb_info(env, info, &given, arguments, NULL, NULL) != napi_ok) {
    throw_napi_failure(env, "napi_get_cb_info");
    return false;
  }
  return true;
}

static napi_value create_crc(napi_env env, uint32_t crc) {
  napi_value result;
  CHECK_NAPI(env, napi_create_uint32(env, crc, &result));
  return result;
}

/* crc32c(data: Uint8Array, initial?: number): number */
static napi_value crc32c(napi_env env, napi_callback_info info) {
  napi_value arguments[ARGUMENT_COUNT_MAX];
  const uint8_t *data;
  size_t length_bytes;
  uint32_t crc;
  if (!read_arguments(env, info, 2, arguments) ||
      !read_bytes(env, arguments[0], "data", -1, &data, &length_bytes) ||
      !read_initial_crc(env, arguments[1], &crc)) {
    return NULL;
  }
  return create_crc(env, crc32c_update(crc, data, length_bytes));
}

/* crc32cv(buffers: Uint8Array[], initial?: number): number */
static napi_value crc32cv(napi_env env, napi_callback_info info) {
  napi_value arguments[ARGUMENT_COUNT_MAX];
  uint32_t crc;
  if (!read_arguments(env, info, 2, arguments) || !read_initial_crc(env, arguments[1], &crc)) {
    return NULL;
  }
  bool is_array = false;
  CHECK_NAPI(env, napi_is_array(env, arguments[0], &is_array));
  if (!is_array) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE",
                          "The \"buffers\" argument must be an Array of Uint8Array");
    return NULL;
  }
  uint32_t buffer_count;
  CHECK_NAPI(env, napi_get_array_length(env, arguments[0], &buffer_count));
  for (uint32_t index = 0; index < buffer_count; index++) {
    napi_value buffer;
    const uint8_t *data;
    size_t length_bytes;
    CHECK_NAPI(env, napi_get_element(env, arguments[0], index, &buffer));
    if (!read_bytes(env, buffer, "buffers", index, &data, &length_bytes)) return NULL;
    crc = crc32c_update(crc, data, length_bytes);
  }
  return create_crc(env, crc);
}

typedef int (*range_operation)(int fd, int64_t offset_bytes, int64_t length_bytes);

/* (fd, offsetBytes, lengthBytes) => undefined, for the three fallocate modes. */
static napi_value call_range_operation(napi_env env, napi_callback_info info,
                                       range_operation operation) {
  napi_value arguments[ARGUMENT_COUNT_MAX];
  int fd;
  int64_t offset_bytes, length_bytes;
  if (!read_arguments(env, info, 3, arguments) || !read_fd(env, arguments[0], &fd) ||
      !read_byte_count(env, arguments[1], "offsetBytes", &offset_bytes) ||
      !read_byte_count(env, arguments[2], "lengthBytes", &length_bytes)) {
    return NULL;
  }
  int error_number = operation(fd, offset_bytes, length_bytes);
  if (error_number != 0) throw_system_error(env, error_number, "fallocate");
  return NULL;
}

static napi_value punch_hole(napi_env env, napi_callback_info info) {
  return call_range_operation(env, info, file_punch_hole);
}

static napi_value zero_range(napi_env env, napi_callback_info info) {
  return call_range_operation(env, info, file_zero_range);
}

static napi_value allocate(napi_env env, napi_callback_info info) {
  return call_range_operation(env, info, file_allocate);
}

typedef int (*seek_operation)(int fd, int64_t offset_bytes, int64_t *found_bytes);

/* (fd, offsetBytes) => offset found, or -1. */
static napi_value call_seek_operation(napi_env env, napi_callback_info info,
                                      seek_operation operation) {
  napi_value arguments[ARGUMENT_COUNT_MAX];
  int fd;
  int64_t offset_bytes, found_bytes;
  if (!read_arguments(env, info, 2, arguments) || !read_fd(env, arguments[0], &fd) ||
      !read_byte_count(env, arguments[1], "offsetBytes", &offset_bytes)) {
    return NULL;
  }
  int error_number = operation(fd, offset_bytes, &found_bytes);
  if (error_number != 0) {
    throw_system_error(env, error_number, "lseek");
    return NULL;
  }
  napi_value result;
  CHECK_NAPI(env, napi_create_int64(env, found_bytes, &result));
  return result;
}

static napi_value seek_data(napi_env env, napi_callback_info info) {
  return call_seek_operation(env, info, file_seek_data);
}

static napi_value seek_hole(napi_env env, napi_callback_info info) {
  return call_seek_operation(env, info, file_seek_hole);
}

/* blockSize(fd: number): number */
static napi_value block_size(napi_env env, napi_callback_info info) {
  napi_value arguments[ARGUMENT_COUNT_MAX];
  int fd;
  int64_t block_size_bytes;
  if (!read_arguments(env, info, 1, arguments) || !read_fd(env, arguments[0], &fd)) return NULL;
  int error_number = file_block_size(fd, &block_size_bytes);
  if (error_number != 0) {
    throw_system_error(env, error_number, "fstat");
    return NULL;
  }
  napi_value result;
  CHECK_NAPI(env, napi_create_int64(env, block_size_bytes, &result));
  return result;
}

/* Keepalive settings are whole seconds (tcp(7)); a day is more than anyone means. */
#define KEEPALIVE_SECONDS_MAX 86400.0
#define KEEPALIVE_PROBE_COUNT_MAX 127.0
#define USER_TIMEOUT_MS_MAX 2147483647.0

/* setTcpKeepAlive(fd, idleSeconds, intervalSeconds, probeCount): undefined */
static napi_value set_tcp_keepalive(napi_env env, napi_callback_info info) {
  napi_value arguments[ARGUMENT_COUNT_MAX];
  int fd;
  double idle_seconds, interval_seconds, probe_count;
  if (!read_arguments(env, info, 4, arguments) || !read_fd(env, arguments[0], &fd) ||
      !read_integer(env, arguments[1], "idleSeconds", KEEPALIVE_SECONDS_MAX, "86400", &idle_seconds) ||
      !read_integer(env, arguments[2], "intervalSeconds", KEEPALIVE_SECONDS_MAX, "86400", &interval_seconds) ||
      !read_integer(env, arguments[3], "probeCount", KEEPALIVE_PROBE_COUNT_MAX, "127", &probe_count)) {
    return NULL;
  }
  /* The kernel refuses 0 for each of them with EINVAL: say so in the caller's terms. */
  if (idle_seconds < 1 || interval_seconds < 1 || probe_count < 1) {
    napi_throw_type_error(env, "ERR_OUT_OF_RANGE", "idleSeconds, intervalSeconds and probeCount must be at least 1");
    return NULL;
  }
  int error_number = socket_set_tcp_keepalive(fd, (int)idle_seconds, (int)interval_seconds, (int)probe_count);
  if (error_number != 0) throw_system_error(env, error_number, "setsockopt");
  return NULL;
}

/* setTcpUserTimeout(fd, timeoutMs): undefined */
static napi_value set_tcp_user_timeout(napi_env env, napi_callback_info info) {
  napi_value arguments[ARGUMENT_COUNT_MAX];
  int fd;
  double timeout_ms;
  if (!read_arguments(env, info, 2, arguments) || !read_fd(env, arguments[0], &fd) ||
      !read_integer(env, arguments[1], "timeoutMs", USER_TIMEOUT_MS_MAX, "2147483647", &timeout_ms)) {
    return NULL;
  }
  int error_number = socket_set_tcp_user_timeout(fd, (unsigned int)timeout_ms);
  if (error_number != 0) throw_system_error(env, error_number, "setsockopt");
  return NULL;
}

/* Completion of a pwriteBatch: resolve, or reject with an fs-shaped error. */
static void complete_write_batch(napi_env env, napi_status status, void *data) {
  struct write_batch *batch = data;
  napi_value result = NULL;
  if (status == napi_ok && batch->error_number == 0) {
    napi_get_undefined(env, &result);
    napi_resolve_deferred(env, batch->deferred, result);
  } else {
    int error_number = status == napi_ok ? batch->error_number : EIO;
    result = create_system_error(env, error_number, "pwritev");
    if (result == NULL) {
      napi_value exception;
      napi_get_and_clear_last_exception(env, &exception);
      result = exception;
    }
    napi_reject_deferred(env, batch->deferred, result);
  }
  napi_delete_reference(env, batch->buffers_reference);
  napi_delete_async_work(env, batch->work);
  write_batch_free(batch);
}

static void execute_write_batch(napi_env env, void *data) {
  write_batch_execute(data);
}

/* pwriteBatch(fd: number, buffers: Uint8Array[], positions: number[]): Promise<void> */
static napi_value pwrite_batch(napi_env env, napi_callback_info info) {
  napi_value arguments[ARGUMENT_COUNT_MAX];
  int fd;
  if (!read_arguments(env, info, 3, arguments) || !read_fd(env, arguments[0], &fd)) return NULL;
  bool buffers_is_array = false, positions_is_array = false;
  CHECK_NAPI(env, napi_is_array(env, arguments[1], &buffers_is_array));
  CHECK_NAPI(env, napi_is_array(env, arguments[2], &positions_is_array));
  if (!buffers_is_array || !positions_is_array) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE",
                          "pwriteBatch takes an Array of Uint8Array and an Array of positions");
    return NULL;
  }
  uint32_t count, position_count;
  CHECK_NAPI(env, napi_get_array_length(env, arguments[1], &count));
  CHECK_NAPI(env, napi_get_array_length(env, arguments[2], &position_count));
  if (count != position_count) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE",
                          "pwriteBatch needs one position per buffer");
    return NULL;
  }
  struct write_batch *batch = write_batch_new(fd, count);
  if (batch == NULL) {
    napi_throw_error(env, "ENOMEM", "cdp-native: out of memory for a write batch");
    return NULL;
  }
  for (uint32_t index = 0; index < count; index++) {
    napi_value buffer, position;
    const uint8_t *bytes;
    size_t length_bytes;
    int64_t position_bytes;
    if (napi_get_element(env, arguments[1], index, &buffer) != napi_ok ||
        napi_get_element(env, arguments[2], index, &position) != napi_ok ||
        !read_bytes(env, buffer, "buffers", index, &bytes, &length_bytes) ||
        !read_byte_count(env, position, "positions[]", &position_bytes)) {
      write_batch_free(batch);
      bool pending = false;
      napi_is_exception_pending(env, &pending);
      if (!pending) throw_napi_failure(env, "reading pwriteBatch arguments");
      return NULL;
    }
    write_batch_set(batch, index, bytes, length_bytes, position_bytes);
  }
  napi_value promise, name;
  if (napi_create_reference(env, arguments[1], 1, &batch->buffers_reference) != napi_ok ||
      napi_create_promise(env, &batch->deferred, &promise) != napi_ok ||
      napi_create_string_utf8(env, "cdp-native:pwriteBatch", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, execute_write_batch, complete_write_batch, batch,
                             &batch->work) != napi_ok ||
      napi_queue_async_work(env, batch->work) != napi_ok) {
    throw_napi_failure(env, "queueing pwriteBatch");
    return NULL;
  }
  return promise;
}

static void complete_aligned_write(napi_env env, napi_status status, void *data) {
  struct aligned_write *request = data;
  napi_value result = NULL;
  if (status == napi_ok && request->error_number == 0) {
    napi_get_undefined(env, &result);
    napi_resolve_deferred(env, request->deferred, result);
  } else {
    result = create_system_error(env, status == napi_ok ? request->error_number : EIO, "pwrite");
    if (result == NULL) napi_get_and_clear_last_exception(env, &result);
    napi_reject_deferred(env, request->deferred, result);
  }
  napi_delete_reference(env, request->prefix_reference);
  napi_delete_reference(env, request->buffers_reference);
  napi_delete_async_work(env, request->work);
  aligned_write_free(request);
}

static void execute_aligned_write(napi_env env, void *data) {
  aligned_write_execute(data);
}

/* Reads the arguments of pwriteAligned / pwriteAlignedSync into a new request (NULL: thrown). */
static struct aligned_write *read_aligned_write(napi_env env, napi_callback_info info, napi_value arguments[6]) {
  size_t given = 6;
  if (napi_get_cb_info(env, info, &given, arguments, NULL, NULL) != napi_ok) {
    throw_napi_failure(env, "napi_get_cb_info");
    return NULL;
  }
  for (size_t index = given; index < 6; index++) napi_get_undefined(env, &arguments[index]);
  int fd;
  const uint8_t *prefix;
  size_t prefix_bytes;
  int64_t position_bytes, alignment_bytes;
  bool is_array = false;
  if (!read_fd(env, arguments[0], &fd) || !read_bytes(env, arguments[1], "prefix", -1, &prefix, &prefix_bytes) ||
      !read_byte_count(env, arguments[3], "positionBytes", &position_bytes) ||
      !read_byte_count(env, arguments[4], "alignmentBytes", &alignment_bytes)) {
    return NULL;
  }
  if (napi_is_array(env, arguments[2], &is_array) != napi_ok || !is_array) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "The \"buffers\" argument must be an Array of Uint8Array");
    return NULL;
  }
  if (alignment_bytes < 512 || (alignment_bytes & (alignment_bytes - 1)) != 0 || position_bytes % alignment_bytes != 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", "alignmentBytes must be a power of two >= 512 dividing positionBytes");
    return NULL;
  }
  uint32_t count;
  if (napi_get_array_length(env, arguments[2], &count) != napi_ok) {
    throw_napi_failure(env, "napi_get_array_length");
    return NULL;
  }
  struct aligned_write *request = aligned_write_new(count);
  if (request == NULL) {
    napi_throw_error(env, "ENOMEM", "cdp-native: out of memory for an aligned write");
    return NULL;
  }
  request->fd = fd;
  bool durable = false;
  napi_valuetype durable_type = napi_undefined;
  napi_typeof(env, arguments[5], &durable_type);
  if (durable_type == napi_boolean) napi_get_value_bool(env, arguments[5], &durable);
  request->durable = durable ? 1 : 0;
  request->position_bytes = position_bytes;
  request->alignment_bytes = (size_t)alignment_bytes;
  request->prefix = prefix;
  request->prefix_bytes = prefix_bytes;
  for (uint32_t index = 0; index < count; index++) {
    napi_value buffer;
    if (napi_get_element(env, arguments[2], index, &buffer) != napi_ok ||
        !read_bytes(env, buffer, "buffers", index, &request->pieces[index], &request->piece_bytes[index])) {
      aligned_write_free(request);
      bool pending = false;
      napi_is_exception_pending(env, &pending);
      if (!pending) throw_napi_failure(env, "reading pwriteAligned arguments");
      return NULL;
    }
  }
  return request;
}

/* pwriteAligned(fd, prefix, buffers, positionBytes, alignmentBytes, durable?): Promise<void> */
static napi_value pwrite_aligned(napi_env env, napi_callback_info info) {
  napi_value arguments[6];
  struct aligned_write *request = read_aligned_write(env, info, arguments);
  if (request == NULL) return NULL;
  napi_value promise, name;
  if (napi_create_reference(env, arguments[1], 1, &request->prefix_reference) != napi_ok ||
      napi_create_reference(env, arguments[2], 1, &request->buffers_reference) != napi_ok ||
      napi_create_promise(env, &request->deferred, &promise) != napi_ok ||
      napi_create_string_utf8(env, "cdp-native:pwriteAligned", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, execute_aligned_write, complete_aligned_write, request,
                             &request->work) != napi_ok ||
      napi_queue_async_work(env, request->work) != napi_ok) {
    throw_napi_failure(env, "queueing pwriteAligned");
    return NULL;
  }
  return promise;
}

/* pwriteAlignedSync(fd, prefix, buffers, positionBytes, alignmentBytes, durable?): undefined,
 * on the calling thread: for small durable writes, where a worker-thread hop costs more than it saves. */
static napi_value pwrite_aligned_sync(napi_env env, napi_callback_info info) {
  napi_value arguments[6];
  struct aligned_write *request = read_aligned_write(env, info, arguments);
  if (request == NULL) return NULL;
  aligned_write_execute(request);
  int error_number = request->error_number;
  aligned_write_free(request);
  if (error_number != 0) throw_system_error(env, error_number, "pwrite");
  return NULL;
}

/* preadNoWait(fd, target: Uint8Array, positionBytes): bytes read from the page cache (0: would wait). */
static napi_value pread_no_wait(napi_env env, napi_callback_info info) {
  napi_value arguments[ARGUMENT_COUNT_MAX];
  int fd;
  const uint8_t *target;
  size_t length_bytes;
  int64_t position_bytes;
  if (!read_arguments(env, info, 3, arguments) || !read_fd(env, arguments[0], &fd) ||
      !read_bytes(env, arguments[1], "target", -1, &target, &length_bytes) ||
      !read_byte_count(env, arguments[2], "positionBytes", &position_bytes)) {
    return NULL;
  }
  int64_t result_bytes = read_without_waiting(fd, (uint8_t *)target, length_bytes, position_bytes);
  if (result_bytes < 0) {
    throw_system_error(env, (int)-result_bytes, "preadv2");
    return NULL;
  }
  napi_value result;
  CHECK_NAPI(env, napi_create_int64(env, result_bytes, &result));
  return result;
}

/* limitAllocatorRetention(): glibc raises its mmap threshold each time a large block is freed, so
 * later large blocks (Buffers of payloads and reads) come from arenas that keep freed memory:
 * a server doing large I/O then holds hundreds of MiB it does not use. Fixing the threshold at
 * 128 KiB, and the arenas at two, lets large blocks go back to the system when freed. */
static napi_value limit_allocator_retention(napi_env env, napi_callback_info info) {
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  mallopt(M_ARENA_MAX, 2);
  return NULL;
}

/* lockExclusive(fd): true when this open file takes the lock, false when another holds it. */
static napi_value lock_exclusive(napi_env env, napi_callback_info info) {
  napi_value arguments[ARGUMENT_COUNT_MAX];
  int fd;
  if (!read_arguments(env, info, 1, arguments) || !read_fd(env, arguments[0], &fd)) return NULL;
  bool taken = false;
  int error_number = file_lock_exclusive(fd, &taken);
  if (error_number != 0) {
    throw_system_error(env, error_number, "flock");
    return NULL;
  }
  napi_value result;
  CHECK_NAPI(env, napi_get_boolean(env, taken, &result));
  return result;
}

struct exported_function {
  const char *name;
  napi_callback callback;
};

static const struct exported_function exported_functions[] = {
    {"crc32c", crc32c},         {"crc32cv", crc32cv},   {"punchHole", punch_hole},
    {"zeroRange", zero_range},  {"allocate", allocate}, {"seekData", seek_data},
    {"seekHole", seek_hole},    {"blockSize", block_size}, {"pwriteBatch", pwrite_batch},
    {"pwriteAligned", pwrite_aligned}, {"pwriteAlignedSync", pwrite_aligned_sync},
    {"preadNoWait", pread_no_wait},
    {"limitAllocatorRetention", limit_allocator_retention},
    {"setTcpKeepAlive", set_tcp_keepalive}, {"setTcpUserTimeout", set_tcp_user_timeout},
    {"lockExclusive", lock_exclusive},
};

static napi_value initialize_module(napi_env env, napi_value exports) {
  crc32c_initialize();
  for (size_t i = 0; i < sizeof exported_functions / sizeof exported_functions[0]; i++) {
    napi_value function;
    CHECK_NAPI(env, napi_create_function(env, exported_functions[i].name, NAPI_AUTO_LENGTH,
                                         exported_functions[i].callback, NULL, &function));
    CHECK_NAPI(env, napi_set_named_property(env, exports, exported_functions[i].name, function));
  }
  napi_value implementation;
  CHECK_NAPI(env, napi_create_string_utf8(env, crc32c_implementation_name(), NAPI_AUTO_LENGTH,
                                          &implementation));
  CHECK_NAPI(env, napi_set_named_property(env, exports, "crc32cImplementation", implementation));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, initialize_module)
