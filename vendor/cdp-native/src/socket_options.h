/* TCP options Node's net module does not let a caller choose: the keepalive probe interval and
 * count, and TCP_USER_TIMEOUT. See README.md. Each function returns 0 or the errno of the failed
 * call. */
#ifndef CDP_NATIVE_SOCKET_OPTIONS_H
#define CDP_NATIVE_SOCKET_OPTIONS_H

/* SO_KEEPALIVE on, first probe after idle_seconds of silence, then every interval_seconds;
 * the peer is declared dead after probe_count unanswered probes. */
int socket_set_tcp_keepalive(int fd, int idle_seconds, int interval_seconds, int probe_count);

/* TCP_USER_TIMEOUT: the longest sent data (or a keepalive probe) may stay unacknowledged before
 * the kernel closes the connection with ETIMEDOUT; 0 restores the system's default. */
int socket_set_tcp_user_timeout(int fd, unsigned int timeout_ms);

#endif
