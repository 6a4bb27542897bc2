/* Facts about a process read from /proc: what supervising and re-adopting processes needs. */
#ifndef WRENN_PROCFS_H
#define WRENN_PROCFS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/** The process's start time (field 22 of /proc/<pid>/stat, clock ticks since boot), which
 * together with the pid identifies a process across pid reuse; 0 when it is gone, a zombie (it
 * exited and its parent has not reaped it yet) included. */
uint64_t procfs_start_time(pid_t pid);

/** Its command line, NUL-separated, NUL-terminated, into buf (size len > 0); returns the length,
 * or -1 when the process is gone. */
ssize_t procfs_cmdline(pid_t pid, char *buf, size_t len);

/** Its real uid, or -1 when it is gone. */
long procfs_uid(pid_t pid);

#endif
