/* PID 1 inside a VM: mount the basics, name the host, run envd as a child and reap zombies. */
#include "envd.h"
#include "log.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void mnt(const char *src, const char *dst, const char *type, unsigned long flags,
                const char *data)
{
    mkdir(dst, 0755);
    if (mount(src, dst, type, flags, data) < 0 && errno != EBUSY)
        log_warn("init.mount_failed", "path=%s err=%d", dst, errno);
}

_Noreturn void envd_init_main(int argc, char **argv)
{
    log_init("init", LOG_INFO);
    mnt("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mnt("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mnt("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    mnt("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666");
    mnt("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    mnt("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    mnt("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
    mnt("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    if (sethostname("sandbox", 7) < 0)
        log_warn("init.hostname_failed", "err=%d", errno);
    setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
    setenv("HOME", "/root", 1);

    /* Signals meant for the VM's init are forwarded to envd; SIGCHLD is waited for. */
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);

    for (;;) {
        pid_t child = fork();
        if (child == 0) {
            sigset_t none;
            sigemptyset(&none);
            sigprocmask(SIG_SETMASK, &none, NULL);
            setsid();
            /* The agent gets init's own arguments (from the kernel command line) plus --in-vm.
             * init is single-threaded, so the forked child may simply run the agent. */
            char *args[66];
            int n = 0;
            for (int i = 0; i < argc && n < 64; i++)
                args[n++] = argv[i];
            args[n++] = "--in-vm";
            args[n] = NULL;
            _exit(envd_main(n, args));
        }
        if (child < 0) {
            sleep(1);
            continue;
        }
        /* Reap every process that ends; restart envd if it dies. */
        for (;;) {
            siginfo_t si;
            int sig = sigwaitinfo(&all, &si);
            if (sig == SIGTERM || sig == SIGINT || sig == SIGPWR) {
                kill(child, SIGTERM);
                sync();
                reboot(RB_POWER_OFF);
            }
            if (sig != SIGCHLD)
                continue;
            bool envd_died = false;
            int st;
            pid_t p;
            while ((p = waitpid(-1, &st, WNOHANG)) > 0)
                if (p == child)
                    envd_died = true;
            if (envd_died) {
                log_error("init.envd_exited", "status=%d", st);
                sleep(1);
                break;
            }
        }
    }
}
