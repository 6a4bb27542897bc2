/* Configuration from command-line flags and WRENN_* environment variables, parsed in one place.
 *
 * Each program declares a table of options. An option `foo-bar` is set by `--foo-bar V`,
 * `--foo-bar=V` (a single leading dash works too), or by the environment variable
 * `WRENN_<PREFIX>_FOO_BAR`; a flag wins over the environment. Unknown flags, and unknown
 * variables that carry the program's own prefix, are errors, so a typo never goes unnoticed.
 */
#ifndef WRENN_CFG_H
#define WRENN_CFG_H

#include <stdbool.h>
#include <stdio.h>

#include "err.h"

typedef enum cfg_type { CFG_STR, CFG_INT, CFG_BOOL } cfg_type_t;

typedef struct cfg_opt {
    const char *name; /* flag name without dashes, e.g. "port" */
    cfg_type_t type;
    void *dst;     /* const char ** for CFG_STR, long * for CFG_INT, bool * for CFG_BOOL */
    long min, max; /* bounds for CFG_INT (ignored when min == max == 0) */
    const char *help;
} cfg_opt_t;

/** Parse the environment and then argv[1..] into the option table (terminated by a zero entry).
 * Strings point into argv or environ and stay valid for the life of the process. Positional
 * arguments are left in place: *first_pos gets the index of the first one (argc when none).
 * Returns 0, or -EINVAL with a message in *e. */
int cfg_parse(const cfg_opt_t *opts, const char *env_prefix, int argc, char **argv, int *first_pos,
              err_t *e);

/** Print the option table as help text. */
void cfg_usage(FILE *out, const char *usage_line, const cfg_opt_t *opts, const char *env_prefix);

#endif
