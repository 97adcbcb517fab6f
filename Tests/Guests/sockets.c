// Socket mode's calls, run with a socketpair offered as the connection: the test wrote
// "ping" and "xyz" to the other end and reads back "pong" and "abc".
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

static int failures;
#define CHECK(cond) do { if (!(cond)) { printf("FAIL line %d: %s (errno %d)\n", __LINE__, #cond, errno); failures++; } } while (0)

int main(void) {
    CHECK(socket(AF_INET, SOCK_DGRAM, 0) == -1 && errno == EACCES);
    CHECK(socket(AF_UNIX, SOCK_DGRAM, 0) == -1 && errno == EACCES);  /* unix streams are the sandbox's own (processes.c) */
    CHECK(socket(AF_INET, SOCK_STREAM, 17) == -1 && errno == EACCES);
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(s >= 0);
    struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons(8000), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    CHECK(bind(s, (struct sockaddr *)1, sizeof address) == -1 && errno == EFAULT);
    CHECK(bind(s, (struct sockaddr *)&address, 8) == -1 && errno == EINVAL);
    CHECK(listen(s, 16) == -1 && errno == EDESTADDRREQ);
    CHECK(accept(s, 0, 0) == -1 && errno == EINVAL);
    CHECK(bind(s, (struct sockaddr *)&address, sizeof address) == 0);
    CHECK(listen(s, 16) == 0);
    int other = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(bind(other, (struct sockaddr *)&address, sizeof address) == -1 && errno == EADDRINUSE);
    CHECK(connect(other, (struct sockaddr *)&address, sizeof address) == -1 && errno == EACCES);
    CHECK(read(other, &address, 1) == -1 && errno == ENOTCONN);
    CHECK(accept(0, 0, 0) == -1 && errno == ENOTSOCK);
    CHECK(accept(999, 0, 0) == -1 && errno == EBADF);
    close(other);
    struct sockaddr_in bound;
    socklen_t length = sizeof bound;
    CHECK(getsockname(s, (struct sockaddr *)&bound, &length) == 0 && length == sizeof bound && bound.sin_port == htons(8000));
    int type = 0;
    length = sizeof type;
    CHECK(getsockopt(s, SOL_SOCKET, SO_ACCEPTCONN, &type, &length) == 0 && type == 1);
    int one = 1;
    CHECK(setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0);

    struct pollfd watch = { .fd = s, .events = POLLIN };
    CHECK(poll(&watch, 1, 0) == 1 && (watch.revents & POLLIN));
    struct sockaddr_storage peer;
    length = sizeof peer;
    CHECK(accept4(s, (struct sockaddr *)&peer, (socklen_t *)1, 0) == -1 && errno == EFAULT);
    int c = accept4(s, (struct sockaddr *)&peer, &length, SOCK_CLOEXEC);
    CHECK(c >= 0);
    CHECK(poll(&watch, 1, 0) == 0);
    int flags = fcntl(s, F_GETFL);
    fcntl(s, F_SETFL, flags | O_NONBLOCK);
    CHECK(accept(s, 0, 0) == -1 && errno == EAGAIN);

    struct stat status;
    CHECK(fstat(c, &status) == 0 && S_ISSOCK(status.st_mode));
    char buffer[16] = {0};
    CHECK(recv(c, (void *)1, 4, 0) == -1 && errno == EFAULT);   // nothing consumed
    CHECK(recv(c, buffer, 4, 0) == 4 && memcmp(buffer, "ping", 4) == 0);
    char a[2] = {0}, b[8] = {0};
    struct iovec in[2] = { { a, 2 }, { b, 8 } };
    struct msghdr message = { .msg_iov = in, .msg_iovlen = 2 };
    CHECK(recvmsg(c, &message, 0) == 3 && memcmp(a, "xy", 2) == 0 && b[0] == 'z');
    CHECK(recv(c, buffer, 4, MSG_DONTWAIT) == -1 && errno == EAGAIN);
    CHECK(send(c, "pong", 4, MSG_NOSIGNAL) == 4);
    struct iovec out[2] = { { "a", 1 }, { "bc", 2 } };
    struct msghdr reply = { .msg_iov = out, .msg_iovlen = 2 };
    CHECK(sendmsg(c, &reply, 0) == 3);
    CHECK(send(c, (void *)1, 4, 0) == -1 && errno == EFAULT);
    CHECK(shutdown(c, 7) == -1 && errno == EINVAL);
    CHECK(shutdown(c, SHUT_WR) == 0);
    CHECK(close(c) == 0);
    CHECK(recv(c, buffer, 1, 0) == -1 && errno == EBADF);
    printf(failures ? "failed\n" : "ok\n");
    return failures != 0;
}
