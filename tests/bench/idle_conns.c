/* idle_conns.c - opens many connections to a proxy and keeps them idle, for
 * the per-connection memory benchmark.
 *
 *   idle_conns -t 127.0.0.1:PORT -n COUNT -m raw|connect|tls|http
 *              [-a HOST:PORT] [-s SNI] [-C CAFILE] [-p PARALLEL]
 *              [-w SETUP_S] [-H HOLD_S] [-r READY_FILE]
 *
 * Modes, per connection:
 *   raw      connect and send nothing (a client that never sends its head)
 *   connect  send "CONNECT HOST:PORT" (-a), wait for the 200, send nothing
 *   tls      as connect, then a TLS 1.3 handshake with the server through
 *            the tunnel (verified against CAFILE and SNI), then nothing:
 *            an established HTTPS-like connection at rest
 *   http     one keep-alive request "GET http://HOST:PORT/" (-a), read the
 *            whole answer (Content-Length), then nothing: an HTTP keep-alive
 *            connection at rest, with its upstream connection
 * At most PARALLEL (64) connections are being set up at once. When every
 * connection is established or has failed (or SETUP_S, 120, has passed) it
 * prints "ready established=E failed=F seconds=S" and, with -r, writes the
 * same line to READY_FILE. It then holds them, counting the ones the peer
 * closes, until SIGTERM/SIGINT or HOLD_S (300) seconds, prints
 * "done established=E closed_by_peer=K", closes every socket and exits 0.
 * Exit 1 when not a single connection could be established.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

enum { C_FREE, C_CONNECTING, C_READ_RESP, C_HANDSHAKE, C_IDLE, C_DEAD };
enum { M_RAW, M_CONNECT, M_TLS, M_HTTP };

typedef struct {
    int fd;
    int st;
    uint32_t events;
    SSL *ssl;
    char resp[2048];
    size_t rlen;
} iconn;

static volatile sig_atomic_t stop;
static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int parse_addr(const char *s, struct sockaddr_in *sa)
{
    char host[64];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof(host))
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)atoi(colon + 1));
    return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

static int ep;

static void set_events(iconn *c, uint32_t ev)
{
    if (c->events == ev)
        return;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
    c->events = ev;
}

static void kill_conn(iconn *c)
{
    if (c->ssl)
        SSL_free(c->ssl);
    c->ssl = NULL;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->st = C_DEAD;
}

/* Drives the TLS handshake; returns 1 done, 0 waiting, -1 failed. */
static int handshake(iconn *c)
{
    int r = SSL_do_handshake(c->ssl);
    if (r == 1)
        return 1;
    int err = SSL_get_error(c->ssl, r);
    if (err == SSL_ERROR_WANT_READ) {
        set_events(c, EPOLLIN);
        return 0;
    }
    if (err == SSL_ERROR_WANT_WRITE) {
        set_events(c, EPOLLOUT);
        return 0;
    }
    return -1;
}

int main(int argc, char **argv)
{
    const char *target = NULL, *connect_to = NULL, *sni = "localhost", *cafile = NULL;
    const char *ready_file = NULL, *mode_s = "raw";
    long count = 1000, parallel = 64, setup_s = 120, hold_s = 300;
    int ch;
    while ((ch = getopt(argc, argv, "t:n:m:a:s:C:p:w:H:r:")) != -1) {
        switch (ch) {
        case 't': target = optarg; break;
        case 'n': count = atol(optarg); break;
        case 'm': mode_s = optarg; break;
        case 'a': connect_to = optarg; break;
        case 's': sni = optarg; break;
        case 'C': cafile = optarg; break;
        case 'p': parallel = atol(optarg); break;
        case 'w': setup_s = atol(optarg); break;
        case 'H': hold_s = atol(optarg); break;
        case 'r': ready_file = optarg; break;
        default: return 2;
        }
    }
    int mode = !strcmp(mode_s, "raw") ? M_RAW : !strcmp(mode_s, "connect") ? M_CONNECT
               : !strcmp(mode_s, "tls")   ? M_TLS
               : !strcmp(mode_s, "http")  ? M_HTTP
                                          : -1;
    struct sockaddr_in sa;
    if (!target || parse_addr(target, &sa) != 0 || mode < 0 || count < 1 || count > 1000000 ||
        parallel < 1 || setup_s < 1 || hold_s < 0 || (mode != M_RAW && !connect_to)) {
        fprintf(stderr, "usage: idle_conns -t 127.0.0.1:PORT -n COUNT -m raw|connect|tls|http "
                        "[-a HOST:PORT] [-s SNI] [-C CAFILE] [-p PARALLEL] [-w SETUP_S] "
                        "[-H HOLD_S] [-r READY_FILE]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction act = {.sa_handler = on_signal};
    sigaction(SIGTERM, &act, NULL);
    sigaction(SIGINT, &act, NULL);

    SSL_CTX *ctx = NULL;
    if (mode == M_TLS) {
        ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
        SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
        if (cafile) {
            if (SSL_CTX_load_verify_locations(ctx, cafile, NULL) != 1) {
                ERR_print_errors_fp(stderr);
                return 1;
            }
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        }
    }
    char creq[512];
    int creq_len = 0;
    if (mode == M_HTTP)
        creq_len = snprintf(creq, sizeof(creq), "GET http://%s/ HTTP/1.1\r\nHost: %s\r\n\r\n",
                            connect_to, connect_to);
    else if (mode != M_RAW)
        creq_len = snprintf(creq, sizeof(creq), "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n",
                            connect_to, connect_to);

    iconn *conns = calloc((size_t)count, sizeof(*conns));
    if (!conns)
        return 1;
    for (long i = 0; i < count; i++)
        conns[i].fd = -1;
    ep = epoll_create1(EPOLL_CLOEXEC);
    long started = 0, inflight = 0, established = 0, failed = 0;
    double t0 = now_s(), deadline = t0 + (double)setup_s;
    struct epoll_event evs[256];
    char junk[4096];

    while (!stop && established + failed < count && now_s() < deadline) {
        while (inflight < parallel && started < count) {
            iconn *c = &conns[started++];
            c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (c->fd < 0) {
                perror("idle_conns: socket");
                c->st = C_DEAD;
                failed++;
                continue;
            }
            int r = connect(c->fd, (struct sockaddr *)&sa, sizeof(sa));
            if (r != 0 && errno != EINPROGRESS) {
                kill_conn(c);
                failed++;
                continue;
            }
            c->st = C_CONNECTING;
            c->events = EPOLLOUT;
            struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
            inflight++;
        }
        int n = epoll_wait(ep, evs, 256, 200);
        for (int i = 0; i < n; i++) {
            iconn *c = evs[i].data.ptr;
            int fail = 0, done = 0;
            switch (c->st) {
            case C_CONNECTING: {
                int err = 0;
                socklen_t el = sizeof(err);
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err) {
                    fail = 1;
                    break;
                }
                if (mode == M_RAW) {
                    done = 1;
                    break;
                }
                if (send(c->fd, creq, (size_t)creq_len, MSG_NOSIGNAL) != creq_len) {
                    fail = 1;
                    break;
                }
                c->st = C_READ_RESP;
                set_events(c, EPOLLIN);
                break;
            }
            case C_READ_RESP: {
                ssize_t r = recv(c->fd, c->resp + c->rlen, sizeof(c->resp) - 1 - c->rlen, 0);
                if (r <= 0) {
                    fail = r < 0 && errno == EAGAIN ? 0 : 1;
                    break;
                }
                c->rlen += (size_t)r;
                c->resp[c->rlen] = '\0';
                char *end = strstr(c->resp, "\r\n\r\n");
                if (!end) {
                    fail = c->rlen >= sizeof(c->resp) - 1;
                    break;
                }
                if (mode == M_HTTP && strncmp(c->resp, "HTTP/1.1 200", 12) == 0) {
                    const char *cl = strcasestr(c->resp, "\r\ncontent-length:");
                    size_t head = (size_t)(end + 4 - c->resp);
                    size_t body = cl && cl < end ? strtoul(cl + 17, NULL, 10) : 0;
                    if (head + body > sizeof(c->resp) - 1)
                        fail = 1;
                    else if (c->rlen == head + body)
                        done = 1;
                    else if (c->rlen > head + body)
                        fail = 1;
                    break;
                }
                if (strncmp(c->resp, "HTTP/1.1 200", 12) != 0 || end + 4 != c->resp + c->rlen) {
                    if (failed < 3)
                        fprintf(stderr, "idle_conns: CONNECT answered '%.40s'\n", c->resp);
                    fail = 1;
                    break;
                }
                if (mode == M_CONNECT) {
                    done = 1;
                    break;
                }
                c->ssl = SSL_new(ctx);
                SSL_set_fd(c->ssl, c->fd);
                SSL_set_tlsext_host_name(c->ssl, sni);
                SSL_set1_host(c->ssl, sni);
                SSL_set_connect_state(c->ssl);
                c->st = C_HANDSHAKE;
            }
                /* send the ClientHello now */
                __attribute__((fallthrough));
            case C_HANDSHAKE: {
                int r = handshake(c);
                if (r < 0) {
                    if (failed < 3) {
                        fprintf(stderr, "idle_conns: TLS handshake failed\n");
                        ERR_print_errors_fp(stderr);
                    }
                    fail = 1;
                }
                done = r == 1;
                break;
            }
            default:
                break;
            }
            if (fail) {
                kill_conn(c);
                failed++;
                inflight--;
            } else if (done) {
                c->st = C_IDLE;
                set_events(c, EPOLLIN | EPOLLRDHUP);
                established++;
                inflight--;
            }
        }
    }
    double setup_secs = now_s() - t0;
    char line[200];
    snprintf(line, sizeof(line), "ready established=%ld failed=%ld seconds=%.2f\n", established,
             failed + (count - established - failed), setup_secs);
    fputs(line, stdout);
    fflush(stdout);
    if (ready_file) {
        char tmp[4096];
        snprintf(tmp, sizeof(tmp), "%s.tmp", ready_file);
        FILE *f = fopen(tmp, "w");
        if (f) {
            fputs(line, f);
            fclose(f);
            rename(tmp, ready_file);
        }
    }

    /* Hold: note every connection the peer closes (a proxy timeout would). */
    long closed_by_peer = 0;
    double hold_end = now_s() + (double)hold_s;
    while (!stop && now_s() < hold_end) {
        int n = epoll_wait(ep, evs, 256, 200);
        for (int i = 0; i < n; i++) {
            iconn *c = evs[i].data.ptr;
            if (c->st != C_IDLE) {
                kill_conn(c); /* still being set up when the setup time ran out */
                continue;
            }
            ssize_t r = recv(c->fd, junk, sizeof(junk), 0);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                closed_by_peer++;
                kill_conn(c);
            }
        }
    }
    printf("done established=%ld closed_by_peer=%ld\n", established, closed_by_peer);
    fflush(stdout);
    for (long i = 0; i < count; i++)
        if (conns[i].fd >= 0 || conns[i].ssl)
            kill_conn(&conns[i]);
    free(conns);
    if (ctx)
        SSL_CTX_free(ctx);
    close(ep);
    return established > 0 ? 0 : 1;
}
