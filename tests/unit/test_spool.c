/* test_spool.c - the node's event spool (node/spool.h) on real SQLite files
 * in a temporary directory: numbering, batches, acknowledgement, the bound
 * and its drop count, renumbering after the controller saw more, and what
 * survives a close and a kill -9. */
#include "cu_main.h"
#include "spool.h"

#include <CUnit/CUnit.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmpdir[] = "/tmp/pc-spool-test-XXXXXX";
static int dbcount;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void suite_clean(void)
{
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void new_path(char *buf, size_t len)
{
    snprintf(buf, len, "%s/spool%d.db", tmpdir, ++dbcount);
}

static spool *open_at(const char *path, int64_t max)
{
    char err[512];
    spool *s = NULL;
    int rc = spool_open(path, max, &s, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "spool_open: %s\n", err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    return s;
}

/* Adds n events {"n":first..first+n-1}. */
static void add_n(spool *s, int first, int n)
{
    for (int i = first; i < first + n; i++) {
        char buf[64];
        int len = snprintf(buf, sizeof(buf), "{\"n\":%d}", i);
        spool_add(s, buf, (size_t)len);
    }
}

static int flush(spool *s)
{
    char err[512];
    int n = spool_flush(s, err, sizeof(err));
    if (n < 0)
        fprintf(stderr, "spool_flush: %s\n", err);
    return n;
}

static void read_all(spool *s, int64_t after, spool_batch *b)
{
    char err[512];
    int rc = spool_read(s, after, 1000000, 1u << 30, b, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "spool_read: %s\n", err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
}

static void test_open_refuses_small_bound(void)
{
    char path[256], err[512] = "";
    spool *s = NULL;
    new_path(path, sizeof(path));
    CU_ASSERT_EQUAL(spool_open(path, 10, &s, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NULL(s);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "at least 1000"));
}

static void test_open_refuses_damaged_file(void)
{
    char path[256], err[512] = "";
    spool *s = NULL;
    new_path(path, sizeof(path));
    FILE *f = fopen(path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    for (int i = 0; i < 64; i++)
        fputs("not an sqlite file ", f);
    fclose(f);
    CU_ASSERT_EQUAL(spool_open(path, 1000, &s, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NULL(s);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, path));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "not a database"));
}

static void test_add_flush_read_ack(void)
{
    char path[256], err[512];
    new_path(path, sizeof(path));
    spool *s = open_at(path, 1000);
    CU_ASSERT_EQUAL(spool_last_seq(s), 0);
    spool_add(s, "{\"a\":1}", 7);
    spool_add(s, "{\"b\":2}", 7);
    spool_add(s, "{\"c\":3}", 7);
    CU_ASSERT_EQUAL(spool_queued(s), 3);
    CU_ASSERT_EQUAL(spool_pending(s), 0);
    CU_ASSERT_EQUAL(flush(s), 3);
    CU_ASSERT_EQUAL(spool_queued(s), 0);
    CU_ASSERT_EQUAL(spool_last_seq(s), 3);
    CU_ASSERT_EQUAL(spool_pending(s), 3);
    CU_ASSERT_EQUAL(flush(s), 0);

    spool_batch b;
    read_all(s, 0, &b);
    CU_ASSERT_EQUAL_FATAL(b.n, 3);
    CU_ASSERT_EQUAL(b.seqs[0], 1);
    CU_ASSERT_EQUAL(b.seqs[2], 3);
    CU_ASSERT_STRING_EQUAL(b.json[1], "{\"b\":2}");
    CU_ASSERT_EQUAL(b.lens[1], 7);
    spool_batch_free(&b);

    /* A batch stops at max_n, and after about max_bytes but never empty. */
    CU_ASSERT_EQUAL_FATAL(spool_read(s, 1, 1, 1u << 20, &b, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL_FATAL(b.n, 1);
    CU_ASSERT_EQUAL(b.seqs[0], 2);
    spool_batch_free(&b);
    CU_ASSERT_EQUAL_FATAL(spool_read(s, 0, 1000, 1, &b, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(b.n, 1);
    spool_batch_free(&b);
    CU_ASSERT_EQUAL_FATAL(spool_read(s, 0, 1000, 8, &b, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(b.n, 2);
    spool_batch_free(&b);
    CU_ASSERT_EQUAL_FATAL(spool_read(s, 3, 1000, 1u << 20, &b, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(b.n, 0);
    spool_batch_free(&b);

    CU_ASSERT_EQUAL(spool_ack(s, 2, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(spool_pending(s), 1);
    read_all(s, 0, &b);
    CU_ASSERT_EQUAL_FATAL(b.n, 1);
    CU_ASSERT_EQUAL(b.seqs[0], 3);
    spool_batch_free(&b);
    CU_ASSERT_EQUAL(spool_dropped(s), 0);
    spool_close(s);
}

static void test_numbers_never_reused(void)
{
    char path[256], err[512];
    new_path(path, sizeof(path));
    spool *s = open_at(path, 1000);
    add_n(s, 1, 2);
    CU_ASSERT_EQUAL(flush(s), 2);
    CU_ASSERT_EQUAL(spool_ack(s, 2, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(spool_pending(s), 0);
    spool_close(s);

    s = open_at(path, 1000);
    CU_ASSERT_EQUAL(spool_last_seq(s), 2);
    CU_ASSERT_EQUAL(spool_pending(s), 0);
    add_n(s, 3, 1);
    CU_ASSERT_EQUAL(flush(s), 1);
    spool_batch b;
    read_all(s, 0, &b);
    CU_ASSERT_EQUAL_FATAL(b.n, 1);
    CU_ASSERT_EQUAL(b.seqs[0], 3);
    CU_ASSERT_STRING_EQUAL(b.json[0], "{\"n\":3}");
    spool_batch_free(&b);
    spool_close(s);
}

static void test_bound_drops_oldest(void)
{
    char path[256];
    new_path(path, sizeof(path));
    spool *s = open_at(path, 1000);
    add_n(s, 1, 1200);
    CU_ASSERT_EQUAL(flush(s), 1200);
    add_n(s, 1201, 300);
    CU_ASSERT_EQUAL(flush(s), 300);
    CU_ASSERT_EQUAL(spool_pending(s), 1000);
    CU_ASSERT_EQUAL(spool_dropped(s), 500);
    CU_ASSERT_EQUAL(spool_last_seq(s), 1500);
    spool_batch b;
    read_all(s, 0, &b);
    CU_ASSERT_EQUAL_FATAL(b.n, 1000);
    CU_ASSERT_EQUAL(b.seqs[0], 501);
    CU_ASSERT_STRING_EQUAL(b.json[0], "{\"n\":501}");
    CU_ASSERT_EQUAL(b.seqs[999], 1500);
    spool_batch_free(&b);
    spool_close(s);

    /* The count is persisted. */
    s = open_at(path, 1000);
    CU_ASSERT_EQUAL(spool_dropped(s), 500);
    CU_ASSERT_EQUAL(spool_pending(s), 1000);
    spool_close(s);
}

static void test_full_queue_counts_drops(void)
{
    char path[256];
    new_path(path, sizeof(path));
    spool *s = open_at(path, 1000000);
    add_n(s, 1, SPOOL_QUEUE_MAX + 10);
    CU_ASSERT_EQUAL(spool_queued(s), SPOOL_QUEUE_MAX);
    CU_ASSERT_EQUAL(spool_dropped(s), 10);
    CU_ASSERT_EQUAL(flush(s), SPOOL_QUEUE_MAX);
    CU_ASSERT_EQUAL(spool_dropped(s), 10);
    spool_close(s);
    s = open_at(path, 1000000);
    CU_ASSERT_EQUAL(spool_dropped(s), 10);
    CU_ASSERT_EQUAL(spool_pending(s), SPOOL_QUEUE_MAX);
    spool_close(s);
}

static void test_rebase(void)
{
    char path[256], err[512];
    new_path(path, sizeof(path));
    spool *s = open_at(path, 1000);
    add_n(s, 1, 3);
    CU_ASSERT_EQUAL(flush(s), 3);
    CU_ASSERT_EQUAL(spool_ack(s, 1, err, sizeof(err)), 0);

    /* Not beyond what the spool made: nothing changes. */
    CU_ASSERT_EQUAL(spool_rebase(s, 3, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(spool_last_seq(s), 3);

    CU_ASSERT_EQUAL(spool_rebase(s, 100, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(spool_last_seq(s), 102);
    CU_ASSERT_EQUAL(spool_pending(s), 2);
    spool_batch b;
    read_all(s, 0, &b);
    CU_ASSERT_EQUAL_FATAL(b.n, 2);
    CU_ASSERT_EQUAL(b.seqs[0], 101);
    CU_ASSERT_STRING_EQUAL(b.json[0], "{\"n\":2}");
    CU_ASSERT_EQUAL(b.seqs[1], 102);
    CU_ASSERT_STRING_EQUAL(b.json[1], "{\"n\":3}");
    spool_batch_free(&b);

    add_n(s, 4, 1);
    CU_ASSERT_EQUAL(flush(s), 1);
    CU_ASSERT_EQUAL(spool_last_seq(s), 103);
    spool_close(s);

    /* Persisted, and an empty spool moves its numbering too. */
    s = open_at(path, 1000);
    CU_ASSERT_EQUAL(spool_last_seq(s), 103);
    CU_ASSERT_EQUAL(spool_ack(s, 103, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(spool_rebase(s, 500, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(spool_last_seq(s), 500);
    add_n(s, 5, 1);
    CU_ASSERT_EQUAL(flush(s), 1);
    read_all(s, 0, &b);
    CU_ASSERT_EQUAL_FATAL(b.n, 1);
    CU_ASSERT_EQUAL(b.seqs[0], 501);
    spool_batch_free(&b);
    spool_close(s);

    /* A spool that never held an event. */
    new_path(path, sizeof(path));
    s = open_at(path, 1000);
    CU_ASSERT_EQUAL(spool_rebase(s, 42, err, sizeof(err)), 0);
    add_n(s, 1, 1);
    CU_ASSERT_EQUAL(flush(s), 1);
    CU_ASSERT_EQUAL(spool_last_seq(s), 43);
    spool_close(s);
}

static void test_reopen_keeps_unacked(void)
{
    char path[256], err[512];
    new_path(path, sizeof(path));
    spool *s = open_at(path, 1000);
    add_n(s, 1, 10);
    CU_ASSERT_EQUAL(flush(s), 10);
    CU_ASSERT_EQUAL(spool_ack(s, 4, err, sizeof(err)), 0);
    add_n(s, 11, 5); /* queued only: close flushes them */
    spool_close(s);

    s = open_at(path, 1000);
    CU_ASSERT_EQUAL(spool_pending(s), 11);
    CU_ASSERT_EQUAL(spool_last_seq(s), 15);
    spool_batch b;
    read_all(s, 0, &b);
    CU_ASSERT_EQUAL_FATAL(b.n, 11);
    CU_ASSERT_EQUAL(b.seqs[0], 5);
    CU_ASSERT_STRING_EQUAL(b.json[10], "{\"n\":15}");
    spool_batch_free(&b);
    spool_close(s);
}

static void test_kill_after_flush_keeps_events(void)
{
    char path[256];
    new_path(path, sizeof(path));
    int fds[2];
    CU_ASSERT_EQUAL_FATAL(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    CU_ASSERT_FATAL(pid >= 0);
    if (pid == 0) {
        char err[512];
        spool *s = NULL;
        if (spool_open(path, 1000, &s, err, sizeof(err)) != 0)
            _exit(1);
        add_n(s, 1, 50);
        if (spool_flush(s, err, sizeof(err)) != 50)
            _exit(1);
        add_n(s, 51, 5); /* never flushed: lost with the process */
        if (write(fds[1], "k", 1) != 1)
            _exit(1);
        for (;;)
            pause();
    }
    close(fds[1]);
    char c = 0;
    CU_ASSERT_EQUAL(read(fds[0], &c, 1), 1);
    close(fds[0]);
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    CU_ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

    spool *s = open_at(path, 1000);
    CU_ASSERT_EQUAL(spool_pending(s), 50);
    CU_ASSERT_EQUAL(spool_last_seq(s), 50);
    spool_batch b;
    read_all(s, 0, &b);
    CU_ASSERT_EQUAL_FATAL(b.n, 50);
    CU_ASSERT_STRING_EQUAL(b.json[49], "{\"n\":50}");
    spool_batch_free(&b);
    spool_close(s);
}

int unit_register(void)
{
    static const unit_case basics[] = {{"small bound refused", test_open_refuses_small_bound},
                                       {"damaged file refused", test_open_refuses_damaged_file},
                                       {"add flush read ack", test_add_flush_read_ack},
                                       {"numbers never reused", test_numbers_never_reused},
                                       {"bound drops oldest", test_bound_drops_oldest},
                                       {"full queue counts drops", test_full_queue_counts_drops},
                                       {"rebase", test_rebase},
                                       {NULL, NULL}};
    static const unit_case durability[] = {
        {"reopen keeps unacked", test_reopen_keeps_unacked},
        {"kill -9 after flush keeps events", test_kill_after_flush_keeps_events},
        {NULL, NULL}};
    if (!mkdtemp(tmpdir))
        return -1;
    atexit(suite_clean);
    if (unit_add_suite("spool", basics) != 0 || unit_add_suite("spool_durability", durability) != 0)
        return -1;
    return 0;
}
