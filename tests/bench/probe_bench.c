/* probe_bench.c - what the TLS 1.3 probe adds to a client's first
 * connection: a plain blocking TLS handshake to the server (the cost of one
 * handshake), the probe on a cache miss (tls_probe_check to callback), and a
 * cache hit. Driven by probe_latency.sh against a local openssl s_server.
 *
 * probe_bench -p PORT -c CA_FILE [-n NAME] [-i ITERATIONS]
 * Prints a table and, last, one JSON line. */
#include "tls_probe.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

typedef struct summary {
    double p50, p90, p99, mean; /* in the unit asked for */
} summary;

static summary summarize(uint64_t *ns, int n, double unit_ns)
{
    summary s = {0};
    qsort(ns, (size_t)n, sizeof *ns, cmp_u64);
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += (double)ns[i];
    s.mean = sum / n / unit_ns;
    s.p50 = (double)ns[(n - 1) * 50 / 100] / unit_ns;
    s.p90 = (double)ns[(n - 1) * 90 / 100] / unit_ns;
    s.p99 = (double)ns[(n - 1) * 99 / 100] / unit_ns;
    return s;
}

/* One blocking TLS 1.3 handshake with the probe's own settings; *took is
 * connect to handshake done. Then, untimed, the same polite close as the
 * probe (close_notify, wait for the server's EOF) so that the single-threaded
 * s_server is idle again before the next round, as it is for the probe. */
static int direct_handshake(SSL_CTX *ctx, const struct sockaddr_in *sin, const char *name,
                            uint64_t *took)
{
    uint64_t t0 = now_ns();
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int rc = -1;
    SSL *ssl = NULL;
    if (connect(fd, (const struct sockaddr *)sin, sizeof *sin) != 0)
        goto done;
    ssl = SSL_new(ctx);
    if (!ssl || SSL_set_tlsext_host_name(ssl, name) != 1 || SSL_set1_host(ssl, name) != 1 ||
        SSL_set_fd(ssl, fd) != 1)
        goto done;
    if (SSL_connect(ssl) == 1 && SSL_get_verify_result(ssl) == X509_V_OK) {
        *took = now_ns() - t0;
        SSL_shutdown(ssl);
        shutdown(fd, SHUT_WR);
        char buf[4096];
        while (read(fd, buf, sizeof buf) > 0)
            ;
        rc = 0;
    }
done:
    SSL_free(ssl);
    close(fd);
    ERR_clear_error();
    return rc;
}

typedef struct waitres {
    bool done, ok;
    uint64_t t_cb;
    char reason[TLS_PROBE_REASON_LEN];
} waitres;

static void on_result(void *arg, bool ok, const char *reason)
{
    waitres *w = arg;
    w->t_cb = now_ns();
    w->done = true;
    w->ok = ok;
    snprintf(w->reason, sizeof w->reason, "%s", reason);
}

int main(int argc, char **argv)
{
    int port = 0, iters = 200, opt;
    const char *ca = NULL, *name = "www.example.test";
    while ((opt = getopt(argc, argv, "p:c:n:i:")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'c': ca = optarg; break;
        case 'n': name = optarg; break;
        case 'i': iters = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: %s -p PORT -c CA_FILE [-n NAME] [-i ITERATIONS]\n", argv[0]);
            return 2;
        }
    }
    if (port <= 0 || port > 65535 || !ca || iters < 1) {
        fprintf(stderr, "usage: %s -p PORT -c CA_FILE [-n NAME] [-i ITERATIONS]\n", argv[0]);
        return 2;
    }
    char err[256];
    tls_verify_store *store = tls_verify_store_new(ca, err, sizeof err);
    if (!store) {
        fprintf(stderr, "trust store: %s\n", err);
        return 1;
    }
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    uint64_t *direct = calloc((size_t)iters, sizeof *direct);
    uint64_t *miss = calloc((size_t)iters, sizeof *miss);
    uint64_t *drain = calloc((size_t)iters, sizeof *drain);
    uint64_t *hit = calloc((size_t)iters, sizeof *hit);
    int status = 1;
    uv_loop_t loop;
    bool loop_ok = false;
    tls_probe_cache *nocache = NULL, *cache = NULL;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!direct || !miss || !drain || !hit || !ctx || uv_loop_init(&loop) != 0)
        goto done;
    loop_ok = true;

    /* 1: the handshake itself, as any TLS 1.3 client would do it */
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set1_verify_cert_store(ctx, tls_verify_store_x509(store));
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    for (int i = 0; i < iters; i++) {
        if (direct_handshake(ctx, &sin, name, &direct[i]) != 0) {
            fprintf(stderr, "direct handshake %d failed\n", i);
            goto done;
        }
    }

    /* 2: cache misses (nothing is cached with ttl 0): check -> callback,
     * and then the polite close until the loop is idle */
    tls_probe_config nc = {.ttl_ok_s = 0, .ttl_fail_s = 0, .timeout_ms = 5000, .max_entries = 16};
    nocache = tls_probe_cache_new(store, &nc);
    if (!nocache)
        goto done;
    for (int i = 0; i < iters; i++) {
        waitres w = {0};
        uint64_t t0 = now_ns();
        int rc = tls_probe_check(nocache, &loop, (const struct sockaddr *)&sin, name, on_result, &w,
                                 NULL, NULL, 0, NULL);
        if (rc != 0) {
            fprintf(stderr, "probe %d: check returned %d\n", i, rc);
            goto done;
        }
        uv_run(&loop, UV_RUN_DEFAULT);
        uint64_t t1 = now_ns();
        if (!w.done || !w.ok) {
            fprintf(stderr, "probe %d: %s\n", i, w.done ? w.reason : "no answer");
            goto done;
        }
        miss[i] = w.t_cb - t0;
        drain[i] = t1 - w.t_cb;
    }

    /* 3: cache hits */
    tls_probe_config hc = {
        .ttl_ok_s = 3600, .ttl_fail_s = 60, .timeout_ms = 5000, .max_entries = 1024};
    cache = tls_probe_cache_new(store, &hc);
    if (!cache)
        goto done;
    waitres w0 = {0};
    if (tls_probe_check(cache, &loop, (const struct sockaddr *)&sin, name, on_result, &w0, NULL,
                        NULL, 0, NULL) != 0)
        goto done;
    uv_run(&loop, UV_RUN_DEFAULT);
    if (!w0.ok)
        goto done;
    for (int i = 0; i < iters; i++) {
        bool ok = false;
        char reason[TLS_PROBE_REASON_LEN];
        uint64_t t0 = now_ns();
        int rc = tls_probe_check(cache, &loop, (const struct sockaddr *)&sin, name, on_result, NULL,
                                 &ok, reason, sizeof reason, NULL);
        hit[i] = now_ns() - t0;
        if (rc != 1 || !ok) {
            fprintf(stderr, "hit %d: check returned %d\n", i, rc);
            goto done;
        }
    }
    tls_probe_stats st;
    tls_probe_cache_stats(cache, &st);

    summary d = summarize(direct, iters, 1e6), m = summarize(miss, iters, 1e6);
    summary dr = summarize(drain, iters, 1e6), h = summarize(hit, iters, 1e3);
    printf("iterations %d, server 127.0.0.1:%d, name %s\n", iters, port, name);
    printf("%-34s %9s %9s %9s %9s\n", "", "p50", "p90", "p99", "mean");
    printf("%-34s %9.3f %9.3f %9.3f %9.3f\n", "direct TLS 1.3 handshake (ms)", d.p50, d.p90, d.p99,
           d.mean);
    printf("%-34s %9.3f %9.3f %9.3f %9.3f\n", "probe, cache miss (ms)", m.p50, m.p90, m.p99,
           m.mean);
    printf("%-34s %9.3f %9.3f %9.3f %9.3f\n", "  after answer: polite close (ms)", dr.p50, dr.p90,
           dr.p99, dr.mean);
    printf("%-34s %9.3f %9.3f %9.3f %9.3f\n", "probe, cache hit (us)", h.p50, h.p90, h.p99, h.mean);
    printf("{\"bench\":\"probe_latency\",\"iterations\":%d,\"direct_ms_p50\":%.3f,"
           "\"direct_ms_p99\":%.3f,\"miss_ms_p50\":%.3f,\"miss_ms_p99\":%.3f,"
           "\"miss_overhead_ms_p50\":%.3f,\"close_ms_p50\":%.3f,\"hit_us_p50\":%.3f,"
           "\"hit_us_p99\":%.3f,\"hits\":%llu}\n",
           iters, d.p50, d.p99, m.p50, m.p99, m.p50 - d.p50, dr.p50, h.p50, h.p99,
           (unsigned long long)st.hits);
    status = 0;
done:
    if (loop_ok) {
        if (nocache)
            tls_probe_abort_loop(nocache, &loop);
        if (cache)
            tls_probe_abort_loop(cache, &loop);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
    }
    tls_probe_cache_free(cache);
    tls_probe_cache_free(nocache);
    SSL_CTX_free(ctx);
    tls_verify_store_free(store);
    free(direct);
    free(miss);
    free(drain);
    free(hit);
    return status;
}
