/* tls_bulk.c - bulk TLS throughput, directly or through an HTTP CONNECT
 * tunnel, with OpenSSL on both ends (real TLS records, so a proxy that
 * checks record framing for the life of the tunnel has real work to do).
 *
 *   tls_bulk server -c CERT -k KEY [-p PORT] [-l LIFETIME_S]
 *       TLS server on 127.0.0.1:PORT (0: any free port; prints "port N").
 *       One epoll loop, non-blocking, so it also holds thousands of idle
 *       TLS connections (the idle-tunnel memory benchmark). Per connection:
 *       after the handshake the client sends 9 bytes, 'U' or 'D' and a
 *       64-bit big-endian count N. 'U': the server reads and drops N bytes
 *       and answers with the 8-byte count; 'D': it sends N bytes. A
 *       connection that sends nothing after the handshake is simply held.
 *       Exits on SIGTERM/SIGINT, or by itself after LIFETIME_S (1800).
 *
 *   tls_bulk client -a HOST:PORT [-x PROXY_HOST:PORT] [-n SNI] [-C CAFILE]
 *                   [-b BYTES] [-d up|down|frames] [-w WRITE_SIZE]
 *       Connects (first "CONNECT HOST:PORT" through the proxy when -x is
 *       given), does a TLS 1.3 handshake verifying the server against
 *       CAFILE and SNI, streams BYTES (default 1 GiB) up or down and prints
 *       "BENCHJSON {...}" with the bytes, seconds and MB/s (10^6 bytes/s) of
 *       the transfer alone (handshake excluded: it is timed separately).
 *       -d frames: after the handshake, BYTES of records framed exactly like
 *       TLS 1.3 application data (type 23, 16401-byte ciphertext) but not
 *       encrypted, written to and read from the sockets directly, so the
 *       endpoints spend no CPU on cryptography: a proxy that checks the
 *       framing sees the same record stream, and what it costs shows alone.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define IOBUF (256 * 1024)

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int parse_hostport(const char *s, struct sockaddr_in *sa, char *host, size_t hostlen)
{
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= hostlen)
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &sa->sin_addr) != 1)
        return -1;
    return 0;
}

/* ---- server ----------------------------------------------------------------- */

enum { S_HS, S_HDR, S_UP, S_ACK, S_DOWN, S_DONE, S_RAW };

typedef struct sconn {
    int fd;
    SSL *ssl;
    int st;
    unsigned char hdr[9];
    size_t hdrlen;
    uint64_t want, done;
    unsigned char ack[8];
    size_t acklen;
    uint32_t events;
} sconn;

static unsigned char *iobuf;

static void sconn_free(sconn *c)
{
    SSL_free(c->ssl);
    close(c->fd);
    free(c);
}

/* Advances one connection as far as it goes; returns the epoll events it
 * waits for, or 0 when it is finished (to be freed). */
static uint32_t sconn_step(sconn *c)
{
    for (;;) {
        int r = 0, err;
        switch (c->st) {
        case S_HS:
            r = SSL_do_handshake(c->ssl);
            if (r == 1) {
                c->st = S_HDR;
                continue;
            }
            err = SSL_get_error(c->ssl, r);
            if (err == SSL_ERROR_WANT_READ)
                return EPOLLIN;
            if (err == SSL_ERROR_WANT_WRITE)
                return EPOLLOUT;
            return 0;
        case S_HDR:
            r = SSL_read(c->ssl, c->hdr + c->hdrlen, (int)(sizeof(c->hdr) - c->hdrlen));
            if (r <= 0)
                goto rw_error;
            c->hdrlen += (size_t)r;
            if (c->hdrlen < sizeof(c->hdr))
                continue;
            c->want = 0;
            for (int i = 1; i < 9; i++)
                c->want = c->want << 8 | c->hdr[i];
            c->done = 0;
            if (c->hdr[0] == 'U')
                c->st = S_UP;
            else if (c->hdr[0] == 'D')
                c->st = S_DOWN;
            else if (c->hdr[0] == 'R')
                c->st = S_RAW;
            else
                return 0;
            continue;
        case S_UP:
            if (c->done == c->want) {
                for (int i = 0; i < 8; i++)
                    c->ack[i] = (unsigned char)(c->done >> (56 - 8 * i));
                c->acklen = 0;
                c->st = S_ACK;
                continue;
            }
            r = SSL_read(c->ssl, iobuf,
                         (int)(c->want - c->done < IOBUF ? c->want - c->done : IOBUF));
            if (r <= 0)
                goto rw_error;
            c->done += (uint64_t)r;
            continue;
        case S_RAW: {
            /* Records framed like TLS but not encrypted: read off the socket
             * past OpenSSL (which reads no further than the record it was
             * asked for), so only the byte moving is measured. */
            if (c->done == c->want) {
                for (int i = 0; i < 8; i++)
                    c->ack[i] = (unsigned char)(c->done >> (56 - 8 * i));
                c->acklen = 0;
                c->st = S_ACK;
                continue;
            }
            ssize_t got = recv(c->fd, iobuf,
                               c->want - c->done < IOBUF ? (size_t)(c->want - c->done) : IOBUF, 0);
            if (got > 0) {
                c->done += (uint64_t)got;
                continue;
            }
            if (got < 0 && errno == EAGAIN)
                return EPOLLIN;
            return 0;
        }
        case S_ACK:
            r = SSL_write(c->ssl, c->ack + c->acklen, (int)(8 - c->acklen));
            if (r <= 0)
                goto rw_error;
            c->acklen += (size_t)r;
            if (c->acklen == 8)
                c->st = S_DONE;
            continue;
        case S_DOWN:
            if (c->done == c->want) {
                c->st = S_DONE;
                continue;
            }
            r = SSL_write(c->ssl, iobuf,
                          (int)(c->want - c->done < 65536 ? c->want - c->done : 65536));
            if (r <= 0)
                goto rw_error;
            c->done += (uint64_t)r;
            continue;
        case S_DONE:
            /* Wait for the client to close (reads its close_notify or EOF). */
            r = SSL_read(c->ssl, iobuf, IOBUF);
            if (r > 0)
                continue;
            goto rw_error;
        }
    rw_error:
        err = SSL_get_error(c->ssl, r);
        if (err == SSL_ERROR_WANT_READ)
            return EPOLLIN;
        if (err == SSL_ERROR_WANT_WRITE)
            return EPOLLOUT;
        return 0;
    }
}

static int server_main(int argc, char **argv)
{
    const char *cert = NULL, *key = NULL;
    int port = 0, ch;
    long lifetime = 1800;
    while ((ch = getopt(argc, argv, "c:k:p:l:")) != -1) {
        switch (ch) {
        case 'c': cert = optarg; break;
        case 'k': key = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'l': lifetime = atol(optarg); break;
        default: return 2;
        }
    }
    if (!cert || !key) {
        fprintf(stderr, "tls_bulk server: -c CERT -k KEY required\n");
        return 2;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 0);
    iobuf = malloc(IOBUF);
    memset(iobuf, 'x', IOBUF);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(lfd, 4096) != 0) {
        perror("tls_bulk server: listen");
        return 1;
    }
    socklen_t sl = sizeof(sa);
    getsockname(lfd, (struct sockaddr *)&sa, &sl);
    printf("port %d\n", ntohs(sa.sin_port));
    fflush(stdout);
    signal(SIGPIPE, SIG_IGN);
    alarm((unsigned)lifetime);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return 1;
        }
        for (int i = 0; i < n; i++) {
            sconn *c = evs[i].data.ptr;
            if (!c) {
                for (int a = 0; a < 64; a++) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0)
                        break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    sconn *nc = calloc(1, sizeof(*nc));
                    nc->fd = fd;
                    nc->ssl = SSL_new(ctx);
                    SSL_set_fd(nc->ssl, fd);
                    SSL_set_accept_state(nc->ssl);
                    nc->st = S_HS;
                    nc->events = EPOLLIN;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = nc};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) != 0)
                        sconn_free(nc);
                }
                continue;
            }
            uint32_t want = sconn_step(c);
            if (!want) {
                sconn_free(c);
                continue;
            }
            if (want != c->events) {
                c->events = want;
                struct epoll_event cev = {.events = want, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &cev);
            }
        }
    }
}

/* ---- client ----------------------------------------------------------------- */

static int write_all(int fd, const void *p, size_t n)
{
    const char *s = p;
    while (n) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

static int proxy_connect(int fd, const char *target)
{
    char req[512];
    int n = snprintf(req, sizeof(req), "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target);
    if (write_all(fd, req, (size_t)n) != 0)
        return -1;
    /* Read the answer head byte by byte: nothing may be read past it. */
    char resp[4096];
    size_t len = 0;
    while (len < sizeof(resp) - 1) {
        ssize_t r = recv(fd, resp + len, 1, 0);
        if (r <= 0)
            break;
        len++;
        if (len >= 4 && memcmp(resp + len - 4, "\r\n\r\n", 4) == 0)
            break;
    }
    resp[len] = '\0';
    if (strncmp(resp, "HTTP/1.1 200", 12) != 0 && strncmp(resp, "HTTP/1.0 200", 12) != 0) {
        char *eol = strchr(resp, '\r');
        if (eol)
            *eol = '\0';
        fprintf(stderr, "tls_bulk client: CONNECT %s refused: '%s'\n", target, resp);
        return -1;
    }
    return 0;
}

static int client_main(int argc, char **argv)
{
    const char *addr = NULL, *proxy = NULL, *sni = "localhost", *cafile = NULL, *dir = "up";
    unsigned long long bytes = 1ULL << 30;
    size_t wsize = 65536;
    int ch;
    while ((ch = getopt(argc, argv, "a:x:n:C:b:d:w:")) != -1) {
        switch (ch) {
        case 'a': addr = optarg; break;
        case 'x': proxy = optarg; break;
        case 'n': sni = optarg; break;
        case 'C': cafile = optarg; break;
        case 'b': bytes = strtoull(optarg, NULL, 10); break;
        case 'd': dir = optarg; break;
        case 'w': wsize = (size_t)atol(optarg); break;
        default: return 2;
        }
    }
    char host[256];
    struct sockaddr_in sa;
    if (!addr || parse_hostport(proxy ? proxy : addr, &sa, host, sizeof(host)) != 0 ||
        wsize < 1 || wsize > IOBUF ||
        (strcmp(dir, "up") && strcmp(dir, "down") && strcmp(dir, "frames"))) {
        fprintf(stderr, "usage: tls_bulk client -a 127.0.0.1:PORT [-x 127.0.0.1:PROXYPORT] "
                        "[-n SNI] [-C CAFILE] [-b BYTES] [-d up|down|frames] [-w WRITE_SIZE]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct timeval tv = {.tv_sec = 60};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    double t0 = now_s();
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        perror("tls_bulk client: connect");
        return 1;
    }
    if (proxy && proxy_connect(fd, addr) != 0)
        return 1;
    double t_tunnel = now_s();

    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    if (cafile) {
        if (SSL_CTX_load_verify_locations(ctx, cafile, NULL) != 1) {
            ERR_print_errors_fp(stderr);
            return 1;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }
    SSL *ssl = SSL_new(ctx);
    SSL_set_tlsext_host_name(ssl, sni);
    SSL_set1_host(ssl, sni);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) {
        fprintf(stderr, "tls_bulk client: handshake failed\n");
        ERR_print_errors_fp(stderr);
        return 1;
    }
    double t_hs = now_s();

    unsigned char *buf = malloc(IOBUF);
    memset(buf, 'y', IOBUF);
    unsigned char hdr[9];
    hdr[0] = dir[0] == 'u' ? 'U' : dir[0] == 'f' ? 'R' : 'D';
    /* frames: whole records of 5 + 16401 bytes, BYTES rounded up to them */
    enum { REC = 5 + 16401, RECS = 15 };
    if (hdr[0] == 'R')
        bytes = (bytes + REC - 1) / REC * REC;
    for (int i = 0; i < 8; i++)
        hdr[1 + i] = (unsigned char)(bytes >> (56 - 8 * i));
    double t1 = now_s();
    if (SSL_write(ssl, hdr, 9) != 9) {
        fprintf(stderr, "tls_bulk client: write failed\n");
        return 1;
    }
    unsigned long long done = 0;
    if (hdr[0] == 'R') {
        for (int r = 0; r < RECS; r++) {
            unsigned char *h = buf + (size_t)r * REC;
            h[0] = 23;
            h[1] = 3;
            h[2] = 3;
            h[3] = 16401 >> 8;
            h[4] = 16401 & 0xff;
        }
        while (done < bytes) {
            size_t n = bytes - done < (size_t)REC * RECS ? (size_t)(bytes - done) : (size_t)REC * RECS;
            if (write_all(fd, buf, n) != 0) {
                fprintf(stderr, "tls_bulk client: write failed after %llu bytes\n", done);
                return 1;
            }
            done += n;
        }
    }
    if (hdr[0] == 'U' || hdr[0] == 'R') {
        while (hdr[0] == 'U' && done < bytes) {
            size_t n = bytes - done < wsize ? (size_t)(bytes - done) : wsize;
            int w = SSL_write(ssl, buf, (int)n);
            if (w <= 0) {
                fprintf(stderr, "tls_bulk client: write failed after %llu bytes\n", done);
                ERR_print_errors_fp(stderr);
                return 1;
            }
            done += (unsigned long long)w;
        }
        unsigned char ack[8];
        size_t got = 0;
        while (got < 8) {
            int r = SSL_read(ssl, ack + got, (int)(8 - got));
            if (r <= 0) {
                fprintf(stderr, "tls_bulk client: no acknowledgement (after %llu bytes)\n",
                        done);
                return 1;
            }
            got += (size_t)r;
        }
        unsigned long long acked = 0;
        for (int i = 0; i < 8; i++)
            acked = acked << 8 | ack[i];
        if (acked != bytes) {
            fprintf(stderr, "tls_bulk client: server got %llu of %llu bytes\n", acked, bytes);
            return 1;
        }
    } else {
        while (done < bytes) {
            int r = SSL_read(ssl, buf, IOBUF);
            if (r <= 0) {
                fprintf(stderr, "tls_bulk client: read failed after %llu bytes\n", done);
                return 1;
            }
            done += (unsigned long long)r;
        }
    }
    double t2 = now_s();
    char cipher[64];
    snprintf(cipher, sizeof(cipher), "%s", SSL_get_cipher_name(ssl));
    SSL_shutdown(ssl);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    free(buf);
    double secs = t2 - t1;
    printf("BENCHJSON {\"dir\":\"%s\",\"bytes\":%llu,\"seconds\":%.3f,\"mbps\":%.1f,"
           "\"connect_ms\":%.2f,\"handshake_ms\":%.2f,\"proxied\":%s,\"cipher\":\"%s\"}\n",
           dir, done, secs, (double)done / secs / 1e6, (t_tunnel - t0) * 1e3,
           (t_hs - t_tunnel) * 1e3, proxy ? "true" : "false", cipher);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "server") == 0)
        return server_main(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "client") == 0)
        return client_main(argc - 1, argv + 1);
    fprintf(stderr, "usage: tls_bulk server|client ...\n");
    return 2;
}
