/* TCP keepalive timing and TCP_USER_TIMEOUT on a connected socket (tcp(7)). Node's setKeepAlive
 * sets the idle time, and libuv fixes the probes at 10, 1 s apart; nothing in Node sets
 * TCP_USER_TIMEOUT, and keepalive does not probe while sent data is unacknowledged, so a peer that
 * vanished with replies in flight is found only after about 15 minutes of retransmissions. */
#include "socket_options.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static int set_int_option(int fd, int level, int name, int value) {
  return setsockopt(fd, level, name, &value, sizeof value) == 0 ? 0 : errno;
}

int socket_set_tcp_keepalive(int fd, int idle_seconds, int interval_seconds, int probe_count) {
  int error = set_int_option(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
#ifdef TCP_KEEPIDLE
  if (error == 0) error = set_int_option(fd, IPPROTO_TCP, TCP_KEEPIDLE, idle_seconds);
  if (error == 0) error = set_int_option(fd, IPPROTO_TCP, TCP_KEEPINTVL, interval_seconds);
  if (error == 0) error = set_int_option(fd, IPPROTO_TCP, TCP_KEEPCNT, probe_count);
#else
  if (error == 0) error = EOPNOTSUPP;
#endif
  return error;
}

int socket_set_tcp_user_timeout(int fd, unsigned int timeout_ms) {
#ifdef TCP_USER_TIMEOUT
  return setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &timeout_ms, sizeof timeout_ms) == 0 ? 0 : errno;
#else
  return EOPNOTSUPP;
#endif
}
