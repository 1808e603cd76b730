/* main.c - portcullis-controller: the central daemon. Reads the command line
 * and the config file, opens the database, makes sure there is a certificate
 * and an admin token, serves the REST API until SIGINT/SIGTERM
 * (docs/controller.md). */
#include "api.h"
#include "tlscert.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONFIG_MAX (64 * 1024)

/* What the config file may set; the command line wins over it. Strings are
 * owned (config_free). */
typedef struct config {
    char *listen;
    char *db;
    char *cert_file;
    char *key_file;
    char *server_name;
} config;

static void config_free(config *c)
{
    free(c->listen);
    free(c->db);
    free(c->cert_file);
    free(c->key_file);
    free(c->server_name);
    memset(c, 0, sizeof(*c));
}

static void usage(FILE *f)
{
    fprintf(f, "usage: portcullis-controller --db FILE --listen ADDR:PORT [options]\n"
               "  --db FILE          the SQLite database (created on first start)\n"
               "  --listen ADDR:PORT where the HTTPS API listens (default 127.0.0.1:8443)\n"
               "  --config FILE      JSON config: listen, db, cert_file, key_file, server_name\n"
               "  -n, --check        check the configuration, print 'configuration OK', exit\n"
               "  --version          print the version\n"
               "Environment: PORTCULLIS_ADMIN_TOKEN is the first admin token on first start.\n");
}

/* Reads and validates the config file into c. Unknown keys and wrong types
 * are refused with the key named. */
static int config_load(const char *path, config *c)
{
    static const char *const keys[] = {"listen", "db", "cert_file", "key_file", "server_name"};
    char **slots[] = {&c->listen, &c->db, &c->cert_file, &c->key_file, &c->server_name};
    int rc = -1;
    char *buf = NULL;
    cJSON *root = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "portcullis-controller: %s: %s\n", path, strerror(errno));
        return -1;
    }
    buf = malloc(CONFIG_MAX + 1);
    size_t n = buf ? fread(buf, 1, CONFIG_MAX + 1, f) : 0;
    if (!buf || ferror(f) || n > CONFIG_MAX) {
        fprintf(stderr, "portcullis-controller: %s: unreadable or larger than %d bytes\n", path,
                CONFIG_MAX);
        goto done;
    }
    buf[n] = '\0';
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(buf, n, &end, false);
    if (!root) {
        fprintf(stderr, "portcullis-controller: %s: not valid JSON (at byte %zu)\n", path,
                end && end >= buf ? (size_t)(end - buf) : (size_t)0);
        goto done;
    }
    if (!cJSON_IsObject(root)) {
        fprintf(stderr, "portcullis-controller: %s: $ must be an object\n", path);
        goto done;
    }
    for (const cJSON *it = root->child; it; it = it->next) {
        size_t k;
        for (k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
            if (strcmp(it->string, keys[k]) == 0)
                break;
        if (k == sizeof(keys) / sizeof(keys[0])) {
            fprintf(stderr,
                    "portcullis-controller: %s: $.%s: unknown key (known: listen, db, "
                    "cert_file, key_file, server_name)\n",
                    path, it->string);
            goto done;
        }
        if (!cJSON_IsString(it) || !it->valuestring[0]) {
            fprintf(stderr, "portcullis-controller: %s: $.%s: must be a non-empty string\n", path,
                    it->string);
            goto done;
        }
        if (*slots[k]) {
            fprintf(stderr, "portcullis-controller: %s: $.%s: given twice\n", path, it->string);
            goto done;
        }
        if (!(*slots[k] = strdup(it->valuestring)))
            goto done;
    }
    rc = 0;
done:
    cJSON_Delete(root);
    free(buf);
    fclose(f);
    return rc;
}

static int set_opt(char **slot, const char *v)
{
    free(*slot);
    *slot = strdup(v);
    return *slot ? 0 : -1;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"db", required_argument, NULL, 'd'},
        {"listen", required_argument, NULL, 'l'},
        {"config", required_argument, NULL, 'c'},
        {"check", no_argument, NULL, 'n'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL, *opt_db = NULL, *opt_listen = NULL;
    bool check_only = false;
    int ch, status = 1;
    config cfg = {0};
    tlscert cert = {0};
    api *a = NULL;
    char err[512], *cert_path = NULL, *key_path = NULL;
    sigset_t sigs;

    while ((ch = getopt_long(argc, argv, "nh", opts, NULL)) != -1) {
        switch (ch) {
        case 'd': opt_db = optarg; break;
        case 'l': opt_listen = optarg; break;
        case 'c': config_path = optarg; break;
        case 'n': check_only = true; break;
        case 'V': printf("portcullis-controller %s\n", API_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }
    if (config_path && config_load(config_path, &cfg) != 0)
        goto done;
    if ((opt_db && set_opt(&cfg.db, opt_db) != 0) ||
        (opt_listen && set_opt(&cfg.listen, opt_listen) != 0) ||
        (!cfg.listen && set_opt(&cfg.listen, "127.0.0.1:8443") != 0))
        goto done;
    if (!cfg.db) {
        fprintf(stderr, "portcullis-controller: no database: pass --db FILE or set \"db\"\n");
        status = 2;
        goto done;
    }
    {
        struct sockaddr_storage ss;
        socklen_t len;
        if (api_parse_listen(cfg.listen, &ss, &len, err, sizeof(err)) != 0) {
            fprintf(stderr, "portcullis-controller: %s\n", err);
            goto done;
        }
    }
    if (!cfg.cert_file != !cfg.key_file) {
        fprintf(stderr, "portcullis-controller: cert_file and key_file go together\n");
        goto done;
    }
    if (cfg.cert_file) {
        if (tlscert_load(cfg.cert_file, cfg.key_file, &cert, err, sizeof(err)) != 0) {
            fprintf(stderr, "portcullis-controller: %s\n", err);
            goto done;
        }
    }
    const char *env_token = getenv("PORTCULLIS_ADMIN_TOKEN");
    if (env_token && !*env_token)
        env_token = NULL;
    if (env_token && api_admin_token_check(env_token, err, sizeof(err)) != 0) {
        fprintf(stderr, "portcullis-controller: %s\n", err);
        goto done;
    }
    if (check_only) {
        puts("configuration OK");
        status = 0;
        goto done;
    }

    if (!cfg.cert_file) {
        bool created = false;
        if (asprintf(&cert_path, "%s.cert.pem", cfg.db) < 0 ||
            asprintf(&key_path, "%s.key.pem", cfg.db) < 0) {
            cert_path = key_path = NULL;
            goto done;
        }
        if (tlscert_load_or_create(cert_path, key_path, cfg.server_name, &cert, &created, err,
                                   sizeof(err)) != 0) {
            fprintf(stderr, "portcullis-controller: certificate: %s\n", err);
            goto done;
        }
        printf("portcullis-controller: %s self-signed certificate %s\n",
               created ? "created" : "using", cert_path);
    } else {
        printf("portcullis-controller: certificate %s\n", cfg.cert_file);
    }
    printf("portcullis-controller: certificate SHA-256 fingerprint %s\n", cert.fingerprint);

    if (api_open(cfg.db, &a, err, sizeof(err)) != 0) {
        fprintf(stderr, "portcullis-controller: database %s\n", err);
        goto done;
    }
    {
        char *token = NULL;
        int b = api_bootstrap_admin(a, env_token, &token, err, sizeof(err));
        if (b < 0) {
            fprintf(stderr, "portcullis-controller: %s\n", err);
            goto done;
        }
        if (b == 1 && token) {
            printf("portcullis-controller: first start: admin token (shown once, keep it): %s\n",
                   token);
            explicit_bzero(token, strlen(token));
            free(token);
        } else if (b == 1) {
            printf("portcullis-controller: first start: admin token taken from "
                   "PORTCULLIS_ADMIN_TOKEN\n");
        }
    }

    /* Block the stop signals before the server threads start, so they
     * inherit the mask and only sigwait below sees them. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    api_options o = {.listen = cfg.listen, .cert_pem = cert.cert_pem, .key_pem = cert.key_pem};
    if (api_start(a, &o, err, sizeof(err)) != 0) {
        fprintf(stderr, "portcullis-controller: %s\n", err);
        goto done;
    }
    printf("portcullis-controller: listening on %s (port %u)\n", cfg.listen, (unsigned)api_port(a));
    fflush(stdout);
    int sig = 0;
    while (sigwait(&sigs, &sig) != 0)
        ;
    printf("portcullis-controller: stopping (signal %d)\n", sig);
    status = 0;
done:
    fflush(stdout);
    api_free(a);
    tlscert_free(&cert);
    free(cert_path);
    free(key_path);
    config_free(&cfg);
    return status;
}
