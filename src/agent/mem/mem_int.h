/* Internals shared by the files of src/agent/mem (not for other modules): byte layouts, the
 * extent builder, the layer trailer, I/O helpers. The layouts are documented in
 * docs/memory-layers.md; the constants here are the one place they are written down in code. */
#ifndef WRENN_AGENT_MEM_INT_H
#define WRENN_AGENT_MEM_INT_H

#include "mem.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Header file (mem.hdr). */
#define MEM__HDR_MAGIC   "WRNMEMHD" /* 8 bytes, no NUL */
#define MEM__HDR_VERSION 1u
#define MEM__HDR_FIXED   64u /* fixed part before the layer ids */
#define MEM__HDR_LAYER   16u /* one layer id */
#define MEM__HDR_EXTENT  24u /* u64 block, u64 count, u32 layer, u32 reserved */
#define MEM__HDR_CRC     4u

/* Layer trailer, MEM_TRAILER_SIZE bytes at file offset `size`. */
#define MEM__TRL_MAGIC   "WRNMEMLY"
#define MEM__TRL_VERSION 1u
#define MEM__TRL_CRC_OFF (MEM_TRAILER_SIZE - 4u)

/* How much one read or write of bulk layer data moves (commit_diff, flatten, copies). */
#define MEM__IO_CHUNK (4u << 20)

/* A growing extent list; push() merges a run into the last extent when it continues it with the
 * same layer. */
typedef struct mem__extv {
    mem_extent_t *v;
    size_t n, cap;
} mem__extv_t;

void mem__extv_push(mem__extv_t *x, uint64_t block, uint64_t count, uint32_t layer);
void mem__extv_fini(mem__extv_t *x);

/** Fill m's extents and layers from ext (tiling [0, m->size / block_size), indices into ids[0..
 * nids) or MEM_ZERO; nids may exceed MEM_MAX_LAYERS) in normal form: neighbours merged, layers no
 * extent uses dropped, the rest renumbered in their order. m->size and block_size must be set;
 * m->ext is replaced. -E2BIG when more than MEM_MAX_LAYERS layers are referenced, -EINVAL when
 * ext does not tile or an index is out of range. */
int mem__map_build(mem_map_t *m, const mem_extent_t *ext, size_t n, const mem_id_t *ids,
                   uint32_t nids, err_t *e);

/** Index of the extent holding block (block < size / block_size). O(log n). */
size_t mem__map_find(const mem_map_t *m, uint64_t block);

/** mem_map_check with the error code to return (-EBADMSG for files, -EINVAL for callers). */
int mem__map_check(const mem_map_t *m, int code, err_t *e);

/** The trailer of layer id for a memory of size bytes. */
void mem__trailer_encode(uint8_t out[MEM_TRAILER_SIZE], uint64_t size, const mem_id_t *id);

/** Validate an open layer file: a regular file of exactly size + MEM_TRAILER_SIZE bytes whose
 * trailer is intact and names id. -EBADMSG (message names path and the problem). */
int mem__layer_check(int fd, const char *path, uint64_t size, const mem_id_t *id, err_t *e);

/** Append the trailer (ftruncate to size, pwrite the trailer at size), then make the file 0444
 * and root-owned. */
int mem__layer_seal(int fd, const char *path, uint64_t size, const mem_id_t *id, err_t *e);

/** pread/pwrite all of len bytes at off, retrying EINTR and short transfers. An unexpected end
 * of file is -EIO. */
int mem__pread_full(int fd, void *buf, size_t len, uint64_t off);
int mem__pwrite_full(int fd, const void *buf, size_t len, uint64_t off);

/** Whether n bytes at p are all zero. */
bool mem__is_zero(const void *p, size_t n);

/** fsutil_fsync of dir, or nothing while data sync is off (mem_set_data_sync). */
int mem__dir_sync(const char *dir, err_t *e);
/** Whether data sync is on (mem_set_data_sync). */
bool mem__data_sync_on(void);

/** CRC-32 (zlib, IEEE 802.3) of n bytes. */
uint32_t mem__crc32(const void *p, size_t n);

/* Little-endian field access. */
static inline void mem__put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline void mem__put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint32_t mem__get_u32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static inline uint64_t mem__get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* The reader, seen from layer.c (flatten reads through its open layers). */
struct mem_reader {
    mem_map_t *m;
    int fd[MEM_MAX_LAYERS];
};

#endif
