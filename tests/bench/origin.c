/* origin.c - the benchmark's HTTP origin: as little work per request as an
 * HTTP/1.1 server can do, so that a proxy in front of it is the bottleneck.
 *
 *   origin [-p PORT] [-t THREADS] [-s BODY_BYTES] [-l LIFETIME_S]
 *
 * Listens on 127.0.0.1:PORT (0: any free port) with one epoll loop per
 * thread, all on the same port (SO_REUSEPORT), and prints "port N" on
 * stdout once it accepts. Every request head (up to the empty line; GET
 * without a body is all the benchmark sends) gets the same keep-alive
 * "200 OK" with a text/plain body of BODY_BYTES bytes; pipelined requests
 * are answered in one write. Connections are never closed by the origin, so
 * it can also hold many idle upstream connections. It exits on SIGTERM or
 * SIGINT, and by itself after LIFETIME_S seconds (default 1800) so a
 * forgotten origin does not linger.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define IN_CAP 16384
#define MAX_THREADS 16

typedef struct {
    int fd;
    size_t inlen;
    char *out;     /* responses not written yet (only when the socket was full) */
    size_t outlen, outoff;
    int want_out;  /* EPOLLOUT is registered */
    char in[IN_CAP];
} conn;

static char *response;
static size_t response_len;
static int listen_port;

static int make_listener(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 4096) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void conn_free(conn *c)
{
    close(c->fd);
    free(c->out);
    free(c);
}

/* Writes what is pending; returns -1 when the connection is gone. */
static int conn_write(conn *c)
{
    while (c->outoff < c->outlen) {
        ssize_t n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN)
                return 0;
            if (errno == EINTR)
                continue;
            return -1;
        }
        c->outoff += (size_t)n;
    }
    free(c->out);
    c->out = NULL;
    c->outlen = c->outoff = 0;
    return 0;
}

/* Queues k responses; writes at once when nothing is pending. */
static int respond(conn *c, size_t k)
{
    size_t total = k * response_len;
    char stackbuf[65536], *buf = stackbuf;
    if (total > sizeof(stackbuf) || c->out) {
        buf = malloc(total);
        if (!buf)
            return -1;
    }
    for (size_t i = 0; i < k; i++)
        memcpy(buf + i * response_len, response, response_len);
    if (c->out) { /* append to what is waiting */
        char *nb = realloc(c->out, c->outlen + total);
        if (!nb) {
            free(buf);
            return -1;
        }
        memcpy(nb + c->outlen, buf, total);
        c->out = nb;
        c->outlen += total;
        free(buf);
        return 0;
    }
    size_t off = 0;
    while (off < total) {
        ssize_t n = send(c->fd, buf + off, total - off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN) {
                if (buf != stackbuf)
                    free(buf);
                return -1;
            }
            break;
        }
        off += (size_t)n;
    }
    if (off < total) {
        c->out = malloc(total - off);
        if (!c->out) {
            if (buf != stackbuf)
                free(buf);
            return -1;
        }
        memcpy(c->out, buf + off, total - off);
        c->outlen = total - off;
        c->outoff = 0;
    }
    if (buf != stackbuf)
        free(buf);
    return 0;
}

/* Reads and answers every complete head; returns -1 to close. */
static int conn_read(conn *c)
{
    for (;;) {
        if (c->inlen == IN_CAP)
            return -1; /* a head larger than the buffer: not a benchmark client */
        ssize_t n = recv(c->fd, c->in + c->inlen, IN_CAP - c->inlen, 0);
        if (n == 0)
            return -1;
        if (n < 0) {
            if (errno == EAGAIN)
                return 0;
            if (errno == EINTR)
                continue;
            return -1;
        }
        size_t scan_from = c->inlen >= 3 ? c->inlen - 3 : 0;
        c->inlen += (size_t)n;
        size_t k = 0, consumed = 0;
        for (size_t i = scan_from; i + 4 <= c->inlen; i++) {
            if (c->in[i] == '\r' && c->in[i + 1] == '\n' && c->in[i + 2] == '\r' &&
                c->in[i + 3] == '\n') {
                k++;
                consumed = i + 4;
                i += 3;
            }
        }
        if (k) {
            memmove(c->in, c->in + consumed, c->inlen - consumed);
            c->inlen -= consumed;
            if (respond(c, k) != 0)
                return -1;
        }
        if ((size_t)n < IN_CAP / 2)
            return 0; /* drained (level-triggered epoll reports the rest) */
    }
}

static void *loop(void *arg)
{
    int lfd = (int)(intptr_t)arg;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            if (!c) {
                for (int a = 0; a < 64; a++) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0)
                        break;
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    conn *nc = malloc(sizeof(*nc));
                    if (!nc) {
                        close(fd);
                        continue;
                    }
                    nc->fd = fd;
                    nc->inlen = 0;
                    nc->out = NULL;
                    nc->outlen = nc->outoff = 0;
                    nc->want_out = 0;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = nc};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) != 0)
                        conn_free(nc);
                }
                continue;
            }
            int bad = 0;
            if (evs[i].events & EPOLLOUT)
                bad = conn_write(c);
            if (!bad && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)))
                bad = conn_read(c);
            if (bad) {
                conn_free(c); /* close() takes it out of the epoll set */
                continue;
            }
            if (c->want_out != (c->out != NULL)) {
                c->want_out = c->out != NULL;
                struct epoll_event cev = {
                    .events = EPOLLIN | EPOLLRDHUP | (c->want_out ? EPOLLOUT : 0), .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &cev);
            }
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int port = 0, threads = 1, ch;
    long body = 128, lifetime = 1800;
    while ((ch = getopt(argc, argv, "p:t:s:l:")) != -1) {
        switch (ch) {
        case 'p': port = atoi(optarg); break;
        case 't': threads = atoi(optarg); break;
        case 's': body = atol(optarg); break;
        case 'l': lifetime = atol(optarg); break;
        default:
            fprintf(stderr, "usage: origin [-p PORT] [-t THREADS] [-s BODY] [-l LIFETIME_S]\n");
            return 2;
        }
    }
    if (threads < 1 || threads > MAX_THREADS || body < 0 || body > 1 << 20 || lifetime < 1) {
        fprintf(stderr, "origin: bad arguments\n");
        return 2;
    }
    char head[256];
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 200 OK\r\nServer: bench-origin\r\nContent-Type: text/plain\r\n"
                      "Content-Length: %ld\r\n\r\n",
                      body);
    response_len = (size_t)hl + (size_t)body;
    response = malloc(response_len);
    memcpy(response, head, (size_t)hl);
    for (long i = 0; i < body; i++)
        response[hl + i] = i % 64 == 63 ? '\n' : (char)('a' + i % 26);

    signal(SIGPIPE, SIG_IGN);
    alarm((unsigned)lifetime); /* SIGALRM's default action ends the process */
    int lfds[MAX_THREADS];
    for (int i = 0; i < threads; i++) {
        lfds[i] = make_listener(i == 0 ? port : listen_port);
        if (lfds[i] < 0) {
            perror("origin: listen");
            return 1;
        }
        if (i == 0) {
            struct sockaddr_in sa;
            socklen_t sl = sizeof(sa);
            getsockname(lfds[0], (struct sockaddr *)&sa, &sl);
            listen_port = ntohs(sa.sin_port);
        }
    }
    printf("port %d\n", listen_port);
    fflush(stdout);
    pthread_t t[MAX_THREADS];
    for (int i = 1; i < threads; i++)
        pthread_create(&t[i], NULL, loop, (void *)(intptr_t)lfds[i]);
    loop((void *)(intptr_t)lfds[0]);
    return 0;
}
