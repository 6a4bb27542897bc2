/* How the manager makes a sandbox's root disk: a copy-on-write qcow2 overlay over the
 * template's read-only base image, owned by the sandbox's own uid. */
#ifndef WRENN_AGENT_SANDBOX_DISK_GLUE_H
#define WRENN_AGENT_SANDBOX_DISK_GLUE_H

#include <sys/types.h>

#include "err.h"

/** Create overlay (qcow2, backing file base, raw) and give it to uid:gid, mode 0600. */
int sbx_disk_overlay(const char *base, const char *overlay, uid_t uid, gid_t gid, err_t *e);

#endif
