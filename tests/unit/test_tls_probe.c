/* test_tls_probe.c - the TLS 1.3 certificate probe against real
 * `openssl s_server` processes on free 127.0.0.1 ports, with the certificates
 * from tests/vectors/probe (made by gen.sh there): the answer and reason a
 * proxied client would get, the cache, coalescing, cancel and abort. */
#include "cu_main.h"
#include "tls_probe.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CERTS VECTOR_DIR "/probe/"
#define NAME "www.example.test"

/* ---- fixture: started on first use, torn down at exit ---- */

typedef struct server {
    const char *tag;
    pid_t pid;
    int port;
} server;

enum {
    SRV_TLS13,
    SRV_TLS12,
    SRV_SELF,
    SRV_EXPIRED,
    SRV_FUTURE,
    SRV_CLIENT,
    SRV_TLS11,
    SRV_SNI,
    SRV_SNI_IP,
    SRV_V6,
    SRV_COUNT
};

/* Every s_server the tests use: tests/vectors/probe/<pair>.pem and .key,
 * extra arguments, where to listen. */
static const struct server_spec {
    const char *tag, *pair;
    const char *extra[8];
    const char *accept; /* NULL: 127.0.0.1:0 */
} specs[SRV_COUNT] = {
    [SRV_TLS13] = {"tls13", "server", {"-tls1_3"}},
    [SRV_TLS12] = {"tls12", "server", {"-tls1_2"}},
    [SRV_SELF] = {"self", "self", {"-tls1_3"}},
    [SRV_EXPIRED] = {"expired", "expired", {0}},
    [SRV_FUTURE] = {"future", "future", {0}},
    [SRV_CLIENT] = {"client", "client", {0}},
    [SRV_TLS11] = {"tls11", "server", {"-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"}},
    /* the good certificate only for clients that send SNI www.example.test */
    [SRV_SNI] = {"sni",
                 "self",
                 {"-servername", NAME, "-cert2", CERTS "server.pem", "-key2", CERTS "server.key"}},
    /* the self-signed one only for clients that send SNI 127.0.0.1 */
    [SRV_SNI_IP] = {"sni_ip",
                    "server",
                    {"-servername", "127.0.0.1", "-cert2", CERTS "self.pem", "-key2",
                     CERTS "self.key"}},
    [SRV_V6] = {"v6", "server", {0}, "[::1]:0"},
};

static struct {
    bool up, failed;
    char dir[64];
    server srv[SRV_COUNT];
    int closed_fd, closed_port; /* bound, not listening: connection refused */
    int silent_fd, silent_port; /* listening, never accepts or speaks */
    tls_verify_store *store;
} fx = {.closed_fd = -1, .silent_fd = -1};

static void fixture_down(void)
{
    for (int i = 0; i < SRV_COUNT; i++) {
        server *s = &fx.srv[i];
        if (s->pid > 0) {
            kill(s->pid, SIGTERM);
            waitpid(s->pid, NULL, 0);
            s->pid = 0;
        }
        char path[128];
        snprintf(path, sizeof path, "%s/%s.log", fx.dir, s->tag ? s->tag : "none");
        unlink(path);
    }
    if (fx.closed_fd >= 0)
        close(fx.closed_fd);
    if (fx.silent_fd >= 0)
        close(fx.silent_fd);
    fx.closed_fd = fx.silent_fd = -1;
    if (fx.dir[0])
        rmdir(fx.dir);
    tls_verify_store_free(fx.store);
    fx.store = NULL;
}

/* Starts s_server on an ephemeral port (-accept 127.0.0.1:0) and reads the
 * port from its "ACCEPT 127.0.0.1:<port>" line. Output goes to a file so the
 * server never blocks on a full pipe. */
static int server_start(server *s, const struct server_spec *spec)
{
    const char *tag = spec->tag;
    char log[128], cert[512], key[512];
    snprintf(log, sizeof log, "%s/%s.log", fx.dir, tag);
    snprintf(cert, sizeof cert, "%s%s.pem", CERTS, spec->pair);
    snprintf(key, sizeof key, "%s%s.key", CERTS, spec->pair);
    s->tag = tag;
    const char *argv[24] = {
        "openssl", "s_server", "-accept", spec->accept ? spec->accept : "127.0.0.1:0",
        "-cert",   cert,       "-key",    key,
        "-www"};
    int argc = 9;
    for (int i = 0; i < 8 && spec->extra[i]; i++)
        argv[argc++] = spec->extra[i];
    argv[argc] = NULL;

    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        /* a crashed test (no atexit) must not leave servers behind */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0)
            _exit(127);
        dup2(fd, 1);
        dup2(fd, 2);
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0)
            dup2(null, 0);
        execvp("openssl", (char *const *)argv);
        _exit(127);
    }
    s->pid = pid;
    for (int tries = 0; tries < 500; tries++) { /* up to 5 s */
        FILE *f = fopen(log, "r");
        if (f) {
            char line[256];
            while (fgets(line, sizeof line, f))
                if (sscanf(line, "ACCEPT 127.0.0.1:%d", &s->port) == 1 ||
                    sscanf(line, "ACCEPT [::1]:%d", &s->port) == 1) {
                    fclose(f);
                    return 0;
                }
            fclose(f);
        }
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            s->pid = 0;
            fprintf(stderr, "s_server %s exited; see %s\n", tag, log);
            return -1;
        }
        usleep(10000);
    }
    fprintf(stderr, "s_server %s did not start\n", tag);
    return -1;
}

static int socket_on_free_port(bool listening, int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;
    if (bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0 || (listening && listen(fd, 16) < 0) ||
        getsockname(fd, (struct sockaddr *)&sin, &len) < 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(sin.sin_port);
    return fd;
}

static bool fixture_up(void)
{
    if (fx.up || fx.failed)
        return fx.up;
    fx.failed = true;
    atexit(fixture_down);
    signal(SIGPIPE, SIG_IGN); /* as the node does: libuv writes with write(2) */
    snprintf(fx.dir, sizeof fx.dir, "/tmp/pcprobe.XXXXXX");
    if (!mkdtemp(fx.dir)) {
        fx.dir[0] = '\0';
        return false;
    }
    for (int i = 0; i < SRV_COUNT; i++)
        if (server_start(&fx.srv[i], &specs[i]) != 0)
            return false;
    fx.closed_fd = socket_on_free_port(false, &fx.closed_port);
    fx.silent_fd = socket_on_free_port(true, &fx.silent_port);
    if (fx.closed_fd < 0 || fx.silent_fd < 0)
        return false;
    char err[256];
    fx.store = tls_verify_store_new(CERTS "ca.pem", err, sizeof err);
    if (!fx.store) {
        fprintf(stderr, "trust store: %s\n", err);
        return false;
    }
    fx.failed = false;
    fx.up = true;
    return true;
}

/* ---- helpers ---- */

typedef struct result {
    int calls;
    bool ok;
    char reason[TLS_PROBE_REASON_LEN];
} result;

static void on_result(void *arg, bool ok, const char *reason)
{
    result *r = arg;
    r->calls++;
    r->ok = ok;
    snprintf(r->reason, sizeof r->reason, "%s", reason);
}

static struct sockaddr_in addr_port(int port)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return sin;
}

static const tls_probe_config default_cfg = {
    .ttl_ok_s = 300, .ttl_fail_s = 60, .timeout_ms = 5000, .max_entries = 1024};

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Checks name at 127.0.0.1:port; when a probe starts, runs the loop until
 * every handle is closed. Returns what tls_probe_check returned; r holds the
 * answer either way. */
static int check(tls_probe_cache *c, uv_loop_t *loop, int port, const char *name, result *r)
{
    memset(r, 0, sizeof *r);
    struct sockaddr_in sin = addr_port(port);
    tls_probe_req *req = NULL;
    int rc = tls_probe_check(c, loop, (const struct sockaddr *)&sin, name, on_result, r, &r->ok,
                             r->reason, sizeof r->reason, &req);
    if (rc == 0) {
        CU_ASSERT_PTR_NOT_NULL(req);
        uv_run(loop, UV_RUN_DEFAULT);
        CU_ASSERT_EQUAL(r->calls, 1);
    } else {
        CU_ASSERT_EQUAL(r->calls, 0);
    }
    return rc;
}

typedef struct env {
    uv_loop_t loop;
    tls_probe_cache *cache;
} env;

static bool env_open(env *e, const tls_probe_config *cfg)
{
    if (!fixture_up()) {
        CU_FAIL("fixture (s_server, sockets, trust store) did not start");
        return false;
    }
    CU_ASSERT_FATAL(uv_loop_init(&e->loop) == 0);
    e->cache = tls_probe_cache_new(fx.store, cfg ? cfg : &default_cfg);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e->cache);
    return true;
}

/* Every handle must be closed by now: uv_loop_close fails otherwise. */
static void env_close(env *e)
{
    uv_run(&e->loop, UV_RUN_DEFAULT);
    tls_probe_cache_free(e->cache);
    CU_ASSERT_EQUAL(uv_loop_close(&e->loop), 0);
}

static tls_probe_stats stats(env *e)
{
    tls_probe_stats s;
    tls_probe_cache_stats(e->cache, &s);
    return s;
}

/* ---- answers ---- */

static void test_tls13_ok(void)
{
    env e;
    if (!env_open(&e, NULL))
        return;
    result r;
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, fx.srv[SRV_TLS13].port, NAME, &r), 0);
    CU_ASSERT_TRUE(r.ok);
    CU_ASSERT_STRING_EQUAL(r.reason, "");
    tls_probe_stats s = stats(&e);
    CU_ASSERT_EQUAL(s.probes, 1);
    CU_ASSERT_EQUAL(s.failures, 0);
    CU_ASSERT_EQUAL(s.entries, 1);
    env_close(&e);
}

static void test_tls12_ok(void)
{
    env e;
    if (!env_open(&e, NULL))
        return;
    result r;
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, fx.srv[SRV_TLS12].port, NAME, &r), 0);
    CU_ASSERT_TRUE(r.ok);
    CU_ASSERT_STRING_EQUAL(r.reason, "");
    env_close(&e);
}

static void test_ip_literal(void)
{
    env e;
    if (!env_open(&e, NULL))
        return;
    result r;
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, fx.srv[SRV_TLS13].port, "127.0.0.1", &r), 0);
    CU_ASSERT_TRUE(r.ok);
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, fx.srv[SRV_TLS13].port, "127.0.0.2", &r), 0);
    CU_ASSERT_FALSE(r.ok);
    CU_ASSERT_STRING_EQUAL(r.reason, "certificate-name-mismatch: 127.0.0.2");
    env_close(&e);
}

/* "sni" presents the good certificate only to clients that send SNI
 * www.example.test; "sni_ip" the self-signed one only to clients that send
 * SNI 127.0.0.1. */
static void test_sni(void)
{
    env e;
    if (!env_open(&e, NULL))
        return;
    result r;
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, fx.srv[SRV_SNI].port, NAME, &r), 0);
    CU_ASSERT_TRUE(r.ok);
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, fx.srv[SRV_SNI_IP].port, "127.0.0.1", &r), 0);
    CU_ASSERT_TRUE(r.ok); /* no SNI for an address */
    env_close(&e);
}

static void test_ipv6(void)
{
    env e;
    if (!env_open(&e, NULL))
        return;
    struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6,
                                .sin6_port = htons((uint16_t)fx.srv[SRV_V6].port)};
    sin6.sin6_addr = in6addr_loopback;
    const struct sockaddr *sa = (const struct sockaddr *)&sin6;
    result r = {0}, r2 = {0};
    CU_ASSERT_EQUAL(tls_probe_check(e.cache, &e.loop, sa, NAME, on_result, &r, NULL, NULL, 0, NULL),
                    0);
    CU_ASSERT_EQUAL(
        tls_probe_check(e.cache, &e.loop, sa, "::1", on_result, &r2, NULL, NULL, 0, NULL), 0);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CU_ASSERT_EQUAL(r.calls, 1);
    CU_ASSERT_TRUE(r.ok);
    CU_ASSERT_EQUAL(r2.calls, 1);
    CU_ASSERT_STRING_EQUAL(r2.reason, "certificate-name-mismatch: ::1"); /* SAN has 127.0.0.1 */
    bool ok = false;
    CU_ASSERT_EQUAL(tls_probe_check(e.cache, &e.loop, sa, NAME, on_result, &r, &ok, NULL, 0, NULL),
                    1);
    CU_ASSERT_TRUE(ok);
    /* the same port on 127.0.0.1 is another key */
    struct sockaddr_in sin = addr_port(fx.srv[SRV_V6].port);
    tls_probe_req *q = NULL;
    CU_ASSERT_EQUAL(tls_probe_check(e.cache, &e.loop, (const struct sockaddr *)&sin, NAME,
                                    on_result, &r, NULL, NULL, 0, &q),
                    0);
    tls_probe_cancel(q);
    env_close(&e);
}

static void test_name_mismatch(void)
{
    env e;
    if (!env_open(&e, NULL))
        return;
    result r;
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, fx.srv[SRV_TLS13].port, "Other.Example.Test", &r), 0);
    CU_ASSERT_FALSE(r.ok);
    CU_ASSERT_STRING_EQUAL(r.reason, "certificate-name-mismatch: other.example.test");
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, fx.srv[SRV_TLS12].port, "example.test", &r), 0);
    CU_ASSERT_STRING_EQUAL(r.reason, "certificate-name-mismatch: example.test");
    CU_ASSERT_EQUAL(stats(&e).failures, 2);
    env_close(&e);
}

static void test_self_signed(void)
{
    env e;
    if (!env_open(&e, NULL))
        return;
    result r;
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, fx.srv[SRV_SELF].port, NAME, &r), 0);
    CU_ASSERT_FALSE(r.ok);
    /* OpenSSL 3: "self-signed certificate"; 1.1: "self signed certificate" */
    CU_ASSERT_NSTRING_EQUAL(r.reason, "certificate-untrusted: self", 27);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.reason, "signed certificate"));
    env_close(&e);
}

static void test_expired(void)
{
    env e;
    if (!env_open(&e, NULL))
        return;
    result r;
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, fx.srv[SRV_EXPIRED].port, NAME, &r), 0);
    CU_ASSERT_FALSE(r.ok);
    CU_ASSERT_STRING_EQUAL(r.reason, "certificate-expired: certificate has expired");
    env_close(&e);
}

static void test_not_yet_valid(void)
{
    env e;
    if (!env_open(&e, NULL))
        return;
    result r;
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, fx.srv[SRV_FUTURE].port, NAME, &r), 0);
    CU_ASSERT_FALSE(r.ok);
    CU_ASSERT_STRING_EQUAL(r.reason, "certificate-expired: certificate is not yet valid");
    env_close(&e);
}

/* Trusted, right name, but issued for clients: as tls_verify_chain says it */
static void test_wrong_purpose(void)
{
    env e;
    if (!env_open(&e, NULL))
        return;
    result r;
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, fx.srv[SRV_CLIENT].port, NAME, &r), 0);
    CU_ASSERT_FALSE(r.ok);
    CU_ASSERT_NSTRING_EQUAL(r.reason, "certificate-invalid: ", 21);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.reason, "purpose"));
    env_close(&e);
}

static void test_old_version(void)
{
    env e;
    if (!env_open(&e, NULL))
        return;
    result r;
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, fx.srv[SRV_TLS11].port, NAME, &r), 0);
    CU_ASSERT_FALSE(r.ok);
    /* the server refuses our 1.2-1.3 offer with a protocol_version alert */
    CU_ASSERT_STRING_EQUAL(r.reason, "probe-handshake: tlsv1 alert protocol version");
    env_close(&e);
}

static void test_closed_port(void)
{
    env e;
    if (!env_open(&e, NULL))
        return;
    result r;
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, fx.closed_port, NAME, &r), 0);
    CU_ASSERT_FALSE(r.ok);
    CU_ASSERT_STRING_EQUAL(r.reason, "probe-connect: connection refused");
    CU_ASSERT_EQUAL(stats(&e).failures, 1);
    env_close(&e);
}

/* TCP to a multicast address fails inside connect(2) itself: still an
 * answer through the callback, like any other connect failure. */
static void test_connect_fails_at_once(void)
{
    env e;
    if (!env_open(&e, NULL))
        return;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(443)};
    inet_pton(AF_INET, "224.0.0.1", &sin.sin_addr);
    result r1 = {0}, r2 = {0};
    CU_ASSERT_EQUAL(tls_probe_check(e.cache, &e.loop, (const struct sockaddr *)&sin, NAME,
                                    on_result, &r1, NULL, NULL, 0, NULL),
                    0);
    CU_ASSERT_EQUAL(tls_probe_check(e.cache, &e.loop, (const struct sockaddr *)&sin, NAME,
                                    on_result, &r2, NULL, NULL, 0, NULL),
                    0);
    CU_ASSERT_EQUAL(r1.calls + r2.calls, 0); /* never from inside tls_probe_check */
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CU_ASSERT_EQUAL(r1.calls, 1);
    CU_ASSERT_EQUAL(r2.calls, 1);
    CU_ASSERT_FALSE(r1.ok);
    CU_ASSERT_NSTRING_EQUAL(r1.reason, "probe-connect: ", 15);
    CU_ASSERT_STRING_EQUAL(r1.reason, r2.reason);
    tls_probe_stats s = stats(&e);
    CU_ASSERT_EQUAL(s.probes, 1);
    CU_ASSERT_EQUAL(s.entries, 1);
    env_close(&e);
}

static void test_timeout(void)
{
    tls_probe_config cfg = default_cfg;
    cfg.timeout_ms = 200;
    env e;
    if (!env_open(&e, &cfg))
        return;
    result r;
    uint64_t t0 = mono_ms();
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, fx.silent_port, NAME, &r), 0);
    uint64_t took = mono_ms() - t0;
    CU_ASSERT_FALSE(r.ok);
    CU_ASSERT_STRING_EQUAL(r.reason, "probe-timeout");
    CU_ASSERT(took >= 190 && took < 2000);
    env_close(&e);
}

/* A server on our own loop that answers a ClientHello with HTTP, or hangs up. */
typedef struct fake {
    uv_tcp_t listener;
    uv_tcp_t conn;
    uv_write_t w;
    bool http;
    int port;
} fake;

static void fake_on_conn_close(uv_handle_t *h)
{
    (void)h;
}

static void fake_on_write(uv_write_t *w, int status)
{
    uv_close((uv_handle_t *)w->handle, fake_on_conn_close);
}

static void fake_on_connection(uv_stream_t *l, int status)
{
    fake *f = l->data;
    if (status < 0)
        return;
    uv_tcp_init(l->loop, &f->conn);
    if (uv_accept(l, (uv_stream_t *)&f->conn) != 0) {
        uv_close((uv_handle_t *)&f->conn, fake_on_conn_close);
        return;
    }
    if (f->http) {
        static char resp[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
        uv_buf_t b = uv_buf_init(resp, sizeof resp - 1);
        uv_write(&f->w, (uv_stream_t *)&f->conn, &b, 1, fake_on_write);
    } else {
        uv_close((uv_handle_t *)&f->conn, fake_on_conn_close);
    }
    uv_close((uv_handle_t *)l, NULL);
}

static int fake_start(fake *f, uv_loop_t *loop, bool http)
{
    memset(f, 0, sizeof *f);
    f->http = http;
    struct sockaddr_in sin = addr_port(0);
    int namelen = sizeof sin;
    uv_tcp_init(loop, &f->listener);
    f->listener.data = f;
    if (uv_tcp_bind(&f->listener, (const struct sockaddr *)&sin, 0) != 0 ||
        uv_listen((uv_stream_t *)&f->listener, 4, fake_on_connection) != 0 ||
        uv_tcp_getsockname(&f->listener, (struct sockaddr *)&sin, &namelen) != 0)
        return -1;
    f->port = ntohs(sin.sin_port);
    return 0;
}

static void test_not_tls(void)
{
    env e;
    if (!env_open(&e, NULL))
        return;
    fake f;
    CU_ASSERT_FATAL(fake_start(&f, &e.loop, true) == 0);
    result r;
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, f.port, NAME, &r), 0);
    CU_ASSERT_FALSE(r.ok);
    /* "wrong version number" today; the prefix is the contract */
    CU_ASSERT_NSTRING_EQUAL(r.reason, "probe-handshake: ", 17);
    CU_ASSERT(strlen(r.reason) > 17);

    CU_ASSERT_FATAL(fake_start(&f, &e.loop, false) == 0);
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, f.port, NAME, &r), 0);
    CU_ASSERT_FALSE(r.ok);
    /* closed by server, or reset when our ClientHello was still unread */
    CU_ASSERT_NSTRING_EQUAL(r.reason, "probe-handshake: ", 17);
    env_close(&e);
}

static void test_bad_input(void)
{
    env e;
    if (!env_open(&e, NULL))
        return;
    struct sockaddr_in sin = addr_port(fx.srv[SRV_TLS13].port);
    const struct sockaddr *sa = (const struct sockaddr *)&sin;
    result r = {0};
    char longname[300];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    const char *bad[] = {"",           ".",     "a..b",          ".a.b",  "bad name",
                         "a\x01.test", "[::1]", "\xc3\xa9.test", longname};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CU_ASSERT_EQUAL(
            tls_probe_check(e.cache, &e.loop, sa, bad[i], on_result, &r, NULL, NULL, 0, NULL),
            -EINVAL);
    CU_ASSERT_EQUAL(tls_probe_check(e.cache, &e.loop, sa, NAME, NULL, &r, NULL, NULL, 0, NULL),
                    -EINVAL);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    CU_ASSERT_EQUAL(tls_probe_check(e.cache, &e.loop, (const struct sockaddr *)&sun, NAME,
                                    on_result, &r, NULL, NULL, 0, NULL),
                    -EAFNOSUPPORT);
    CU_ASSERT_EQUAL(uv_run(&e.loop, UV_RUN_DEFAULT), 0);
    CU_ASSERT_EQUAL(r.calls, 0);
    tls_probe_stats s = stats(&e);
    CU_ASSERT_EQUAL(s.misses + s.hits + s.probes, 0);
    env_close(&e);
}

/* ---- cache ---- */

static void test_cache_hit_and_expiry(void)
{
    tls_probe_config cfg = default_cfg;
    cfg.ttl_ok_s = 1;
    env e;
    if (!env_open(&e, &cfg))
        return;
    int port = fx.srv[SRV_TLS13].port;
    result r;
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, port, NAME, &r), 0);
    CU_ASSERT_TRUE(r.ok);
    /* same key: answered at once, no callback, no connection */
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, port, NAME, &r), 1);
    CU_ASSERT_TRUE(r.ok);
    CU_ASSERT_STRING_EQUAL(r.reason, "");
    /* names compare case-insensitively, a trailing dot is the same name */
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, port, "WWW.Example.TEST.", &r), 1);
    tls_probe_stats s = stats(&e);
    CU_ASSERT_EQUAL(s.hits, 2);
    CU_ASSERT_EQUAL(s.misses, 1);
    CU_ASSERT_EQUAL(s.probes, 1);
    /* another port is another key */
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, fx.srv[SRV_TLS12].port, NAME, &r), 0);
    CU_ASSERT_EQUAL(stats(&e).probes, 2);

    usleep(1100 * 1000);
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, port, NAME, &r), 0);
    CU_ASSERT_TRUE(r.ok);
    s = stats(&e);
    CU_ASSERT_EQUAL(s.probes, 3);
    CU_ASSERT_EQUAL(s.hits, 2);
    env_close(&e);
}

static void test_failure_cached(void)
{
    env e;
    if (!env_open(&e, NULL))
        return;
    int port = fx.srv[SRV_TLS13].port;
    result r;
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, port, "wrong.example.test", &r), 0);
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, port, "wrong.example.test", &r), 1);
    CU_ASSERT_FALSE(r.ok);
    CU_ASSERT_STRING_EQUAL(r.reason, "certificate-name-mismatch: wrong.example.test");
    /* a short buffer is cut, not overrun */
    char small[12];
    bool ok = true;
    struct sockaddr_in sin = addr_port(port);
    CU_ASSERT_EQUAL(tls_probe_check(e.cache, &e.loop, (const struct sockaddr *)&sin,
                                    "wrong.example.test", on_result, &r, &ok, small, sizeof small,
                                    NULL),
                    1);
    CU_ASSERT_FALSE(ok);
    CU_ASSERT_STRING_EQUAL(small, "certificate");
    env_close(&e);

    /* ttl_fail_s 0: failures are not remembered */
    tls_probe_config cfg = default_cfg;
    cfg.ttl_fail_s = 0;
    if (!env_open(&e, &cfg))
        return;
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, port, "wrong.example.test", &r), 0);
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, port, "wrong.example.test", &r), 0);
    CU_ASSERT_EQUAL(stats(&e).probes, 2);
    CU_ASSERT_EQUAL(stats(&e).entries, 0);
    env_close(&e);
}

static void test_eviction(void)
{
    tls_probe_config cfg = default_cfg;
    cfg.max_entries = 2;
    env e;
    if (!env_open(&e, &cfg))
        return;
    int port = fx.srv[SRV_TLS13].port;
    result r;
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, port, "a.example.test", &r), 0);
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, port, "b.example.test", &r), 0);
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, port, "c.example.test", &r), 0);
    tls_probe_stats s = stats(&e);
    CU_ASSERT_EQUAL(s.entries, 2);
    CU_ASSERT_EQUAL(s.evictions, 1);
    /* the oldest went */
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, port, "c.example.test", &r), 1);
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, port, "b.example.test", &r), 1);
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, port, "a.example.test", &r), 0);
    CU_ASSERT_EQUAL(stats(&e).evictions, 2);
    env_close(&e);
}

/* ---- coalescing, cancel, abort ---- */

static int start(env *e, int port, const char *name, result *r, tls_probe_req **req)
{
    struct sockaddr_in sin = addr_port(port);
    return tls_probe_check(e->cache, &e->loop, (const struct sockaddr *)&sin, name, on_result, r,
                           NULL, NULL, 0, req);
}

static void test_coalesce(void)
{
    env e;
    if (!env_open(&e, NULL))
        return;
    int port = fx.srv[SRV_TLS13].port;
    result r1 = {0}, r2 = {0}, r3 = {0};
    tls_probe_req *q1, *q2, *q3;
    CU_ASSERT_EQUAL(start(&e, port, NAME, &r1, &q1), 0);
    CU_ASSERT_EQUAL(start(&e, port, NAME, &r2, &q2), 0);
    CU_ASSERT_EQUAL(start(&e, port, "www.EXAMPLE.test", &r3, &q3), 0);
    CU_ASSERT(q1 != q2 && q2 != q3);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CU_ASSERT_EQUAL(r1.calls, 1);
    CU_ASSERT_EQUAL(r2.calls, 1);
    CU_ASSERT_EQUAL(r3.calls, 1);
    CU_ASSERT_TRUE(r1.ok && r2.ok && r3.ok);
    tls_probe_stats s = stats(&e);
    CU_ASSERT_EQUAL(s.probes, 1);
    CU_ASSERT_EQUAL(s.coalesced, 2);
    CU_ASSERT_EQUAL(s.misses, 3);
    env_close(&e);
}

static void test_max_running(void)
{
    tls_probe_config cfg = default_cfg;
    cfg.max_running = 1;
    cfg.timeout_ms = 200;
    env e;
    if (!env_open(&e, &cfg))
        return;
    result r1 = {0}, r2 = {0}, r3 = {0};
    tls_probe_req *q1, *q2, *q3;
    /* One probe hangs on the silent server; a second name finds no room
     * (refused, nothing started), a check that joins the first still may. */
    struct sockaddr_in sin = addr_port(fx.silent_port);
    CU_ASSERT_EQUAL(tls_probe_check(e.cache, &e.loop, (const struct sockaddr *)&sin, NAME,
                                    on_result, &r1, &r1.ok, r1.reason, sizeof r1.reason, &q1),
                    0);
    CU_ASSERT_EQUAL(tls_probe_check(e.cache, &e.loop, (const struct sockaddr *)&sin,
                                    "other.example.test", on_result, &r2, &r2.ok, r2.reason,
                                    sizeof r2.reason, &q2),
                    -EBUSY);
    CU_ASSERT_EQUAL(tls_probe_check(e.cache, &e.loop, (const struct sockaddr *)&sin, NAME,
                                    on_result, &r3, &r3.ok, r3.reason, sizeof r3.reason, &q3),
                    0);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CU_ASSERT_EQUAL(r1.calls, 1);
    CU_ASSERT_EQUAL(r2.calls, 0);
    CU_ASSERT_EQUAL(r3.calls, 1);
    tls_probe_stats s = stats(&e);
    CU_ASSERT_EQUAL(s.probes, 1);
    CU_ASSERT_EQUAL(s.refused, 1);
    /* Once it finished there is room again. */
    result r4;
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, fx.srv[SRV_TLS13].port, NAME, &r4), 0);
    CU_ASSERT_TRUE(r4.ok);
    env_close(&e);
}

static void test_cancel(void)
{
    env e;
    if (!env_open(&e, NULL))
        return;
    int port = fx.srv[SRV_TLS13].port;
    result r1 = {0}, r2 = {0};
    tls_probe_req *q1, *q2;
    CU_ASSERT_EQUAL(start(&e, port, NAME, &r1, &q1), 0);
    CU_ASSERT_EQUAL(start(&e, port, NAME, &r2, &q2), 0);
    tls_probe_cancel(q1);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CU_ASSERT_EQUAL(r1.calls, 0);
    CU_ASSERT_EQUAL(r2.calls, 1);
    CU_ASSERT_TRUE(r2.ok);

    /* the only waiter leaves: the probe still finishes and fills the cache */
    result r3 = {0};
    tls_probe_req *q3;
    CU_ASSERT_EQUAL(start(&e, fx.srv[SRV_SELF].port, NAME, &r3, &q3), 0);
    tls_probe_cancel(q3);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CU_ASSERT_EQUAL(r3.calls, 0);
    result r;
    CU_ASSERT_EQUAL(check(e.cache, &e.loop, fx.srv[SRV_SELF].port, NAME, &r), 1);
    CU_ASSERT_FALSE(r.ok);
    CU_ASSERT_NSTRING_EQUAL(r.reason, "certificate-untrusted: ", 23);
    CU_ASSERT_EQUAL(stats(&e).probes, 2);
    env_close(&e);
}

static void test_abort_loop(void)
{
    env e;
    if (!env_open(&e, NULL)) /* 5 s timeout: only the abort can end it early */
        return;
    result r1 = {0}, r2 = {0};
    tls_probe_req *q1, *q2;
    CU_ASSERT_EQUAL(start(&e, fx.silent_port, NAME, &r1, &q1), 0);
    CU_ASSERT_EQUAL(start(&e, fx.silent_port, NAME, &r2, &q2), 0);
    uv_run(&e.loop, UV_RUN_NOWAIT); /* connected, ClientHello sent */
    uint64_t t0 = mono_ms();
    tls_probe_abort_loop(e.cache, &e.loop);
    CU_ASSERT_EQUAL(uv_run(&e.loop, UV_RUN_DEFAULT), 0);
    CU_ASSERT(mono_ms() - t0 < 1000);
    CU_ASSERT_EQUAL(r1.calls + r2.calls, 0);
    tls_probe_stats s = stats(&e);
    CU_ASSERT_EQUAL(s.failures, 0);
    CU_ASSERT_EQUAL(s.entries, 0); /* an aborted probe proves nothing */
    env_close(&e);
}

/* Callbacks may cancel a sibling, ask again (the cache is already filled) or
 * abort the loop. */
typedef struct reenter {
    env *e;
    result own;
    tls_probe_req *sibling;
    int again;
    bool abort;
} reenter;

static void on_reenter(void *arg, bool ok, const char *reason)
{
    reenter *x = arg;
    on_result(&x->own, ok, reason);
    if (x->sibling)
        tls_probe_cancel(x->sibling);
    if (x->abort)
        tls_probe_abort_loop(x->e->cache, &x->e->loop);
    result r = {0};
    struct sockaddr_in sin = addr_port(fx.srv[SRV_TLS13].port);
    x->again = tls_probe_check(x->e->cache, &x->e->loop, (const struct sockaddr *)&sin, NAME,
                               on_result, &r, NULL, NULL, 0, NULL);
}

static void test_reentrant_callbacks(void)
{
    for (int round = 0; round < 2; round++) {
        env e;
        if (!env_open(&e, NULL))
            return;
        struct sockaddr_in sin = addr_port(fx.srv[SRV_TLS13].port);
        reenter a = {.e = &e, .abort = round == 1}, b = {.e = &e, .abort = round == 1};
        tls_probe_req *qa, *qb;
        /* waiters are told in the order they asked: a, then b */
        CU_ASSERT_EQUAL(tls_probe_check(e.cache, &e.loop, (const struct sockaddr *)&sin, NAME,
                                        on_reenter, &a, NULL, NULL, 0, &qa),
                        0);
        CU_ASSERT_EQUAL(tls_probe_check(e.cache, &e.loop, (const struct sockaddr *)&sin, NAME,
                                        on_reenter, &b, NULL, NULL, 0, &qb),
                        0);
        if (round == 0)
            a.sibling = qb;
        uv_run(&e.loop, UV_RUN_DEFAULT);
        CU_ASSERT_EQUAL(a.own.calls + b.own.calls, 1);
        CU_ASSERT_TRUE(a.own.ok || b.own.ok);
        CU_ASSERT_EQUAL(a.again + b.again, 1); /* a hit: the cache came first */
        env_close(&e);
    }
}

/* ---- threads: one cache, a loop each ---- */

typedef struct worker {
    tls_probe_cache *cache;
    int port;
    int rc;
    result r;
} worker;

static void *worker_run(void *arg)
{
    worker *w = arg;
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) {
        w->rc = -1;
        return NULL;
    }
    struct sockaddr_in sin = addr_port(w->port);
    for (int i = 0; i < 20; i++) {
        memset(&w->r, 0, sizeof w->r);
        w->rc = tls_probe_check(w->cache, &loop, (const struct sockaddr *)&sin, NAME, on_result,
                                &w->r, &w->r.ok, w->r.reason, sizeof w->r.reason, NULL);
        if (w->rc == 0)
            uv_run(&loop, UV_RUN_DEFAULT);
        if (w->rc < 0 || !w->r.ok)
            break;
    }
    tls_probe_abort_loop(w->cache, &loop);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0)
        w->rc = -2;
    return NULL;
}

static void test_threads(void)
{
    env e;
    if (!env_open(&e, NULL))
        return;
    worker w[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (worker){.cache = e.cache, .port = fx.srv[i % 2 ? SRV_TLS12 : SRV_TLS13].port};
        CU_ASSERT_FATAL(pthread_create(&t[i], NULL, worker_run, &w[i]) == 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        CU_ASSERT(w[i].rc >= 0);
        CU_ASSERT_TRUE(w[i].r.ok);
    }
    tls_probe_stats s = stats(&e);
    CU_ASSERT_EQUAL(s.hits + s.misses, 80);
    CU_ASSERT(s.probes >= 2 && s.probes <= 4); /* one per key, or one per loop at worst */
    CU_ASSERT_EQUAL(s.entries, 2);
    env_close(&e);
}

int unit_register(void)
{
    static const unit_case answers[] = {
        {"tls13 good server, right name: ok", test_tls13_ok},
        {"tls12 good server, right name: ok", test_tls12_ok},
        {"ip literal: no SNI, IP SAN checked", test_ip_literal},
        {"SNI sent for names, not for addresses", test_sni},
        {"ipv6 address and literal", test_ipv6},
        {"wrong name: certificate-name-mismatch", test_name_mismatch},
        {"self-signed: certificate-untrusted", test_self_signed},
        {"expired: certificate-expired", test_expired},
        {"not yet valid: certificate-expired", test_not_yet_valid},
        {"clientAuth only: certificate-invalid", test_wrong_purpose},
        {"tls 1.1 only: probe-handshake", test_old_version},
        {"closed port: probe-connect", test_closed_port},
        {"connect(2) fails at once: probe-connect", test_connect_fails_at_once},
        {"silent server: probe-timeout", test_timeout},
        {"max running: further probes refused", test_max_running},
        {"not tls / hang-up: probe-handshake", test_not_tls},
        {"bad name or family: rejected", test_bad_input},
        {NULL, NULL},
    };
    static const unit_case cache[] = {
        {"hit, then probe again after ttl", test_cache_hit_and_expiry},
        {"failures cached for ttl_fail", test_failure_cached},
        {"oldest evicted past max_entries", test_eviction},
        {NULL, NULL},
    };
    static const unit_case sharing[] = {
        {"same key on one loop: one probe", test_coalesce},
        {"cancel removes one waiter", test_cancel},
        {"abort_loop closes without callbacks", test_abort_loop},
        {"callbacks cancel, re-check, abort", test_reentrant_callbacks},
        {"threads share the cache", test_threads},
        {NULL, NULL},
    };
    if (unit_add_suite("probe_answers", answers) || unit_add_suite("probe_cache", cache) ||
        unit_add_suite("probe_sharing", sharing))
        return -1;
    return 0;
}
