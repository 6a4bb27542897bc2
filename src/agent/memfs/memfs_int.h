/* memfs internals shared by the server (server.c) and its control functions (ctl.c). */
#ifndef WRENN_AGENT_MEMFS_INT_H
#define WRENN_AGENT_MEMFS_INT_H

/* The readiness protocol on --ready-fd: MEMFS_READY once serving, or MEMFS_FAILED followed by
 * "<errno> <message>" when the server cannot start; the fd is closed either way. */
#define MEMFS_READY  'R'
#define MEMFS_FAILED 'E'

/* The server's process name (/proc/<pid>/comm), which memfs_stop checks a pid against. */
#define MEMFS_COMM "memfs"

/* statfs f_type of a FUSE mount (linux/magic.h FUSE_SUPER_MAGIC). */
#define MEMFS_FUSE_MAGIC 0x65735546

#endif
