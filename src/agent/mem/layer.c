/* Layers: committing a RAM file or an upper file as a layer, merging layers into one, hard-link
 * sharing between directories, garbage collection and disk accounting. */
#include "mem.h"
#include "mem_int.h"
#include "fsutil.h"

#include "log.h"
#include "xalloc.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Dirty blocks closer than this are read with one pread together with the clean blocks between
 * them: a few wasted KiB cost less than another system call. */
#define DIRTY_GAP_BLOCKS 16u

static int data_sync(int fd)
{
    return mem__data_sync_on() ? fsync(fd) : 0;
}

int mem_sync_layers(const mem_map_t *m, const char *dir, err_t *e)
{
    int drc = fsutil_fsync(dir, e);
    if (drc < 0)
        return drc;
    for (uint32_t i = 0; i < m->nlayers; i++) {
        char path[PATH_MAX];
        if (mem_layer_path(dir, &m->layers[i], path, sizeof path) < 0)
            return err_set(e, -ENAMETOOLONG, "layer directory path too long: %s", dir);
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
            return err_errno(e, path);
        int rc = fsync(fd) < 0 ? err_errno(e, path) : 0;
        close(fd);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int check_size(uint64_t size, err_t *e)
{
    if (size == 0 || size % MEM_BLOCK_SIZE != 0 || size > MEM_MAX_SIZE)
        return err_set(e, -EINVAL,
                       "memory size %" PRIu64 " must be a non-zero multiple of %u up to 1 TiB",
                       size, MEM_BLOCK_SIZE);
    return 0;
}

static mem_map_t *map_shell(uint64_t size, uint32_t generation)
{
    mem_map_t *m = xcalloc(1, sizeof *m);
    m->block_size = MEM_BLOCK_SIZE;
    m->size = size;
    m->generation = generation;
    mem_id_new(&m->id);
    return m;
}

/* Link the (unnamed or temporary) file fd as path. */
static int link_fd(int fd, const char *tmpname, const char *path, err_t *e)
{
    if (tmpname) {
        if (rename(tmpname, path) < 0)
            return err_errno(e, path);
        return 0;
    }
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    if (linkat(AT_FDCWD, proc, AT_FDCWD, path, AT_SYMLINK_FOLLOW) < 0)
        return err_errno(e, path);
    return 0;
}

/* A new file in dir that has no name until link_fd gives it one, so a crash leaves nothing
 * behind. File systems without O_TMPFILE get a dot-named temporary file instead (which mem_gc
 * does not touch: its name is not a layer's). */
static int open_tmp(const char *dir, const mem_id_t *id, char *tmpname, size_t n, bool *named,
                    err_t *e)
{
    *named = false;
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0)
        return fd;
    if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
        return err_errno(e, dir);
    char hex[33];
    mem_id_hex(id, hex);
    int w = snprintf(tmpname, n, "%s/.%s.layer.tmp", dir, hex);
    if (w < 0 || (size_t)w >= n)
        return err_set(e, -ENAMETOOLONG, "path too long: %s", dir);
    fd = open(tmpname, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return err_errno(e, tmpname);
    *named = true;
    return fd;
}

/* ---- commit_full ---- */

/* Data extents of [0, size) of fd, rounded outward to blocks, as layer 0; the rest MEM_ZERO. */
static int scan_data(int fd, const char *path, uint64_t size, mem__extv_t *x, uint64_t *ndata,
                     err_t *e)
{
    const uint64_t bs = MEM_BLOCK_SIZE;
    uint64_t pos = 0; /* bytes described so far, block-aligned */
    *ndata = 0;
    while (pos < size) {
        off_t d = lseek(fd, (off_t)pos, SEEK_DATA);
        if (d < 0) {
            if (errno == ENXIO)
                break; /* only a hole from here on */
            return err_errno(e, path);
        }
        if ((uint64_t)d >= size)
            break;
        off_t h = lseek(fd, d, SEEK_HOLE);
        if (h < 0)
            return err_errno(e, path);
        uint64_t ds = (uint64_t)d / bs * bs;
        uint64_t he = ((uint64_t)h + bs - 1) / bs * bs;
        if (he > size)
            he = size;
        mem__extv_push(x, pos / bs, (ds - pos) / bs, MEM_ZERO);
        mem__extv_push(x, ds / bs, (he - ds) / bs, 0);
        *ndata += (he - ds) / bs;
        pos = he;
    }
    mem__extv_push(x, pos / bs, (size - pos) / bs, MEM_ZERO);
    return 0;
}

int mem_commit_full(const char *ram_file, uint64_t size, const char *dir, mem_map_t **out, err_t *e)
{
    *out = NULL;
    uint64_t t0 = now_ms();
    int rc = check_size(size, e);
    if (rc < 0)
        return rc;
    mem__extv_t x = {0};
    mem_map_t *m = NULL;
    bool renamed = false;
    char path[PATH_MAX];
    struct stat st;
    mem_id_t lid;
    mem_id_new(&lid);
    if (mem_layer_path(dir, &lid, path, sizeof path) < 0)
        return err_set(e, -ENAMETOOLONG, "layer directory path too long: %s", dir);
    int fd = open(ram_file, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return err_errno(e, ram_file);
    if (fstat(fd, &st) < 0) {
        rc = err_errno(e, ram_file);
        goto out;
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != size) {
        rc = err_set(e, -EINVAL, "%s: not a regular file of %" PRIu64 " bytes", ram_file, size);
        goto out;
    }
    /* QEMU's pages are in the page cache of this file; they must be on disk before a map can
     * name the file. */
    if (data_sync(fd) < 0) {
        rc = err_errno(e, ram_file);
        goto out;
    }
    if (rename(ram_file, path) < 0) {
        rc = errno == EXDEV
                 ? err_set(e, -EXDEV, "%s and %s are on different file systems", ram_file, dir)
                 : err_errno(e, path);
        goto out;
    }
    renamed = true;
    rc = mem__layer_seal(fd, path, size, &lid, e);
    if (rc < 0)
        goto out;
    uint64_t ndata = 0;
    rc = scan_data(fd, path, size, &x, &ndata, e);
    if (rc < 0)
        goto out;
    if (data_sync(fd) < 0) {
        rc = err_errno(e, path);
        goto out;
    }
    m = map_shell(size, 0);
    rc = mem__map_build(m, x.v, x.n, &lid, 1, e);
    if (rc < 0)
        goto out;
    if (m->nlayers == 0 && unlink(path) < 0) {
        /* All holes: nothing refers to the file, so it is not kept. */
        rc = err_errno(e, path);
        goto out;
    }
    rc = mem__dir_sync(dir, e);
    if (rc < 0)
        goto out;
    char hex[33];
    mem_id_hex(&lid, hex);
    log_info("mem.commit_full", "layer=%s size=%" PRIu64 " data_blocks=%" PRIu64 " dur_ms=%" PRIu64,
             m->nlayers ? hex : "none", size, ndata, now_ms() - t0);
    *out = steal_ptr(&m);
out:
    if (rc < 0 && renamed) {
        /* Give the caller its RAM file back as it was, so nothing is lost. */
        if (ftruncate(fd, (off_t)size) < 0 || fchmod(fd, st.st_mode & 07777) < 0 ||
            (geteuid() == 0 && fchown(fd, st.st_uid, st.st_gid) < 0) || rename(path, ram_file) < 0)
            log_error("mem.commit_full", "op=rollback path=%s err=\"%s\"", path, strerror(errno));
    }
    mem_map_free(m);
    mem__extv_fini(&x);
    close(fd);
    return rc;
}

/* ---- merging ---- */

/* Write the content that ext (tiling [0, size), indices into fds) describes into a new sparse
 * layer in dir and describe it as a generation-0 map. Zero blocks are skipped (left as holes and
 * recorded as MEM_ZERO); runs of data blocks go out as single large writes. */
static int merge_write(const mem_extent_t *ext, size_t n, const int *fds, uint64_t size,
                       const char *dir, mem_map_t **out, err_t *e)
{
    const uint64_t bs = MEM_BLOCK_SIZE;
    uint64_t t0 = now_ms();
    *out = NULL;
    mem_id_t lid;
    mem_id_new(&lid);
    char path[PATH_MAX], tmpname[PATH_MAX];
    if (mem_layer_path(dir, &lid, path, sizeof path) < 0)
        return err_set(e, -ENAMETOOLONG, "layer directory path too long: %s", dir);
    bool named = false;
    int fd = open_tmp(dir, &lid, tmpname, sizeof tmpname, &named, e);
    if (fd < 0)
        return fd;
    uint8_t *buf = xmalloc(MEM__IO_CHUNK);
    mem__extv_t x = {0};
    mem_map_t *m = NULL;
    uint64_t ndata = 0;
    int rc = 0;
    if (ftruncate(fd, (off_t)size) < 0) {
        rc = err_errno(e, path);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (ext[i].layer == MEM_ZERO) {
            mem__extv_push(&x, ext[i].block, ext[i].count, MEM_ZERO);
            continue;
        }
        uint64_t off = ext[i].block * bs, end = (ext[i].block + ext[i].count) * bs;
        while (off < end) {
            size_t len = end - off < MEM__IO_CHUNK ? (size_t)(end - off) : MEM__IO_CHUNK;
            rc = mem__pread_full(fds[ext[i].layer], buf, len, off);
            if (rc < 0) {
                rc = err_set(e, rc, "reading layer %" PRIu32 " at %" PRIu64 ": %s", ext[i].layer,
                             off, strerror(-rc));
                goto out;
            }
            size_t s = 0;
            while (s < len) {
                bool zero = mem__is_zero(buf + s, bs);
                size_t r = s + bs;
                while (r < len && mem__is_zero(buf + r, bs) == zero)
                    r += bs;
                uint64_t first = (off + s) / bs, count = (r - s) / bs;
                if (zero) {
                    mem__extv_push(&x, first, count, MEM_ZERO);
                } else {
                    rc = mem__pwrite_full(fd, buf + s, r - s, off + s);
                    if (rc < 0) {
                        rc = err_set(e, rc, "%s: %s", path, strerror(-rc));
                        goto out;
                    }
                    mem__extv_push(&x, first, count, 0);
                    ndata += count;
                }
                s = r;
            }
            off += len;
        }
    }
    m = map_shell(size, 0);
    rc = mem__map_build(m, x.v, x.n, &lid, 1, e);
    if (rc < 0)
        goto out;
    if (m->nlayers > 0) {
        rc = mem__layer_seal(fd, path, size, &lid, e);
        if (rc < 0)
            goto out;
        if (data_sync(fd) < 0) {
            rc = err_errno(e, path);
            goto out;
        }
        rc = link_fd(fd, named ? tmpname : NULL, path, e);
        if (rc < 0)
            goto out;
        named = false;
        rc = mem__dir_sync(dir, e);
        if (rc < 0)
            goto out;
    }
    char hex[33];
    mem_id_hex(&lid, hex);
    log_info("mem.merge", "layer=%s size=%" PRIu64 " data_blocks=%" PRIu64 " dur_ms=%" PRIu64,
             m->nlayers ? hex : "none", size, ndata, now_ms() - t0);
    *out = steal_ptr(&m);
out:
    if (named)
        unlink(tmpname);
    mem_map_free(m);
    mem__extv_fini(&x);
    free(buf);
    close(fd);
    return rc;
}

int mem_flatten(const mem_map_t *m, const char *dir, mem_map_t **out, err_t *e)
{
    *out = NULL;
    mem_reader_t *r = NULL;
    int rc = mem_reader_open(m, dir, &r, e);
    if (rc < 0)
        return err_wrap(e, "flatten");
    rc = merge_write(r->m->ext, r->m->next, r->fd, r->m->size, dir, out, e);
    mem_reader_free(r);
    return rc < 0 ? err_wrap(e, "flatten") : 0;
}

/* ---- commit_diff ---- */

static inline bool bit(const uint8_t *d, uint64_t b)
{
    return d[b >> 3] & (1u << (b & 7));
}

/* The first dirty block in [b, limit), or limit. Clean words are skipped 64 blocks at a time;
 * no byte at or past (limit + 7) / 8 is read. */
static uint64_t next_dirty(const uint8_t *d, uint64_t b, uint64_t limit)
{
    while (b < limit) {
        if ((b & 63) == 0 && limit - b >= 64) {
            uint64_t w;
            memcpy(&w, d + (b >> 3), sizeof w);
            if (w == 0) {
                b += 64;
                continue;
            }
        }
        if (bit(d, b))
            return b;
        b++;
    }
    return limit;
}

/* Punch the hole of a run of zero blocks; a file system without hole punching just keeps the
 * bytes (the map says MEM_ZERO either way). */
static int punch(int fd, const char *path, uint64_t first, uint64_t count, err_t *e)
{
    if (count == 0)
        return 0;
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)(first * MEM_BLOCK_SIZE),
                  (off_t)(count * MEM_BLOCK_SIZE)) < 0 &&
        errno != EOPNOTSUPP)
        return err_errno(e, path);
    return 0;
}

/* parent's extents with top's (dirty runs, sorted, non-overlapping) laid over them. */
static void overlay(const mem_map_t *parent, const mem__extv_t *top, mem__extv_t *out)
{
    const uint64_t nb = parent->size / parent->block_size;
    uint64_t pos = 0;
    size_t i = 0, j = 0;
    while (pos < nb) {
        if (j < top->n && top->v[j].block <= pos) {
            mem__extv_push(out, pos, top->v[j].block + top->v[j].count - pos, top->v[j].layer);
            pos = top->v[j].block + top->v[j].count;
            j++;
            continue;
        }
        while (parent->ext[i].block + parent->ext[i].count <= pos)
            i++;
        uint64_t stop = j < top->n ? top->v[j].block : nb;
        uint64_t end = parent->ext[i].block + parent->ext[i].count;
        if (end > stop)
            end = stop;
        mem__extv_push(out, pos, end - pos, parent->ext[i].layer);
        pos = end;
    }
}

/* Whether block k of fd is data (not a hole), with a cursor over the data extents: *ds, *de
 * is the data extent found last ([*ds, *de) in bytes; *de == 0 before the first look). */
static int block_is_data(int fd, uint64_t k, uint64_t bs, off_t *ds, off_t *de)
{
    off_t pos = (off_t)(k * bs);
    if (*de == 0 || pos >= *de || pos < *ds) {
        off_t d = lseek(fd, pos, SEEK_DATA);
        if (d < 0)
            return errno == ENXIO ? 0 : -errno; /* ENXIO: no data from pos on */
        off_t h = lseek(fd, d, SEEK_HOLE);
        if (h < 0)
            return -errno;
        *ds = d;
        *de = h;
    }
    return pos >= *ds && pos < *de;
}

static int commit_diff(const mem_map_t *parent, const char *upper, const uint8_t *dirty,
                       const char *dir, unsigned max_layers, bool holes_are_zero, mem_map_t **out,
                       err_t *e);

int mem_commit_diff(const mem_map_t *parent, const char *upper, const uint8_t *dirty,
                    const char *dir, unsigned max_layers, mem_map_t **out, err_t *e)
{
    return commit_diff(parent, upper, dirty, dir, max_layers, false, out, e);
}

int mem_commit_diff_sparse(const mem_map_t *parent, const char *upper, const uint8_t *dirty,
                           const char *dir, unsigned max_layers, mem_map_t **out, err_t *e)
{
    return commit_diff(parent, upper, dirty, dir, max_layers, true, out, e);
}

static int commit_diff(const mem_map_t *parent, const char *upper, const uint8_t *dirty,
                       const char *dir, unsigned max_layers, bool holes_are_zero, mem_map_t **out,
                       err_t *e)
{
    *out = NULL;
    uint64_t t0 = now_ms();
    int rc = mem__map_check(parent, -EINVAL, e);
    if (rc < 0)
        return err_wrap(e, "parent map");
    if (max_layers == 0)
        max_layers = MEM_DEFAULT_LAYERS;
    if (max_layers > MEM_MAX_LAYERS)
        max_layers = MEM_MAX_LAYERS;
    const uint64_t bs = MEM_BLOCK_SIZE, nb = parent->size / bs;
    const uint32_t newl = parent->nlayers; /* index of the new layer among parent's + 1 */
    const uint32_t next_gen =
        parent->generation == UINT32_MAX ? UINT32_MAX : parent->generation + 1;

    if (next_dirty(dirty, 0, nb) == nb) {
        /* Nothing written since the resume: the same content under a new map id. */
        if (unlink(upper) < 0 && errno != ENOENT)
            return err_errno(e, upper);
        mem_map_t *m = mem_map_dup(parent);
        mem_id_new(&m->id);
        m->generation = next_gen;
        log_info("mem.commit_diff", "layer=none dirty_blocks=0 layers=%" PRIu32 " dur_ms=%" PRIu64,
                 m->nlayers, now_ms() - t0);
        *out = m;
        return 0;
    }

    mem_id_t ids[MEM_MAX_LAYERS + 1];
    memcpy(ids, parent->layers, parent->nlayers * sizeof ids[0]);
    mem_id_new(&ids[newl]);
    char path[PATH_MAX];
    if (mem_layer_path(dir, &ids[newl], path, sizeof path) < 0)
        return err_set(e, -ENAMETOOLONG, "layer directory path too long: %s", dir);
    int fds[MEM_MAX_LAYERS + 1];
    for (size_t i = 0; i < MEM_MAX_LAYERS + 1; i++)
        fds[i] = -1;
    uint8_t *buf = NULL;
    mem__extv_t top = {0}, all = {0};
    mem_map_t *m = NULL;
    bool renamed = false;
    uint64_t ndata = 0, nzero = 0;

    int fd = open(upper, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return err_errno(e, upper);
    struct stat st;
    if (fstat(fd, &st) < 0) {
        rc = err_errno(e, upper);
        goto out;
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > parent->size) {
        rc = err_set(e, -EINVAL, "%s: not a regular file of at most %" PRIu64 " bytes", upper,
                     parent->size);
        goto out;
    }
    /* A dirty block past the end of a short file reads as zero. */
    if ((uint64_t)st.st_size < parent->size && ftruncate(fd, (off_t)parent->size) < 0) {
        rc = err_errno(e, upper);
        goto out;
    }

    /* Classify every dirty block, reading spans of nearby dirty blocks in one pread each (or,
     * when the writer left exactly its zero blocks as holes, from the file's extents). */
    buf = xmalloc(MEM__IO_CHUNK);
    const uint64_t chunk_blocks = MEM__IO_CHUNK / bs;
    uint64_t pfirst = 0, pcount = 0; /* pending hole to punch */
    off_t ds = 0, de = 0;
    if (holes_are_zero)
        for (uint64_t k = next_dirty(dirty, 0, nb); k < nb; k = next_dirty(dirty, k + 1, nb)) {
            int d = block_is_data(fd, k, bs, &ds, &de);
            if (d < 0) {
                rc = err_set(e, d, "%s: %s", upper, strerror(-d));
                goto out;
            }
            mem__extv_push(&top, k, 1, d ? newl : MEM_ZERO);
            if (d)
                ndata++;
            else
                nzero++;
        }
    for (uint64_t b = holes_are_zero ? nb : next_dirty(dirty, 0, nb); b < nb;
         b = next_dirty(dirty, b, nb)) {
        uint64_t end = b + 1;
        for (;;) {
            uint64_t lim = end + DIRTY_GAP_BLOCKS < nb ? end + DIRTY_GAP_BLOCKS : nb;
            uint64_t nx = next_dirty(dirty, end, lim);
            if (nx >= lim || nx + 1 - b > chunk_blocks)
                break;
            end = nx + 1;
        }
        rc = mem__pread_full(fd, buf, (end - b) * bs, b * bs);
        if (rc < 0) {
            rc = err_set(e, rc, "%s: %s", upper, strerror(-rc));
            goto out;
        }
        for (uint64_t k = b; k < end; k++) {
            if (!bit(dirty, k))
                continue;
            if (mem__is_zero(buf + (k - b) * bs, bs)) {
                mem__extv_push(&top, k, 1, MEM_ZERO);
                nzero++;
                if (pcount > 0 && pfirst + pcount == k) {
                    pcount++;
                } else {
                    rc = punch(fd, upper, pfirst, pcount, e);
                    if (rc < 0)
                        goto out;
                    pfirst = k;
                    pcount = 1;
                }
            } else {
                mem__extv_push(&top, k, 1, newl);
                ndata++;
            }
        }
        b = end;
    }
    rc = punch(fd, upper, pfirst, pcount, e);
    if (rc < 0)
        goto out;

    overlay(parent, &top, &all);
    uint64_t used = 0; /* bits 0..63: parent layers still referenced */
    bool new_used = false;
    for (size_t i = 0; i < all.n; i++) {
        if (all.v[i].layer == newl)
            new_used = true;
        else if (all.v[i].layer != MEM_ZERO)
            used |= 1ull << all.v[i].layer;
    }
    unsigned nused = (unsigned)__builtin_popcountll(used) + (new_used ? 1u : 0u);

    if (nused > max_layers) {
        /* Too many layers: merge everything, reading the new blocks straight from upper. The
         * upper file is removed only once the merged layer is safely in place. */
        for (uint32_t i = 0; i < parent->nlayers; i++) {
            if (!(used & (1ull << i)))
                continue;
            char lp[PATH_MAX];
            if (mem_layer_path(dir, &parent->layers[i], lp, sizeof lp) < 0) {
                rc = err_set(e, -ENAMETOOLONG, "layer directory path too long: %s", dir);
                goto out;
            }
            fds[i] = open(lp, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
            if (fds[i] < 0) {
                rc = err_errno(e, lp);
                goto out;
            }
            rc = mem__layer_check(fds[i], lp, parent->size, &parent->layers[i], e);
            if (rc < 0)
                goto out;
        }
        fds[newl] = fd;
        rc = merge_write(all.v, all.n, fds, parent->size, dir, &m, e);
        fds[newl] = -1;
        if (rc < 0)
            goto out;
        if (unlink(upper) < 0)
            log_warn("mem.commit_diff", "op=unlink path=%s err=\"%s\"", upper, strerror(errno));
    } else {
        if (new_used) {
            if (rename(upper, path) < 0) {
                rc = errno == EXDEV
                         ? err_set(e, -EXDEV, "%s and %s are on different file systems", upper, dir)
                         : err_errno(e, path);
                goto out;
            }
            renamed = true;
            rc = mem__layer_seal(fd, path, parent->size, &ids[newl], e);
            if (rc < 0)
                goto out;
            if (data_sync(fd) < 0) {
                rc = err_errno(e, path);
                goto out;
            }
            rc = mem__dir_sync(dir, e);
            if (rc < 0)
                goto out;
        } else if (unlink(upper) < 0) {
            /* Every dirty block became zero: the map changes, but no layer file is needed. */
            rc = err_errno(e, upper);
            goto out;
        }
        m = map_shell(parent->size, next_gen);
        rc = mem__map_build(m, all.v, all.n, ids, newl + 1, e);
        if (rc < 0)
            goto out;
    }
    char hex[33];
    mem_id_hex(&ids[newl], hex);
    log_info("mem.commit_diff",
             "layer=%s dirty_blocks=%" PRIu64 " zero_blocks=%" PRIu64 " layers=%" PRIu32
             " merged=%d dur_ms=%" PRIu64,
             new_used ? hex : "none", ndata, nzero, m->nlayers, nused > max_layers, now_ms() - t0);
    *out = steal_ptr(&m);
out:
    if (rc < 0 && renamed) {
        /* Give upper back (content, mode, name) so the pause can be retried. */
        if (ftruncate(fd, (off_t)parent->size) < 0 || fchmod(fd, st.st_mode & 07777) < 0 ||
            rename(path, upper) < 0)
            log_error("mem.commit_diff", "op=rollback path=%s err=\"%s\"", path, strerror(errno));
    }
    for (size_t i = 0; i < MEM_MAX_LAYERS + 1; i++)
        xclose(&fds[i]);
    mem_map_free(m);
    mem__extv_fini(&top);
    mem__extv_fini(&all);
    free(buf);
    close(fd);
    return rc;
}

/* ---- sharing between directories ---- */

/* Copy layer sfd (validated, size + trailer bytes) into dir as path, keeping it sparse. */
static int copy_layer(int sfd, uint64_t size, const mem_id_t *id, const char *dir, const char *path,
                      err_t *e)
{
    char tmpname[PATH_MAX];
    bool named = false;
    int fd = open_tmp(dir, id, tmpname, sizeof tmpname, &named, e);
    if (fd < 0)
        return fd;
    uint8_t *buf = xmalloc(MEM__IO_CHUNK);
    const uint64_t total = size + MEM_TRAILER_SIZE;
    int rc = 0;
    if (ftruncate(fd, (off_t)total) < 0) {
        rc = err_errno(e, path);
        goto out;
    }
    uint64_t pos = 0;
    while (pos < total) {
        off_t d = lseek(sfd, (off_t)pos, SEEK_DATA);
        if (d < 0 && errno == ENXIO)
            break;
        if (d < 0) {
            rc = err_errno(e, "seek in layer");
            goto out;
        }
        off_t h = lseek(sfd, d, SEEK_HOLE);
        if (h < 0) {
            rc = err_errno(e, "seek in layer");
            goto out;
        }
        for (uint64_t off = (uint64_t)d; off < (uint64_t)h;) {
            size_t len =
                (uint64_t)h - off < MEM__IO_CHUNK ? (size_t)((uint64_t)h - off) : MEM__IO_CHUNK;
            if ((rc = mem__pread_full(sfd, buf, len, off)) < 0 ||
                (rc = mem__pwrite_full(fd, buf, len, off)) < 0) {
                rc = err_set(e, rc, "copying to %s: %s", path, strerror(-rc));
                goto out;
            }
            off += len;
        }
        pos = (uint64_t)h;
    }
    if (fchmod(fd, 0444) < 0 || (geteuid() == 0 && fchown(fd, 0, 0) < 0) || fsync(fd) < 0) {
        rc = err_errno(e, path);
        goto out;
    }
    rc = mem__layer_check(fd, path, size, id, e);
    if (rc < 0)
        goto out;
    rc = link_fd(fd, named ? tmpname : NULL, path, e);
    if (rc == 0)
        named = false;
out:
    if (named)
        unlink(tmpname);
    free(buf);
    close(fd);
    return rc;
}

int mem_link_layers(const mem_map_t *m, const char *from, const char *to, err_t *e)
{
    int rc = mem__map_check(m, -EINVAL, e);
    if (rc < 0)
        return err_wrap(e, "link layers");
    bool changed = false;
    for (uint32_t i = 0; i < m->nlayers; i++) {
        char src[PATH_MAX], dst[PATH_MAX];
        if (mem_layer_path(from, &m->layers[i], src, sizeof src) < 0 ||
            mem_layer_path(to, &m->layers[i], dst, sizeof dst) < 0)
            return err_set(e, -ENAMETOOLONG, "layer directory path too long");
        int sfd = open(src, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (sfd < 0)
            return err_errno(e, src);
        /* Never spread a damaged or foreign file: check it before giving it another name. */
        rc = mem__layer_check(sfd, src, m->size, &m->layers[i], e);
        if (rc < 0) {
            close(sfd);
            return rc;
        }
        /* Link the very file that was checked, not whatever the name points to by now. */
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", sfd);
        if (linkat(AT_FDCWD, proc, AT_FDCWD, dst, AT_SYMLINK_FOLLOW) == 0) {
            changed = true;
        } else if (errno == EEXIST) {
            struct stat ss, ds;
            int dfd = open(dst, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
            if (dfd < 0) {
                rc = err_errno(e, dst);
            } else if (fstat(sfd, &ss) == 0 && fstat(dfd, &ds) == 0 && ss.st_dev == ds.st_dev &&
                       ss.st_ino == ds.st_ino) {
                rc = 0; /* already linked */
            } else {
                /* Another file of that name (a copy from another file system): it must be a
                 * valid copy of the same layer. */
                rc = mem__layer_check(dfd, dst, m->size, &m->layers[i], e);
            }
            if (dfd >= 0)
                close(dfd);
        } else if (errno == EXDEV) {
            rc = copy_layer(sfd, m->size, &m->layers[i], to, dst, e);
            changed = rc == 0;
        } else {
            rc = err_errno(e, dst);
        }
        close(sfd);
        if (rc < 0)
            return rc;
    }
    return changed ? mem__dir_sync(to, e) : 0;
}

/* ---- gc and accounting ---- */

/* Whether name is "<32 lowercase hex>.layer"; *id gets the id. */
static bool layer_name(const char *name, mem_id_t *id)
{
    if (strlen(name) != 38 || strcmp(name + 32, ".layer") != 0)
        return false;
    char hex[33];
    memcpy(hex, name, 32);
    hex[32] = '\0';
    for (int i = 0; i < 32; i++)
        if (!((hex[i] >= '0' && hex[i] <= '9') || (hex[i] >= 'a' && hex[i] <= 'f')))
            return false;
    return mem_id_parse(hex, id) == 0;
}

int mem_gc(const char *dir, const mem_map_t *const *keep, size_t n, err_t *e)
{
    DIR *d = opendir(dir);
    if (!d)
        return err_errno(e, dir);
    int removed = 0, rc = 0;
    struct dirent *de;
    errno = 0;
    while ((de = readdir(d))) {
        mem_id_t id;
        if (!layer_name(de->d_name, &id))
            continue;
        bool kept = false;
        for (size_t k = 0; k < n && !kept; k++) {
            if (!keep[k])
                continue;
            for (uint32_t l = 0; l < keep[k]->nlayers && !kept; l++)
                kept = memcmp(&keep[k]->layers[l], &id, sizeof id) == 0;
        }
        if (kept)
            continue;
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
            continue;
        if (unlinkat(dirfd(d), de->d_name, 0) < 0) {
            if (errno == ENOENT)
                continue;
            rc = err_errno(e, de->d_name);
            break;
        }
        removed++;
        errno = 0;
    }
    if (rc == 0 && errno != 0)
        rc = err_errno(e, dir);
    closedir(d);
    if (rc < 0)
        return rc;
    if (removed > 0) {
        rc = mem__dir_sync(dir, e);
        if (rc < 0)
            return rc;
        log_info("mem.gc", "dir=%s removed=%d", dir, removed);
    }
    return removed;
}

int mem_disk_bytes(const mem_map_t *m, const char *dir, uint64_t *out, err_t *e)
{
    *out = 0;
    dev_t dev[MEM_MAX_LAYERS];
    ino_t ino[MEM_MAX_LAYERS];
    uint32_t seen = 0;
    uint64_t total = 0;
    for (uint32_t i = 0; i < m->nlayers && i < MEM_MAX_LAYERS; i++) {
        char path[PATH_MAX];
        if (mem_layer_path(dir, &m->layers[i], path, sizeof path) < 0)
            return err_set(e, -ENAMETOOLONG, "layer directory path too long: %s", dir);
        struct stat st;
        if (lstat(path, &st) < 0)
            return err_errno(e, path);
        if (!S_ISREG(st.st_mode))
            return err_set(e, -EBADMSG, "layer %s is not a regular file", path);
        bool dup = false;
        for (uint32_t k = 0; k < seen && !dup; k++)
            dup = dev[k] == st.st_dev && ino[k] == st.st_ino;
        if (dup)
            continue;
        dev[seen] = st.st_dev;
        ino[seen++] = st.st_ino;
        total += (uint64_t)st.st_blocks * 512u;
    }
    *out = total;
    return 0;
}
