# Builds build/Release/cdp_native.node from plain C against node_api.h (Node-API 8).
# The SSE4.2 CRC-32C code is enabled per function with
# __attribute__((target("sse4.2"))) and chosen at run time, so no -msse4.2 here:
# the same binary runs on x86-64 CPUs without SSE4.2.
{
  "targets": [
    {
      "target_name": "cdp_native",
      "sources": [
        "src/cdp_native.c",
        "src/crc32c.c",
        "src/file_ranges.c",
        "src/write_batch.c",
        "src/aligned_write.c",
        "src/socket_options.c",
        "src/file_lock.c"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "_GNU_SOURCE",
        "_FILE_OFFSET_BITS=64"
      ],
      "cflags": [
        "-std=gnu11",
        "-Wall",
        "-Wextra",
        "-Wno-unused-parameter"
      ],
      "configurations": {
        "Release": {
          "cflags!": ["-O3"],
          "cflags": ["-O2"]
        }
      }
    }
  ]
}
