/* model.c - releasing a loaded policy model (model.h). */
#include "model.h"

#include <stdlib.h>

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void settings_free(model_settings *s)
{
    free(s->ports);
    free_strv(s->port_protos, s->nports);
    free_strv(s->use_lists, s->nuse_lists);
    for (size_t i = 0; i < s->nopen_ports; i++)
        free_strv(s->open_ports[i].devices, s->open_ports[i].ndevices);
    free(s->open_ports);
    free_strv(s->dns_resolvers, s->ndns_resolvers);
    free_strv(s->web_devices, s->nweb_devices);
}

void model_free(model *m)
{
    if (!m)
        return;
    settings_free(&m->global);
    for (size_t i = 0; i < m->nregions; i++) {
        free(m->regions[i].name);
        settings_free(&m->regions[i].settings);
    }
    free(m->regions);
    for (size_t i = 0; i < m->noffices; i++) {
        free(m->offices[i].name);
        free_strv(m->offices[i].lan_prefixes, m->offices[i].nlan);
        settings_free(&m->offices[i].settings);
    }
    free(m->offices);
    for (size_t i = 0; i < m->ngroups; i++) {
        free(m->groups[i].name);
        free_strv(m->groups[i].sources, m->groups[i].nsources);
        free_strv(m->groups[i].users, m->groups[i].nusers);
    }
    free(m->groups);
    for (size_t i = 0; i < m->nnodes; i++)
        free(m->nodes[i].name);
    free(m->nodes);
    for (size_t i = 0; i < m->nrules; i++) {
        free(m->rules[i].value);
        free(m->rules[i].comment);
    }
    free(m->rules);
    for (size_t i = 0; i < m->nlists; i++) {
        free(m->lists[i].name);
        free(m->lists[i].json);
    }
    free(m->lists);
}
