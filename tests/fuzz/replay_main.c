/* replay_main.c - runs a libFuzzer target without libFuzzer, so every fuzz
 * target is built and exercised by the ordinary test suite (under the
 * sanitizer build): each file under the given directories is fed as is, then
 * a bounded number of deterministic mutations of them (byte flips, cuts,
 * splices). The real fuzzing is `-DPORTCULLIS_FUZZ=ON` with clang
 * (docs/testing.md). */
#include <dirent.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_INPUTS 4096
#define MAX_SIZE (256 * 1024)

static uint8_t *inputs[MAX_INPUTS];
static size_t sizes[MAX_INPUTS];
static int ninputs;

static void load_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f || ninputs == MAX_INPUTS) {
        if (f)
            fclose(f);
        return;
    }
    uint8_t *buf = malloc(MAX_SIZE);
    size_t n = buf ? fread(buf, 1, MAX_SIZE, f) : 0;
    fclose(f);
    if (!buf)
        return;
    inputs[ninputs] = buf;
    sizes[ninputs++] = n;
}

static void load_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        load_file(dir);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode))
            load_tree(path);
        else if (S_ISREG(st.st_mode))
            load_file(path);
    }
    closedir(d);
}

static uint32_t rnd_state = 0x9e3779b9u;
static uint32_t rnd(void)
{
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 17;
    rnd_state ^= rnd_state << 5;
    return rnd_state;
}

int main(int argc, char **argv)
{
    long rounds = 20000;
    int first = 1;
    if (argc > 2 && strcmp(argv[1], "-n") == 0) {
        rounds = strtol(argv[2], NULL, 10);
        first = 3;
    }
    for (int i = first; i < argc; i++)
        load_tree(argv[i]);
    if (ninputs == 0) {
        fprintf(stderr, "replay: no inputs\n");
        return 1;
    }
    for (int i = 0; i < ninputs; i++)
        LLVMFuzzerTestOneInput(inputs[i], sizes[i]);
    uint8_t *buf = malloc(MAX_SIZE * 2);
    if (!buf)
        return 1;
    for (long r = 0; r < rounds; r++) {
        int a = (int)(rnd() % (uint32_t)ninputs), b = (int)(rnd() % (uint32_t)ninputs);
        size_t n = sizes[a];
        memcpy(buf, inputs[a], n);
        switch (rnd() % 4) {
        case 0: /* flip a few bytes */
            for (int k = 0; n && k < 1 + (int)(rnd() % 8); k++)
                buf[rnd() % n] ^= (uint8_t)(1u << (rnd() % 8));
            break;
        case 1: /* cut */
            n = n ? rnd() % n : 0;
            break;
        case 2: { /* splice a piece of another input */
            size_t at = n ? rnd() % n : 0;
            size_t take = sizes[b] ? rnd() % sizes[b] : 0;
            if (at + take > MAX_SIZE * 2)
                take = MAX_SIZE * 2 - at;
            memcpy(buf + at, inputs[b], take);
            n = at + take;
            break;
        }
        default: /* random bytes inserted */
            for (int k = 0; n < MAX_SIZE * 2 && k < 16; k++)
                buf[n++] = (uint8_t)rnd();
            break;
        }
        LLVMFuzzerTestOneInput(buf, n);
    }
    free(buf);
    for (int i = 0; i < ninputs; i++)
        free(inputs[i]);
    printf("replay: %d inputs, %ld mutations, no crash\n", ninputs, rounds);
    return 0;
}
