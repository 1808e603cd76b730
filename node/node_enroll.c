/* node_enroll.c - "portcullis-node enroll" (node_enroll.h, docs/link.md): one HTTPS
 * request to the controller's hub with the node's certificate request and
 * its one-time token. The hub is trusted only when its chain ends at the CA
 * whose fingerprint the token carries; nothing is written to the state
 * directory unless the controller issues a certificate. */
#include "node_enroll.h"

#include "pc_pki.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#define ENROLL_DEFAULT_STATE "/var/lib/portcullis-node"
#define ENROLL_DEFAULT_PORT "8444"
#define ENROLL_TIMEOUT_S 10
#define ENROLL_ANSWER_MAX (64 * 1024)
#define ENROLL_SECRET_MAX 256

#define PROG "portcullis-node enroll"

/* Everything one enrollment works with. */
typedef struct enroll_job {
    const char *state;
    char host[256]; /* without brackets */
    char port[6];   /* digits */
    char url[300];  /* https://HOST:PORT, as link.json keeps it */
    bool host_is_ip;
    char fp[PKI_FP_HEX]; /* the CA fingerprint the token carries */
    char msg[1024];      /* why the TLS handshake was refused */
} enroll_job;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, PROG ": ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: portcullis-node enroll --controller https://HOST:PORT --token TOKEN "
               "[--state DIR]\n"
               "  --controller URL  the controller's hub (port default " ENROLL_DEFAULT_PORT ")\n"
               "  --token TOKEN     the one-time token the controller gave "
               "(pce1.<secret>.<CA fingerprint>)\n"
               "  --state DIR       where the key and certificates go "
               "(default " ENROLL_DEFAULT_STATE ")\n");
}

static bool is_hex(char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

static bool is_b64url(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '_';
}

/* Checks "pce1.<secret>.<64 hex>" and takes the fingerprint (lower case);
 * 0, or -1 with the reason on stderr. */
static int token_parse(const char *token, enroll_job *j)
{
    if (strncmp(token, "pce1.", 5) != 0) {
        fail("the token must start with 'pce1.' (it is pce1.<secret>.<CA fingerprint>)");
        return -1;
    }
    const char *s = token + 5, *dot = strchr(s, '.');
    if (!dot || dot == s) {
        fail("the token has no secret part (it is pce1.<secret>.<CA fingerprint>)");
        return -1;
    }
    if ((size_t)(dot - s) > ENROLL_SECRET_MAX) {
        fail("the token's secret part is longer than %d characters", ENROLL_SECRET_MAX);
        return -1;
    }
    for (const char *p = s; p < dot; p++) {
        if (!is_b64url(*p)) {
            fail("the token's secret part has a character that is not base64url ([A-Za-z0-9_-])");
            return -1;
        }
    }
    const char *f = dot + 1;
    size_t n = strlen(f);
    for (size_t i = 0; i < n; i++) {
        if (!is_hex(f[i])) {
            fail("the token's CA fingerprint has a character that is not a hex digit");
            return -1;
        }
    }
    if (n != 64) {
        fail("the token's CA fingerprint has %zu hex digits, not 64", n);
        return -1;
    }
    for (size_t i = 0; i < 64; i++)
        j->fp[i] = (char)(f[i] >= 'A' && f[i] <= 'F' ? f[i] - 'A' + 'a' : f[i]);
    j->fp[64] = '\0';
    return 0;
}

/* "https://HOST[:PORT][/]" with HOST a name, an IPv4 address or [IPv6]. */
static int url_parse(const char *url, enroll_job *j)
{
    unsigned char ip[16];
    if (strncasecmp(url, "https://", 8) != 0) {
        fail("--controller must be an https:// URL (https://HOST:PORT), not '%s'", url);
        return -1;
    }
    const char *h = url + 8, *end = h + strlen(h), *port = NULL, *hend;
    if (end > h && end[-1] == '/')
        end--;
    if (memchr(h, '/', (size_t)(end - h)) || memchr(h, '?', (size_t)(end - h))) {
        fail("--controller: the URL must have no path (https://HOST:PORT)");
        return -1;
    }
    if (*h == '[') {
        const char *close = memchr(h, ']', (size_t)(end - h));
        if (!close) {
            fail("--controller: '[' without ']' around the IPv6 address");
            return -1;
        }
        hend = close;
        h++;
        if (close + 1 < end) {
            if (close[1] != ':') {
                fail("--controller: only ':PORT' may follow the host");
                return -1;
            }
            port = close + 2;
        }
    } else {
        hend = h;
        while (hend < end && *hend != ':')
            hend++;
        if (hend < end)
            port = hend + 1;
        if (port && memchr(port, ':', (size_t)(end - port))) {
            fail("--controller: an IPv6 address must be in brackets: https://[ADDR]:PORT");
            return -1;
        }
    }
    size_t hl = (size_t)(hend - h);
    if (hl == 0 || hl >= sizeof(j->host)) {
        fail("--controller: the host is %s", hl ? "too long" : "missing");
        return -1;
    }
    memcpy(j->host, h, hl);
    j->host[hl] = '\0';
    for (size_t i = 0; i < hl; i++) {
        unsigned char ch = (unsigned char)j->host[i];
        if (ch <= ' ' || ch >= 0x7f || ch == '/' || ch == '@' || ch == '[' || ch == ']') {
            fail("--controller: the host '%s' has a character a host name cannot have", j->host);
            return -1;
        }
    }
    if (port) {
        size_t pl = (size_t)(end - port);
        unsigned long p = 0;
        for (size_t i = 0; i < pl && p <= 65535; i++)
            p = (port[i] >= '0' && port[i] <= '9') ? p * 10 + (unsigned long)(port[i] - '0')
                                                   : 100000;
        if (pl == 0 || pl > 5 || p == 0 || p > 65535) {
            fail("--controller: the port must be a number from 1 to 65535");
            return -1;
        }
        snprintf(j->port, sizeof(j->port), "%lu", p);
    } else {
        snprintf(j->port, sizeof(j->port), "%s", ENROLL_DEFAULT_PORT);
    }
    j->host_is_ip = inet_pton(AF_INET, j->host, ip) == 1 || inet_pton(AF_INET6, j->host, ip) == 1;
    if (strchr(j->host, ':') && !j->host_is_ip) {
        fail("--controller: '%s' is not an IPv6 address", j->host);
        return -1;
    }
    bool v6 = strchr(j->host, ':') != NULL;
    snprintf(j->url, sizeof(j->url), "https://%s%s%s:%s", v6 ? "[" : "", j->host, v6 ? "]" : "",
             j->port);
    return 0;
}

/* mkdir -p, the last directory 0700; then proves it can hold our files, so
 * the token is not spent on a directory we cannot write. */
static int state_dir(const char *dir)
{
    int rc = -1;
    char *p = strdup(dir), *tmp = NULL;
    struct stat st;
    if (!p || asprintf(&tmp, "%s/.enroll-check.XXXXXX", dir) < 0) {
        tmp = NULL;
        fail("out of memory");
        goto done;
    }
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            fail("cannot create %s: %s", p, strerror(errno));
            goto done;
        }
        *s = '/';
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        fail("cannot create the state directory %s: %s", dir, strerror(errno));
        goto done;
    }
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fail("the state directory %s is not a directory", dir);
        goto done;
    }
    int fd = mkstemp(tmp);
    if (fd < 0) {
        fail("cannot write in the state directory %s: %s", dir, strerror(errno));
        goto done;
    }
    close(fd);
    unlink(tmp);
    rc = 0;
done:
    free(tmp);
    free(p);
    return rc;
}

/* A TCP connection to the host with 10 s send/receive timeouts; -1 with
 * the reason on stderr. */
static int tcp_connect(const enroll_job *j)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    struct timeval tv = {.tv_sec = ENROLL_TIMEOUT_S};
    int fd = -1, e = 0;
    int g = getaddrinfo(j->host, j->port, &hints, &res);
    if (g != 0) {
        fail("cannot resolve %s: %s", j->host, gai_strerror(g));
        return -1;
    }
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        /* Linux bounds connect() by SO_SNDTIMEO too. */
        if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == 0 &&
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) == 0 &&
            connect(fd, a->ai_addr, a->ai_addrlen) == 0)
            break;
        e = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        if (e == EINPROGRESS || e == EAGAIN)
            fail("cannot connect to %s:%s: no answer within %d s", j->host, j->port,
                 ENROLL_TIMEOUT_S);
        else
            fail("cannot connect to %s:%s: %s", j->host, j->port, strerror(e));
    }
    return fd;
}

/* Whether x is a self-signed CA certificate. */
static bool self_signed_ca(X509 *x)
{
    EVP_PKEY *pub = X509_get0_pubkey(x);
    bool ok = X509_check_issued(x, x) == X509_V_OK && X509_check_ca(x) > 0 && pub &&
              X509_verify(x, pub) == 1;
    ERR_clear_error();
    return ok;
}

/* Replaces OpenSSL's verification of the hub's chain: the chain must hold
 * the self-signed CA the token names, and the hub's certificate must verify
 * against that CA alone, for the host we connected to. */
static int verify_hub(X509_STORE_CTX *sctx, void *arg)
{
    enroll_job *j = arg;
    int ok = 0;
    X509 *leaf = X509_STORE_CTX_get0_cert(sctx), *ca = NULL;
    STACK_OF(X509) *chain = X509_STORE_CTX_get0_untrusted(sctx);
    X509_STORE *store = NULL;
    X509_STORE_CTX *vctx = NULL;
    char fp[PKI_FP_HEX], top_fp[PKI_FP_HEX] = "";
    bool top_is_ca = false;
    int n = chain ? sk_X509_num(chain) : 0;
    if (!leaf) {
        snprintf(j->msg, sizeof(j->msg), "the controller presented no certificate");
        goto done;
    }
    for (int i = 0; i < n && !ca; i++) {
        X509 *x = sk_X509_value(chain, i);
        if (pki_cert_fingerprint(x, fp) == 0 && strcmp(fp, j->fp) == 0 && self_signed_ca(x))
            ca = x;
    }
    if (!ca && n > 0) {
        X509 *top = sk_X509_value(chain, n - 1);
        top_is_ca = self_signed_ca(top);
        if (pki_cert_fingerprint(top, top_fp) != 0)
            snprintf(top_fp, sizeof(top_fp), "unknown");
    }
    if (!ca && top_is_ca) {
        snprintf(j->msg, sizeof(j->msg),
                 "the controller's CA fingerprint is %s, the token expects %s: this is not the "
                 "controller that made the token",
                 top_fp, j->fp);
        goto done;
    }
    if (!ca) {
        snprintf(j->msg, sizeof(j->msg),
                 "the controller did not present its CA certificate (its chain ends at a "
                 "certificate with fingerprint %s); the token expects the CA %s",
                 top_fp[0] ? top_fp : "none", j->fp);
        goto done;
    }
    store = X509_STORE_new();
    vctx = X509_STORE_CTX_new();
    if (!store || !vctx || X509_STORE_add_cert(store, ca) != 1 ||
        X509_STORE_CTX_init(vctx, store, leaf, chain) != 1 ||
        X509_STORE_CTX_set_default(vctx, "ssl_server") != 1) {
        snprintf(j->msg, sizeof(j->msg), "cannot set up certificate verification");
        goto done;
    }
    X509_VERIFY_PARAM *param = X509_STORE_CTX_get0_param(vctx);
    /* Names come from the subjectAltName only: a node's certificate (CN =
     * its name) must never pass for the hub's, whatever the node is called. */
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NEVER_CHECK_SUBJECT);
    int set = j->host_is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, j->host)
                            : X509_VERIFY_PARAM_set1_host(param, j->host, 0);
    if (set != 1) {
        snprintf(j->msg, sizeof(j->msg), "cannot set up certificate verification for %s", j->host);
        goto done;
    }
    if (X509_verify_cert(vctx) != 1) {
        int e = X509_STORE_CTX_get_error(vctx);
        if (e == X509_V_ERR_HOSTNAME_MISMATCH || e == X509_V_ERR_IP_ADDRESS_MISMATCH)
            snprintf(j->msg, sizeof(j->msg),
                     "the controller's certificate is not for %s (the CA %s is right, the name "
                     "is not: use one of the names in the hub certificate)",
                     j->host, j->fp);
        else
            snprintf(j->msg, sizeof(j->msg),
                     "the controller's certificate does not verify against the CA %s: %s", j->fp,
                     X509_verify_cert_error_string(e));
        goto done;
    }
    ok = 1;
done:
    ERR_clear_error();
    X509_STORE_CTX_free(vctx);
    X509_STORE_free(store);
    X509_STORE_CTX_set_error(sctx, ok ? X509_V_OK : X509_V_ERR_APPLICATION_VERIFICATION);
    return ok;
}

/* OpenSSL's first queued error as text (or what). */
static const char *ssl_reason(char *buf, size_t len, const char *what)
{
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, buf, len);
    else
        snprintf(buf, len, "%s", what);
    ERR_clear_error();
    return buf;
}

/* Reads the answer to the end (the request said Connection: close) or until
 * the Content-Length is complete; at most ENROLL_ANSWER_MAX bytes. */
static int read_answer(SSL *ssl, const enroll_job *j, char *buf, size_t *len)
{
    size_t n = 0;
    char why[256];
    for (;;) {
        if (n == ENROLL_ANSWER_MAX) {
            fail("the controller's answer is larger than %d bytes", ENROLL_ANSWER_MAX);
            return -1;
        }
        int r = SSL_read(ssl, buf + n, (int)(ENROLL_ANSWER_MAX - n));
        if (r > 0) {
            n += (size_t)r;
            buf[n] = '\0';
            /* Stop early when the declared body is all here. */
            const char *eoh = strstr(buf, "\r\n\r\n");
            if (eoh) {
                const char *cl = strcasestr(buf, "\r\ncontent-length:");
                if (cl && cl < eoh) {
                    unsigned long want = strtoul(cl + 17, NULL, 10);
                    if ((size_t)(eoh + 4 - buf) + want <= n)
                        break;
                }
            }
            continue;
        }
        int e = SSL_get_error(ssl, r);
        if (e == SSL_ERROR_ZERO_RETURN)
            break;
        /* A blocking socket's SO_RCVTIMEO shows as WANT_READ. */
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ||
            (e == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EWOULDBLOCK))) {
            fail("no answer from %s:%s within %d s", j->host, j->port, ENROLL_TIMEOUT_S);
            return -1;
        }
        if (e == SSL_ERROR_SYSCALL && r == 0)
            break; /* closed without close_notify: the length check catches a cut */
        fail("reading the controller's answer: %s",
             ssl_reason(why, sizeof(why), e == SSL_ERROR_SYSCALL ? strerror(errno) : "TLS error"));
        return -1;
    }
    buf[n] = '\0';
    *len = n;
    return 0;
}

/* Decodes a chunked body in place; its new length, or -1 when malformed. */
static long dechunk(char *b, size_t n)
{
    size_t in = 0, out = 0;
    for (;;) {
        char *end = NULL;
        const char *lf = memchr(b + in, '\n', n - in);
        if (!lf)
            return -1;
        unsigned long sz = strtoul(b + in, &end, 16);
        if (end == b + in || sz > n)
            return -1;
        in = (size_t)(lf - b) + 1;
        if (sz == 0)
            return (long)out;
        if (sz + 2 > n - in)
            return -1;
        memmove(b + out, b + in, sz);
        out += sz;
        in += sz;
        if (b[in] == '\r')
            in++;
        if (in >= n || b[in] != '\n')
            return -1;
        in++;
    }
}

/* Splits an HTTP/1.x answer: *status, *body (in buf), -1 when malformed. */
static int parse_answer(char *buf, size_t n, int *status, char **body)
{
    char *eoh = strstr(buf, "\r\n\r\n");
    int minor = 0;
    if (!eoh) {
        fail("the controller's answer is not HTTP (no end of headers)");
        return -1;
    }
    if (sscanf(buf, "HTTP/1.%d %3d", &minor, status) != 2 || *status < 100 || *status > 599) {
        fail("the controller's answer does not start with an HTTP/1.x status line");
        return -1;
    }
    *eoh = '\0';
    char *b = eoh + 4;
    size_t blen = n - (size_t)(b - buf);
    const char *cl = strcasestr(buf, "\r\ncontent-length:");
    const char *te = strcasestr(buf, "\r\ntransfer-encoding:");
    if (te && strcasestr(te, "chunked")) {
        long d = dechunk(b, blen);
        if (d < 0) {
            fail("the controller's chunked answer is malformed or cut short");
            return -1;
        }
        blen = (size_t)d;
    } else if (cl) {
        unsigned long want = strtoul(cl + 17, NULL, 10);
        if (want > blen) {
            fail("the controller's answer was cut short (%zu of %lu bytes)", blen, want);
            return -1;
        }
        blen = want;
    }
    b[blen] = '\0';
    *body = b;
    return 0;
}

/* The body of the request: {"token", "csr"}; NULL when memory runs out. */
static char *request_body(const char *token, const char *csr)
{
    cJSON *o = cJSON_CreateObject();
    char *s = NULL;
    if (o && cJSON_AddStringToObject(o, "token", token) && cJSON_AddStringToObject(o, "csr", csr))
        s = cJSON_PrintUnformatted(o);
    if (o) {
        cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "token");
        if (cJSON_IsString(t))
            explicit_bzero(t->valuestring, strlen(t->valuestring));
    }
    cJSON_Delete(o);
    return s;
}

/* o as one line of JSON with a newline; NULL when memory runs out. */
static char *json_line(const cJSON *o)
{
    char *s = cJSON_PrintUnformatted(o), *line = NULL;
    if (s && asprintf(&line, "%s\n", s) < 0)
        line = NULL;
    free(s);
    return line;
}

/* Checks what a 200 answer holds against the key and the token, then
 * writes the four files; the key first, link.json (the sign of a finished
 * enrollment) last. */
static int store_answer(const enroll_job *j, EVP_PKEY *key, cJSON *ans)
{
    int rc = -1;
    const cJSON *jn = cJSON_GetObjectItemCaseSensitive(ans, "node"),
                *jc = cJSON_GetObjectItemCaseSensitive(ans, "certificate"),
                *ja = cJSON_GetObjectItemCaseSensitive(ans, "ca_certificate");
    X509 *cert = NULL, *ca = NULL;
    char err[512], fp[PKI_FP_HEX], cn[65], *key_pem = NULL, *link = NULL, path[4096];
    cJSON *lj = NULL;
    if (!cJSON_IsString(jn) || !cJSON_IsString(jc) || !cJSON_IsString(ja)) {
        fail("the controller's answer lacks node, certificate or ca_certificate");
        goto done;
    }
    if (pki_cert_from_pem(ja->valuestring, &ca, err, sizeof(err)) != 0 ||
        pki_cert_from_pem(jc->valuestring, &cert, err, sizeof(err)) != 0) {
        fail("the controller's answer holds a bad certificate: %s", err);
        goto done;
    }
    if (pki_cert_fingerprint(ca, fp) != 0 || strcmp(fp, j->fp) != 0) {
        fail("the CA certificate the controller sent has fingerprint %s, the token expects %s", fp,
             j->fp);
        goto done;
    }
    EVP_PKEY *capub = X509_get0_pubkey(ca);
    if (!capub || X509_verify(cert, capub) != 1) {
        ERR_clear_error();
        fail("the certificate the controller sent is not signed by its CA");
        goto done;
    }
    if (X509_check_private_key(cert, key) != 1) {
        ERR_clear_error();
        fail("the certificate the controller sent is not for this node's key");
        goto done;
    }
    if (pki_cert_cn(cert, cn, sizeof(cn), err, sizeof(err)) != 0 ||
        strcmp(cn, jn->valuestring) != 0) {
        fail("the certificate the controller sent does not name the node '%.64s'", jn->valuestring);
        goto done;
    }
    if (pki_key_to_pem(key, &key_pem, err, sizeof(err)) != 0) {
        fail("%s", err);
        goto done;
    }
    if (!(lj = cJSON_CreateObject()) || !cJSON_AddStringToObject(lj, "controller", j->url) ||
        !cJSON_AddStringToObject(lj, "node", cn) || !(link = json_line(lj))) {
        fail("out of memory");
        goto done;
    }
    struct {
        const char *name, *data;
        unsigned mode;
    } files[] = {
        {"node.key", key_pem, 0600},
        {"node.crt", jc->valuestring, 0644},
        {"ca.crt", ja->valuestring, 0644},
        {"link.json", link, 0644},
    };
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", j->state, files[i].name) >=
            sizeof(path)) {
            fail("the state directory's path is too long");
            goto done;
        }
        if (pki_write_file(path, files[i].data, strlen(files[i].data), files[i].mode, err,
                           sizeof(err)) != 0) {
            fail("%s", err);
            goto done;
        }
    }
    printf("enrolled as %s with %s\n", cn, j->url);
    fflush(stdout);
    rc = 0;
done:
    if (key_pem) {
        explicit_bzero(key_pem, strlen(key_pem));
        free(key_pem);
    }
    free(link);
    cJSON_Delete(lj);
    X509_free(cert);
    X509_free(ca);
    return rc;
}

/* Says why the controller refused, from its {"error": {"code", "message"}}. */
static void report_refusal(int status, const char *body)
{
    cJSON *ans = cJSON_Parse(body);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(ans, "error");
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(e, "code"),
                *msg = cJSON_GetObjectItemCaseSensitive(e, "message");
    if (cJSON_IsString(code) && cJSON_IsString(msg))
        fail("the controller refused the enrollment (HTTP %d, %s): %s", status, code->valuestring,
             msg->valuestring);
    else
        fail("the controller answered HTTP %d without an error message", status);
    cJSON_Delete(ans);
}

/* Connects, verifies the hub, sends the request and handles the answer.
 * Returns 0 (enrolled), -1 (refused or failed: said on stderr), or
 * ENROLL_BUSY (the hub's enrollment rate limit: 429; nothing was used). */
#define ENROLL_BUSY 1
#define ENROLL_ATTEMPTS 6
static int enroll_run(enroll_job *j, const char *token)
{
    int rc = -1, fd = -1, status = 0;
    EVP_PKEY *key = NULL;
    SSL_CTX *ctx = NULL;
    SSL *ssl = NULL;
    char err[512], *csr = NULL, *body = NULL, *req = NULL, *answer = NULL, *abody = NULL;
    cJSON *ans = NULL;
    size_t alen = 0, reqlen = 0;

    if (pki_key_new(&key, err, sizeof(err)) != 0 ||
        pki_csr_new(key, NULL, &csr, err, sizeof(err)) != 0) {
        fail("%s", err);
        goto done;
    }
    if (!(body = request_body(token, csr)) || !(answer = malloc(ENROLL_ANSWER_MAX + 1))) {
        fail("out of memory");
        goto done;
    }
    bool v6 = strchr(j->host, ':') != NULL;
    int w = asprintf(&req,
                     "POST /enroll HTTP/1.1\r\nHost: %s%s%s:%s\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s",
                     v6 ? "[" : "", j->host, v6 ? "]" : "", j->port, strlen(body), body);
    if (w < 0) {
        req = NULL;
        fail("out of memory");
        goto done;
    }
    reqlen = (size_t)w;

    if ((fd = tcp_connect(j)) < 0)
        goto done;
    if (!(ctx = SSL_CTX_new(TLS_client_method())) ||
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
        fail("TLS: %s", ssl_reason(err, sizeof(err), "cannot make a context"));
        goto done;
    }
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_cert_verify_callback(ctx, verify_hub, j);
    if (!(ssl = SSL_new(ctx)) || SSL_set_fd(ssl, fd) != 1 ||
        (!j->host_is_ip && SSL_set_tlsext_host_name(ssl, j->host) != 1)) {
        fail("TLS: %s", ssl_reason(err, sizeof(err), "cannot set up the connection"));
        goto done;
    }
    j->msg[0] = '\0';
    int cr = SSL_connect(ssl);
    if (cr != 1) {
        int e = SSL_get_error(ssl, cr);
        if (j->msg[0])
            fail("refusing the controller at %s: %s", j->url, j->msg);
        else if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            fail("TLS handshake with %s: no answer within %d s", j->url, ENROLL_TIMEOUT_S);
        else
            fail("TLS handshake with %s failed: %s", j->url,
                 ssl_reason(err, sizeof(err), "the connection was closed"));
        goto done;
    }
    int wr = SSL_write(ssl, req, (int)reqlen);
    if (wr != (int)reqlen) {
        int e = SSL_get_error(ssl, wr);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            fail("sending the request to %s: not taken within %d s", j->url, ENROLL_TIMEOUT_S);
        else
            fail("sending the request to %s: %s", j->url,
                 ssl_reason(err, sizeof(err), "the connection failed"));
        goto done;
    }
    if (read_answer(ssl, j, answer, &alen) != 0 || parse_answer(answer, alen, &status, &abody) != 0)
        goto done;
    if (status == 429) {
        rc = ENROLL_BUSY;
        goto done;
    }
    if (status != 200) {
        report_refusal(status, abody);
        goto done;
    }
    if (!(ans = cJSON_Parse(abody)) || !cJSON_IsObject(ans)) {
        fail("the controller's answer is not a JSON object");
        goto done;
    }
    rc = store_answer(j, key, ans);
done:
    cJSON_Delete(ans);
    if (ssl) {
        SSL_shutdown(ssl);
        SSL_free(ssl);
    }
    SSL_CTX_free(ctx);
    if (fd >= 0)
        close(fd);
    if (req) {
        explicit_bzero(req, reqlen);
        free(req);
    }
    if (body) {
        explicit_bzero(body, strlen(body));
        free(body);
    }
    free(answer);
    free(csr);
    EVP_PKEY_free(key);
    return rc;
}

int node_enroll_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"controller", required_argument, NULL, 'c'},
        {"token", required_argument, NULL, 't'},
        {"state", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    enroll_job j = {.state = ENROLL_DEFAULT_STATE};
    const char *controller = NULL, *token = NULL;
    int ch;
    optind = 0; /* glibc: start over, whatever parsed argv before */
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': controller = optarg; break;
        case 't': token = optarg; break;
        case 's': j.state = optarg; break;
        case 'h': usage(stdout); return 0;
        default:
            fail("unknown option or missing value: '%s'", argv[optind - 1]);
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fail("unexpected argument '%s'", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (!controller || !token) {
        fail("--%s is required", controller ? "token" : "controller");
        usage(stderr);
        return 2;
    }
    if (!*j.state) {
        fail("--state must not be empty");
        return 2;
    }
    if (url_parse(controller, &j) != 0 || token_parse(token, &j) != 0)
        return 2;
    /* A controller that closes mid-request must give an error, not kill us. */
    signal(SIGPIPE, SIG_IGN);
    if (state_dir(j.state) != 0)
        return 1;
    /* The hub answers a limited number of enrollments a second (429 past
     * that, token untouched): when many nodes enroll at once, wait and try
     * again a few times before giving up. */
    for (int attempt = 1; attempt <= ENROLL_ATTEMPTS; attempt++) {
        int rc = enroll_run(&j, token);
        if (rc != ENROLL_BUSY)
            return rc == 0 ? 0 : 1;
        if (attempt < ENROLL_ATTEMPTS) {
            fprintf(stderr,
                    "portcullis-node: the controller is busy with other enrollments (HTTP 429); "
                    "trying again in %d s\n",
                    attempt);
            sleep((unsigned)attempt);
        }
    }
    fail("the controller stayed busy with other enrollments (HTTP 429) after %d attempts; the "
         "token was not used, try again later",
         ENROLL_ATTEMPTS);
    return 1;
}
