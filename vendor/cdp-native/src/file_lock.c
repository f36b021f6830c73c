/* flock(2) for the data folder's lock (README.md, "File locks"). The lock belongs to the open
 * file description: closing it, or the death of the process, releases it; a second open of the
 * same file, even in the same process, is refused while the first holds it. */
#include "file_lock.h"

#include <errno.h>
#include <sys/file.h>

int file_lock_exclusive(int fd, bool *taken) {
  int result;
  do {
    result = flock(fd, LOCK_EX | LOCK_NB);
  } while (result != 0 && errno == EINTR);
  if (result == 0) {
    *taken = true;
    return 0;
  }
  if (errno == EWOULDBLOCK) {
    *taken = false;
    return 0;
  }
  return errno;
}
