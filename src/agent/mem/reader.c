/* The reader: a map's content composed from its layers, for the FUSE and userfaultfd servers.
 * Every layer is opened and validated up front; a read then walks the extents it covers with one
 * pread per run of a layer and a memset per zero run. */
#include "mem.h"
#include "mem_int.h"

#include "xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int mem_reader_open(const mem_map_t *m, const char *dir, mem_reader_t **out, err_t *e)
{
    *out = NULL;
    int rc = mem__map_check(m, -EINVAL, e);
    if (rc < 0)
        return err_wrap(e, "reader");
    mem_reader_t *r = xcalloc(1, sizeof *r);
    for (size_t i = 0; i < MEM_MAX_LAYERS; i++)
        r->fd[i] = -1;
    for (uint32_t i = 0; i < m->nlayers; i++) {
        char path[PATH_MAX];
        if (mem_layer_path(dir, &m->layers[i], path, sizeof path) < 0) {
            rc = err_set(e, -ENAMETOOLONG, "layer directory path too long: %s", dir);
            goto fail;
        }
        r->fd[i] = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (r->fd[i] < 0) {
            rc = err_errno(e, path);
            if (rc == -ELOOP)
                rc = err_set(e, -EBADMSG, "layer %s is a symbolic link", path);
            goto fail;
        }
        rc = mem__layer_check(r->fd[i], path, m->size, &m->layers[i], e);
        if (rc < 0)
            goto fail;
    }
    r->m = mem_map_dup(m);
    *out = r;
    return 0;
fail:
    mem_reader_free(r);
    return rc;
}

int mem_read(mem_reader_t *r, uint64_t off, void *buf, size_t len)
{
    const mem_map_t *m = r->m;
    if (len == 0)
        return 0;
    if (off >= m->size || len > m->size - off)
        return -EINVAL;
    const uint64_t bs = m->block_size;
    size_t i = mem__map_find(m, off / bs);
    uint8_t *p = buf;
    while (len > 0) {
        const mem_extent_t *x = &m->ext[i++];
        uint64_t end = (x->block + x->count) * bs;
        size_t n = end - off < len ? (size_t)(end - off) : len;
        if (x->layer == MEM_ZERO) {
            memset(p, 0, n);
        } else {
            int rc = mem__pread_full(r->fd[x->layer], p, n, off);
            if (rc < 0)
                return rc;
        }
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

const mem_map_t *mem_reader_map(const mem_reader_t *r)
{
    return r->m;
}

bool mem_is_zero(const mem_reader_t *r, uint64_t off, uint64_t len)
{
    const mem_map_t *m = r->m;
    if (off >= m->size || len > m->size - off)
        return false;
    if (len == 0)
        return true;
    const uint64_t bs = m->block_size;
    uint64_t last = (off + len - 1) / bs;
    for (size_t i = mem__map_find(m, off / bs); i < m->next && m->ext[i].block <= last; i++)
        if (m->ext[i].layer != MEM_ZERO)
            return false;
    return true;
}

void mem_reader_free(mem_reader_t *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < MEM_MAX_LAYERS; i++)
        xclose(&r->fd[i]);
    mem_map_free(r->m);
    free(r);
}
