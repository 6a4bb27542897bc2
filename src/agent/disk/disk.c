/* qcow2 overlays written by hand (see docs/interop/qcow2.txt in QEMU's sources for the format).
 *
 * An empty overlay needs four clusters: the header (with the backing file name and its format
 * extension), the refcount table, one refcount block and the L1 table, all zero-initialised
 * except for the header, one refcount table entry and the refcounts of those four clusters.
 * Doing it here instead of spawning `qemu-img create` keeps sandbox creation free of a process
 * start; the integration tests check every overlay with `qemu-img check`.
 */
#include "disk.h"

#include <endian.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "xalloc.h"

#define QCOW2_MAGIC           0x514649fbu /* "QFI\xfb" */
#define QCOW2_CLUSTER_BITS    16
#define QCOW2_CLUSTER         (1u << QCOW2_CLUSTER_BITS)
#define QCOW2_HEADER_LEN      112u
#define QCOW2_EXT_BACKING_FMT 0xe2792acau
#define QCOW2_REFCOUNT_ORDER  4u /* 16-bit refcounts */

static void put32(uint8_t *p, uint32_t v)
{
    v = htobe32(v);
    memcpy(p, &v, 4);
}

static void put64(uint8_t *p, uint64_t v)
{
    v = htobe64(v);
    memcpy(p, &v, 8);
}

static uint32_t get32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return be32toh(v);
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return be64toh(v);
}

/* Read the first bytes of a qcow2 image and check its magic. */
static int read_qcow2_header(const char *path, uint8_t *hdr, size_t len, int *fdout, err_t *e)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return err_errno(e, path);
    ssize_t n = pread(fd, hdr, len, 0);
    if (n < 0) {
        int rc = err_errno(e, path);
        close(fd);
        return rc;
    }
    if ((size_t)n < 104 || get32(hdr) != QCOW2_MAGIC || get32(hdr + 4) < 2) {
        close(fd);
        return err_set(e, -EINVAL, "%s: not a qcow2 image", path);
    }
    if (fdout)
        *fdout = fd;
    else
        close(fd);
    return 0;
}

int disk_virtual_size(const char *path, const char *format, uint64_t *out, err_t *e)
{
    if (!path || !format || !out)
        return err_set(e, -EINVAL, "disk: missing argument");
    if (strcmp(format, "raw") == 0) {
        struct stat st;
        if (stat(path, &st) < 0)
            return err_errno(e, path);
        if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
            return err_set(e, -EINVAL, "%s: not a regular file", path);
        *out = (uint64_t)st.st_size;
        return 0;
    }
    if (strcmp(format, "qcow2") == 0) {
        uint8_t hdr[112];
        int rc = read_qcow2_header(path, hdr, sizeof hdr, NULL, e);
        if (rc < 0)
            return rc;
        *out = get64(hdr + 24);
        return 0;
    }
    return err_set(e, -EINVAL, "disk: unknown image format '%s'", format);
}

int disk_qcow2_backing(const char *path, char *buf, size_t len, err_t *e)
{
    uint8_t hdr[112];
    int fd = -1;
    int rc = read_qcow2_header(path, hdr, sizeof hdr, &fd, e);
    if (rc < 0)
        return rc;
    uint64_t off = get64(hdr + 8);
    uint32_t n = get32(hdr + 16);
    if (off == 0 || n == 0) {
        rc = 0;
        goto out;
    }
    /* The format limits the name to 1023 bytes inside the first cluster. */
    if (n > 1023 || off > QCOW2_CLUSTER) {
        rc = err_set(e, -EINVAL, "%s: bad backing file reference", path);
        goto out;
    }
    char name[1024];
    ssize_t got = pread(fd, name, n, (off_t)off);
    if (got != (ssize_t)n) {
        rc = got < 0 ? err_errno(e, path) : err_set(e, -EINVAL, "%s: truncated header", path);
        goto out;
    }
    name[n] = '\0';
    if (memchr(name, '\0', n)) {
        rc = err_set(e, -EINVAL, "%s: bad backing file name", path);
        goto out;
    }
    int w;
    if (name[0] == '/') {
        w = snprintf(buf, len, "%s", name);
    } else {
        /* QEMU resolves a relative backing name against the overlay's own directory. */
        const char *slash = strrchr(path, '/');
        int dlen = slash ? (int)(slash - path) : 1;
        w = snprintf(buf, len, "%.*s/%s", dlen, slash ? path : ".", name);
    }
    if (w < 0 || (size_t)w >= len) {
        rc = err_set(e, -ENAMETOOLONG, "%s: backing file name too long", path);
        goto out;
    }
    rc = w;
out:
    if (fd >= 0)
        close(fd);
    return rc;
}

/* Write one metadata cluster at index idx. Kept out of line: GCC 12's -Wnonnull, fed by UBSan's
 * null checks on the buffer, otherwise reports a null pwrite argument that cannot happen. */
__attribute__((noinline)) static int write_cluster(int fd, const uint8_t *buf, uint64_t idx)
{
    ssize_t w = pwrite(fd, buf, QCOW2_CLUSTER, (off_t)(idx * QCOW2_CLUSTER));
    return w == (ssize_t)QCOW2_CLUSTER ? 0 : -1;
}

int disk_overlay_create(const char *base, const char *format, const char *overlay_path, err_t *e)
{
    int rc = 0;
    int fd = -1;
    bool created = false;
    uint8_t *cluster = NULL;
    char *abs = NULL;

    if (!base || !format || !overlay_path || !*overlay_path)
        return err_set(e, -EINVAL, "disk: missing argument");
    if (strcmp(format, "raw") != 0 && strcmp(format, "qcow2") != 0)
        return err_set(e, -EINVAL, "disk: unknown base format '%s'", format);

    abs = realpath(base, NULL);
    if (!abs) {
        rc = err_errno(e, base);
        goto out;
    }
    size_t blen = strlen(abs);
    size_t fmtlen = strlen(format);
    /* Header, the backing-format extension (padded to 8), the end marker, then the name: it all
     * has to fit in the first cluster, and the format caps the name at 1023 bytes. */
    size_t ext_len = 8 + ((fmtlen + 7) & ~(size_t)7);
    size_t name_off = QCOW2_HEADER_LEN + ext_len + 8;
    if (blen > 1023 || name_off + blen > QCOW2_CLUSTER) {
        rc = err_set(e, -EINVAL, "%s: base path too long for a qcow2 header", abs);
        goto out;
    }

    uint64_t size = 0;
    rc = disk_virtual_size(abs, format, &size, e);
    if (rc < 0)
        goto out;
    if (size == 0 || size % 512 != 0) {
        rc = err_set(e, -EINVAL, "%s: size %llu is not a positive multiple of 512", abs,
                     (unsigned long long)size);
        goto out;
    }

    /* One L2 table maps cluster/8 clusters; the L1 table has one entry per L2 table. */
    uint64_t l2_span = (uint64_t)QCOW2_CLUSTER * (QCOW2_CLUSTER / 8);
    uint64_t l1_size = (size + l2_span - 1) / l2_span;
    uint64_t l1_clusters = (l1_size * 8 + QCOW2_CLUSTER - 1) / QCOW2_CLUSTER;
    if (l1_clusters == 0)
        l1_clusters = 1;
    /* Clusters: 0 header, 1 refcount table, 2 refcount block, 3.. L1 table. One refcount block
     * holds cluster/2 refcounts, far more than the metadata of any sane disk. */
    uint64_t nclusters = 3 + l1_clusters;
    if (l1_size > UINT32_MAX / 2 || nclusters > QCOW2_CLUSTER / 2) {
        rc = err_set(e, -EINVAL, "%s: image too large", abs);
        goto out;
    }

    fd = open(overlay_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = err_errno(e, overlay_path);
        goto out;
    }
    created = true;

    cluster = xcalloc(1, QCOW2_CLUSTER);
    uint8_t *h = cluster;
    put32(h + 0, QCOW2_MAGIC);
    put32(h + 4, 3);                     /* version */
    put64(h + 8, name_off);              /* backing_file_offset */
    put32(h + 16, (uint32_t)blen);       /* backing_file_size */
    put32(h + 20, QCOW2_CLUSTER_BITS);   /* cluster_bits */
    put64(h + 24, size);                 /* size */
    put32(h + 32, 0);                    /* crypt_method */
    put32(h + 36, (uint32_t)l1_size);    /* l1_size */
    put64(h + 40, 3ull * QCOW2_CLUSTER); /* l1_table_offset */
    put64(h + 48, 1ull * QCOW2_CLUSTER); /* refcount_table_offset */
    put32(h + 56, 1);                    /* refcount_table_clusters */
    put32(h + 60, 0);                    /* nb_snapshots */
    put64(h + 64, 0);                    /* snapshots_offset */
    put64(h + 72, 0);                    /* incompatible_features */
    put64(h + 80, 0);                    /* compatible_features */
    put64(h + 88, 0);                    /* autoclear_features */
    put32(h + 96, QCOW2_REFCOUNT_ORDER); /* refcount_order */
    put32(h + 100, QCOW2_HEADER_LEN);    /* header_length */
    h[104] = 0;                          /* compression_type: zlib */
    uint8_t *x = h + QCOW2_HEADER_LEN;
    put32(x, QCOW2_EXT_BACKING_FMT);
    put32(x + 4, (uint32_t)fmtlen);
    memcpy(x + 8, format, fmtlen);
    x += ext_len;
    put32(x, 0); /* end of extensions */
    put32(x + 4, 0);
    memcpy(cluster + name_off, abs, blen);
    if (write_cluster(fd, cluster, 0) < 0)
        goto write_fail;

    memset(cluster, 0, QCOW2_CLUSTER);
    put64(cluster, 2ull * QCOW2_CLUSTER); /* refcount table entry 0 → block at cluster 2 */
    if (write_cluster(fd, cluster, 1) < 0)
        goto write_fail;

    memset(cluster, 0, QCOW2_CLUSTER);
    for (uint64_t i = 0; i < nclusters; i++) {
        cluster[2 * i] = 0;
        cluster[2 * i + 1] = 1; /* big-endian 16-bit refcount 1 */
    }
    if (write_cluster(fd, cluster, 2) < 0)
        goto write_fail;

    /* The L1 table is all zeroes: extend the file over it without writing. */
    if (ftruncate(fd, (off_t)(nclusters * QCOW2_CLUSTER)) < 0)
        goto write_fail;
    if (close(fd) < 0) {
        fd = -1;
        goto write_fail;
    }
    fd = -1;
    created = false;
    rc = 0;
    goto out;

write_fail:
    rc = err_errno(e, overlay_path);
out:
    if (fd >= 0)
        close(fd);
    if (created)
        unlink(overlay_path);
    free(cluster);
    free(abs);
    return rc;
}

int disk_remove(const char *path, err_t *e)
{
    if (!path)
        return 0;
    if (unlink(path) < 0 && errno != ENOENT)
        return err_errno(e, path);
    return 0;
}
