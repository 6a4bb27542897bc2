/* Maps: ids, the header file format (encode, decode, load, save), validation, normal form and
 * lookup. The byte layout is described in docs/memory-layers.md. */
#include "mem.h"
#include "mem_int.h"

#include "fsutil.h"
#include "log.h"
#include "xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* ---- ids ---- */

void mem_id_new(mem_id_t *id)
{
    size_t got = 0;
    while (got < sizeof id->b) {
        ssize_t r = getrandom(id->b + got, sizeof id->b - got, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            /* getrandom cannot fail on a kernel that has it once the pool is ready; an id that
             * is not random would let two layers collide, so refuse to go on. */
            log_error("mem.id", "err=\"getrandom: %s\"", strerror(errno));
            abort();
        }
        got += (size_t)r;
    }
}

void mem_id_hex(const mem_id_t *id, char out[33])
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof id->b; i++) {
        out[2 * i] = digits[id->b[i] >> 4];
        out[2 * i + 1] = digits[id->b[i] & 0xf];
    }
    out[32] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int mem_id_parse(const char *hex, mem_id_t *out)
{
    if (!hex || strnlen(hex, 33) != 32)
        return -EINVAL;
    mem_id_t id;
    for (size_t i = 0; i < 16; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -EINVAL;
        id.b[i] = (uint8_t)(hi << 4 | lo);
    }
    *out = id;
    return 0;
}

int mem_layer_path(const char *dir, const mem_id_t *id, char *buf, size_t n)
{
    char hex[33];
    mem_id_hex(id, hex);
    int w = snprintf(buf, n, "%s/%s.layer", dir, hex);
    if (w < 0 || (size_t)w >= n)
        return -ENAMETOOLONG;
    return 0;
}

/* ---- small shared helpers ---- */

uint32_t mem__crc32(const void *p, size_t n)
{
    uLong c = crc32(0L, Z_NULL, 0);
    const Bytef *b = p;
    /* zlib takes uInt lengths; feed big buffers in pieces. */
    while (n > 0) {
        uInt k = n > (1u << 30) ? (1u << 30) : (uInt)n;
        c = crc32(c, b, k);
        b += k;
        n -= k;
    }
    return (uint32_t)c;
}

bool mem__is_zero(const void *p, size_t n)
{
    const unsigned char *c = p;
    /* Word-at-a-time OR of 64 bytes per step; the compiler vectorises this. memcpy keeps it
     * free of alignment assumptions. */
    while (n >= 64) {
        uint64_t w[8];
        memcpy(w, c, sizeof w);
        if ((w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7]) != 0)
            return false;
        c += 64;
        n -= 64;
    }
    while (n > 0) {
        if (*c++)
            return false;
        n--;
    }
    return true;
}

/* ---- extent lists and normal form ---- */

void mem__extv_push(mem__extv_t *x, uint64_t block, uint64_t count, uint32_t layer)
{
    if (count == 0)
        return;
    if (x->n > 0) {
        mem_extent_t *last = &x->v[x->n - 1];
        if (last->layer == layer && last->block + last->count == block) {
            last->count += count;
            return;
        }
    }
    if (x->n == x->cap) {
        x->cap = x->cap ? 2 * x->cap : 16;
        x->v = xrealloc(x->v, x->cap * sizeof *x->v);
    }
    x->v[x->n++] = (mem_extent_t){.block = block, .count = count, .layer = layer};
}

void mem__extv_fini(mem__extv_t *x)
{
    free(x->v);
    x->v = NULL;
    x->n = x->cap = 0;
}

int mem__map_build(mem_map_t *m, const mem_extent_t *ext, size_t n, const mem_id_t *ids,
                   uint32_t nids, err_t *e)
{
    if (m->block_size == 0 || m->size % m->block_size != 0)
        return err_set(e, -EINVAL, "map size %" PRIu64 " is not a multiple of the block size",
                       m->size);
    uint64_t nblocks = m->size / m->block_size;
    uint64_t pos = 0;
    uint32_t *remap = xcalloc((size_t)nids + 1, sizeof *remap);
    mem__extv_t out = {0};
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        const mem_extent_t *x = &ext[i];
        if (x->block != pos || x->count == 0 || x->count > nblocks - pos) {
            rc = err_set(e, -EINVAL, "extent %zu does not continue the tiling at block %" PRIu64, i,
                         pos);
            goto out;
        }
        if (x->layer != MEM_ZERO && x->layer >= nids) {
            rc = err_set(e, -EINVAL, "extent %zu: layer index %" PRIu32 " out of range", i,
                         x->layer);
            goto out;
        }
        pos += x->count;
    }
    if (pos != nblocks) {
        rc = err_set(e, -EINVAL, "extents end at block %" PRIu64 ", the map has %" PRIu64 " blocks",
                     pos, nblocks);
        goto out;
    }
    /* Layers in use, numbered in their original order. remap[i] is 1 + the new index. */
    for (size_t i = 0; i < n; i++)
        if (ext[i].layer != MEM_ZERO)
            remap[ext[i].layer] = 1;
    uint32_t used = 0;
    for (uint32_t i = 0; i < nids; i++)
        if (remap[i])
            remap[i] = ++used;
    if (used > MEM_MAX_LAYERS) {
        rc = err_set(e, -E2BIG, "the map would need %" PRIu32 " layers (limit %u)", used,
                     MEM_MAX_LAYERS);
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        mem__extv_push(&out, ext[i].block, ext[i].count,
                       ext[i].layer == MEM_ZERO ? MEM_ZERO : remap[ext[i].layer] - 1);
    mem_id_t newids[MEM_MAX_LAYERS];
    for (uint32_t i = 0; i < nids; i++)
        if (remap[i])
            newids[remap[i] - 1] = ids[i];
    memcpy(m->layers, newids, used * sizeof newids[0]);
    m->nlayers = used;
    free(m->ext);
    m->ext = xrealloc(steal_ptr(&out.v), out.n * sizeof *m->ext);
    m->next = out.n;
out:
    mem__extv_fini(&out);
    free(remap);
    return rc;
}

int mem_map_normalise(mem_map_t *m, err_t *e)
{
    if (m->nlayers > MEM_MAX_LAYERS)
        return err_set(e, -EINVAL, "%" PRIu32 " layers (limit %u)", m->nlayers, MEM_MAX_LAYERS);
    if (m->next == 0 || !m->ext)
        return err_set(e, -EINVAL, "map has no extents");
    mem_id_t ids[MEM_MAX_LAYERS];
    memcpy(ids, m->layers, sizeof ids);
    mem_extent_t *ext = xmalloc(m->next * sizeof *ext);
    memcpy(ext, m->ext, m->next * sizeof *ext);
    int rc = mem__map_build(m, ext, m->next, ids, m->nlayers, e);
    free(ext);
    return rc;
}

/* ---- validation ---- */

int mem__map_check(const mem_map_t *m, int code, err_t *e)
{
    if (m->block_size != MEM_BLOCK_SIZE)
        return err_set(e, code, "block size %" PRIu32 " (must be %u)", m->block_size,
                       MEM_BLOCK_SIZE);
    if (m->size == 0)
        return err_set(e, code, "memory size is 0");
    if (m->size % MEM_BLOCK_SIZE != 0)
        return err_set(e, code, "memory size %" PRIu64 " is not a multiple of the block size",
                       m->size);
    if (m->size > MEM_MAX_SIZE)
        return err_set(e, code, "memory size %" PRIu64 " is absurd (over 1 TiB)", m->size);
    if (m->nlayers > MEM_MAX_LAYERS)
        return err_set(e, code, "%" PRIu32 " layers (limit %u)", m->nlayers, MEM_MAX_LAYERS);
    uint64_t nblocks = m->size / MEM_BLOCK_SIZE;
    if (m->next == 0 || !m->ext)
        return err_set(e, code, "no extents");
    if (m->next > nblocks)
        return err_set(e, code, "%zu extents for %" PRIu64 " blocks", m->next, nblocks);
    uint64_t used = 0; /* bit i: layer i referenced */
    uint64_t pos = 0;
    for (size_t i = 0; i < m->next; i++) {
        const mem_extent_t *x = &m->ext[i];
        if (x->count == 0)
            return err_set(e, code, "extent %zu is empty", i);
        if (x->block > pos)
            return err_set(e, code,
                           "gap before extent %zu (starts at block %" PRIu64 ", expected %" PRIu64
                           ")",
                           i, x->block, pos);
        if (x->block < pos)
            return err_set(e, code,
                           "extent %zu (block %" PRIu64
                           ") overlaps its predecessor or is out of order",
                           i, x->block);
        if (x->count > nblocks - pos)
            return err_set(e, code,
                           "extent %zu runs past the end (block %" PRIu64 " + %" PRIu64
                           " > %" PRIu64 ")",
                           i, x->block, x->count, nblocks);
        if (x->layer != MEM_ZERO) {
            if (x->layer >= m->nlayers)
                return err_set(e, code,
                               "extent %zu: layer index %" PRIu32 " out of range (%" PRIu32
                               " layers)",
                               i, x->layer, m->nlayers);
            used |= 1ull << x->layer;
        }
        if (i > 0 && m->ext[i - 1].layer == x->layer)
            return err_set(e, code, "extents %zu and %zu have the same layer (not merged)", i - 1,
                           i);
        pos += x->count;
    }
    if (pos != nblocks)
        return err_set(e, code, "extents end at block %" PRIu64 ", the map has %" PRIu64 " blocks",
                       pos, nblocks);
    for (uint32_t i = 0; i < m->nlayers; i++) {
        if (!(used & (1ull << i)))
            return err_set(e, code, "layer %" PRIu32 " is not referenced by any extent", i);
        for (uint32_t j = 0; j < i; j++)
            if (memcmp(&m->layers[i], &m->layers[j], sizeof m->layers[i]) == 0)
                return err_set(e, code, "layers %" PRIu32 " and %" PRIu32 " have the same id", j,
                               i);
    }
    return 0;
}

int mem_map_check(const mem_map_t *m, err_t *e)
{
    return mem__map_check(m, -EINVAL, e);
}

/* ---- encode / decode ---- */

int mem_map_encode(const mem_map_t *m, void **out, size_t *len, err_t *e)
{
    int rc = mem__map_check(m, -EINVAL, e);
    if (rc < 0)
        return err_wrap(e, "encode map");
    /* next <= blocks <= 2^28 and nlayers <= 64 (checked), so this cannot overflow. */
    size_t n = MEM__HDR_FIXED + (size_t)m->nlayers * MEM__HDR_LAYER + m->next * MEM__HDR_EXTENT +
               MEM__HDR_CRC;
    uint8_t *b = xcalloc(1, n);
    memcpy(b, MEM__HDR_MAGIC, 8);
    mem__put_u32(b + 8, MEM__HDR_VERSION);
    mem__put_u32(b + 12, m->block_size);
    mem__put_u64(b + 16, m->size);
    mem__put_u32(b + 24, m->generation);
    mem__put_u32(b + 28, m->nlayers);
    mem__put_u64(b + 32, m->next);
    memcpy(b + 40, m->id.b, 16);
    /* 56..64 reserved, zero */
    uint8_t *p = b + MEM__HDR_FIXED;
    for (uint32_t i = 0; i < m->nlayers; i++, p += MEM__HDR_LAYER)
        memcpy(p, m->layers[i].b, 16);
    for (size_t i = 0; i < m->next; i++, p += MEM__HDR_EXTENT) {
        mem__put_u64(p, m->ext[i].block);
        mem__put_u64(p + 8, m->ext[i].count);
        mem__put_u32(p + 16, m->ext[i].layer);
        /* 20..24 reserved, zero */
    }
    mem__put_u32(p, mem__crc32(b, n - MEM__HDR_CRC));
    *out = b;
    *len = n;
    return 0;
}

int mem_map_decode(const void *data, size_t len, mem_map_t **out, err_t *e)
{
    const uint8_t *b = data;
    *out = NULL;
    if (len < MEM__HDR_FIXED + MEM__HDR_CRC)
        return err_set(e, -EBADMSG, "header truncated (%zu bytes, at least %u needed)", len,
                       MEM__HDR_FIXED + MEM__HDR_CRC);
    if (memcmp(b, MEM__HDR_MAGIC, 8) != 0)
        return err_set(e, -EBADMSG, "not a memory map header (bad magic)");
    uint32_t version = mem__get_u32(b + 8);
    if (version != MEM__HDR_VERSION)
        return err_set(e, -EBADMSG, "unsupported header version %" PRIu32, version);
    uint32_t bs = mem__get_u32(b + 12);
    uint64_t size = mem__get_u64(b + 16);
    uint32_t nlayers = mem__get_u32(b + 28);
    uint64_t next = mem__get_u64(b + 32);
    if (bs != MEM_BLOCK_SIZE)
        return err_set(e, -EBADMSG, "block size %" PRIu32 " (must be %u)", bs, MEM_BLOCK_SIZE);
    if (size == 0)
        return err_set(e, -EBADMSG, "memory size is 0");
    if (size % bs != 0)
        return err_set(e, -EBADMSG, "memory size %" PRIu64 " is not a multiple of the block size",
                       size);
    if (size > MEM_MAX_SIZE)
        return err_set(e, -EBADMSG, "memory size %" PRIu64 " is absurd (over 1 TiB)", size);
    if (nlayers > MEM_MAX_LAYERS)
        return err_set(e, -EBADMSG, "%" PRIu32 " layers (limit %u)", nlayers, MEM_MAX_LAYERS);
    if (next == 0)
        return err_set(e, -EBADMSG, "no extents");
    if (next > size / bs)
        return err_set(e, -EBADMSG, "%" PRIu64 " extents for %" PRIu64 " blocks", next, size / bs);
    if (mem__get_u64(b + 56) != 0)
        return err_set(e, -EBADMSG, "reserved header field is not zero");
    /* next <= 2^28, so the expected length fits in 64 bits with room to spare. */
    uint64_t want = (uint64_t)MEM__HDR_FIXED + (uint64_t)nlayers * MEM__HDR_LAYER +
                    next * MEM__HDR_EXTENT + MEM__HDR_CRC;
    if (len < want)
        return err_set(e, -EBADMSG, "header truncated (%zu bytes, %" PRIu64 " expected)", len,
                       want);
    if (len > want)
        return err_set(e, -EBADMSG,
                       "trailing garbage after the header (%zu bytes, %" PRIu64 " expected)", len,
                       want);
    uint32_t crc = mem__get_u32(b + len - MEM__HDR_CRC);
    uint32_t calc = mem__crc32(b, len - MEM__HDR_CRC);
    if (crc != calc)
        return err_set(e, -EBADMSG,
                       "header CRC mismatch (stored %08" PRIx32 ", computed %08" PRIx32 ")", crc,
                       calc);

    mem_map_t *m = xcalloc(1, sizeof *m);
    m->block_size = bs;
    m->size = size;
    m->generation = mem__get_u32(b + 24);
    memcpy(m->id.b, b + 40, 16);
    m->nlayers = nlayers;
    const uint8_t *p = b + MEM__HDR_FIXED;
    for (uint32_t i = 0; i < nlayers; i++, p += MEM__HDR_LAYER)
        memcpy(m->layers[i].b, p, 16);
    m->next = (size_t)next;
    m->ext = xmalloc(m->next * sizeof *m->ext);
    for (size_t i = 0; i < m->next; i++, p += MEM__HDR_EXTENT) {
        m->ext[i].block = mem__get_u64(p);
        m->ext[i].count = mem__get_u64(p + 8);
        m->ext[i].layer = mem__get_u32(p + 16);
        if (mem__get_u32(p + 20) != 0) {
            mem_map_free(m);
            return err_set(e, -EBADMSG, "extent %zu: reserved field is not zero", i);
        }
    }
    int rc = mem__map_check(m, -EBADMSG, e);
    if (rc < 0) {
        mem_map_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

/* ---- files ---- */

int mem_map_load(const char *path, mem_map_t **out, err_t *e)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return err_errno(e, path);
    uint8_t *buf = NULL;
    int rc = 0;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        rc = err_errno(e, path);
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = err_set(e, -EBADMSG, "%s: not a regular file", path);
        goto out;
    }
    /* The largest valid header: every block its own extent in a 1 TiB memory. Anything bigger is
     * refused before it is read into memory. */
    const uint64_t max = MEM__HDR_FIXED + MEM_MAX_LAYERS * MEM__HDR_LAYER +
                         (MEM_MAX_SIZE / MEM_BLOCK_SIZE) * MEM__HDR_EXTENT + MEM__HDR_CRC;
    if ((uint64_t)st.st_size > max) {
        rc = err_set(e, -EBADMSG, "%s: %lld bytes is too large for a header", path,
                     (long long)st.st_size);
        goto out;
    }
    size_t len = (size_t)st.st_size;
    buf = xmalloc(len ? len : 1);
    size_t got = 0;
    while (got < len) {
        ssize_t r = read(fd, buf + got, len - got);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            rc = err_errno(e, path);
            goto out;
        }
        if (r == 0)
            break; /* shrank under us: decode reports the truncation */
        got += (size_t)r;
    }
    rc = mem_map_decode(buf, got, out, e);
    if (rc < 0)
        err_wrap(e, "%s", path);
out:
    free(buf);
    close(fd);
    return rc;
}

static int dir_of(const char *path, char *dir, size_t n)
{
    const char *slash = strrchr(path, '/');
    int w;
    if (!slash)
        w = snprintf(dir, n, ".");
    else if (slash == path)
        w = snprintf(dir, n, "/");
    else
        w = snprintf(dir, n, "%.*s", (int)(slash - path), path);
    return w < 0 || (size_t)w >= n ? -ENAMETOOLONG : 0;
}

int mem_map_save(const mem_map_t *m, const char *path, err_t *e)
{
    void *data = NULL;
    size_t len = 0;
    char dir[PATH_MAX];
    if (dir_of(path, dir, sizeof dir) < 0)
        return err_set(e, -ENAMETOOLONG, "path too long: %s", path);
    int rc = mem_map_encode(m, &data, &len, e);
    if (rc < 0)
        return rc;
    rc = fsutil_write_atomic(path, data, len, 0644, mem__data_sync_on(), e);
    free(data);
    if (rc < 0)
        return rc;
    return mem__dir_sync(dir, e);
}

mem_map_t *mem_map_dup(const mem_map_t *m)
{
    mem_map_t *d = xmalloc(sizeof *d);
    *d = *m;
    d->ext = xmalloc((m->next ? m->next : 1) * sizeof *d->ext);
    if (m->next)
        memcpy(d->ext, m->ext, m->next * sizeof *d->ext);
    return d;
}

void mem_map_free(mem_map_t *m)
{
    if (!m)
        return;
    free(m->ext);
    free(m);
}

/* ---- lookup ---- */

size_t mem__map_find(const mem_map_t *m, uint64_t block)
{
    /* The last extent starting at or before block. */
    size_t lo = 0, hi = m->next;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->ext[mid].block <= block)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

uint32_t mem_map_lookup(const mem_map_t *m, uint64_t block, uint64_t *run)
{
    const mem_extent_t *x = &m->ext[mem__map_find(m, block)];
    if (block >= x->block + x->count) {
        /* Past the end (a caller bug): nothing to serve, and no underflowing run. */
        if (run)
            *run = 0;
        return MEM_ZERO;
    }
    if (run)
        *run = x->block + x->count - block;
    return x->layer;
}

uint64_t mem_map_blocks_in(const mem_map_t *m, uint32_t li)
{
    uint64_t n = 0;
    for (size_t i = 0; i < m->next; i++)
        if (m->ext[i].layer == li)
            n += m->ext[i].count;
    return n;
}
