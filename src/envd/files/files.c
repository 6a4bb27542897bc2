/* GET/POST /files (placeholder until the files endpoints land). */
#include "envd.h"

size_t files_routes(envd_t *d, http_route_t *out, size_t max)
{
    (void)d;
    (void)out;
    (void)max;
    return 0;
}
