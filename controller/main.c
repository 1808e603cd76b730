/* main.c - portcullis-controller: the central daemon. Reads the command line
 * and the config file, opens the database, makes sure there is a certificate,
 * a CA and an admin token, serves the REST API and the node hub until
 * SIGINT/SIGTERM (docs/controller.md). */
#include "api.h"
#include "ca.h"
#include "hub.h"
#include "tlscert.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define CONFIG_MAX (64 * 1024)
#define DEFAULT_LISTEN "127.0.0.1:8443"
#define DEFAULT_HUB_LISTEN "127.0.0.1:8444"

/* What the config file may set; the command line wins over it. Strings are
 * owned (config_free). */
typedef struct config {
    char *listen;
    char *db;
    char *cert_file;
    char *key_file;
    char *server_name;
    char *hub_listen;
    char *hub_name;
    char *web_root;               /* the dashboard's built files; NULL: "/" says it is not built */
    int64_t event_retention_days; /* 0 = keep every event */
    int64_t event_retention_max;  /* 0 = no limit */
} config;

static void config_free(config *c)
{
    free(c->listen);
    free(c->db);
    free(c->cert_file);
    free(c->key_file);
    free(c->server_name);
    free(c->hub_listen);
    free(c->hub_name);
    free(c->web_root);
    memset(c, 0, sizeof(*c));
}

/* One config key: a non-empty string, or a whole number in [min, max]. */
typedef struct config_key {
    const char *name;
    bool integer;
    size_t offset; /* of the char * or int64_t in config */
    int64_t min, max;
} config_key;

static const config_key config_keys[] = {
    {"listen", false, offsetof(config, listen), 0, 0},
    {"db", false, offsetof(config, db), 0, 0},
    {"cert_file", false, offsetof(config, cert_file), 0, 0},
    {"key_file", false, offsetof(config, key_file), 0, 0},
    {"server_name", false, offsetof(config, server_name), 0, 0},
    {"hub_listen", false, offsetof(config, hub_listen), 0, 0},
    {"hub_name", false, offsetof(config, hub_name), 0, 0},
    {"web_root", false, offsetof(config, web_root), 0, 0},
    {"event_retention_days", true, offsetof(config, event_retention_days), 0, 36500},
    {"event_retention_max", true, offsetof(config, event_retention_max), 0, INT64_C(1000000000000)},
};
#define NCONFIG_KEYS (sizeof(config_keys) / sizeof(config_keys[0]))

static void usage(FILE *f)
{
    fprintf(f, "usage: portcullis-controller --db FILE --listen ADDR:PORT [options]\n"
               "  --db FILE          the SQLite database (created on first start)\n"
               "  --listen ADDR:PORT where the HTTPS API listens (default 127.0.0.1:8443)\n"
               "  --hub-listen ADDR:PORT  where the node hub listens (default 127.0.0.1:8444)\n"
               "  --web-root DIR     the dashboard's built files, served outside /api/\n"
               "                     (default: none; / then says the dashboard is not built)\n"
               "  --config FILE      JSON config: listen, db, cert_file, key_file, server_name,\n"
               "                     hub_listen, hub_name, web_root, event_retention_days,\n"
               "                     event_retention_max\n"
               "  -n, --check        check the configuration, print 'configuration OK', exit\n"
               "  --version          print the version\n"
               "Environment: PORTCULLIS_ADMIN_TOKEN is the first admin token on first start.\n");
}

/* Reads and validates the config file into c. Unknown keys and wrong types
 * are refused with the key named. */
static int config_load(const char *path, config *c)
{
    bool seen[NCONFIG_KEYS] = {false};
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
        for (k = 0; k < NCONFIG_KEYS; k++)
            if (strcmp(it->string, config_keys[k].name) == 0)
                break;
        if (k == NCONFIG_KEYS) {
            fprintf(stderr,
                    "portcullis-controller: %s: $.%s: unknown key (known: listen, db, "
                    "cert_file, key_file, server_name, hub_listen, hub_name, web_root, "
                    "event_retention_days, event_retention_max)\n",
                    path, it->string);
            goto done;
        }
        const config_key *ck = &config_keys[k];
        if (seen[k]) {
            fprintf(stderr, "portcullis-controller: %s: $.%s: given twice\n", path, it->string);
            goto done;
        }
        seen[k] = true;
        if (ck->integer) {
            double v = it->valuedouble;
            /* bounds first: the cast of a huge number is undefined */
            if (!cJSON_IsNumber(it) || v < (double)ck->min || v > (double)ck->max ||
                v != (double)(int64_t)v) {
                fprintf(stderr,
                        "portcullis-controller: %s: $.%s: must be a whole number from %" PRId64
                        " to %" PRId64 "\n",
                        path, it->string, ck->min, ck->max);
                goto done;
            }
            *(int64_t *)((char *)c + ck->offset) = (int64_t)v;
            continue;
        }
        if (!cJSON_IsString(it) || !it->valuestring[0]) {
            fprintf(stderr, "portcullis-controller: %s: $.%s: must be a non-empty string\n", path,
                    it->string);
            goto done;
        }
        if (!(*(char **)((char *)c + ck->offset) = strdup(it->valuestring)))
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

/* The host part of "ADDR:PORT" / "[V6]:PORT" into out. */
static void listen_host(const char *listen, char *out, size_t len)
{
    const char *colon = strrchr(listen, ':');
    size_t n = colon ? (size_t)(colon - listen) : strlen(listen);
    if (listen[0] == '[' && n >= 2 && listen[n - 1] == ']') {
        listen++;
        n -= 2;
    }
    snprintf(out, len, "%.*s", (int)n, listen);
}

/* The name nodes reach the hub by: hub_name, else the hub's listen address,
 * else (a wildcard address) server_name or this machine's host name. */
static int hub_name_default(config *c)
{
    char host[256];
    if (c->hub_name)
        return 0;
    listen_host(c->hub_listen, host, sizeof(host));
    if (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0) {
        if (c->server_name)
            snprintf(host, sizeof(host), "%s", c->server_name);
        else if (gethostname(host, sizeof(host)) != 0 || !host[0])
            snprintf(host, sizeof(host), "localhost");
        host[sizeof(host) - 1] = '\0';
    }
    return (c->hub_name = strdup(host)) ? 0 : -1;
}

/* Says where the dashboard comes from; a missing build is no reason not
 * to start (the API works without it; "/" says it is not built). */
static void web_root_report(const char *dir)
{
    char *index = NULL;
    if (!dir) {
        printf("portcullis-controller: no dashboard (--web-root DIR or \"web_root\" names "
               "its built files); / says so\n");
        return;
    }
    if (asprintf(&index, "%s/index.html", dir) < 0)
        index = NULL;
    if (index && access(index, R_OK) == 0)
        printf("portcullis-controller: dashboard served from %s\n", dir);
    else
        fprintf(stderr,
                "portcullis-controller: warning: %s has no readable index.html (is the dashboard "
                "built?); / says it is not built until it is\n",
                dir);
    free(index);
}

/* A thousand nodes need a thousand descriptors: raise the soft limit to the
 * hard one. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            fprintf(stderr, "portcullis-controller: cannot raise the open file limit: %s\n",
                    strerror(errno));
    }
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"db", required_argument, NULL, 'd'},
        {"listen", required_argument, NULL, 'l'},
        {"hub-listen", required_argument, NULL, 'H'},
        {"web-root", required_argument, NULL, 'W'},
        {"config", required_argument, NULL, 'c'},
        {"check", no_argument, NULL, 'n'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL, *opt_db = NULL, *opt_listen = NULL, *opt_hub_listen = NULL,
               *opt_web_root = NULL;
    bool check_only = false;
    int ch, status = 1;
    config cfg = {0};
    tlscert cert = {0};
    ca authority = {0};
    bool have_ca = false;
    api *a = NULL;
    hub *hb = NULL;
    char err[512], *cert_path = NULL, *key_path = NULL;
    sigset_t sigs;

    while ((ch = getopt_long(argc, argv, "nh", opts, NULL)) != -1) {
        switch (ch) {
        case 'd': opt_db = optarg; break;
        case 'l': opt_listen = optarg; break;
        case 'H': opt_hub_listen = optarg; break;
        case 'W': opt_web_root = optarg; break;
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
        (!cfg.listen && set_opt(&cfg.listen, DEFAULT_LISTEN) != 0) ||
        (opt_hub_listen && set_opt(&cfg.hub_listen, opt_hub_listen) != 0) ||
        (opt_web_root && set_opt(&cfg.web_root, opt_web_root) != 0) ||
        (!cfg.hub_listen && set_opt(&cfg.hub_listen, DEFAULT_HUB_LISTEN) != 0) ||
        hub_name_default(&cfg) != 0)
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
        if (api_parse_listen(cfg.hub_listen, &ss, &len, err, sizeof(err)) != 0) {
            fprintf(stderr, "portcullis-controller: hub %s\n", err);
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

    {
        char host[256];
        bool created = false;
        listen_host(cfg.hub_listen, host, sizeof(host));
        const char *sans[] = {host, cfg.hub_name, cfg.server_name, NULL};
        if (ca_open(cfg.db, sans, &authority, &created, err, sizeof(err)) != 0) {
            fprintf(stderr, "portcullis-controller: CA: %s\n", err);
            goto done;
        }
        have_ca = true;
        printf("portcullis-controller: %s CA %s, SHA-256 fingerprint %s\n",
               created ? "created" : "using", authority.cert_path, authority.fingerprint);
        printf("portcullis-controller: hub certificate %s\n", authority.hub_cert_path);
    }

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
    raise_fd_limit();

    hub_options ho = {.listen = cfg.hub_listen,
                      .db_path = cfg.db,
                      .ca = &authority,
                      .retention_days = (unsigned)cfg.event_retention_days,
                      .retention_max = cfg.event_retention_max};
    if (hub_start(&ho, &hb, err, sizeof(err)) != 0) {
        fprintf(stderr, "portcullis-controller: %s\n", err);
        goto done;
    }
    if (api_set_hub(a, hb, &authority, cfg.hub_name) != 0) {
        fprintf(stderr, "portcullis-controller: out of memory\n");
        goto done;
    }

    api_options o = {.listen = cfg.listen,
                     .cert_pem = cert.cert_pem,
                     .key_pem = cert.key_pem,
                     .web_root = cfg.web_root};
    if (api_start(a, &o, err, sizeof(err)) != 0) {
        fprintf(stderr, "portcullis-controller: %s\n", err);
        goto done;
    }
    /* The REST line first: scripts that look for the first "listening on"
     * find the API's port. */
    printf("portcullis-controller: listening on %s (port %u)\n", cfg.listen, (unsigned)api_port(a));
    printf("portcullis-controller: node hub listening on %s (port %u)\n", cfg.hub_listen,
           (unsigned)hub_port(hb));
    web_root_report(cfg.web_root);
    fflush(stdout);
    int sig = 0;
    while (sigwait(&sigs, &sig) != 0)
        ;
    printf("portcullis-controller: stopping (signal %d)\n", sig);
    status = 0;
done:
    fflush(stdout);
    api_free(a); /* first: no request may reach the hub once it stops */
    hub_stop(hb);
    if (have_ca)
        ca_close(&authority);
    tlscert_free(&cert);
    free(cert_path);
    free(key_path);
    config_free(&cfg);
    return status;
}
