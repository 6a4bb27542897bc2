#include "cfg.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

static void env_name(char *out, size_t n, const char *prefix, const char *name)
{
    size_t i = 0;
    int w = snprintf(out, n, "WRENN_%s_", prefix);
    if (w < 0 || (size_t)w >= n)
        return;
    i = (size_t)w;
    for (const char *p = name; *p && i + 1 < n; p++)
        out[i++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    out[i] = '\0';
}

static int set_value(const cfg_opt_t *o, const char *val, const char *src, err_t *e)
{
    switch (o->type) {
    case CFG_STR:
        *(const char **)o->dst = val;
        return 0;
    case CFG_BOOL:
        if (!val || !strcmp(val, "true") || !strcmp(val, "1") || !strcmp(val, "yes")) {
            *(bool *)o->dst = true;
            return 0;
        }
        if (!strcmp(val, "false") || !strcmp(val, "0") || !strcmp(val, "no")) {
            *(bool *)o->dst = false;
            return 0;
        }
        return err_set(e, -EINVAL, "%s: %s wants true or false", src, o->name);
    case CFG_INT: {
        char *end = NULL;
        errno = 0;
        long v = strtol(val, &end, 10);
        if (errno || end == val || *end)
            return err_set(e, -EINVAL, "%s: %s wants an integer", src, o->name);
        if ((o->min || o->max) && (v < o->min || v > o->max))
            return err_set(e, -EINVAL, "%s: %s must be between %ld and %ld", src, o->name, o->min,
                           o->max);
        *(long *)o->dst = v;
        return 0;
    }
    }
    return -EINVAL;
}

static const cfg_opt_t *find(const cfg_opt_t *opts, const char *name, size_t len)
{
    for (const cfg_opt_t *o = opts; o->name; o++)
        if (strlen(o->name) == len && strncmp(o->name, name, len) == 0)
            return o;
    return NULL;
}

int cfg_parse(const cfg_opt_t *opts, const char *env_prefix, int argc, char **argv, int *first_pos,
              err_t *e)
{
    char want[128];
    int r;

    /* Environment first, so that flags override it. */
    size_t plen = strlen("WRENN_") + strlen(env_prefix) + 1;
    for (char **ep = environ; ep && *ep; ep++) {
        const char *kv = *ep;
        if (strncmp(kv, "WRENN_", 6) != 0 || strncmp(kv + 6, env_prefix, strlen(env_prefix)) != 0 ||
            kv[plen - 1] != '_')
            continue;
        const char *eq = strchr(kv, '=');
        if (!eq)
            continue;
        const cfg_opt_t *hit = NULL;
        for (const cfg_opt_t *o = opts; o->name && !hit; o++) {
            env_name(want, sizeof want, env_prefix, o->name);
            if (strlen(want) == (size_t)(eq - kv) && strncmp(kv, want, (size_t)(eq - kv)) == 0)
                hit = o;
        }
        if (!hit)
            return err_set(e, -EINVAL, "unknown environment variable %.*s", (int)(eq - kv), kv);
        if ((r = set_value(hit, eq + 1, "environment", e)) < 0)
            return r;
    }

    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' || a[1] == '\0')
            break;
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        a += (a[1] == '-') ? 2 : 1;
        const char *eq = strchr(a, '=');
        size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
        const cfg_opt_t *o = find(opts, a, nlen);
        if (!o)
            return err_set(e, -EINVAL, "unknown flag %s", argv[i]);
        const char *val = eq ? eq + 1 : NULL;
        if (!val && o->type != CFG_BOOL) {
            if (i + 1 >= argc)
                return err_set(e, -EINVAL, "flag --%s needs a value", o->name);
            val = argv[++i];
        }
        if ((r = set_value(o, val, "flag", e)) < 0)
            return r;
    }
    if (first_pos)
        *first_pos = i;
    return 0;
}

void cfg_usage(FILE *out, const char *usage_line, const cfg_opt_t *opts, const char *env_prefix)
{
    char env[128];
    fprintf(out, "usage: %s\n\noptions:\n", usage_line);
    for (const cfg_opt_t *o = opts; o->name; o++) {
        env_name(env, sizeof env, env_prefix, o->name);
        fprintf(out, "  --%-22s %s (env %s)\n", o->name, o->help ? o->help : "", env);
    }
}
