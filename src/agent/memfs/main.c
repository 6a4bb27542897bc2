/* wrenn-memfs: the memfs server (memfs.h) as a program of its own. The agent starts this one
 * when it is installed beside it: it links only what memfs needs, so it starts in a few
 * milliseconds where the agent binary (with its HTTP, network and TLS libraries) takes tens,
 * and that time is on the path of every resume and every clone. */
#include "memfs.h"

int main(int argc, char **argv)
{
    argv[0] = "memfs";
    return memfs_main(argc, argv);
}
