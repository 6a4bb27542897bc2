#include "fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
