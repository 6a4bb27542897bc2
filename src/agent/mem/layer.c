/* Layers: committing a RAM file or an upper file as a layer, merging, hard-link sharing,
 * garbage collection and disk accounting. */
#include "mem.h"
#include "mem_int.h"

#include <errno.h>

int mem_commit_full(const char *ram_file, uint64_t size, const char *dir, mem_map_t **out, err_t *e)
{
    (void)ram_file, (void)size, (void)dir;
    *out = NULL;
    return err_set(e, -ENOSYS, "mem_commit_full: not yet implemented");
}

int mem_commit_diff(const mem_map_t *parent, const char *upper, const uint8_t *dirty,
                    const char *dir, unsigned max_layers, mem_map_t **out, err_t *e)
{
    (void)parent, (void)upper, (void)dirty, (void)dir, (void)max_layers;
    *out = NULL;
    return err_set(e, -ENOSYS, "mem_commit_diff: not yet implemented");
}

int mem_flatten(const mem_map_t *m, const char *dir, mem_map_t **out, err_t *e)
{
    (void)m, (void)dir;
    *out = NULL;
    return err_set(e, -ENOSYS, "mem_flatten: not yet implemented");
}

int mem_link_layers(const mem_map_t *m, const char *from, const char *to, err_t *e)
{
    (void)m, (void)from, (void)to;
    return err_set(e, -ENOSYS, "mem_link_layers: not yet implemented");
}

int mem_gc(const char *dir, const mem_map_t *const *keep, size_t n, err_t *e)
{
    (void)dir, (void)keep, (void)n;
    return err_set(e, -ENOSYS, "mem_gc: not yet implemented");
}

int mem_disk_bytes(const mem_map_t *m, const char *dir, uint64_t *out, err_t *e)
{
    (void)m, (void)dir;
    *out = 0;
    return err_set(e, -ENOSYS, "mem_disk_bytes: not yet implemented");
}
