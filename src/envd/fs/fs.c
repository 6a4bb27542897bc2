/* filesystem.Filesystem service: method table and what every handler shares. */
#include "fs.h"
#include "internal.h"

#include <string.h>

const connect_method_t fs_methods[] = {
    {"/filesystem.Filesystem/Stat", fs__stat, NULL},
    {"/filesystem.Filesystem/MakeDir", fs__make_dir, NULL},
    {"/filesystem.Filesystem/Move", fs__move, NULL},
    {"/filesystem.Filesystem/ListDir", fs__list_dir, NULL},
    {"/filesystem.Filesystem/Remove", fs__remove, NULL},
    {"/filesystem.Filesystem/WatchDir", NULL, fs__watch_dir},
    {"/filesystem.Filesystem/CreateWatcher", fs__create_watcher, NULL},
    {"/filesystem.Filesystem/GetWatcherEvents", fs__get_watcher_events, NULL},
    {"/filesystem.Filesystem/RemoveWatcher", fs__remove_watcher, NULL},
};
const size_t fs_nmethods = sizeof fs_methods / sizeof fs_methods[0];

int fs__begin(connect_call_t *c, fs__ctx_t *x, err_t *e)
{
    memset(x, 0, sizeof *x);
    int r = envd_rpc_user(c->ud, c->req, &x->u, e);
    if (r < 0)
        return r;
    if ((r = envd_fs_become(&x->u, e)) < 0)
        return r;
    x->became = true;
    return 0;
}

void fs__end(fs__ctx_t *x)
{
    if (x->became)
        envd_fs_restore();
    x->became = false;
    envd_user_fini(&x->u);
}

int fs__errno(err_t *e, const char *what, const char *path)
{
    int err = errno ? errno : EIO;
    int code = -err;
    switch (err) {
    case EROFS:
        code = -EPERM;
        break;
    case EXDEV:
    case EBUSY:
    case ETXTBSY:
        code = -EINVAL;
        break;
    case EMLINK:
        code = -ENOSPC;
        break;
    case ENFILE:
        code = -EMFILE;
        break;
    default:
        break;
    }
    return err_set(e, code, "%s %s: %s", what, path, strerror(err));
}
