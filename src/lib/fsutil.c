#include "fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int fsutil_fsync(const char *path, err_t *e)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return err_errno(e, path);
    int rc = fsync(fd) < 0 ? err_errno(e, path) : 0;
    close(fd);
    return rc;
}

int fsutil_write_atomic(const char *path, const void *data, size_t len, mode_t mode, bool sync,
                        err_t *e)
{
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp)
        return err_set(e, -ENAMETOOLONG, "path too long: %s", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0)
        return err_errno(e, tmp);
    int rc = 0;
    const char *p = data;
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, p + off, len - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            rc = err_errno(e, tmp);
            goto fail;
        }
        off += (size_t)w;
    }
    if (fchmod(fd, mode) < 0 || (sync && fsync(fd) < 0)) {
        rc = err_errno(e, tmp);
        goto fail;
    }
    if (close(fd) < 0) {
        fd = -1;
        rc = err_errno(e, tmp);
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) < 0) {
        rc = err_errno(e, path);
        goto fail;
    }
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    return rc;
}

int fsutil_mkdir_p(const char *path, mode_t mode, err_t *e)
{
    char buf[4096];
    if ((size_t)snprintf(buf, sizeof buf, "%s", path) >= sizeof buf)
        return err_set(e, -ENAMETOOLONG, "path too long: %s", path);
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        if (mkdir(buf, mode) < 0 && errno != EEXIST)
            return err_errno(e, buf);
        *p = c;
        if (!c)
            break;
    }
    struct stat st;
    if (stat(path, &st) < 0)
        return err_errno(e, path);
    if (!S_ISDIR(st.st_mode))
        return err_set(e, -ENOTDIR, "%s is not a directory", path);
    return 0;
}

int fsutil_write_port_file(const char *path, int port, err_t *e)
{
    char s[16];
    int n = snprintf(s, sizeof s, "%d\n", port);
    return fsutil_write_atomic(path, s, (size_t)n, 0644, false, e);
}

int fsutil_copy_file(const char *from, const char *to, err_t *e)
{
    int in = open(from, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (in < 0)
        return err_errno(e, from);
    int rc = 0;
    int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    struct stat st;
    if (out < 0) {
        rc = err_errno(e, to);
        close(in);
        return rc;
    }
    if (fstat(in, &st) < 0 || !S_ISREG(st.st_mode)) {
        rc = err_set(e, -EINVAL, "%s is not a regular file", from);
        goto out;
    }
    if (ftruncate(out, st.st_size) < 0) {
        rc = err_errno(e, to);
        goto out;
    }
    /* Walk the data extents; the holes between them stay holes in the copy. */
    off_t pos = 0;
    while (pos < st.st_size) {
        off_t data = lseek(in, pos, SEEK_DATA);
        if (data < 0 && errno == ENXIO)
            break;
        if (data < 0) {
            rc = err_errno(e, from);
            goto out;
        }
        off_t hole = lseek(in, data, SEEK_HOLE);
        if (hole < 0) {
            rc = err_errno(e, from);
            goto out;
        }
        loff_t io = data, oo = data;
        while (io < hole) {
            ssize_t k = copy_file_range(in, &io, out, &oo, (size_t)(hole - io), 0);
            if (k < 0 && errno == EINTR)
                continue;
            if (k <= 0) {
                rc = k < 0 ? err_errno(e, to) : err_set(e, -EIO, "%s shrank while copied", from);
                goto out;
            }
        }
        pos = hole;
    }
out:
    close(in);
    if (close(out) < 0 && rc == 0)
        rc = err_errno(e, to);
    if (rc < 0)
        unlink(to);
    return rc;
}
