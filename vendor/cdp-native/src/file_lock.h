/* An advisory whole-file lock that the kernel releases when the process dies: flock(2).
 * See README.md, "File locks". */
#ifndef CDP_NATIVE_FILE_LOCK_H
#define CDP_NATIVE_FILE_LOCK_H

#include <stdbool.h>

/* flock(LOCK_EX | LOCK_NB), retried on EINTR. Returns 0 with *taken true when the lock is now
 * held through this open file description, 0 with *taken false when another open file
 * description holds it (EWOULDBLOCK), or the errno of the failed call. */
int file_lock_exclusive(int fd, bool *taken);

#endif
