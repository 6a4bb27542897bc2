/* memfs server: the `wrenn-agent memfs` process serving one map's memory as <mount>/mem.
 *
 * Reads are composed per block: a block whose bit is set in the dirty bitmap comes from upper,
 * any other from the map's layers (mem_read). Writes go to upper; the first write of a block
 * that does not cover all of it copies the block's old content into upper first, so upper always
 * holds a whole, valid block for every set bit. A bit is set only after its data is in upper,
 * and the bitmap is a shared mapping of its file, so what is on disk stays consistent however
 * the process ends.
 */
#define FUSE_USE_VERSION 312

#include "memfs.h"
#include "memfs_int.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include "cfg.h"
#include "log.h"
#include "mem/mem.h"
#include "xalloc.h"

#define ROOT_INO 1
#define MEM_INO  2
#define MEM_NAME "mem"
/* The attributes never change behind the kernel's back: let it cache them for a day. */
#define ATTR_TIMEOUT 86400.0
/* Largest FUSE request we ask for (max_write; the kernel derives max_pages from it). */
#define MAX_REQ (1u << 20)

typedef struct memfs {
    mem_reader_t *reader;
    uint64_t size;   /* bytes of guest memory */
    uint64_t blocks; /* size / MEM_BLOCK_SIZE */
    int upper_fd;
    uint8_t *dirty; /* MAP_SHARED mapping of the bitmap file */
    size_t dirty_len;
    int bitmap_fd;
    uid_t uid;
    gid_t gid;
    struct timespec mtime; /* the map file's: the file's times are constant */
    int ready_fd;          /* written once from the init callback, then closed */
    /* First writes of blocks (which may read-modify-write them) are serialized: two first writes
     * of one block racing would let one's copy of the old content overwrite the other's data.
     * It is held across the pwrite into upper's page cache; writes of blocks already dirty (the
     * steady state) never take it. */
    pthread_mutex_t first_write;
    /* Counters, logged when the server exits. */
    atomic_uint_fast64_t n_read, b_read, n_write, b_write, n_rmw, n_fsync;
    atomic_uint_fast64_t max_read, max_write;
    atomic_uint_fast64_t ns_read, ns_write, ns_fsync; /* time spent in the handlers */
} memfs_t;

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- dirty bitmap ---------------------------------------------------------------------- */

static bool bit_get(const memfs_t *fs, uint64_t b)
{
    if (!fs->dirty) /* read-only: nothing is ever written */
        return false;
    return (__atomic_load_n(&fs->dirty[b >> 3], __ATOMIC_ACQUIRE) >> (b & 7)) & 1;
}

/* Set the bits of blocks [b0, b1]; the data is already in upper (release orders it before). */
static void bits_set(memfs_t *fs, uint64_t b0, uint64_t b1)
{
    for (uint64_t b = b0; b <= b1;) {
        if ((b & 7) == 0 && b + 7 <= b1) {
            __atomic_store_n(&fs->dirty[b >> 3], (uint8_t)0xff, __ATOMIC_RELEASE);
            b += 8;
            continue;
        }
        __atomic_fetch_or(&fs->dirty[b >> 3], (uint8_t)(1u << (b & 7)), __ATOMIC_RELEASE);
        b++;
    }
}

/* How many blocks from b on (below end) have dirty state `dirty`; whole bytes are skipped at
 * once. */
static uint64_t run_of(const memfs_t *fs, uint64_t b, uint64_t end, bool dirty)
{
    uint64_t i = b;
    uint8_t full = dirty ? 0xff : 0;
    if (!fs->dirty)
        return dirty ? 0 : end - b;
    while (i < end) {
        if ((i & 7) == 0 && i + 8 <= end &&
            __atomic_load_n(&fs->dirty[i >> 3], __ATOMIC_ACQUIRE) == full) {
            i += 8;
            continue;
        }
        if (bit_get(fs, i) != dirty)
            break;
        i++;
    }
    return i - b;
}

static bool all_dirty(const memfs_t *fs, uint64_t b0, uint64_t b1)
{
    return run_of(fs, b0, b1 + 1, true) == b1 - b0 + 1;
}

/* ---- I/O helpers ----------------------------------------------------------------------- */

static int pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0) { /* upper is never shorter than size; be safe anyway */
            memset(p, 0, len);
            return 0;
        }
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

static int pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

static void stat_max(atomic_uint_fast64_t *m, uint64_t v)
{
    uint_fast64_t cur = atomic_load_explicit(m, memory_order_relaxed);
    while (v > cur && !atomic_compare_exchange_weak_explicit(m, &cur, v, memory_order_relaxed,
                                                             memory_order_relaxed))
        ;
}

/* Make upper and the bitmap durable. */
static int sync_all(memfs_t *fs, bool data_only)
{
    int rc = 0;
    if (msync(fs->dirty, fs->dirty_len, MS_SYNC) < 0)
        rc = -errno;
    if ((data_only ? fdatasync(fs->upper_fd) : fsync(fs->upper_fd)) < 0 && rc == 0)
        rc = -errno;
    if (fsync(fs->bitmap_fd) < 0 && rc == 0)
        rc = -errno;
    return rc;
}

/* ---- FUSE operations ------------------------------------------------------------------- */

static void fill_attr(const memfs_t *fs, fuse_ino_t ino, struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    st->st_atim = fs->mtime;
    st->st_mtim = fs->mtime;
    st->st_ctim = fs->mtime;
    st->st_blksize = MEM_BLOCK_SIZE;
    if (ino == ROOT_INO) {
        st->st_mode = S_IFDIR | 0755;
        st->st_nlink = 2;
    } else {
        /* Read-only, the file may be shared by the VMs of several uids (each reaches it only
         * through its own private root); they must open it read-write (QEMU does), but every
         * write is refused here. */
        st->st_mode = S_IFREG | (fs->upper_fd < 0 ? 0666 : 0600);
        st->st_nlink = 1;
        st->st_uid = fs->uid;
        st->st_gid = fs->gid;
        st->st_size = (off_t)fs->size;
        st->st_blocks = (blkcnt_t)(fs->size / 512);
    }
}

static void op_init(void *ud, struct fuse_conn_info *c)
{
    memfs_t *fs = ud;
    /* The content only changes through us: no invalidation on attribute changes. */
    c->want &= ~(unsigned)FUSE_CAP_AUTO_INVAL_DATA;
    /* Writeback of a guest's dirty pages comes as large requests, many in flight. */
    c->max_write = MAX_REQ;
    c->max_background = 64;
    c->congestion_threshold = 48;
    log_info("memfs.init",
             "proto=%u.%u max_write=%u max_read=%u max_readahead=%u max_background=%u",
             c->proto_major, c->proto_minor, c->max_write, c->max_read, c->max_readahead,
             c->max_background);
    if (fs->ready_fd >= 0) {
        char r = MEMFS_READY;
        if (write(fs->ready_fd, &r, 1) != 1)
            log_warn("memfs.ready_failed", "err=\"%s\"", strerror(errno));
        xclose(&fs->ready_fd);
    }
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    memfs_t *fs = fuse_req_userdata(req);
    if (parent != ROOT_INO || strcmp(name, MEM_NAME) != 0) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    struct fuse_entry_param ep = {0};
    ep.ino = MEM_INO;
    ep.generation = 1;
    ep.attr_timeout = ATTR_TIMEOUT;
    ep.entry_timeout = ATTR_TIMEOUT;
    fill_attr(fs, MEM_INO, &ep.attr);
    fuse_reply_entry(req, &ep);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)fi;
    memfs_t *fs = fuse_req_userdata(req);
    if (ino != ROOT_INO && ino != MEM_INO) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    struct stat st;
    fill_attr(fs, ino, &st);
    fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

/* The file's size and attributes are fixed: only a no-op (size unchanged) is accepted. */
static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi)
{
    (void)fi;
    memfs_t *fs = fuse_req_userdata(req);
    int other = to_set & ~FUSE_SET_ATTR_SIZE;
    if (ino != MEM_INO || other != 0 ||
        ((to_set & FUSE_SET_ATTR_SIZE) && (uint64_t)attr->st_size != fs->size)) {
        log_info("memfs.refused", "op=setattr ino=%lu to_set=%#x", (unsigned long)ino, to_set);
        fuse_reply_err(req, EPERM);
        return;
    }
    struct stat st;
    fill_attr(fs, ino, &st);
    fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (ino != MEM_INO) {
        fuse_reply_err(req, ino == ROOT_INO ? EISDIR : ENOENT);
        return;
    }
    if (fi->flags & O_TRUNC) {
        log_info("memfs.refused", "op=open_trunc");
        fuse_reply_err(req, EPERM);
        return;
    }
    /* Nobody else changes the content: cached pages stay valid across opens. */
    fi->keep_cache = 1;
    /* Read-only: no shared mapping of the file (the kernel refuses MAP_SHARED with direct I/O),
     * so no opener can put a changed page into the page cache other VMs map privately; write()
     * comes here and is refused. */
    memfs_t *fs = fuse_req_userdata(req);
    if (fs->upper_fd < 0)
        fi->direct_io = 1;
    fuse_reply_open(req, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    (void)fi;
    memfs_t *fs = fuse_req_userdata(req);
    if (ino != MEM_INO) {
        fuse_reply_err(req, EISDIR);
        return;
    }
    if (off < 0 || (uint64_t)off >= fs->size || size == 0) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    uint64_t start = (uint64_t)off;
    size_t len = size;
    if (len > fs->size - start)
        len = (size_t)(fs->size - start);
    uint64_t t0 = mono_ns();
    char *buf = xmalloc(len);
    int rc = 0;
    uint64_t pos = start, end = start + len;
    while (pos < end && rc == 0) {
        /* One run of blocks that share a source. */
        uint64_t b = pos / MEM_BLOCK_SIZE, bend = (end - 1) / MEM_BLOCK_SIZE + 1;
        bool dirty = bit_get(fs, b);
        uint64_t nb = run_of(fs, b, bend, dirty);
        if (nb == 0) /* b's bit was set in between: either source is a valid content of b */
            nb = 1;
        uint64_t run_end = (b + nb) * MEM_BLOCK_SIZE;
        if (run_end > end)
            run_end = end;
        size_t n = (size_t)(run_end - pos);
        if (dirty)
            rc = pread_full(fs->upper_fd, buf + (pos - start), n, pos);
        else
            rc = mem_read(fs->reader, pos, buf + (pos - start), n);
        pos = run_end;
    }
    if (rc < 0) {
        log_error("memfs.read_failed", "off=%" PRIu64 " len=%zu err=\"%s\"", start, len,
                  strerror(-rc));
        fuse_reply_err(req, EIO);
    } else {
        fuse_reply_buf(req, buf, len);
        atomic_fetch_add_explicit(&fs->n_read, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&fs->b_read, len, memory_order_relaxed);
        stat_max(&fs->max_read, len);
    }
    free(buf);
    atomic_fetch_add_explicit(&fs->ns_read, mono_ns() - t0, memory_order_relaxed);
}

/* Copy block b's current content (from the map) into upper, before a write that covers only
 * part of it. */
static int copy_up(memfs_t *fs, uint64_t b)
{
    char blk[MEM_BLOCK_SIZE];
    int rc = mem_read(fs->reader, b * MEM_BLOCK_SIZE, blk, sizeof blk);
    if (rc == 0)
        rc = pwrite_full(fs->upper_fd, blk, sizeof blk, b * MEM_BLOCK_SIZE);
    atomic_fetch_add_explicit(&fs->n_rmw, 1, memory_order_relaxed);
    return rc;
}

static int do_write(memfs_t *fs, const char *buf, size_t len, uint64_t off)
{
    uint64_t b0 = off / MEM_BLOCK_SIZE, b1 = (off + len - 1) / MEM_BLOCK_SIZE;
    if (all_dirty(fs, b0, b1))
        return pwrite_full(fs->upper_fd, buf, len, off);
    pthread_mutex_lock(&fs->first_write);
    int rc = 0;
    if (off % MEM_BLOCK_SIZE != 0 || (b0 == b1 && (off + len) % MEM_BLOCK_SIZE != 0)) {
        if (!bit_get(fs, b0))
            rc = copy_up(fs, b0);
    }
    if (rc == 0 && b1 != b0 && (off + len) % MEM_BLOCK_SIZE != 0 && !bit_get(fs, b1))
        rc = copy_up(fs, b1);
    if (rc == 0)
        rc = pwrite_full(fs->upper_fd, buf, len, off);
    if (rc == 0)
        bits_set(fs, b0, b1);
    pthread_mutex_unlock(&fs->first_write);
    return rc;
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
    (void)fi;
    memfs_t *fs = fuse_req_userdata(req);
    if (ino != MEM_INO) {
        fuse_reply_err(req, EISDIR);
        return;
    }
    if (fs->upper_fd < 0) {
        log_info("memfs.refused", "op=write");
        fuse_reply_err(req, EROFS);
        return;
    }
    if (size == 0) {
        fuse_reply_write(req, 0);
        return;
    }
    if (off < 0 || (uint64_t)off >= fs->size) {
        fuse_reply_err(req, EFBIG); /* the file never grows */
        return;
    }
    size_t len = size;
    if (len > fs->size - (uint64_t)off)
        len = (size_t)(fs->size - (uint64_t)off); /* a short write up to the end */
    uint64_t t0 = mono_ns();
    int rc = do_write(fs, buf, len, (uint64_t)off);
    atomic_fetch_add_explicit(&fs->ns_write, mono_ns() - t0, memory_order_relaxed);
    if (rc < 0) {
        /* The kernel reports this to the writer (or to fsync, for writeback). */
        log_error("memfs.write_failed", "off=%" PRIu64 " len=%zu err=\"%s\"", (uint64_t)off, len,
                  strerror(-rc));
        fuse_reply_err(req, -rc == ENOSPC || -rc == EDQUOT ? -rc : EIO);
        return;
    }
    atomic_fetch_add_explicit(&fs->n_write, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&fs->b_write, len, memory_order_relaxed);
    stat_max(&fs->max_write, len);
    fuse_reply_write(req, len);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    (void)ino;
    (void)fi;
    memfs_t *fs = fuse_req_userdata(req);
    uint64_t t0 = mono_ns();
    int rc = fs->upper_fd < 0 ? 0 : sync_all(fs, datasync != 0);
    atomic_fetch_add_explicit(&fs->n_fsync, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&fs->ns_fsync, mono_ns() - t0, memory_order_relaxed);
    if (rc < 0)
        log_error("memfs.fsync_failed", "err=\"%s\"", strerror(-rc));
    fuse_reply_err(req, rc < 0 ? EIO : 0);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    op_fsync(req, ino, 0, fi);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    (void)fi;
    fuse_reply_err(req, 0);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    (void)fi;
    memfs_t *fs = fuse_req_userdata(req);
    if (ino != ROOT_INO) {
        fuse_reply_err(req, ENOTDIR);
        return;
    }
    static const struct {
        const char *name;
        fuse_ino_t ino;
    } ents[] = {{".", ROOT_INO}, {"..", ROOT_INO}, {MEM_NAME, MEM_INO}};
    char buf[512];
    size_t used = 0;
    for (off_t i = off; i >= 0 && i < 3; i++) {
        struct stat st;
        fill_attr(fs, ents[i].ino, &st);
        size_t need =
            fuse_add_direntry(req, buf + used, sizeof buf - used, ents[i].name, &st, i + 1);
        if (need > sizeof buf - used || used + need > size)
            break;
        used += need;
    }
    fuse_reply_buf(req, buf, used);
}

static void refuse(fuse_req_t req, const char *op, int err)
{
    log_info("memfs.refused", "op=%s", op);
    fuse_reply_err(req, err);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
    (void)parent, (void)name, (void)mode, (void)rdev;
    refuse(req, "mknod", EROFS);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    (void)parent, (void)name, (void)mode;
    refuse(req, "mkdir", EROFS);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi)
{
    (void)parent, (void)name, (void)mode, (void)fi;
    refuse(req, "create", EROFS);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
    (void)link, (void)parent, (void)name;
    refuse(req, "symlink", EROFS);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t parent, const char *name)
{
    (void)ino, (void)parent, (void)name;
    refuse(req, "link", EPERM);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    (void)parent, (void)name;
    refuse(req, "unlink", EPERM);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    (void)parent, (void)name;
    refuse(req, "rmdir", EPERM);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags)
{
    (void)parent, (void)name, (void)newparent, (void)newname, (void)flags;
    refuse(req, "rename", EPERM);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                        size_t size, int flags)
{
    (void)ino, (void)name, (void)value, (void)size, (void)flags;
    refuse(req, "setxattr", EPERM);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
    (void)ino, (void)name;
    refuse(req, "removexattr", EPERM);
}

/* Punching holes or growing would change the content or size behind the map's back. */
static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                         struct fuse_file_info *fi)
{
    (void)ino, (void)mode, (void)offset, (void)length, (void)fi;
    refuse(req, "fallocate", EOPNOTSUPP);
}

static const struct fuse_lowlevel_ops ops = {
    .init = op_init,
    .lookup = op_lookup,
    .getattr = op_getattr,
    .setattr = op_setattr,
    .open = op_open,
    .read = op_read,
    .write = op_write,
    .flush = op_flush,
    .fsync = op_fsync,
    .release = op_release,
    .readdir = op_readdir,
    .mknod = op_mknod,
    .mkdir = op_mkdir,
    .create = op_create,
    .symlink = op_symlink,
    .link = op_link,
    .unlink = op_unlink,
    .rmdir = op_rmdir,
    .rename = op_rename,
    .setxattr = op_setxattr,
    .removexattr = op_removexattr,
    .fallocate = op_fallocate,
};

/* ---- set-up ---------------------------------------------------------------------------- */

static void fuse_log_to_log(enum fuse_log_level level, const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    for (char *p = msg; *p; p++)
        if (*p == '"')
            *p = '\'';
    enum log_level l = level <= FUSE_LOG_ERR       ? LOG_ERROR
                       : level <= FUSE_LOG_WARNING ? LOG_WARN
                       : level <= FUSE_LOG_INFO    ? LOG_INFO
                                                   : LOG_DEBUG;
    log_kv(l, "memfs.libfuse", "text=\"%s\"", msg);
}

/* Open upper (created sparse, size bytes, when missing or empty). */
static int open_upper(const char *path, uint64_t size, err_t *e)
{
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return err_errno(e, "open upper");
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        int rc = S_ISREG(st.st_mode) ? err_errno(e, "stat upper")
                                     : err_set(e, -EINVAL, "upper is not a regular file");
        close(fd);
        return rc;
    }
    if (st.st_size == 0 && ftruncate(fd, (off_t)size) < 0) {
        int rc = err_errno(e, "size upper");
        close(fd);
        return rc;
    }
    if (st.st_size != 0 && (uint64_t)st.st_size != size) {
        close(fd);
        return err_set(e, -EINVAL, "upper is %jd bytes, the map %" PRIu64, (intmax_t)st.st_size,
                       size);
    }
    return fd;
}

/* Open and map the bitmap (created zeroed when missing or empty). */
static int open_bitmap(memfs_t *fs, const char *path, err_t *e)
{
    fs->dirty_len = (size_t)((fs->blocks + 7) / 8);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return err_errno(e, "open bitmap");
    int rc = 0;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        rc = err_errno(e, "stat bitmap");
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = err_set(e, -EINVAL, "bitmap is not a regular file");
        goto out;
    }
    if (st.st_size == 0 && ftruncate(fd, (off_t)fs->dirty_len) < 0) {
        rc = err_errno(e, "size bitmap");
        goto out;
    }
    if (st.st_size != 0 && (uint64_t)st.st_size != fs->dirty_len) {
        rc = err_set(e, -EINVAL, "bitmap is %jd bytes, %zu expected for %" PRIu64 " blocks",
                     (intmax_t)st.st_size, fs->dirty_len, fs->blocks);
        goto out;
    }
    void *p = mmap(NULL, fs->dirty_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        rc = err_errno(e, "map bitmap");
        goto out;
    }
    fs->dirty = p;
    fs->bitmap_fd = steal_fd(&fd);
out:
    xclose(&fd);
    return rc;
}

/* Lift the FUSE bdi's dirty-page limits (a 1% share of the dirty threshold and 'strictlimit'),
 * which would stall a guest dirtying much memory; kernels before 6.2 have no knob for them. */
static void tune_bdi(const char *mount)
{
    /* DONT_SYNC: the loop is not running yet, a GETATTR to ourselves would never be answered. */
    struct statx stx;
    if (statx(AT_FDCWD, mount, AT_STATX_DONT_SYNC | AT_NO_AUTOMOUNT, STATX_BASIC_STATS, &stx) < 0) {
        log_warn("memfs.bdi_untuned", "reason=statx err=\"%s\"", strerror(errno));
        return;
    }
    char bdi[32];
    snprintf(bdi, sizeof bdi, "%u:%u", stx.stx_dev_major, stx.stx_dev_minor);
    static const struct {
        const char *knob, *value;
    } knobs[] = {{"max_ratio", "100"}, {"strict_limit", "0"}};
    char set[128] = "";
    for (size_t i = 0; i < sizeof knobs / sizeof knobs[0]; i++) {
        char path[128];
        snprintf(path, sizeof path, "/sys/class/bdi/%s/%s", bdi, knobs[i].knob);
        int fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd < 0) {
            log_info("memfs.bdi_knob_missing", "bdi=%s knob=%s err=\"%s\"", bdi, knobs[i].knob,
                     strerror(errno));
            continue;
        }
        char old[16] = "?";
        ssize_t n = pread(fd, old, sizeof old - 1, 0);
        if (n > 0) {
            old[n] = '\0';
            old[strcspn(old, "\n")] = '\0';
        }
        n = write(fd, knobs[i].value, strlen(knobs[i].value));
        int err = errno;
        close(fd);
        if (n < 0) {
            log_warn("memfs.bdi_knob_failed", "bdi=%s knob=%s err=\"%s\"", bdi, knobs[i].knob,
                     strerror(err));
            continue;
        }
        size_t used = strlen(set);
        snprintf(set + used, sizeof set - used, "%s%s=%s->%s", used ? " " : "", knobs[i].knob, old,
                 knobs[i].value);
    }
    log_info("memfs.bdi", "bdi=%s %s", bdi, set[0] ? set : "set=none");
}

static void memfs_fini(memfs_t *fs)
{
    if (fs->dirty)
        munmap(fs->dirty, fs->dirty_len);
    xclose(&fs->bitmap_fd);
    xclose(&fs->upper_fd);
    mem_reader_free(fs->reader);
    pthread_mutex_destroy(&fs->first_write);
}

/* Everything that can fail before mounting: nothing is mounted when this fails. */
static int memfs_open(memfs_t *fs, const memfs_opts_t *o, err_t *e)
{
    mem_map_t *m = NULL;
    int rc = mem_map_load(o->map, &m, e);
    if (rc < 0) {
        err_wrap(e, "map %s", o->map);
        goto out;
    }
    if (m->block_size != MEM_BLOCK_SIZE) {
        rc = err_set(e, -EBADMSG, "map %s: block size %u, only %u is served", o->map, m->block_size,
                     MEM_BLOCK_SIZE);
        goto out;
    }
    struct stat st;
    if (stat(o->map, &st) == 0)
        fs->mtime = st.st_mtim;
    rc = mem_reader_open(m, o->layers, &fs->reader, e);
    if (rc < 0) {
        err_wrap(e, "layers of %s in %s", o->map, o->layers);
        goto out;
    }
    fs->size = m->size;
    fs->blocks = m->size / MEM_BLOCK_SIZE;
    if (fs->size == 0 || fs->size % MEM_BLOCK_SIZE != 0) {
        rc = err_set(e, -EBADMSG, "map %s: size %" PRIu64 " is not a positive multiple of %u",
                     o->map, fs->size, MEM_BLOCK_SIZE);
        goto out;
    }
    if (o->upper) {
        rc = open_upper(o->upper, fs->size, e);
        if (rc < 0) {
            err_wrap(e, "%s", o->upper);
            goto out;
        }
        fs->upper_fd = rc;
        rc = open_bitmap(fs, o->bitmap, e);
        if (rc < 0) {
            err_wrap(e, "%s", o->bitmap);
            goto out;
        }
    }
    if (stat(o->mount, &st) < 0) {
        rc = err_errno(e, "mount point");
        err_wrap(e, "%s", o->mount);
        goto out;
    }
    if (!S_ISDIR(st.st_mode)) {
        rc = err_set(e, -ENOTDIR, "mount point %s is not a directory", o->mount);
        goto out;
    }
    struct statfs sf;
    if (statfs(o->mount, &sf) == 0 && sf.f_type == MEMFS_FUSE_MAGIC) {
        rc = err_set(e, -EBUSY, "%s is already a FUSE mount", o->mount);
        goto out;
    }
    rc = 0;
out:
    mem_map_free(m);
    return rc;
}

/* Serve until unmounted. Returns 0, or a negative errno with e set when it could not start (or
 * the loop failed); nothing stays mounted when it returns. */
static int memfs_serve(memfs_opts_t *o, unsigned threads, err_t *e)
{
    /* The init callback takes the ready fd; if init never runs it goes back to the caller. */
    memfs_t fs = {.upper_fd = -1, .bitmap_fd = -1, .ready_fd = steal_fd(&o->ready_fd)};
    pthread_mutex_init(&fs.first_write, NULL);
    fs.uid = o->uid;
    fs.gid = o->gid;
    struct fuse_session *se = NULL;
    struct fuse_loop_config *lc = NULL;
    bool mounted = false;
    int rc = memfs_open(&fs, o, e);
    if (rc < 0)
        goto out;

    /* allow_other: QEMU runs as the VM's uid, not ours; root may set it without fuse.conf.
     * default_permissions: the kernel checks the mode bits (0600, the VM's uid). */
    char *fargv[] = {"memfs", "-o",
                     "allow_other,default_permissions,fsname=wrenn-memfs,subtype=wrenn-memfs",
                     NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
    se = fuse_session_new(&args, &ops, sizeof ops, &fs);
    fuse_opt_free_args(&args);
    if (!se) {
        rc = err_set(e, -EINVAL, "fuse_session_new failed (see libfuse's message above)");
        goto out;
    }
    if (fuse_session_mount(se, o->mount) != 0) {
        rc = err_set(e, -EIO, "mounting FUSE at %s failed (see libfuse's message above)", o->mount);
        goto out;
    }
    mounted = true;
    tune_bdi(o->mount);
    log_info("memfs.serving", "mount=%s map=%s size=%" PRIu64 " uid=%u gid=%u threads=%u pid=%d",
             o->mount, o->map, fs.size, (unsigned)o->uid, (unsigned)o->gid, threads, (int)getpid());

    /* As many workers as CPUs, all kept alive. More did not move more data here (2 CPUs,
     * 200 MiB of write-back: msync medians 0.85 s with 2 and with 16 workers), they only
     * preempt each other mid-copy; and a worker that exits takes its 1 MiB request buffer with
     * it, which the next one faults in again. */
    lc = fuse_loop_cfg_create();
    fuse_loop_cfg_set_max_threads(lc, threads);
    fuse_loop_cfg_set_idle_threads(lc, threads);
    int lrc = fuse_session_loop_mt(se, lc);
    if (lrc != 0) {
        rc = err_set(e, lrc < 0 ? lrc : -EIO, "FUSE loop ended with error %d", lrc);
        log_error("memfs.loop_failed", "rc=%d", lrc);
    }
out:
    if (mounted)
        fuse_session_unmount(se); /* a no-op when the kernel already unmounted it */
    if (se)
        fuse_session_destroy(se);
    if (lc)
        fuse_loop_cfg_destroy(lc);
    if (fs.dirty) {
        int src = sync_all(&fs, false);
        if (src < 0) {
            log_error("memfs.sync_failed", "err=\"%s\"", strerror(-src));
            if (rc == 0)
                rc = err_set(e, src, "final sync of upper and bitmap: %s", strerror(-src));
        }
    }
    if (mounted)
        log_info("memfs.stopped",
                 "reads=%" PRIuFAST64 " read_bytes=%" PRIuFAST64 " max_read=%" PRIuFAST64
                 " writes=%" PRIuFAST64 " write_bytes=%" PRIuFAST64 " max_write=%" PRIuFAST64
                 " rmw=%" PRIuFAST64 " fsyncs=%" PRIuFAST64 " read_ms=%" PRIuFAST64
                 " write_ms=%" PRIuFAST64 " fsync_ms=%" PRIuFAST64,
                 atomic_load(&fs.n_read), atomic_load(&fs.b_read), atomic_load(&fs.max_read),
                 atomic_load(&fs.n_write), atomic_load(&fs.b_write), atomic_load(&fs.max_write),
                 atomic_load(&fs.n_rmw), atomic_load(&fs.n_fsync),
                 atomic_load(&fs.ns_read) / 1000000, atomic_load(&fs.ns_write) / 1000000,
                 atomic_load(&fs.ns_fsync) / 1000000);
    /* If init never ran, the ready fd is still ours: the caller reports the failure on it. */
    o->ready_fd = steal_fd(&fs.ready_fd);
    memfs_fini(&fs);
    return rc;
}

/* ---- the `wrenn-agent memfs` command ---------------------------------------------------- */

/* Tell the spawner why we could not start ('E', errno, message), then close the fd. */
static void report_failure(int fd, const err_t *e, int rc)
{
    if (fd < 0)
        return;
    char msg[ERR_MSG_MAX + 32];
    int n = snprintf(msg, sizeof msg, "%c%d %s", MEMFS_FAILED, -rc, e->msg);
    if (n > 0) {
        size_t len = (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1;
        if (write(fd, msg, len) < 0)
            log_warn("memfs.report_failed", "err=\"%s\"", strerror(errno));
    }
}

int memfs_main(int argc, char **argv)
{
    const char *level = "info";
    long uid = -1, gid = -1, ready = -1, threads = 0;
    bool help = false;
    memfs_opts_t o = {.ready_fd = -1};
    const cfg_opt_t opts[] = {
        {"map", CFG_STR, &o.map, 0, 0, "the parent map (mem.hdr)"},
        {"layers", CFG_STR, &o.layers, 0, 0, "directory holding the map's layers"},
        {"upper", CFG_STR, &o.upper, 0, 0, "upper file (created when missing)"},
        {"bitmap", CFG_STR, &o.bitmap, 0, 0, "dirty bitmap file (created when missing)"},
        {"mount", CFG_STR, &o.mount, 0, 0, "empty directory to mount on"},
        {"uid", CFG_INT, &uid, 0, 4294967294L, "owner of <mount>/mem"},
        {"gid", CFG_INT, &gid, 0, 4294967294L, "group of <mount>/mem"},
        {"ready-fd", CFG_INT, &ready, 3, INT_MAX, "fd to report readiness on"},
        {"threads", CFG_INT, &threads, 1, 64, "FUSE worker threads (default: online CPUs, 2-16)"},
        {"log-level", CFG_STR, &level, 0, 0, "debug, info, warn or error"},
        {"help", CFG_BOOL, &help, 0, 0, "show this help"},
        {0},
    };
    err_t e = {0};
    int first = 0;
    log_init("memfs", LOG_INFO);
    /* Exec'd as /proc/self/exe, it would be called "exe": a name ps users and memfs_stop know. */
    prctl(PR_SET_NAME, MEMFS_COMM, 0, 0, 0);
    fuse_set_log_func(fuse_log_to_log);
    /* WRENN_MEMFS_* in the agent's environment reach us too (e.g. WRENN_MEMFS_LOG_LEVEL). */
    int rc = cfg_parse(opts, "MEMFS", argc, argv, &first, &e);
    if (rc == 0 && help) {
        cfg_usage(stdout, "wrenn-agent memfs [options]", opts, "MEMFS");
        return 0;
    }
    if (rc < 0) /* still tell the spawner why, if it gave us a ready fd */
        for (int i = 1; i + 1 < argc; i++)
            if (strcmp(argv[i], "--ready-fd") == 0)
                ready = strtol(argv[i + 1], NULL, 10);
    if (ready >= 3) {
        o.ready_fd = (int)ready;
        if (fcntl(o.ready_fd, F_SETFD, FD_CLOEXEC) < 0) {
            log_error("memfs.start_failed", "err=\"bad --ready-fd: %s\"", strerror(errno));
            return 1;
        }
    }
    if (rc == 0 && first < argc)
        rc = err_set(&e, -EINVAL, "unexpected argument %s", argv[first]);
    if (rc == 0 && (!o.map || !o.layers || !o.mount || uid < 0 || gid < 0 || !o.upper != !o.bitmap))
        rc = err_set(&e, -EINVAL,
                     "--map, --layers, --mount, --uid and --gid are required, --upper and --bitmap "
                     "go together");
    int lvl = rc == 0 ? log_parse_level(level) : 0;
    if (lvl < 0)
        rc = err_set(&e, -EINVAL, "bad --log-level %s", level);
    if (rc < 0)
        goto fail;
    log_init("memfs", (enum log_level)lvl);
    o.uid = (uid_t)uid;
    o.gid = (gid_t)gid;

    /* We serve a running VM's memory: only an unmount may stop us. The agent may die (SIGPIPE on
     * a log pipe it held) or forward a terminal's signals; ending here would crash the VM. */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* We write back a FUSE file's dirty pages: our own allocations must not wait on that. */
#ifdef PR_SET_IO_FLUSHER
    if (prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) < 0)
        log_info("memfs.io_flusher_failed", "err=\"%s\"",
                 strerror(errno)); /* no CAP_SYS_RESOURCE */
#endif
    /* Every VM that maps our file dies (SIGBUS) when we do: the OOM killer must pick one of
     * them, never us (our own memory is small; the page cache we serve is not charged to us). */
    int oom = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    ssize_t ow = oom >= 0 ? write(oom, "-1000", 5) : -1;
    if (ow != 5) /* not root, or a host that refuses it */
        log_info("memfs.oom_protect_failed", "err=\"%s\"",
                 ow >= 0 ? "short write" : strerror(errno));
    if (oom >= 0)
        close(oom);

    if (threads == 0) {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        threads = ncpu < 2 ? 2 : ncpu > 16 ? 16 : ncpu;
    }
    rc = memfs_serve(&o, (unsigned)threads, &e);
    if (rc < 0)
        goto fail;
    return 0;
fail:
    log_error("memfs.start_failed", "err=\"%s\"", e.msg[0] ? e.msg : strerror(-rc));
    report_failure(o.ready_fd, &e, rc);
    xclose(&o.ready_fd);
    return 1;
}
