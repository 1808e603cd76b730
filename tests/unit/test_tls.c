/* test_tls.c - the TLS classifier against its vectors (recorded real
 * handshakes and hand-made breakage, tests/vectors/tls), its streaming
 * contract and memory use, and certificate verification (tls_verify) on the
 * chains recorded from real servers. Suites: vectors, classify, verify. */
#include "cu_main.h"
#include "tls_classify.h"
#include "tls_verify.h"
#include "vectors.h"

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TLS_VEC VECTOR_DIR "/tls"
#define CERTS TLS_VEC "/certs"
#define REC TLS_VEC "/recorded"
#define TEST_NAME "www.portcullis.test"

/* ---- helpers ------------------------------------------------------------ */

static void describe(const void *state, int ev, char *buf, size_t buflen)
{
    const tls_classify *t = state;
    const tls_info *i = tls_classify_info(t);
    const uint8_t *const *der;
    const size_t *der_len;
    size_t n;
    switch (ev) {
    case TLS_EV_CLIENT_HELLO:
        snprintf(buf, buflen, "sni=%s maxver=%04x alpn=%s early=%d", i->sni[0] ? i->sni : "-",
                 i->client_max_version, i->alpn[0] ? i->alpn : "-", i->early_data);
        break;
    case TLS_EV_SERVER_HELLO:
        snprintf(buf, buflen, "version=%04x cipher=%04x hrr=%d resumed=%d", i->version, i->cipher,
                 i->hello_retry, i->resumed);
        break;
    case TLS_EV_CERTIFICATE:
        n = tls_classify_chain(t, &der, &der_len);
        snprintf(buf, buflen, "chain=%zu", n);
        break;
    default: snprintf(buf, buflen, "event=%d", ev); break;
    }
}

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    long n;
    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = malloc((size_t)n + 1);
        if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
            free(buf);
            buf = NULL;
        }
        *len = (size_t)n;
    }
    fclose(f);
    return buf;
}

typedef struct chain {
    size_t n;
    uint8_t *der[TLS_MAX_CHAIN];
    size_t len[TLS_MAX_CHAIN];
} chain;

static void chain_free(chain *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->der[i]);
    c->n = 0;
}

/* Feeds a recorded file to t in one direction the way the proxy does: on
 * every stop, look and feed the rest. Copies the chain out at
 * TLS_EV_CERTIFICATE. Returns the last verdict. */
static cls_verdict feed_file(tls_classify *t, cls_dir dir, const char *path, chain *out,
                             int *events)
{
    size_t len = 0, pos = 0;
    uint8_t *buf = slurp(path, &len);
    cls_verdict v = CLS_VIOLATES;
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    while (pos < len) {
        size_t used = 0;
        v = tls_classify_feed(t, dir, buf + pos, len - pos, &used);
        pos += used;
        if (v == CLS_VIOLATES)
            break;
        int ev = tls_classify_event(t);
        if (ev && events)
            *events = *events * 10 + ev;
        if (ev == TLS_EV_CERTIFICATE && out) {
            const uint8_t *const *der;
            const size_t *der_len;
            out->n = tls_classify_chain(t, &der, &der_len);
            for (size_t i = 0; i < out->n; i++) {
                out->der[i] = malloc(der_len[i]);
                memcpy(out->der[i], der[i], der_len[i]);
                out->len[i] = der_len[i];
            }
        }
    }
    free(buf);
    return v;
}

/* Replays recorded/<scen>/NN-dir.bin in order. */
static cls_verdict replay(tls_classify *t, const char *scen, chain *out, int *events)
{
    cls_verdict v = CLS_NEED_MORE;
    for (int i = 1; i < 100 && v != CLS_VIOLATES; i++) {
        char path[512];
        snprintf(path, sizeof(path), REC "/%s/%02d-c2s.bin", scen, i);
        FILE *f = fopen(path, "rb");
        cls_dir dir = CLS_C2S;
        if (!f) {
            snprintf(path, sizeof(path), REC "/%s/%02d-s2c.bin", scen, i);
            f = fopen(path, "rb");
            dir = CLS_S2C;
        }
        if (!f)
            break;
        fclose(f);
        v = feed_file(t, dir, path, out, events);
    }
    return v;
}

static tls_classify *tls_new(void)
{
    tls_classify *t = calloc(1, tls_classify_size());
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    tls_classify_init(t);
    return t;
}

static void tls_delete(tls_classify *t)
{
    tls_classify_release(t);
    free(t);
}

/* The chain a recorded server sent. */
static void recorded_chain(const char *scen, chain *c)
{
    tls_classify *t = tls_new();
    memset(c, 0, sizeof(*c));
    replay(t, scen, c, NULL);
    tls_delete(t);
}

/* A PEM certificate file as DER. */
static int pem_der(const char *path, uint8_t **der, size_t *len)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (!x)
        return -1;
    unsigned char *p = NULL;
    int n = i2d_X509(x, &p);
    X509_free(x);
    if (n <= 0)
        return -1;
    *der = malloc((size_t)n);
    memcpy(*der, p, (size_t)n);
    *len = (size_t)n;
    OPENSSL_free(p);
    return 0;
}

static int verify(tls_verify_store *s, const chain *c, const char *name, char *reason,
                  size_t reasonlen, char *names, size_t nameslen)
{
    return tls_verify_chain(s, (const uint8_t *const *)c->der, c->len, c->n, name, reason,
                            reasonlen, names, nameslen);
}

static int starts(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* ---- vectors -------------------------------------------------------------- */

static void test_vectors(void)
{
    int n = vec_check_dir(&tls_cls_ops, describe, TLS_VEC);
    CU_ASSERT(n > 0);
}

/* ---- classify ------------------------------------------------------------- */

static const struct {
    const char *scen;
    int events;
    uint16_t version;
    size_t chain;
} recorded[] = {
    {"s_client_tls12", 123, 0x0303, 2},   {"s_client_srv12", 123, 0x0303, 2},
    {"s_client_tls13", 12, 0x0304, 0},    {"s_client_hrr", 12, 0x0304, 0},
    {"s_client_resume12", 12, 0x0303, 0}, {"s_client_early13", 12, 0x0304, 0},
    {"curl_tls12", 123, 0x0303, 2},       {"curl_tls13", 12, 0x0304, 0},
    {"curl_srv12", 123, 0x0303, 2},       {"wget_tls13", 12, 0x0304, 0},
    {"wget_srv12", 123, 0x0303, 2},       {"python_urllib13", 12, 0x0304, 0},
    {"python_ssl12", 123, 0x0303, 2},     {"selfsigned_tls12", 123, 0x0303, 1},
    {"selfsigned_tls13", 12, 0x0304, 0},
};

/* Every recorded connection conforms to its end, with the events the proxy
 * needs, and holds no heap memory once the handshake is past. */
static void test_recorded_idle_memory(void)
{
    for (size_t i = 0; i < sizeof(recorded) / sizeof(recorded[0]); i++) {
        tls_classify *t = tls_new();
        chain c = {0};
        int events = 0;
        cls_verdict v = replay(t, recorded[i].scen, &c, &events);
        CU_ASSERT_EQUAL(v, CLS_CONFORMS);
        CU_ASSERT_EQUAL(events, recorded[i].events);
        CU_ASSERT_EQUAL(tls_classify_info(t)->version, recorded[i].version);
        CU_ASSERT_EQUAL(c.n, recorded[i].chain);
        CU_ASSERT_EQUAL(tls_classify_finish(t, CLS_C2S), CLS_CONFORMS);
        CU_ASSERT_EQUAL(tls_classify_finish(t, CLS_S2C), CLS_CONFORMS);
        CU_ASSERT_EQUAL(tls_classify_heap(t), 0);
        if (v != CLS_CONFORMS || events != recorded[i].events)
            fprintf(stderr, "\n%s: verdict %d events %d reason %s\n", recorded[i].scen, v, events,
                    tls_classify_reason(t) ? tls_classify_reason(t) : "-");
        chain_free(&c);
        tls_delete(t);
    }
    /* The state itself: tls_info (fixed by the header) plus the rest. */
    CU_ASSERT(tls_classify_size() < sizeof(tls_info) + 200);
}

/* The chain is there at TLS_EV_CERTIFICATE and gone after the next feed. */
static void test_chain_lifetime(void)
{
    tls_classify *t = tls_new();
    size_t len;
    uint8_t *c2s = slurp(REC "/curl_tls12/01-c2s.bin", &len);
    size_t used;
    CU_ASSERT_PTR_NOT_NULL_FATAL(c2s);
    CU_ASSERT_EQUAL(tls_classify_feed(t, CLS_C2S, c2s, len, &used), CLS_CONFORMS);
    CU_ASSERT_EQUAL(used, len);
    CU_ASSERT_EQUAL(tls_classify_event(t), TLS_EV_CLIENT_HELLO);
    CU_ASSERT_STRING_EQUAL(tls_classify_info(t)->sni, TEST_NAME);
    CU_ASSERT(tls_classify_heap(t) > 0); /* the ClientHello, for the ServerHello checks */
    free(c2s);

    uint8_t *s2c = slurp(REC "/curl_tls12/02-s2c.bin", &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s2c);
    size_t pos = 0;
    CU_ASSERT_EQUAL(tls_classify_feed(t, CLS_S2C, s2c, len, &used), CLS_CONFORMS);
    CU_ASSERT_EQUAL(tls_classify_event(t), TLS_EV_SERVER_HELLO);
    CU_ASSERT(used < len);
    pos += used;
    CU_ASSERT_EQUAL(tls_classify_feed(t, CLS_S2C, s2c + pos, len - pos, &used), CLS_CONFORMS);
    CU_ASSERT_EQUAL(tls_classify_event(t), TLS_EV_CERTIFICATE);
    pos += used;
    const uint8_t *const *der;
    const size_t *der_len;
    CU_ASSERT_EQUAL(tls_classify_chain(t, &der, &der_len), 2);
    CU_ASSERT_EQUAL(der[0][0], 0x30); /* a DER SEQUENCE */
    CU_ASSERT(tls_classify_heap(t) > 0);
    CU_ASSERT(pos < len);
    CU_ASSERT_EQUAL(tls_classify_feed(t, CLS_S2C, s2c + pos, len - pos, &used), CLS_CONFORMS);
    CU_ASSERT_EQUAL(used, len - pos);
    CU_ASSERT_EQUAL(tls_classify_event(t), CLS_EV_NONE);
    CU_ASSERT_EQUAL(tls_classify_chain(t, &der, &der_len), 0);
    CU_ASSERT_EQUAL(tls_classify_heap(t), 0);
    free(s2c);
    tls_delete(t);
}

/* A violation is final: same verdict and reason from feed and finish. */
static void test_dead_state(void)
{
    tls_classify *t = tls_new();
    size_t used = 99;
    const uint8_t http[] = "GET / HTTP/1.1\r\n";
    CU_ASSERT_EQUAL(tls_classify_feed(t, CLS_C2S, http, 0, &used), CLS_NEED_MORE);
    CU_ASSERT_EQUAL(used, 0);
    CU_ASSERT_EQUAL(tls_classify_feed(t, CLS_C2S, http, 3, &used), CLS_NEED_MORE);
    CU_ASSERT_EQUAL(used, 3);
    CU_ASSERT_PTR_NULL(tls_classify_reason(t));
    CU_ASSERT_EQUAL(tls_classify_feed(t, CLS_C2S, http + 3, sizeof(http) - 4, &used), CLS_VIOLATES);
    CU_ASSERT_EQUAL(used, 2); /* read up to the end of the would-be record header */
    const char *r = tls_classify_reason(t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_STRING_EQUAL(r, "tls-record-type: 71");
    CU_ASSERT_EQUAL(tls_classify_feed(t, CLS_S2C, http, 4, &used), CLS_VIOLATES);
    CU_ASSERT_EQUAL(used, 0);
    CU_ASSERT_EQUAL(tls_classify_feed(t, CLS_C2S, http, 0, &used), CLS_VIOLATES);
    CU_ASSERT_EQUAL(tls_classify_finish(t, CLS_C2S), CLS_VIOLATES);
    CU_ASSERT_STRING_EQUAL(tls_classify_reason(t), "tls-record-type: 71");
    tls_delete(t);

    /* finish inside a record */
    t = tls_new();
    const uint8_t hdr[] = {0x16, 0x03, 0x01, 0x00, 0x10, 0x01};
    CU_ASSERT_EQUAL(tls_classify_feed(t, CLS_C2S, hdr, sizeof(hdr), &used), CLS_NEED_MORE);
    CU_ASSERT_EQUAL(tls_classify_finish(t, CLS_S2C), CLS_CONFORMS);
    CU_ASSERT_EQUAL(tls_classify_finish(t, CLS_C2S), CLS_VIOLATES);
    CU_ASSERT(starts(tls_classify_reason(t), "tls-truncated"));
    tls_delete(t);
}

/* Application data is skipped by length: a long stream of full records is
 * classified quickly and conforms at every record boundary and inside. */
static void test_appdata_speed(void)
{
    tls_classify *t = tls_new();
    int events = 0;
    CU_ASSERT_EQUAL(replay(t, "curl_tls13", NULL, &events), CLS_CONFORMS);
    enum { REC_LEN = 16384 + 256, NREC = 512 };
    size_t len = (size_t)NREC * (REC_LEN + 5);
    uint8_t *buf = calloc(1, len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    for (size_t i = 0; i < NREC; i++) {
        uint8_t *h = buf + i * (REC_LEN + 5);
        h[0] = 0x17, h[1] = 3, h[2] = 3, h[3] = REC_LEN >> 8, h[4] = REC_LEN & 0xff;
    }
    clock_t start = clock();
    size_t total = 0;
    for (int round = 0; round < 40; round++) {
        size_t used;
        CU_ASSERT_EQUAL(tls_classify_feed(t, CLS_S2C, buf, len, &used), CLS_CONFORMS);
        total += used;
        /* odd split: inside a header, then inside a body */
        CU_ASSERT_EQUAL(tls_classify_feed(t, CLS_C2S, buf, 3, &used), CLS_NEED_MORE);
        CU_ASSERT_EQUAL(tls_classify_feed(t, CLS_C2S, buf + 3, 1000, &used), CLS_CONFORMS);
        CU_ASSERT_EQUAL(tls_classify_feed(t, CLS_C2S, buf + 1003, len - 1003, &used), CLS_CONFORMS);
    }
    double secs = (double)(clock() - start) / CLOCKS_PER_SEC;
    /* 40 x 8.5 MB: byte-by-byte work would take seconds under ASan. */
    CU_ASSERT(secs < 0.5);
    CU_ASSERT_EQUAL(total, 40 * len);
    free(buf);
    tls_delete(t);
}

/* ---- verify ----------------------------------------------------------------- */

static tls_verify_store *test_store(void)
{
    char err[256] = "";
    tls_verify_store *s = tls_verify_store_new(CERTS "/ca.pem", err, sizeof(err));
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_PTR_NOT_NULL(tls_verify_store_x509(s));
    return s;
}

static void test_verify_recorded(void)
{
    tls_verify_store *s = test_store();
    char reason[256], names[512];
    const char *scens[] = {"s_client_tls12", "curl_tls12", "wget_srv12", "python_ssl12"};
    for (size_t i = 0; i < sizeof(scens) / sizeof(scens[0]); i++) {
        chain c;
        recorded_chain(scens[i], &c);
        CU_ASSERT_EQUAL(c.n, 2);
        CU_ASSERT_EQUAL(verify(s, &c, TEST_NAME, reason, sizeof(reason), names, sizeof(names)), 0);
        CU_ASSERT_STRING_EQUAL(reason, "");
        CU_ASSERT_STRING_EQUAL(names, "www.portcullis.test,portcullis.test,localhost");
        /* any of its names, an IP SAN, and no name at all */
        CU_ASSERT_EQUAL(verify(s, &c, "LOCALHOST", reason, sizeof(reason), NULL, 0), 0);
        CU_ASSERT_EQUAL(verify(s, &c, "127.0.0.1", reason, sizeof(reason), NULL, 0), 0);
        CU_ASSERT_EQUAL(verify(s, &c, "", reason, sizeof(reason), NULL, 0), 0);
        CU_ASSERT_EQUAL(verify(s, &c, NULL, reason, sizeof(reason), NULL, 0), 0);
        chain_free(&c);
    }
    tls_verify_store_free(s);
}

static void test_verify_name_mismatch(void)
{
    tls_verify_store *s = test_store();
    char reason[256], names[512];
    chain c;
    recorded_chain("curl_tls12", &c);
    CU_ASSERT_EQUAL(verify(s, &c, "www.example.com", reason, sizeof(reason), names, sizeof(names)),
                    -1);
    CU_ASSERT_STRING_EQUAL(reason, "certificate-name-mismatch: www.example.com");
    CU_ASSERT_STRING_EQUAL(names, "www.portcullis.test,portcullis.test,localhost");
    CU_ASSERT_EQUAL(verify(s, &c, "127.0.0.2", reason, sizeof(reason), NULL, 0), -1);
    CU_ASSERT(starts(reason, "certificate-name-mismatch: 127.0.0.2"));
    /* no partial wildcards, no suffix matches */
    CU_ASSERT_EQUAL(verify(s, &c, "evil.portcullis.test", reason, sizeof(reason), NULL, 0), -1);
    CU_ASSERT(starts(reason, "certificate-name-mismatch"));
    CU_ASSERT_EQUAL(verify(s, &c, "portcullis.test.evil", reason, sizeof(reason), NULL, 0), -1);
    CU_ASSERT(starts(reason, "certificate-name-mismatch"));
    /* names that do not fit whole are left out */
    CU_ASSERT_EQUAL(verify(s, &c, TEST_NAME, reason, sizeof(reason), names, 36), 0);
    CU_ASSERT_STRING_EQUAL(names, "www.portcullis.test,portcullis.test");
    chain_free(&c);
    tls_verify_store_free(s);
}

static void test_verify_untrusted(void)
{
    tls_verify_store *s = test_store();
    char reason[256], names[512];
    chain c;
    recorded_chain("selfsigned_tls12", &c);
    CU_ASSERT_EQUAL(c.n, 1);
    CU_ASSERT_EQUAL(
        verify(s, &c, "selfsigned.portcullis.test", reason, sizeof(reason), names, sizeof(names)),
        -1);
    CU_ASSERT_STRING_EQUAL(reason, "certificate-untrusted: self-signed certificate");
    CU_ASSERT_STRING_EQUAL(names, "selfsigned.portcullis.test");
    chain_free(&c);

    /* the leaf alone: the intermediate is not in the store */
    recorded_chain("curl_tls12", &c);
    size_t n = c.n;
    c.n = 1;
    CU_ASSERT_EQUAL(verify(s, &c, TEST_NAME, reason, sizeof(reason), NULL, 0), -1);
    CU_ASSERT_STRING_EQUAL(reason, "certificate-untrusted: unable to get local issuer certificate");
    c.n = n;
    tls_verify_store_free(s);

    /* an intermediate as the only anchor: partial chains are not accepted */
    char err[256];
    s = tls_verify_store_new(CERTS "/int.pem", err, sizeof(err));
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(verify(s, &c, TEST_NAME, reason, sizeof(reason), NULL, 0), -1);
    CU_ASSERT(starts(reason, "certificate-untrusted"));
    tls_verify_store_free(s);

    /* the system store does not know the test CA */
    s = tls_verify_store_new(NULL, err, sizeof(err));
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(verify(s, &c, TEST_NAME, reason, sizeof(reason), NULL, 0), -1);
    CU_ASSERT(starts(reason, "certificate-untrusted"));
    tls_verify_store_free(s);
    s = tls_verify_store_new("", err, sizeof(err));
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(verify(s, &c, TEST_NAME, reason, sizeof(reason), NULL, 0), -1);
    tls_verify_store_free(s);
    chain_free(&c);
}

static void test_verify_parse(void)
{
    tls_verify_store *s = test_store();
    char reason[256], names[64] = "x";
    static const uint8_t junk[] = {0x30, 0x82, 0x01, 0x00, 0xde, 0xad};
    const uint8_t *der[2] = {junk, junk};
    size_t len[2] = {sizeof(junk), 0};
    CU_ASSERT_EQUAL(
        tls_verify_chain(s, der, len, 1, TEST_NAME, reason, sizeof(reason), names, sizeof(names)),
        -1);
    CU_ASSERT(starts(reason, "certificate-parse"));
    CU_ASSERT_STRING_EQUAL(names, "");
    CU_ASSERT_EQUAL(tls_verify_chain(s, der, len, 0, TEST_NAME, reason, sizeof(reason), NULL, 0),
                    -1);
    CU_ASSERT(starts(reason, "certificate-parse"));

    /* a good leaf with a bad intermediate; a good leaf with trailing bytes */
    chain c;
    recorded_chain("curl_tls12", &c);
    der[0] = c.der[0];
    len[0] = c.len[0];
    len[1] = sizeof(junk);
    CU_ASSERT_EQUAL(tls_verify_chain(s, der, len, 2, TEST_NAME, reason, sizeof(reason), NULL, 0),
                    -1);
    CU_ASSERT_STRING_EQUAL(reason, "certificate-parse: certificate 2 of 2 is not DER X.509");
    uint8_t *longer = malloc(c.len[0] + 1);
    memcpy(longer, c.der[0], c.len[0]);
    longer[c.len[0]] = 0;
    der[0] = longer;
    len[0] = c.len[0] + 1;
    CU_ASSERT_EQUAL(tls_verify_chain(s, der, len, 1, TEST_NAME, reason, sizeof(reason), NULL, 0),
                    -1);
    CU_ASSERT(starts(reason, "certificate-parse"));
    free(longer);
    chain_free(&c);
    tls_verify_store_free(s);
}

static void test_verify_expired_and_cn(void)
{
    tls_verify_store *s = test_store();
    char reason[256], names[256];
    chain c = {0};
    CU_ASSERT_EQUAL_FATAL(pem_der(CERTS "/expired.pem", &c.der[0], &c.len[0]), 0);
    CU_ASSERT_EQUAL_FATAL(pem_der(CERTS "/int.pem", &c.der[1], &c.len[1]), 0);
    c.n = 2;
    CU_ASSERT_EQUAL(verify(s, &c, TEST_NAME, reason, sizeof(reason), names, sizeof(names)), -1);
    CU_ASSERT_STRING_EQUAL(reason, "certificate-expired: certificate has expired");
    CU_ASSERT_STRING_EQUAL(names, TEST_NAME);
    chain_free(&c);

    CU_ASSERT_EQUAL_FATAL(pem_der(CERTS "/cnonly.pem", &c.der[0], &c.len[0]), 0);
    CU_ASSERT_EQUAL_FATAL(pem_der(CERTS "/int.pem", &c.der[1], &c.len[1]), 0);
    c.n = 2;
    CU_ASSERT_EQUAL(
        verify(s, &c, "cn.portcullis.test", reason, sizeof(reason), names, sizeof(names)), 0);
    CU_ASSERT_STRING_EQUAL(names, "cn.portcullis.test");
    chain_free(&c);
    tls_verify_store_free(s);
}

static void test_verify_store_errors(void)
{
    char err[256] = "";
    CU_ASSERT_PTR_NULL(tls_verify_store_new("/nonexistent/ca.pem", err, sizeof(err)));
    CU_ASSERT_STRING_EQUAL(err, "/nonexistent/ca.pem: No such file or directory");
    CU_ASSERT_PTR_NULL(tls_verify_store_new(CERTS "/gen.sh", err, sizeof(err)));
    CU_ASSERT(starts(err, CERTS "/gen.sh: "));
    tls_verify_store_free(NULL);
    char reason[128];
    CU_ASSERT_EQUAL(tls_verify_chain(NULL, NULL, NULL, 0, "x", reason, sizeof(reason), NULL, 0),
                    -1);
}

typedef struct worker {
    tls_verify_store *s;
    const chain *good, *self;
    int failures;
} worker;

static void *verify_worker(void *arg)
{
    worker *w = arg;
    char reason[256], names[256];
    for (int i = 0; i < 100; i++) {
        if (verify(w->s, w->good, TEST_NAME, reason, sizeof(reason), names, sizeof(names)) != 0)
            w->failures++;
        if (verify(w->s, w->self, "selfsigned.portcullis.test", reason, sizeof(reason), names,
                   sizeof(names)) == 0 ||
            !starts(reason, "certificate-untrusted"))
            w->failures++;
    }
    return NULL;
}

/* One store, many threads at once. */
static void test_verify_threads(void)
{
    tls_verify_store *s = test_store();
    chain good, self;
    recorded_chain("curl_tls12", &good);
    recorded_chain("selfsigned_tls12", &self);
    pthread_t th[8];
    worker w[8];
    for (int i = 0; i < 8; i++) {
        w[i] = (worker){s, &good, &self, 0};
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i], NULL, verify_worker, &w[i]), 0);
    }
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        CU_ASSERT_EQUAL(w[i].failures, 0);
    }
    chain_free(&good);
    chain_free(&self);
    tls_verify_store_free(s);
}

int unit_register(void)
{
    static const unit_case vectors[] = {{"tls vectors", test_vectors}, {NULL, NULL}};
    static const unit_case classify[] = {
        {"recorded connections, idle memory", test_recorded_idle_memory},
        {"chain lifetime", test_chain_lifetime},
        {"dead state", test_dead_state},
        {"application data speed", test_appdata_speed},
        {NULL, NULL},
    };
    static const unit_case verify_cases[] = {
        {"recorded chains verify", test_verify_recorded},
        {"name mismatch", test_verify_name_mismatch},
        {"untrusted", test_verify_untrusted},
        {"parse errors", test_verify_parse},
        {"expired, CN fallback", test_verify_expired_and_cn},
        {"store errors", test_verify_store_errors},
        {"threads", test_verify_threads},
        {NULL, NULL},
    };
    if (unit_add_suite("vectors", vectors) != 0 || unit_add_suite("classify", classify) != 0 ||
        unit_add_suite("verify", verify_cases) != 0)
        return -1;
    return 0;
}
