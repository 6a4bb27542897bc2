/* I/O helpers and the layer trailer: full preads and pwrites, directory fsync, sealing and
 * checking a layer file. */
#include "mem.h"
#include "mem_int.h"

#include "fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>
#include <stdatomic.h>
#include <unistd.h>

int mem__pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t r = pread(fd, p, len, (off_t)off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            return -EIO; /* the file ended before the data did: it shrank under us */
        p += r;
        off += (uint64_t)r;
        len -= (size_t)r;
    }
    return 0;
}

int mem__pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t w = pwrite(fd, p, len, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (w == 0)
            return -EIO;
        p += w;
        off += (uint64_t)w;
        len -= (size_t)w;
    }
    return 0;
}

void mem__trailer_encode(uint8_t out[MEM_TRAILER_SIZE], uint64_t size, const mem_id_t *id)
{
    memset(out, 0, MEM_TRAILER_SIZE);
    memcpy(out, MEM__TRL_MAGIC, 8);
    mem__put_u32(out + 8, MEM__TRL_VERSION);
    mem__put_u32(out + 12, MEM_BLOCK_SIZE);
    mem__put_u64(out + 16, size);
    memcpy(out + 24, id->b, 16);
    mem__put_u32(out + MEM__TRL_CRC_OFF, mem__crc32(out, MEM__TRL_CRC_OFF));
}

int mem__layer_check(int fd, const char *path, uint64_t size, const mem_id_t *id, err_t *e)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return err_errno(e, path);
    if (!S_ISREG(st.st_mode))
        return err_set(e, -EBADMSG, "layer %s is not a regular file", path);
    if ((uint64_t)st.st_size != size + MEM_TRAILER_SIZE)
        return err_set(e, -EBADMSG,
                       "layer %s is %lld bytes, %" PRIu64 " expected (truncated or not a layer)",
                       path, (long long)st.st_size, size + MEM_TRAILER_SIZE);
    uint8_t t[MEM_TRAILER_SIZE];
    int rc = mem__pread_full(fd, t, sizeof t, size);
    if (rc < 0)
        return err_set(e, rc == -EIO ? -EBADMSG : rc, "layer %s: reading the trailer: %s", path,
                       strerror(-rc));
    if (memcmp(t, MEM__TRL_MAGIC, 8) != 0)
        return err_set(e, -EBADMSG, "layer %s has no layer trailer (bad magic)", path);
    uint32_t crc = mem__get_u32(t + MEM__TRL_CRC_OFF);
    if (crc != mem__crc32(t, MEM__TRL_CRC_OFF))
        return err_set(e, -EBADMSG, "layer %s: trailer CRC mismatch", path);
    if (mem__get_u32(t + 8) != MEM__TRL_VERSION)
        return err_set(e, -EBADMSG, "layer %s: unsupported trailer version %" PRIu32, path,
                       mem__get_u32(t + 8));
    if (mem__get_u32(t + 12) != MEM_BLOCK_SIZE)
        return err_set(e, -EBADMSG, "layer %s: block size %" PRIu32 " (must be %u)", path,
                       mem__get_u32(t + 12), MEM_BLOCK_SIZE);
    if (mem__get_u64(t + 16) != size)
        return err_set(e, -EBADMSG, "layer %s is for %" PRIu64 " bytes of memory, not %" PRIu64,
                       path, mem__get_u64(t + 16), size);
    if (memcmp(t + 24, id->b, 16) != 0) {
        char want[33], got[33];
        mem_id_t other;
        memcpy(other.b, t + 24, 16);
        mem_id_hex(id, want);
        mem_id_hex(&other, got);
        return err_set(e, -EBADMSG, "layer %s belongs to layer %s, not %s", path, got, want);
    }
    if (!mem__is_zero(t + 40, MEM__TRL_CRC_OFF - 40))
        return err_set(e, -EBADMSG, "layer %s: reserved trailer bytes are not zero", path);
    return 0;
}

int mem__layer_seal(int fd, const char *path, uint64_t size, const mem_id_t *id, err_t *e)
{
    uint8_t t[MEM_TRAILER_SIZE];
    mem__trailer_encode(t, size, id);
    if (ftruncate(fd, (off_t)size) < 0)
        return err_errno(e, path);
    int rc = mem__pwrite_full(fd, t, sizeof t, size);
    if (rc < 0)
        return err_set(e, rc, "%s: writing the trailer: %s", path, strerror(-rc));
    if (fchmod(fd, 0444) < 0)
        return err_errno(e, path);
    /* Layers are root's: a sandbox's uid must never be able to change memory another sandbox
     * (or the template) will run on. Only root can give a file away; tests run unprivileged
     * keep their own. */
    if (geteuid() == 0 && fchown(fd, 0, 0) < 0)
        return err_errno(e, path);
    return 0;
}

/* Whether commits fsync layer data themselves (mem_set_data_sync). */
static atomic_bool g_data_sync = true;

void mem_set_data_sync(bool on)
{
    atomic_store(&g_data_sync, on);
}

bool mem__data_sync_on(void)
{
    return atomic_load(&g_data_sync);
}

/* A directory's entries (renames, links, removals), under the same switch: any fsync makes
 * ext4 commit its journal and the disk flush its cache, which also waits for every other write
 * still in flight (hundreds of ms after a large pause). */
int mem__dir_sync(const char *dir, err_t *e)
{
    return atomic_load(&g_data_sync) ? fsutil_fsync(dir, e) : 0;
}
