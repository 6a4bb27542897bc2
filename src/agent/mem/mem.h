/* Guest memory as layers: the format of paused and template memory, and reading it back.
 *
 * Guest memory of `size` bytes is cut into blocks of `block_size` bytes (MEM_BLOCK_SIZE, the
 * host page size, so a dirty page is a dirty block). A snapshot's memory is a *map* (the header
 * file `mem.hdr`) plus the *layers* it names. The map tiles [0, size) with extents; each extent
 * says which layer holds its blocks' current content, or that they are all zero (MEM_ZERO).
 *
 * Layer files (`<dir>/<32 hex id>.layer`) are sparse and addressed by guest offset: block b of a
 * layer is at file offset b * block_size, so QEMU's own share=on RAM file, renamed, is already a
 * layer. After the data, at offset `size`, comes a 4 KiB trailer (magic, version, block size,
 * size, the layer's id, CRC-32), so a truncated, swapped or foreign layer file is refused when
 * opened. Layer files are immutable once sealed (mode 0444) and shared between snapshots by hard
 * links: a template, every snapshot of a sandbox made from it, and a running sandbox's run
 * directory each hold links to the layers they need, so deleting one of them never pulls a file
 * from under another, and disk space is freed when the last link goes.
 *
 * The binary layout of both files is in docs/memory-layers.md. Every reader checks magic,
 * version, sizes, CRC and the tiling before using anything, and returns -EBADMSG (with a message
 * saying what is wrong) for a corrupt or truncated file; nothing is ever mapped or served from a
 * file that failed these checks.
 *
 * Generations: a map made from a full RAM file is generation 0 with one layer. A pause of a
 * sandbox that runs over a map writes one new layer holding only the blocks written since its
 * resume (blocks that became all-zero are recorded as MEM_ZERO, not as "unchanged") and the new
 * map = the parent map overlaid with it, generation + 1. When the new map would have more than
 * max_layers layers (default 10), all layers are merged into one new full layer.
 *
 * Thread-safety: maps are plain values; a mem_reader_t may be used by many threads at once.
 */
#ifndef WRENN_AGENT_MEM_H
#define WRENN_AGENT_MEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define MEM_BLOCK_SIZE     4096u
#define MEM_MAX_LAYERS     64u /* hard limit of the format */
#define MEM_DEFAULT_LAYERS 10u /* merge when a map would need more layers than this */
#define MEM_ZERO           UINT32_MAX
#define MEM_TRAILER_SIZE   4096u
#define MEM_MAX_SIZE       (1ull << 40) /* 1 TiB: larger guest memory is refused as absurd */

typedef struct mem_id {
    uint8_t b[16];
} mem_id_t;

/** A run of blocks [block, block + count) held by layer index `layer` (or MEM_ZERO). */
typedef struct mem_extent {
    uint64_t block;
    uint64_t count;
    uint32_t layer;
} mem_extent_t;

typedef struct mem_map {
    uint32_t block_size; /* MEM_BLOCK_SIZE */
    uint64_t size;       /* guest memory bytes, a multiple of block_size */
    uint32_t generation; /* 0 for a map of one full layer */
    mem_id_t id;         /* this map's own id (new for every pause) */
    uint32_t nlayers;
    mem_id_t layers[MEM_MAX_LAYERS]; /* oldest first; extents refer to these by index */
    size_t next;                     /* number of extents in ext (at least 1) */
    mem_extent_t *ext;               /* malloc'd, owned by the map; sorted by block, tiling
                                      * [0, size / block_size), no two neighbours with the same layer, every
                                      * layer referenced by at least one extent */
} mem_map_t;

/** A fresh random id. */
void mem_id_new(mem_id_t *id);
/** The id as 32 lowercase hex digits plus NUL. */
void mem_id_hex(const mem_id_t *id, char out[33]);
/** Parse 32 hex digits; -EINVAL otherwise. */
int mem_id_parse(const char *hex, mem_id_t *out);

/** Path of layer id in dir: "<dir>/<hex>.layer". -ENAMETOOLONG when it does not fit. */
int mem_layer_path(const char *dir, const mem_id_t *id, char *buf, size_t n);

/** Read and fully validate a header file. -ENOENT when missing, -EBADMSG when corrupt or
 * truncated (e says what). */
int mem_map_load(const char *path, mem_map_t **out, err_t *e);
/** Write m to path atomically (temporary file, fsync, rename, fsync of the directory). */
int mem_map_save(const mem_map_t *m, const char *path, err_t *e);
/** Parse a header from memory (what mem_map_load does after reading; the fuzz target). */
int mem_map_decode(const void *data, size_t len, mem_map_t **out, err_t *e);
/** Encode m; *out is malloc'd. */
int mem_map_encode(const mem_map_t *m, void **out, size_t *len, err_t *e);
/** A deep copy of m (never NULL). */
mem_map_t *mem_map_dup(const mem_map_t *m);
/** Free m and its extents; NULL is fine. */
void mem_map_free(mem_map_t *m);

/** Check every invariant a header file is held to (block size, size, layer count, tiling,
 * normalised form, distinct layer ids): 0, or -EINVAL with a message naming the problem. */
int mem_map_check(const mem_map_t *m, err_t *e);
/** Bring a map whose extents tile [0, size) into normal form in place: merge neighbours with the
 * same layer, drop layers no extent references and renumber the rest (order kept). -EINVAL
 * (m unchanged) when the extents do not tile or an index is out of range. */
int mem_map_normalise(mem_map_t *m, err_t *e);

/** Which layer holds block (index into m->layers, or MEM_ZERO), and how many blocks from
 * block on (at least 1) stay in that same extent. block must be < size / block_size. */
uint32_t mem_map_lookup(const mem_map_t *m, uint64_t block, uint64_t *run);

/** Number of blocks held by layer index li (MEM_ZERO: the zero blocks). */
uint64_t mem_map_blocks_in(const mem_map_t *m, uint32_t li);

/** Cold pause: turn a sandbox's share=on RAM file (already written by QEMU, `size` bytes,
 * sparse) into the first layer of a new generation-0 map. The file is fsync'd and renamed into
 * dir (same file system) as a new layer, its trailer appended, made 0444 and root-owned. Holes
 * become MEM_ZERO; data extents (SEEK_DATA/SEEK_HOLE) become the layer's blocks (they are not
 * read, so this costs the fsync and no more). A file of holes only gives a map with no layers (the
 * file is removed). -EINVAL when the file is not a regular file of exactly size bytes, -EXDEV when
 * it is on another file system than dir (nothing is changed then); on a failure after the rename
 * the file is put back where it was. The caller saves the map (mem_map_save). */
int mem_commit_full(const char *ram_file, uint64_t size, const char *dir, mem_map_t **out,
                    err_t *e);

/** Pause of a sandbox that ran over `parent`: `upper` is a sparse file (guest-offset addressed,
 * `parent->size` bytes) holding every block written since the resume, and dirty a bitmap of
 * those blocks (bit b = byte b/8, bit b%8). Each dirty block is read: all-zero → MEM_ZERO (and
 * its hole punched), else it stays in the new layer. upper is fsync'd, renamed into dir as that
 * layer, sealed. Every layer of parent must already be in dir (mem_link_layers). When the result
 * would need more than max_layers layers (0: MEM_DEFAULT_LAYERS; more than MEM_MAX_LAYERS counts as
 * MEM_MAX_LAYERS), all are merged into one new full layer (as mem_flatten, the new blocks read
 * straight from upper, which is then removed) and *out is a generation-0 map of it; the layers no
 * longer referenced are NOT deleted here (mem_gc). Otherwise *out has generation + 1 and a new
 * id. No dirty block at all: *out is parent's content under a new id, generation + 1, no layer
 * file is made and upper is removed; the same when every dirty block is zero, except that the
 * map records the zeros. -EINVAL for an invalid parent or an upper larger than parent->size. */
int mem_commit_diff(const mem_map_t *parent, const char *upper, const uint8_t *dirty,
                    const char *dir, unsigned max_layers, mem_map_t **out, err_t *e);

/** As mem_commit_diff, for an upper file whose writer left exactly its all-zero dirty blocks as
 * holes and wrote every other dirty block: blocks are classified from the file's extents
 * (SEEK_DATA/SEEK_HOLE) instead of being read, so upper may have been written with O_DIRECT and
 * never be in the page cache. */
int mem_commit_diff_sparse(const mem_map_t *parent, const char *upper, const uint8_t *dirty,
                           const char *dir, unsigned max_layers, mem_map_t **out, err_t *e);

/** Whether mem_commit_full/mem_commit_diff/mem_flatten/mem_link_layers/mem_gc/mem_map_save
 * fsync what they write (layer data, the header, the directory's entries) before returning
 * (default: yes). Off, nothing is fsync'd: the files are complete for every reader at once (the
 * renames are atomic), but they reach the disk when the kernel writes them back or
 * mem_sync_layers() (and an fsync of the header) runs. A caller that turns this off must sync
 * afterwards and must treat a snapshot whose sync did not finish before a host crash as lost.
 * Any fsync waits for every write in flight on this machine (the journal commit flushes the
 * disk's cache), which is why a pause defers them all. Process-wide. */
void mem_set_data_sync(bool on);

/** fsync dir (its entries) and every layer file of m in it. */
int mem_sync_layers(const mem_map_t *m, const char *dir, err_t *e);

/** Write the content m describes (layers in dir) into one new full layer in dir; *out is a
 * generation-0 map of that layer alone. */
int mem_flatten(const mem_map_t *m, const char *dir, mem_map_t **out, err_t *e);

/** Hard-link every layer of m from `from` into `to` (those already there are checked to be the
 * same file or left as they are); falls back to a copy across file systems. */
int mem_link_layers(const mem_map_t *m, const char *from, const char *to, err_t *e);

/** Delete every *.layer file in dir that none of the n maps references (NULL entries are
 * skipped). Only regular files named exactly <32 lowercase hex>.layer are touched. Returns the
 * number removed. */
int mem_gc(const char *dir, const mem_map_t *const *keep, size_t n, err_t *e);

/** Bytes of disk the layer files of m in dir occupy (allocated blocks, sparse-aware), each file
 * counted once. */
int mem_disk_bytes(const mem_map_t *m, const char *dir, uint64_t *out, err_t *e);

/** Composed read access to a map's content. */
typedef struct mem_reader mem_reader_t;

/** Open every layer of m in dir and validate it (exists, size, trailer, id, block size): a
 * missing, truncated or foreign layer is -EBADMSG/-ENOENT and nothing is opened. Keeps its own
 * copy of m. */
int mem_reader_open(const mem_map_t *m, const char *dir, mem_reader_t **out, err_t *e);
/** Read len bytes at guest offset off (any alignment, within size): layers through pread,
 * zero extents as zeroes. Thread-safe. Returns 0, -EINVAL when [off, off+len) is not within size,
 * -EIO when a layer file shrank under the reader, or another -errno of pread. */
int mem_read(mem_reader_t *r, uint64_t off, void *buf, size_t len);
/** The map the reader serves. */
const mem_map_t *mem_reader_map(const mem_reader_t *r);
/** Whether [off, off+len) is entirely MEM_ZERO (lets a page server use a zero-page call). */
bool mem_is_zero(const mem_reader_t *r, uint64_t off, uint64_t len);
void mem_reader_free(mem_reader_t *r);

#endif
