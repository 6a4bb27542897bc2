/* The QEMU microvm driver: command line, confined spawn, QMP, supervision, adoption.
 *
 * Spawning (what Firecracker's jailer does, in one clone3):
 *   parent: validates the spec, creates the cgroups, binds the QMP socket, opens the files QEMU
 *     is handed, precomputes the argv and a mount plan (every string the child needs: the child
 *     of a multi-threaded process must not allocate), blocks all signals, clone3(CLONE_PIDFD |
 *     CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS).
 *   child (root until the end, only system calls): new session; joins the cgroups; setns() into
 *     the sandbox's netns; opens /dev/net/tun and attaches the tap; makes every mount private;
 *     mounts a tmpfs on VMM_JAIL_DIR and builds the private root in it (directories, bind mounts
 *     remounted read-only/noexec/nosuid/nodev, device nodes, symlinks); pivot_root into it and
 *     detaches the old root; remounts the new root read-only; moves its fds into place (0 null,
 *     1-2 vmm.log, 3 QMP listener, 4 tap) and closes every other; no_new_privs; drops to
 *     uid:gid with no groups; resets signal dispositions and mask; execve(QEMU).
 *   A CLOEXEC pipe reports a failing step (and its errno) back to the parent; EOF means exec.
 * The paths of the host (kernel, disks, run_dir files) are mirrored at the same paths inside the
 * private root, so the argv is the same as outside it and adoption can check it from /proc.
 */
#include "vmm.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/if_tun.h>
#include <linux/kvm.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <grp.h>
#include <time.h>
#include <unistd.h>

#include "../disk/disk.h"
#include "buf.h"
#include "cg.h"
#include "log.h"
#include "qmp.h"
#include "procfs.h"
#include "xalloc.h"

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
#endif

/* Where the private root is built, inside the child's own mount namespace only. */
#define VMM_JAIL_DIR     "/run/wrenn/vmm-root"
#define QEMU_DEFAULT_BIN "/usr/bin/qemu-system-x86_64"
/* TCG's translation cache; QEMU's default (1 GiB) would be charged to the VM's memory cgroup. */
#define QEMU_TB_MB 256u
/* QEMU's own memory besides guest RAM and the translation cache (heap, stacks, libraries). */
#define QEMU_OVERHEAD_MB 128u
/* CPU for QEMU's own threads on top of one CPU per vCPU: under TCG its main loop (device
 * emulation, console, disk) used about a fifth of the vCPU thread's time during a boot. */
#define QEMU_EMULATOR_PCT 50u
/* What any file QEMU writes may exceed the larger of the disk and the RAM file by. */
#define QEMU_FILE_SLACK_MB 256ull
/* Alignment of the guest RAM mapping (see build_argv): one huge page. */
#define QEMU_RAM_ALIGN_MB 2u
/* Block I/O worker threads; bounding them keeps the pids limit meaningful. */
#define QEMU_POOL_MAX        8u
#define QMP_START_TIMEOUT_MS 15000
#define QMP_CALL_TIMEOUT_MS  5000
/* Longest qcow2 backing chain followed (overlay, snapshot layers, base). */
#define VMM_MAX_CHAIN 8

/* fds as QEMU sees them. */
#define FD_QMP 3
#define FD_TAP 4

struct vmm_vm {
    char id[72];
    char run_dir[PATH_MAX];
    char qmp_path[PATH_MAX];
    pid_t pid;
    uint64_t start_time;
    int pidfd;
    bool child; /* ours to reap */
    qmp_t *qmp;
    cg_t cg;
    bool mem_private;        /* RAM mapped share=off (spec.mem_private) */
    char mem_path[PATH_MAX]; /* the RAM file */
    uint64_t mem_bytes;      /* its size */
};

/* What vmm_save() and vmm_ram_capture() need to know of the VM's RAM. */
static void vm_set_mem(vmm_vm_t *vm, const vmm_spec_t *spec)
{
    vm->mem_private = spec->mem_private;
    vm->mem_bytes = (uint64_t)spec->memory_mb << 20;
    if (spec->mem_path)
        snprintf(vm->mem_path, sizeof vm->mem_path, "%s", spec->mem_path);
    else
        snprintf(vm->mem_path, sizeof vm->mem_path, "%s/mem", spec->run_dir);
}

/* ---- host facts, probed once ---------------------------------------------------------------- */

static struct {
    const char *accel;
    unsigned tsc_khz;
} g_host;
static pthread_once_t g_host_once = PTHREAD_ONCE_INIT;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The TSC frequency the guest should assume, from the host's /proc/cpuinfo ("cpu MHz" of the
 * first CPU; the TSC runs at that rate on hosts with constant_tsc). 0 when unknown. */
static unsigned host_tsc_khz(void)
{
    FILE *f = fopen("/proc/cpuinfo", "re");
    if (!f)
        return 0;
    char line[256];
    unsigned khz = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "cpu MHz", 7) != 0)
            continue;
        const char *c = strchr(line, ':');
        unsigned mhz = 0, frac = 0, digits = 0;
        if (!c)
            break;
        for (c++; *c == ' ' || *c == '\t'; c++)
            ;
        for (; *c >= '0' && *c <= '9'; c++)
            mhz = mhz * 10 + (unsigned)(*c - '0');
        if (*c == '.')
            for (c++; *c >= '0' && *c <= '9' && digits < 3; c++, digits++)
                frac = frac * 10 + (unsigned)(*c - '0');
        for (; digits < 3; digits++)
            frac *= 10;
        if (mhz < 4000000)
            khz = mhz * 1000 + frac;
        break;
    }
    fclose(f);
    return khz;
}

/* Does a trivial guest really run under KVM, at native speed? A real-mode guest counts a
 * register down from 2^24 and writes 0x42 to port 0x10. Runs in a forked child, so a KVM that
 * hangs or crawls (nested virtualisation gone wrong) cannot hang the agent: 2 s budget. */
static void kvm_guest(void)
{
    static const uint8_t code[] = {
        0x66, 0xb9, 0x00, 0x00, 0x00, 0x01, /* mov ecx, 0x1000000 */
        0x66, 0x49,                         /* dec ecx */
        0x75, 0xfc,                         /* jnz -4 */
        0xb0, 0x42,                         /* mov al, 0x42 */
        0xe6, 0x10,                         /* out 0x10, al */
        0xf4,                               /* hlt */
    };
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0 || ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
        _exit(1);
    int vmfd = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vmfd < 0)
        _exit(2);
    uint8_t *mem = mmap(NULL, 0x1000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        _exit(3);
    memcpy(mem, code, sizeof code);
    struct kvm_userspace_memory_region region = {.slot = 0,
                                                 .guest_phys_addr = 0x1000,
                                                 .memory_size = 0x1000,
                                                 .userspace_addr = (uint64_t)(uintptr_t)mem};
    if (ioctl(vmfd, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        _exit(4);
    int vcpu = ioctl(vmfd, KVM_CREATE_VCPU, 0);
    int sz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (vcpu < 0 || sz <= 0)
        _exit(5);
    struct kvm_run *run = mmap(NULL, (size_t)sz, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        _exit(6);
    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
        _exit(7);
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
        _exit(8);
    struct kvm_regs regs = {.rip = 0x1000, .rflags = 0x2};
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
        _exit(9);
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0)
            _exit(10);
        if (run->exit_reason == KVM_EXIT_IO && run->io.port == 0x10 &&
            run->io.direction == KVM_EXIT_IO_OUT && *((uint8_t *)run + run->io.data_offset) == 0x42)
            _exit(0);
        if (run->exit_reason != KVM_EXIT_INTR)
            _exit(11);
    }
}

static bool kvm_usable(int64_t *ms)
{
    int64_t t0 = now_ms();
    *ms = 0;
    if (access("/dev/kvm", R_OK | W_OK) != 0)
        return false;
    pid_t pid = fork();
    if (pid < 0)
        return false;
    if (pid == 0)
        kvm_guest();
    int st = 0;
    bool done = false;
    while (now_ms() - t0 < 2000) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            done = true;
            break;
        }
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (!done) {
        kill(pid, SIGKILL);
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
        st = -1;
    }
    *ms = now_ms() - t0;
    return done && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static void host_init(void)
{
    int64_t ms = 0;
    bool kvm = kvm_usable(&ms);
    g_host.accel = kvm ? "kvm" : "tcg";
    g_host.tsc_khz = host_tsc_khz();
    log_info("vmm.accel", "accel=%s kvm_dev=%s probe_ms=%lld tsc_khz=%u", g_host.accel,
             access("/dev/kvm", F_OK) == 0 ? "yes" : "no", (long long)ms, g_host.tsc_khz);
}

const char *vmm_qemu_accel(void)
{
    pthread_once(&g_host_once, host_init);
    return g_host.accel;
}

/* ---- /proc helpers ------------------------------------------------------------------------- */

/* ---- spec checks and the command line ------------------------------------------------------ */

static bool good_id(const char *s)
{
    if (!s || !*s || strlen(s) > 64)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_'))
            return false;
    return true;
}

/* Absolute, normalised, printable, and not inside the jail's own mount point. */
static bool good_path(const char *p)
{
    if (!p || p[0] != '/' || strlen(p) >= PATH_MAX - sizeof VMM_JAIL_DIR - 16)
        return false;
    for (const char *c = p; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            return false;
    if (strstr(p, "//") || strstr(p, "/./") || strstr(p, "/../"))
        return false;
    size_t n = strlen(p);
    if ((n >= 2 && strcmp(p + n - 2, "/.") == 0) || (n >= 3 && strcmp(p + n - 3, "/..") == 0) ||
        (n > 1 && p[n - 1] == '/'))
        return false;
    size_t jl = strlen(VMM_JAIL_DIR);
    if (strncmp(p, VMM_JAIL_DIR, jl) == 0 && (p[jl] == '/' || p[jl] == '\0'))
        return false;
    return true;
}

/* Whether path, with every symlink resolved, lies strictly under dir (also resolved). */
static bool path_under(const char *path, const char *dir)
{
    char *rp = realpath(path, NULL), *rd = realpath(dir, NULL);
    bool ok = false;
    if (rp && rd) {
        size_t l = strlen(rd);
        ok = strncmp(rp, rd, l) == 0 && (rp[l] == '/' || (l == 1 && rd[0] == '/'));
    }
    free(rp);
    free(rd);
    return ok;
}

static bool good_mac(const char *m)
{
    if (!m || strlen(m) != 17)
        return false;
    for (int i = 0; i < 17; i++) {
        char c = m[i];
        bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
        if (i % 3 == 2 ? c != ':' : !hex)
            return false;
    }
    return true;
}

static int check_spec(const vmm_spec_t *s, err_t *e)
{
    if (!s)
        return err_set(e, -EINVAL, "vmm: no spec");
    if (!good_id(s->id))
        return err_set(e, -EINVAL, "vmm: bad sandbox id");
    const char *paths[] = {s->run_dir, s->kernel, s->initrd, s->rootfs};
    const char *names[] = {"run_dir", "kernel", "initrd", "rootfs"};
    for (int i = 0; i < 4; i++)
        if (!good_path(paths[i]))
            return err_set(e, -EINVAL, "vmm: %s must be an absolute normalised path", names[i]);
    if (s->mem_path && !good_path(s->mem_path))
        return err_set(e, -EINVAL, "vmm: mem_path must be an absolute normalised path");
    if (s->qemu_bin && !good_path(s->qemu_bin))
        return err_set(e, -EINVAL, "vmm: bad qemu binary path");
    if (!s->rootfs_format ||
        (strcmp(s->rootfs_format, "qcow2") != 0 && strcmp(s->rootfs_format, "raw") != 0))
        return err_set(e, -EINVAL, "vmm: rootfs_format must be qcow2 or raw");
    if (s->vcpus < 1 || s->vcpus > 64)
        return err_set(e, -EINVAL, "vmm: vcpus must be 1..64");
    if (s->memory_mb < 64 || s->memory_mb > 262144)
        return err_set(e, -EINVAL, "vmm: memory_mb must be 64..262144");
    if (s->tap && (!*s->tap || strlen(s->tap) >= IFNAMSIZ || strchr(s->tap, '/')))
        return err_set(e, -EINVAL, "vmm: bad tap name");
    if (s->tap && !good_mac(s->mac))
        return err_set(e, -EINVAL, "vmm: bad guest MAC");
    if (s->netns && (!good_id(s->netns)))
        return err_set(e, -EINVAL, "vmm: bad netns name");
    if (s->cgroup && !good_id(s->cgroup))
        return err_set(e, -EINVAL, "vmm: bad cgroup name");
    if (s->cmdline) {
        for (const char *c = s->cmdline; *c; c++)
            if ((unsigned char)*c < 0x20 || *c == 0x7f)
                return err_set(e, -EINVAL, "vmm: control character in kernel command line");
    }
    return 0;
}

/* QEMU option values use "," as separator; a literal comma is written ",,". */
static char *opt_escape(const char *s)
{
    size_t n = strlen(s), extra = 0;
    for (size_t i = 0; i < n; i++)
        extra += s[i] == ',';
    char *out = xmalloc(n + extra + 1), *w = out;
    for (size_t i = 0; i < n; i++) {
        *w++ = s[i];
        if (s[i] == ',')
            *w++ = ',';
    }
    *w = '\0';
    return out;
}

/* Whether the space-separated command line sets key (the part before '='; "ro" counts as "rw"). */
static bool cmdline_has(const char *cmdline, const char *key)
{
    size_t kl = strcspn(key, "=");
    for (const char *p = cmdline; p && *p;) {
        while (*p == ' ')
            p++;
        size_t tl = strcspn(p, " ");
        size_t keyl = strcspn(p, "= ");
        if (keyl > tl)
            keyl = tl;
        if ((keyl == kl && strncmp(p, key, kl) == 0) ||
            (kl == 2 && strncmp(key, "rw", 2) == 0 && keyl == 2 && strncmp(p, "ro", 2) == 0))
            return true;
        p += tl;
    }
    return false;
}

static char *build_cmdline(const char *extra, err_t *e, int *rc)
{
    static const char *const tuning[] = {
        "console=ttyS0",
        "root=/dev/vda",
        "rw",
        "quiet",
        "panic=-1",
        "cryptomgr.notests",
        "mitigations=off",
        "audit=0",
        "apparmor=0",
        "security=none",
        "no_timer_check",
        "tsc=reliable",
        "random.trust_cpu=on",
    };
    buf_t b;
    buf_init(&b);
    const char *x = extra ? extra : "";
    for (size_t i = 0; i < sizeof tuning / sizeof tuning[0]; i++)
        if (!cmdline_has(x, tuning[i]))
            buf_printf(&b, "%s%s", b.len ? " " : "", tuning[i]);
    /* Under TCG the guest sometimes fails to calibrate its TSC against the PIT (microvm has no
     * HPET or PM timer) and hangs: give it the host's frequency. lpj assumes HZ=250 (Debian). */
    if (g_host.tsc_khz && !cmdline_has(x, "tsc_early_khz"))
        buf_printf(&b, " tsc_early_khz=%u", g_host.tsc_khz);
    if (g_host.tsc_khz && !cmdline_has(x, "lpj"))
        buf_printf(&b, " lpj=%llu", (unsigned long long)g_host.tsc_khz * 4ull);
    if (*x)
        buf_printf(&b, " %s", x);
    if (b.len >= 2048) {
        buf_fini(&b);
        *rc = err_set(e, -EINVAL, "vmm: kernel command line too long");
        return NULL;
    }
    *rc = 0;
    return buf_steal(&b, NULL);
}

typedef struct strv {
    char **v;
    size_t n, cap;
} strv_t;

static void sv_add(strv_t *s, char *str)
{
    if (s->n + 2 > s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->v = xrealloc(s->v, s->cap * sizeof *s->v);
    }
    s->v[s->n++] = str;
    s->v[s->n] = NULL;
}

static void sv_addf(strv_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sv_addf(strv_t *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *str = NULL;
    if (vasprintf(&str, fmt, ap) < 0)
        abort();
    va_end(ap);
    sv_add(s, str);
}

static void sv_free(strv_t *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

static void build_argv(const vmm_spec_t *s, const char *exe, const char *cmdline, bool kvm,
                       strv_t *a)
{
    char *mem = NULL, *con = NULL, *root = NULL;
    {
        char *p = s->mem_path ? xstrdup(s->mem_path) : xasprintf("%s/mem", s->run_dir);
        mem = opt_escape(p);
        free(p);
        p = xasprintf("%s/console.log", s->run_dir);
        con = opt_escape(p);
        free(p);
        root = opt_escape(s->rootfs);
    }
    sv_addf(a, "%s", exe);
    sv_addf(a, "-name");
    sv_addf(a, "wrenn-%s", s->id);
    sv_addf(a, "-nodefaults");
    sv_addf(a, "-no-user-config");
    sv_addf(a, "-display");
    sv_addf(a, "none");
    sv_addf(a, "-no-reboot");
    sv_addf(a, "-sandbox");
    sv_addf(a, "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
    sv_addf(a, "-machine");
    sv_addf(a, "microvm,acpi=on,memory-backend=mem");
    sv_addf(a, "-accel");
    if (kvm)
        sv_addf(a, "kvm");
    else
        sv_addf(a, "tcg,tb-size=%u", QEMU_TB_MB);
    sv_addf(a, "-cpu");
    sv_addf(a, "%s", kvm ? "host" : "max");
    sv_addf(a, "-smp");
    sv_addf(a, "%u", s->vcpus);
    sv_addf(a, "-m");
    sv_addf(a, "%uM", s->memory_mb);
    sv_addf(a, "-object");
    /* align=2M: QEMU maps the file at an address aligned to this, so the host can back guest RAM
     * with 2 MiB pages (PMD mappings of large page-cache folios: ext4/xfs on Linux >= 6.16, tmpfs
     * mounted huge=advise). Without it the shared mapping is 4 KiB-aligned and gets 4 KiB pages
     * only, which under TCG cost ~20k extra page faults and 0.5-1 s of a 2 s boot (measured). */
    sv_addf(a, "memory-backend-file,id=mem,size=%uM,mem-path=%s,share=%s,align=%uM", s->memory_mb,
            mem, s->mem_private ? "off" : "on", QEMU_RAM_ALIGN_MB);
    sv_addf(a, "-object");
    sv_addf(a, "main-loop,id=main-loop,thread-pool-max=%u", QEMU_POOL_MAX);
    sv_addf(a, "-kernel");
    sv_addf(a, "%s", s->kernel);
    sv_addf(a, "-initrd");
    sv_addf(a, "%s", s->initrd);
    sv_addf(a, "-append");
    sv_addf(a, "%s", cmdline);
    sv_addf(a, "-chardev");
    sv_addf(a, "file,id=console,path=%s", con);
    sv_addf(a, "-serial");
    sv_addf(a, "chardev:console");
    sv_addf(a, "-drive");
    sv_addf(a, "id=root,file=%s,format=%s,if=none,cache=unsafe", root, s->rootfs_format);
    sv_addf(a, "-device");
    sv_addf(a, "virtio-blk-device,drive=root");
    if (s->tap) {
        sv_addf(a, "-netdev");
        sv_addf(a, "tap,id=net0,fd=%d", FD_TAP);
        sv_addf(a, "-device");
        sv_addf(a, "virtio-net-device,netdev=net0,mac=%s", s->mac);
    }
    if (s->incoming) {
        sv_addf(a, "-incoming");
        sv_addf(a, "defer");
    }
    sv_addf(a, "-chardev");
    sv_addf(a, "socket,id=qmp,fd=%d,server=on,wait=off", FD_QMP);
    sv_addf(a, "-mon");
    sv_addf(a, "chardev=qmp,mode=control");
    free(mem);
    free(con);
    free(root);
}

/* ---- the private root ---------------------------------------------------------------------- */

enum pkind { P_DIR, P_FILE, P_BIND, P_SYMLINK, P_DEV };

typedef struct pent {
    enum pkind kind;
    char *path;          /* absolute path under VMM_JAIL_DIR */
    char *src;           /* bind source or symlink target */
    unsigned long flags; /* remount flags of a bind */
    mode_t mode;
    dev_t dev;
    uid_t uid;
    gid_t gid;
} pent_t;

typedef struct plan {
    pent_t *v;
    size_t n, cap;
    char *ro_dirs[16]; /* host directories bound whole: nothing below them needs a bind */
    size_t nro;
} plan_t;

static pent_t *plan_add(plan_t *p, enum pkind kind, const char *host_path)
{
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 32;
        p->v = xrealloc(p->v, p->cap * sizeof *p->v);
    }
    pent_t *x = &p->v[p->n++];
    memset(x, 0, sizeof *x);
    x->kind = kind;
    x->path = xasprintf("%s%s", VMM_JAIL_DIR, host_path);
    x->mode = 0755;
    x->uid = (uid_t)-1;
    x->gid = (gid_t)-1;
    return x;
}

static bool plan_has(const plan_t *p, const char *host_path)
{
    size_t jl = strlen(VMM_JAIL_DIR);
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->v[i].path + jl, host_path) == 0)
            return true;
    return false;
}

/* Directories leading to host_path (not host_path itself). */
static void plan_parents(plan_t *p, const char *host_path)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", host_path);
    for (char *s = strchr(tmp + 1, '/'); s; s = strchr(s + 1, '/')) {
        *s = '\0';
        if (!plan_has(p, tmp))
            plan_add(p, P_DIR, tmp);
        *s = '/';
    }
}

static bool under_ro_dir(const plan_t *p, const char *host_path)
{
    for (size_t i = 0; i < p->nro; i++) {
        size_t l = strlen(p->ro_dirs[i]);
        if (strncmp(host_path, p->ro_dirs[i], l) == 0 && host_path[l] == '/')
            return true;
    }
    return false;
}

/* Bind host_path (a file or directory) at the same path inside the root. */
static int plan_bind(plan_t *p, const char *host_path, bool ro, bool exec, err_t *e)
{
    struct stat st;
    if (stat(host_path, &st) < 0)
        return err_errno(e, host_path);
    if (under_ro_dir(p, host_path))
        return 0;
    if (plan_has(p, host_path))
        return 0;
    plan_parents(p, host_path);
    bool dir = S_ISDIR(st.st_mode);
    pent_t *t = plan_add(p, dir ? P_DIR : P_FILE, host_path);
    t->mode = dir ? 0755 : 0644;
    pent_t *b = plan_add(p, P_BIND, host_path);
    b->src = xstrdup(host_path);
    b->flags = MS_NOSUID | MS_NODEV | (ro ? MS_RDONLY : 0) | (exec ? 0 : MS_NOEXEC);
    if (dir && ro && p->nro < sizeof p->ro_dirs / sizeof p->ro_dirs[0])
        p->ro_dirs[p->nro++] = xstrdup(host_path);
    return 0;
}

/* A system path: recreated as the same symlink, or bound read-only; skipped when missing. */
static int plan_system(plan_t *p, const char *host_path, bool exec, err_t *e)
{
    struct stat st;
    if (lstat(host_path, &st) < 0)
        return 0;
    if (S_ISLNK(st.st_mode)) {
        char target[PATH_MAX];
        ssize_t n = readlink(host_path, target, sizeof target - 1);
        if (n <= 0)
            return 0;
        target[n] = '\0';
        plan_parents(p, host_path);
        pent_t *l = plan_add(p, P_SYMLINK, host_path);
        l->src = xstrdup(target);
        return 0;
    }
    return plan_bind(p, host_path, true, exec, e);
}

static void plan_dev(plan_t *p, const char *host_path, unsigned maj, unsigned min, mode_t mode,
                     uid_t uid, gid_t gid)
{
    plan_parents(p, host_path);
    pent_t *d = plan_add(p, P_DEV, host_path);
    d->dev = makedev(maj, min);
    d->mode = mode;
    d->uid = uid;
    d->gid = gid;
}

static void plan_free(plan_t *p)
{
    for (size_t i = 0; i < p->n; i++) {
        free(p->v[i].path);
        free(p->v[i].src);
    }
    free(p->v);
    for (size_t i = 0; i < p->nro; i++)
        free(p->ro_dirs[i]);
    memset(p, 0, sizeof *p);
}

/* Multiarch library directories QEMU's libraries and modules live in (Debian: the first). */
static const char *const lib_dirs[] = {"/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64", "/lib",
                                       "/usr/local/lib/x86_64-linux-gnu"};
/* Firmware (microvm's qboot) and data QEMU looks up next to its binary. */
static const char *const data_dirs[] = {"/usr/share/qemu", "/usr/share/seabios",
                                        "/usr/lib/ipxe/qemu"};

static int build_plan(const vmm_spec_t *s, const char *exe, char (*chain)[PATH_MAX], int nchain,
                      bool kvm, plan_t *p, err_t *e)
{
    int rc = 0;
    for (size_t i = 0; i < sizeof lib_dirs / sizeof lib_dirs[0] && rc == 0; i++)
        rc = plan_system(p, lib_dirs[i], true, e);
    for (size_t i = 0; i < sizeof data_dirs / sizeof data_dirs[0] && rc == 0; i++)
        rc = plan_system(p, data_dirs[i], false, e);
    if (rc == 0)
        rc = plan_bind(p, exe, true, true, e);
    if (rc == 0)
        rc = plan_bind(p, s->kernel, true, false, e);
    if (rc == 0)
        rc = plan_bind(p, s->initrd, true, false, e);
    for (int i = 0; i < nchain && rc == 0; i++)
        rc = plan_bind(p, chain[i], true, false, e);
    if (rc == 0)
        rc = plan_bind(p, s->rootfs, false, false, e);
    if (rc < 0)
        return rc;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/console.log", s->run_dir);
    if ((rc = plan_bind(p, path, false, false, e)) < 0)
        return rc;
    if (s->mem_path)
        snprintf(path, sizeof path, "%s", s->mem_path);
    else
        snprintf(path, sizeof path, "%s/mem", s->run_dir);
    if ((rc = plan_bind(p, path, false, false, e)) < 0)
        return rc;
    plan_dev(p, "/dev/null", 1, 3, 0666, 0, 0);
    plan_dev(p, "/dev/zero", 1, 5, 0666, 0, 0);
    plan_dev(p, "/dev/urandom", 1, 9, 0666, 0, 0);
    if (kvm)
        plan_dev(p, "/dev/kvm", 10, 232, 0600, s->uid, s->gid);
    return 0;
}

/* ---- the child ----------------------------------------------------------------------------- */

enum child_step {
    ST_SETSID = 1,
    ST_CGROUP,
    ST_SETNS,
    ST_TUN_OPEN,
    ST_TUNSETIFF,
    ST_PRIVATE,
    ST_TMPFS,
    ST_MKDIR,
    ST_MKFILE,
    ST_BIND,
    ST_REMOUNT,
    ST_SYMLINK,
    ST_MKNOD,
    ST_CHOWN,
    ST_PIVOT,
    ST_UMOUNT_OLD,
    ST_RO_ROOT,
    ST_FDS,
    ST_NNP,
    ST_SETGROUPS,
    ST_SETGID,
    ST_SETUID,
    ST_EXEC,
    ST_NO_TAP,
    ST_RLIMIT,
};

static const char *step_name(int st)
{
    static const char *const names[] = {
        "?",          "setsid",          "join cgroup",    "enter netns", "open /dev/net/tun",
        "attach tap", "private mounts",  "mount tmpfs",    "mkdir",       "create mount point",
        "bind mount", "remount bind",    "symlink",        "mknod",       "chown device",
        "pivot_root", "detach old root", "read-only root", "arrange fds", "no_new_privs",
        "setgroups",  "setgid",          "setuid",         "execve",      "find tap",
        "setrlimit",
    };
    return st > 0 && st < (int)(sizeof names / sizeof names[0]) ? names[st] : "?";
}

typedef struct child_ctx {
    int errfd;
    int netnsfd;
    int nullfd;
    int logfd;
    int qmpfd;
    int cgfds[CG_MAX_DIRS];
    int ncg;
    const char *tap;
    const plan_t *plan;
    uid_t uid;
    gid_t gid;
    uint64_t fsize; /* RLIMIT_FSIZE */
    const char *exe;
    char **argv;
    char **envp;
} child_ctx_t;

struct child_report {
    int step;
    int err;
};

static void __attribute__((noreturn)) child_fail(const child_ctx_t *c, int step)
{
    struct child_report r = {step, errno};
    ssize_t ign = write(c->errfd, &r, sizeof r);
    (void)ign;
    _exit(127);
}

static int move_high(int fd)
{
    return fd < 0 ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 64);
}

static void __attribute__((noreturn)) child_run(child_ctx_t *c)
{
    if (setsid() < 0)
        child_fail(c, ST_SETSID);
    for (int i = 0; i < c->ncg; i++)
        if (write(c->cgfds[i], "0", 1) != 1)
            child_fail(c, ST_CGROUP);
    if (c->netnsfd >= 0 && setns(c->netnsfd, CLONE_NEWNET) < 0)
        child_fail(c, ST_SETNS);
    int tapfd = -1;
    if (c->tap) {
        struct ifreq ifr;
        memset(&ifr, 0, sizeof ifr);
        size_t tl = strlen(c->tap);
        memcpy(ifr.ifr_name, c->tap, tl < IFNAMSIZ ? tl : IFNAMSIZ - 1);
        /* TUNSETIFF would create a missing tap: attach only to the one the caller made. */
        int sfd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (sfd < 0 || ioctl(sfd, SIOCGIFINDEX, &ifr) < 0)
            child_fail(c, ST_NO_TAP);
        close(sfd);
        tapfd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
        if (tapfd < 0)
            child_fail(c, ST_TUN_OPEN);
        memset(&ifr, 0, sizeof ifr);
        memcpy(ifr.ifr_name, c->tap, tl < IFNAMSIZ ? tl : IFNAMSIZ - 1);
        ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        if (ioctl(tapfd, TUNSETIFF, &ifr) < 0)
            child_fail(c, ST_TUNSETIFF);
    }

    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        child_fail(c, ST_PRIVATE);
    if (mount("wrenn-vmm", VMM_JAIL_DIR, "tmpfs", MS_NOSUID, "mode=0755,size=1m,nr_inodes=1024") <
        0)
        child_fail(c, ST_TMPFS);
    for (size_t i = 0; i < c->plan->n; i++) {
        const pent_t *x = &c->plan->v[i];
        switch (x->kind) {
        case P_DIR:
            if (mkdir(x->path, x->mode) < 0 && errno != EEXIST)
                child_fail(c, ST_MKDIR);
            break;
        case P_FILE: {
            int fd = open(x->path, O_WRONLY | O_CREAT | O_CLOEXEC, x->mode);
            if (fd < 0)
                child_fail(c, ST_MKFILE);
            close(fd);
            break;
        }
        case P_BIND:
            if (mount(x->src, x->path, NULL, MS_BIND, NULL) < 0)
                child_fail(c, ST_BIND);
            if (mount(NULL, x->path, NULL, MS_REMOUNT | MS_BIND | x->flags, NULL) < 0)
                child_fail(c, ST_REMOUNT);
            break;
        case P_SYMLINK:
            if (symlink(x->src, x->path) < 0)
                child_fail(c, ST_SYMLINK);
            break;
        case P_DEV:
            if (mknod(x->path, S_IFCHR | (x->mode & 0777), x->dev) < 0)
                child_fail(c, ST_MKNOD);
            /* mknod applies the umask: set the mode and owner explicitly. */
            if (chmod(x->path, x->mode & 0777) < 0 || chown(x->path, x->uid, x->gid) < 0)
                child_fail(c, ST_CHOWN);
            break;
        }
    }
    if (chdir(VMM_JAIL_DIR) < 0 || syscall(SYS_pivot_root, ".", ".") < 0)
        child_fail(c, ST_PIVOT);
    if (umount2(".", MNT_DETACH) < 0 || chdir("/") < 0)
        child_fail(c, ST_UMOUNT_OLD);
    if (mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID, NULL) < 0)
        child_fail(c, ST_RO_ROOT);

    /* Move what QEMU gets out of the way, then into its place; close everything else. */
    int hnull = move_high(c->nullfd), hlog = move_high(c->logfd), hqmp = move_high(c->qmpfd);
    int htap = move_high(tapfd), herr = move_high(c->errfd);
    if (hnull < 0 || hlog < 0 || hqmp < 0 || herr < 0 || (tapfd >= 0 && htap < 0))
        child_fail(c, ST_FDS);
    c->errfd = herr;
    if (dup2(hnull, 0) < 0 || dup2(hlog, 1) < 0 || dup2(hlog, 2) < 0 || dup2(hqmp, FD_QMP) < 0 ||
        (htap >= 0 && dup2(htap, FD_TAP) < 0))
        child_fail(c, ST_FDS);
    int first = htap >= 0 ? FD_TAP + 1 : FD_QMP + 1;
    if (syscall(SYS_close_range, first, herr - 1, 0) < 0 ||
        syscall(SYS_close_range, herr + 1, ~0U, 0) < 0)
        child_fail(c, ST_FDS);

    /* Bound what QEMU can write to any one file (the console log grows with whatever the guest
     * prints): the largest file it legitimately writes is the disk or the RAM file. No core
     * dumps of guest memory. Ignoring SIGXFSZ makes an oversized write fail with EFBIG. */
    struct rlimit fl = {c->fsize, c->fsize}, core = {0, 0};
    if (setrlimit(RLIMIT_FSIZE, &fl) < 0 || setrlimit(RLIMIT_CORE, &core) < 0)
        child_fail(c, ST_RLIMIT);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        child_fail(c, ST_NNP);
    /* Raw system calls, not glibc's wrappers: those change the credentials of every thread
     * glibc knows of, and this child of a raw clone3 still carries the parent's thread list; a
     * thread that was being created at the moment of the clone is waited for forever (seen:
     * a restore spawning QEMU while another request started a thread hung here). */
    if (c->uid != 0) {
        if (syscall(SYS_setgroups, 0, NULL) < 0)
            child_fail(c, ST_SETGROUPS);
        if (syscall(SYS_setresgid, c->gid, c->gid, c->gid) < 0)
            child_fail(c, ST_SETGID);
        if (syscall(SYS_setresuid, c->uid, c->uid, c->uid) < 0)
            child_fail(c, ST_SETUID);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    for (int sig = 1; sig < NSIG; sig++) {
        sa.sa_handler = sig == SIGXFSZ ? SIG_IGN : SIG_DFL;
        sigaction(sig, &sa, NULL); /* fails harmlessly for SIGKILL, SIGSTOP and libc's own */
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(c->exe, c->argv, c->envp);
    child_fail(c, ST_EXEC);
}

struct vmm_clone_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
};

/* clone3 with fork semantics (no new stack): returns the pid in the parent, 0 in the child. */
static pid_t spawn_clone3(int *pidfd)
{
    struct vmm_clone_args ca;
    memset(&ca, 0, sizeof ca);
    ca.flags = CLONE_PIDFD | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS;
    ca.pidfd = (uint64_t)(uintptr_t)pidfd;
    ca.exit_signal = SIGCHLD;
    return (pid_t)syscall(SYS_clone3, &ca, sizeof ca);
}

/* ---- lifecycle ----------------------------------------------------------------------------- */

static int pidfd_signal(int pidfd, int sig)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

/* Wait up to ms for the process behind pidfd to exit; true when it has. */
static bool wait_exit(int pidfd, int ms)
{
    struct pollfd p = {.fd = pidfd, .events = POLLIN};
    int64_t deadline = now_ms() + ms;
    for (;;) {
        int left = (int)(deadline - now_ms());
        int r = poll(&p, 1, left < 0 ? 0 : left);
        if (r > 0)
            return true;
        if (r == 0)
            return false;
        if (errno != EINTR)
            return false;
    }
}

/* Reap our child (no-op for an adopted process); returns the wait status or -1. */
static int reap(vmm_vm_t *vm)
{
    if (!vm->child || vm->pidfd < 0)
        return -1;
    siginfo_t si;
    memset(&si, 0, sizeof si);
    while (waitid((idtype_t)P_PIDFD, (id_t)vm->pidfd, &si, WEXITED) < 0) {
        if (errno != EINTR)
            return -1;
    }
    vm->child = false;
    return si.si_code == CLD_EXITED ? si.si_status : 128 + si.si_status;
}

static void vm_free(vmm_vm_t *vm)
{
    if (!vm)
        return;
    qmp_free(vm->qmp);
    xclose(&vm->pidfd);
    free(vm);
}

/* The last non-empty line of run_dir/vmm.log (QEMU's error, if it printed one). */
static void log_tail(const char *run_dir, char *out, size_t len)
{
    char path[PATH_MAX], buf[1024];
    out[0] = '\0';
    snprintf(path, sizeof path, "%s/vmm.log", run_dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    off_t end = lseek(fd, 0, SEEK_END);
    off_t from = end > (off_t)sizeof buf - 1 ? end - (off_t)sizeof buf + 1 : 0;
    ssize_t n = pread(fd, buf, sizeof buf - 1, from);
    close(fd);
    if (n <= 0)
        return;
    buf[n] = '\0';
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = '\0';
    const char *line = strrchr(buf, '\n');
    line = line ? line + 1 : buf;
    size_t l = strnlen(line, len - 1);
    memcpy(out, line, l);
    out[l] = '\0';
}

/* Create (truncate) a file QEMU writes, owned by its uid. */
static int make_owned_file(const char *path, uid_t uid, gid_t gid, err_t *e)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return err_errno(e, path);
    int rc = 0;
    if (fchown(fd, uid, gid) < 0)
        rc = err_errno(e, path);
    close(fd);
    return rc;
}

static int listen_qmp(const char *path, err_t *e)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path)
        return err_set(e, -ENAMETOOLONG, "vmm: QMP socket path too long");
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return err_errno(e, "vmm: socket");
    unlink(path);
    /* Only the agent (root) may connect. (Connecting needs write permission on the socket, which
     * the umask already denies to others between bind and chmod; umask itself is per process
     * and not ours to change.) */
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || chmod(path, 0600) < 0 ||
        listen(fd, 4) < 0) {
        int rc = err_errno(e, path);
        close(fd);
        unlink(path);
        return rc;
    }
    return fd;
}

int vmm_qemu_start(const vmm_spec_t *spec, vmm_vm_t **out, err_t *e)
{
    int64_t t0 = now_ms();
    if (out)
        *out = NULL;
    int rc = check_spec(spec, e);
    if (rc < 0)
        return rc;
    vmm_qemu_accel();
    bool kvm = strcmp(g_host.accel, "kvm") == 0;
    const char *exe = spec->qemu_bin ? spec->qemu_bin : QEMU_DEFAULT_BIN;

    vmm_vm_t *vm = xcalloc(1, sizeof *vm);
    vm->pidfd = -1;
    snprintf(vm->id, sizeof vm->id, "%s", spec->id);
    snprintf(vm->run_dir, sizeof vm->run_dir, "%s", spec->run_dir);
    snprintf(vm->qmp_path, sizeof vm->qmp_path, "%s/qmp.sock", spec->run_dir);
    vm_set_mem(vm, spec);

    char *cmdline = NULL;
    strv_t argv = {0};
    plan_t plan = {0};
    bool made_cg = false, made_files = false;
    int qmpfd = -1, logfd = -1, nullfd = -1, netnsfd = -1, errp[2] = {-1, -1};
    int cgfds[CG_MAX_DIRS];
    int ncg = 0;
    char path[PATH_MAX];
    char(*chain)[PATH_MAX] = xcalloc(VMM_MAX_CHAIN, PATH_MAX);
    int nchain = 0;

    if (access(exe, X_OK) < 0) {
        rc = err_errno(e, exe);
        goto fail;
    }
    struct stat st;
    if (stat(spec->run_dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        rc = err_set(e, -ENOENT, "vmm: run_dir %s is not a directory", spec->run_dir);
        goto fail;
    }
    if (strcmp(spec->rootfs_format, "qcow2") == 0) {
        /* The backing chain is shown to QEMU read-only: overlay → (qcow2 →)* raw base. */
        const char *cur = spec->rootfs;
        for (;;) {
            if (nchain == VMM_MAX_CHAIN) {
                rc = err_set(e, -ELOOP, "vmm: the root disk's backing chain is too long");
                goto fail;
            }
            rc = disk_qcow2_backing(cur, chain[nchain], PATH_MAX, e);
            if (rc == -EINVAL && nchain > 0)
                break; /* a raw base ends the chain */
            if (rc < 0)
                goto fail;
            if (rc == 0)
                break;
            if (!good_path(chain[nchain]) || access(chain[nchain], R_OK) < 0) {
                rc = err_set(e, -EINVAL, "vmm: backing file %s is not usable", chain[nchain]);
                goto fail;
            }
            if (spec->backing_root && !path_under(chain[nchain], spec->backing_root)) {
                rc = err_set(e, -EPERM, "vmm: backing file %s is outside %s", chain[nchain],
                             spec->backing_root);
                goto fail;
            }
            cur = chain[nchain++];
        }
        rc = 0;
        err_clear(e);
    }
    uint64_t disk_size = 0;
    if ((rc = disk_virtual_size(spec->rootfs, spec->rootfs_format, &disk_size, e)) < 0)
        goto fail;
    uint64_t fsize = (uint64_t)spec->memory_mb << 20;
    if (disk_size > fsize)
        fsize = disk_size;
    fsize += QEMU_FILE_SLACK_MB << 20; /* qcow2 metadata */
    cmdline = build_cmdline(spec->cmdline, e, &rc);
    if (!cmdline)
        goto fail;

    /* Files QEMU opens by path belong to its uid. The root disk is given to it when it lies in
     * the sandbox's own run_dir; one elsewhere must already be the VM's (never chown a file
     * that may be shared). */
    size_t rl = strlen(spec->run_dir);
    if (stat(spec->rootfs, &st) < 0) {
        rc = err_errno(e, spec->rootfs);
        goto fail;
    }
    if (strncmp(spec->rootfs, spec->run_dir, rl) == 0 && spec->rootfs[rl] == '/' &&
        !strchr(spec->rootfs + rl + 1, '/') && S_ISREG(st.st_mode)) {
        if (chown(spec->rootfs, spec->uid, spec->gid) < 0) {
            rc = err_errno(e, spec->rootfs);
            goto fail;
        }
    } else if (spec->uid != 0 && st.st_uid != spec->uid) {
        rc = err_set(e, -EPERM, "vmm: a root disk outside run_dir must be owned by the VM's uid");
        goto fail;
    }
    made_files = true;
    snprintf(path, sizeof path, "%s/console.log", spec->run_dir);
    if ((rc = make_owned_file(path, spec->uid, spec->gid, e)) < 0)
        goto fail;
    if (!spec->mem_path) {
        snprintf(path, sizeof path, "%s/mem", spec->run_dir);
        if ((rc = make_owned_file(path, spec->uid, spec->gid, e)) < 0)
            goto fail;
    } else if (stat(spec->mem_path, &st) < 0 || !S_ISREG(st.st_mode) ||
               (uint64_t)st.st_size != (uint64_t)spec->memory_mb << 20) {
        rc = err_set(e, -EINVAL, "vmm: RAM file %s is not a %u MiB file", spec->mem_path,
                     spec->memory_mb);
        goto fail;
    }
    snprintf(path, sizeof path, "%s/vmm.log", spec->run_dir);
    logfd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (logfd < 0) {
        rc = err_errno(e, path);
        goto fail;
    }
    nullfd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (nullfd < 0) {
        rc = err_errno(e, "/dev/null");
        goto fail;
    }
    if (spec->netns) {
        snprintf(path, sizeof path, "/run/netns/%s", spec->netns);
        netnsfd = open(path, O_RDONLY | O_CLOEXEC);
        if (netnsfd < 0) {
            rc = err_errno(e, path);
            goto fail;
        }
    }
    if (mkdir("/run/wrenn", 0755) < 0 && errno != EEXIST) {
        rc = err_errno(e, "/run/wrenn");
        goto fail;
    }
    if (mkdir(VMM_JAIL_DIR, 0700) < 0 && errno != EEXIST) {
        rc = err_errno(e, VMM_JAIL_DIR);
        goto fail;
    }
    if ((rc = build_plan(spec, exe, chain, nchain, kvm, &plan, e)) < 0)
        goto fail;
    build_argv(spec, exe, cmdline, kvm, &argv);

    if (spec->cgroup) {
        /* Guest RAM is charged (page cache of the mem file), plus TCG's translation cache and
         * QEMU itself. Threads: main, RCU, one per vCPU, the bounded block I/O pool, spares. */
        cg_limits_t lim = {
            .memory_bytes = ((uint64_t)spec->memory_mb + (kvm ? 0 : QEMU_TB_MB) + QEMU_OVERHEAD_MB)
                            << 20,
            .cpu_pct = spec->vcpus * 100 + QEMU_EMULATOR_PCT,
            .pids = 16 + QEMU_POOL_MAX + 2 * spec->vcpus,
        };
        if ((rc = cg_create(spec->cgroup, &lim, &vm->cg, e)) < 0)
            goto fail;
        made_cg = true;
        if ((ncg = cg_open_procs(&vm->cg, cgfds, e)) < 0) {
            rc = ncg;
            ncg = 0;
            goto fail;
        }
    }
    if ((qmpfd = listen_qmp(vm->qmp_path, e)) < 0) {
        rc = qmpfd;
        goto fail;
    }
    if (pipe2(errp, O_CLOEXEC) < 0) {
        rc = err_errno(e, "vmm: pipe");
        goto fail;
    }

    static char *empty_env[] = {NULL};
    child_ctx_t ctx = {
        .errfd = errp[1],
        .netnsfd = netnsfd,
        .nullfd = nullfd,
        .logfd = logfd,
        .qmpfd = qmpfd,
        .ncg = ncg,
        .tap = spec->tap,
        .plan = &plan,
        .uid = spec->uid,
        .gid = spec->gid,
        .fsize = fsize,
        .exe = exe,
        .argv = argv.v,
        .envp = empty_env,
    };
    memcpy(ctx.cgfds, cgfds, sizeof cgfds);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = spawn_clone3(&vm->pidfd);
    if (pid == 0)
        child_run(&ctx);
    int clone_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        errno = clone_errno;
        vm->pidfd = -1;
        rc = err_errno(e, "vmm: clone3");
        goto fail;
    }
    vm->pid = pid;
    vm->child = true;
    xclose(&errp[1]);
    struct child_report rep = {0};
    ssize_t n;
    do {
        n = read(errp[0], &rep, sizeof rep);
    } while (n < 0 && errno == EINTR);
    if (n == (ssize_t)sizeof rep) {
        reap(vm);
        rc = err_set(e, rep.err ? -rep.err : -EIO, "vmm: %s: %s", step_name(rep.step),
                     strerror(rep.err));
        if (rep.step == ST_NO_TAP && rep.err == ENODEV)
            rc = err_set(e, -ENODEV, "vmm: no tap %s in the namespace", spec->tap);
        goto fail;
    }
    /* QEMU holds the listener and the log now; ours would keep a dead VM's socket alive. */
    xclose(&qmpfd);
    xclose(&logfd);
    vm->start_time = procfs_start_time(pid);
    int64_t t_exec = now_ms();

    rc = qmp_connect(vm->qmp_path, vm->pidfd, QMP_START_TIMEOUT_MS, &vm->qmp, e);
    if (rc < 0) {
        char tail[200];
        if (!wait_exit(vm->pidfd, 0))
            pidfd_signal(vm->pidfd, SIGKILL);
        int status = reap(vm);
        log_tail(spec->run_dir, tail, sizeof tail);
        if (tail[0])
            rc = err_set(e, -ESRCH, "vmm: qemu exited (status %d): %s", status, tail);
        else
            err_wrap(e, "vmm: qemu did not start");
        goto fail;
    }
    log_info("vmm.started",
             "sandbox=%s pid=%d accel=%s vcpus=%u memory_mb=%u uid=%u spawn_ms=%lld dur_ms=%lld",
             spec->id, (int)pid, g_host.accel, spec->vcpus, spec->memory_mb, (unsigned)spec->uid,
             (long long)(t_exec - t0), (long long)(now_ms() - t0));
    rc = 0;
    goto out;

fail:
    if (vm->pidfd >= 0 && vm->child) {
        pidfd_signal(vm->pidfd, SIGKILL);
        reap(vm);
    }
    if (made_cg) {
        err_t ign;
        cg_destroy(&vm->cg, &ign);
    }
    if (qmpfd >= 0 || vm->pid > 0)
        unlink(vm->qmp_path);
    if (made_files) {
        snprintf(path, sizeof path, "%s/console.log", spec->run_dir);
        unlink(path);
        if (!spec->mem_path) {
            snprintf(path, sizeof path, "%s/mem", spec->run_dir);
            unlink(path);
        }
    }
    log_warn("vmm.start_failed", "sandbox=%s err=\"%s\"", spec->id, e ? e->msg : "");
    vm_free(vm);
    vm = NULL;
out:
    for (int i = 0; i < ncg; i++)
        close(cgfds[i]);
    xclose(&qmpfd);
    xclose(&logfd);
    xclose(&nullfd);
    xclose(&netnsfd);
    xclose(&errp[0]);
    xclose(&errp[1]);
    sv_free(&argv);
    plan_free(&plan);
    free(chain);
    free(cmdline);
    if (out)
        *out = vm;
    else if (vm)
        vmm_release(vm);
    return rc;
}

/* Whether pid's command line is the QEMU this spec started. */
static bool cmdline_matches(pid_t pid, const vmm_spec_t *spec)
{
    char *cl = xmalloc(65536);
    ssize_t n = procfs_cmdline(pid, cl, 65536);
    bool name_ok = false, mem_ok = false, exe_ok = false;
    char name[96], mem[PATH_MAX + 16];
    snprintf(name, sizeof name, "wrenn-%s", spec->id);
    char *p = spec->mem_path ? xstrdup(spec->mem_path) : xasprintf("%s/mem", spec->run_dir);
    char *esc = opt_escape(p);
    snprintf(mem, sizeof mem, "mem-path=%s,", esc);
    free(esc);
    free(p);
    const char *exe = spec->qemu_bin ? spec->qemu_bin : QEMU_DEFAULT_BIN;
    if (n > 0) {
        exe_ok = strcmp(cl, exe) == 0;
        const char *prev = "";
        for (char *a = cl; a < cl + n; a += strlen(a) + 1) {
            if (strcmp(prev, "-name") == 0 && strcmp(a, name) == 0)
                name_ok = true;
            if (strstr(a, mem))
                mem_ok = true;
            prev = a;
        }
    }
    free(cl);
    return exe_ok && name_ok && mem_ok;
}

int vmm_qemu_cleanup(const vmm_spec_t *spec, err_t *e)
{
    if (!spec || !spec->run_dir)
        return err_set(e, -EINVAL, "vmm: no spec");
    int rc = 0;
    if (spec->cgroup) {
        cg_t cg;
        rc = cg_lookup(spec->cgroup, &cg, e);
        if (rc == 0)
            rc = cg_destroy(&cg, e);
    }
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/qmp.sock", spec->run_dir);
    unlink(path);
    return rc;
}

int vmm_qemu_reap_cgroups(const char *prefix, err_t *e)
{
    return cg_reap_empty(prefix, e);
}

int vmm_qemu_adopt(const vmm_spec_t *spec, const vmm_state_t *st, vmm_vm_t **out, err_t *e)
{
    if (out)
        *out = NULL;
    int rc = check_spec(spec, e);
    if (rc < 0)
        return rc;
    if (!st || st->pid <= 0 || !out)
        return err_set(e, -EINVAL, "vmm: no state to adopt");
    vmm_qemu_accel();
    vmm_vm_t *vm = xcalloc(1, sizeof *vm);
    snprintf(vm->id, sizeof vm->id, "%s", spec->id);
    snprintf(vm->run_dir, sizeof vm->run_dir, "%s", spec->run_dir);
    snprintf(vm->qmp_path, sizeof vm->qmp_path, "%s/qmp.sock", spec->run_dir);
    vm_set_mem(vm, spec);
    vm->pid = st->pid;
    vm->start_time = st->start_time;
    /* The pidfd first: once it is open, the checks below are about the process it pins (if
     * that process dies meanwhile, the pidfd turns readable and we see it). */
    vm->pidfd = (int)syscall(SYS_pidfd_open, st->pid, 0);
    if (vm->pidfd < 0 || procfs_start_time(st->pid) != st->start_time ||
        !cmdline_matches(st->pid, spec) || wait_exit(vm->pidfd, 0)) {
        /* Its groups are empty now; one that still holds a process stays (no retry here). */
        cg_t cg;
        err_t ign;
        if (spec->cgroup && cg_lookup(spec->cgroup, &cg, &ign) == 0)
            for (int i = 0; i < cg.ndirs; i++)
                rmdir(cg.dirs[i]);
        vm_free(vm);
        return err_set(e, -ESRCH, "vmm: VM process %d is gone", (int)st->pid);
    }
    /* Still our child when only the handle was released (vmm_release) in this process. */
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)st->pid);
    FILE *f = fopen(path, "re");
    if (f) {
        if (fgets(buf, sizeof buf, f)) {
            char *p = strrchr(buf, ')');
            int ppid = 0;
            if (p && sscanf(p + 2, "%*c %d", &ppid) == 1 && ppid == getpid())
                vm->child = true;
        }
        fclose(f);
    }
    err_t ce = {0};
    if (cg_of_pid(st->pid, &vm->cg, &ce) < 0)
        log_warn("vmm.adopt_cgroup", "sandbox=%s err=\"%s\"", spec->id, ce.msg);
    rc = qmp_connect(vm->qmp_path, vm->pidfd, QMP_CALL_TIMEOUT_MS, &vm->qmp, e);
    if (rc < 0) {
        err_wrap(e, "vmm: adopt %d", (int)st->pid);
        log_warn("vmm.adopt_failed", "sandbox=%s pid=%d err=\"%s\"", spec->id, (int)st->pid,
                 e ? e->msg : "");
        err_t ign;
        vmm_stop(vm, 0, &ign);
        if (e)
            e->code = -EIO;
        return -EIO;
    }
    log_info("vmm.adopted", "sandbox=%s pid=%d", spec->id, (int)st->pid);
    *out = vm;
    return 0;
}

int vmm_stop(vmm_vm_t *vm, int grace_ms, err_t *e)
{
    if (!vm)
        return 0;
    int64_t t0 = now_ms();
    int rc = 0;
    const char *how = "exited";
    if (vm->pidfd >= 0 && !wait_exit(vm->pidfd, 0)) {
        how = "quit";
        err_t qe = {0};
        int q = vm->qmp ? qmp_execute(vm->qmp, "quit", NULL, NULL, grace_ms > 0 ? grace_ms : 1, &qe)
                        : -ENOTCONN;
        if (q < 0 && q != -ECONNRESET)
            pidfd_signal(vm->pidfd, SIGTERM);
        if (!wait_exit(vm->pidfd, grace_ms > 0 ? grace_ms : 0)) {
            how = "killed";
            if (pidfd_signal(vm->pidfd, SIGKILL) < 0 && errno != ESRCH)
                rc = err_errno(e, "vmm: kill");
            if (!wait_exit(vm->pidfd, 10000) && rc == 0)
                rc = err_set(e, -ETIMEDOUT, "vmm: process %d did not die", (int)vm->pid);
        }
    }
    int status = reap(vm);
    qmp_free(vm->qmp);
    vm->qmp = NULL;
    if (vm->cg.ndirs) {
        err_t ce = {0};
        int r = cg_destroy(&vm->cg, &ce);
        if (r < 0 && rc == 0)
            rc = err_set(e, r, "%s", ce.msg);
    }
    unlink(vm->qmp_path);
    log_info("vmm.stopped", "sandbox=%s pid=%d how=%s status=%d dur_ms=%lld", vm->id, (int)vm->pid,
             how, status, (long long)(now_ms() - t0));
    vm_free(vm);
    return rc;
}

void vmm_release(vmm_vm_t *vm)
{
    vm_free(vm);
}

bool vmm_alive(vmm_vm_t *vm)
{
    return vm && vm->pidfd >= 0 && !wait_exit(vm->pidfd, 0);
}

void vmm_get_state(const vmm_vm_t *vm, vmm_state_t *out)
{
    out->pid = vm ? vm->pid : 0;
    out->start_time = vm ? vm->start_time : 0;
}

int vmm_pidfd(const vmm_vm_t *vm)
{
    return vm ? vm->pidfd : -1;
}

int vmm_qmp(vmm_vm_t *vm, const char *cmd, json_t *args, json_t **ret, int timeout_ms, err_t *e)
{
    if (ret)
        *ret = NULL;
    if (!vm || !vm->qmp) {
        json_decref(args);
        return err_set(e, -ECONNRESET, "vmm: no control connection");
    }
    int rc = qmp_execute(vm->qmp, cmd, args, ret, timeout_ms, e);
    for (json_t *ev; (ev = qmp_take_event(vm->qmp));)
        json_decref(ev); /* logged by the QMP client; nobody waits for them yet */
    return rc;
}

int vmm_pause(vmm_vm_t *vm, err_t *e)
{
    return vmm_qmp(vm, "stop", NULL, NULL, QMP_CALL_TIMEOUT_MS, e);
}

int vmm_resume(vmm_vm_t *vm, err_t *e)
{
    return vmm_qmp(vm, "cont", NULL, NULL, QMP_CALL_TIMEOUT_MS, e);
}

int vmm_query_status(vmm_vm_t *vm, char *buf, size_t len, err_t *e)
{
    json_t *ret = NULL;
    int rc = vmm_qmp(vm, "query-status", NULL, &ret, QMP_CALL_TIMEOUT_MS, e);
    if (rc < 0)
        return rc;
    const char *s = json_string_value(json_object_get(ret, "status"));
    if (!s)
        rc = err_set(e, -EPROTO, "vmm: query-status without a status");
    else
        snprintf(buf, len, "%s", s);
    json_decref(ret);
    return rc;
}

/* ---- snapshots ------------------------------------------------------------------------------ */

/* Wait until query-migrate reports "completed" (0), a failure (-EBADMSG with QEMU's reason) or
 * the deadline passes. */
static int wait_migration(vmm_vm_t *vm, int64_t deadline, err_t *e)
{
    for (unsigned i = 0;; i++) {
        json_t *ret = NULL;
        int rc = vmm_qmp(vm, "query-migrate", NULL, &ret, QMP_CALL_TIMEOUT_MS, e);
        if (rc < 0)
            return rc;
        const char *st = json_string_value(json_object_get(ret, "status"));
        if (st && strcmp(st, "completed") == 0) {
            json_decref(ret);
            return 0;
        }
        if (st && (strcmp(st, "failed") == 0 || strcmp(st, "cancelled") == 0)) {
            const char *why = json_string_value(json_object_get(ret, "error-desc"));
            rc = err_set(e, -EBADMSG, "vmm: migration %s: %s", st, why ? why : "no reason given");
            json_decref(ret);
            return rc;
        }
        json_decref(ret);
        if (now_ms() > deadline)
            return err_set(e, -ETIMEDOUT, "vmm: migration still %s", st ? st : "not started");
        /* Device state is small: the first polls come quickly, later ones back off. */
        struct timespec ts = {0, (i < 20 ? 1 : 10) * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* Give QEMU fd under the name "wrenn-state" (QMP getfd, SCM_RIGHTS). */
static int pass_state_fd(vmm_vm_t *vm, int fd, err_t *e)
{
    if (!vm || !vm->qmp)
        return err_set(e, -ECONNRESET, "vmm: no control connection");
    int rc = qmp_execute_fd(vm->qmp, "getfd", json_pack("{s:s}", "fdname", "wrenn-state"), fd, NULL,
                            QMP_CALL_TIMEOUT_MS, e);
    for (json_t *ev; (ev = qmp_take_event(vm->qmp));)
        json_decref(ev);
    return rc;
}

static int ignore_shared(vmm_vm_t *vm, err_t *e)
{
    json_t *caps =
        json_pack("{s:[{s:s, s:b}]}", "capabilities", "capability", "x-ignore-shared", "state", 1);
    return vmm_qmp(vm, "migrate-set-capabilities", caps, NULL, QMP_CALL_TIMEOUT_MS, e);
}

/* The fd set QEMU gets a device-state file in (add-fd), for xen-save-devices-state. */
#define STATE_FDSET 7
/* QEMU's stream markers (migration/savevm.c) and the machine every VM here is. */
#define QEMU_VM_CONFIGURATION  0x07
#define QEMU_VM_VMDESCRIPTION  0x06
#define QEMU_STREAM_HEADER_LEN 8 /* magic "QEVM" + version */
#define QEMU_MACHINE           "microvm"

/* Turn what xen-save-devices-state wrote into fd (all device sections, no RAM section, no
 * configuration section) into a stream migrate-incoming loads: QEMU's loader insists on the
 * configuration section (machine name; no capabilities, since none was set on the saving side)
 * right after the header, and looks for a VM description after the end marker. */
/* A stream section of one type byte, a big-endian 32-bit length and the bytes of str, at out;
 * returns its size. NULL out: only the size. */
static size_t put_section(uint8_t *out, uint8_t type, const char *str)
{
    size_t n = strlen(str);
    if (out) {
        out[0] = type;
        out[1] = (uint8_t)(n >> 24), out[2] = (uint8_t)(n >> 16), out[3] = (uint8_t)(n >> 8),
        out[4] = (uint8_t)n;
        memcpy(out + 5, str, n);
    }
    return 5 + n;
}

static int fix_device_stream(int fd, err_t *e)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return err_errno(e, "vmm: save: stat state");
    if (st.st_size < QEMU_STREAM_HEADER_LEN + 1 || st.st_size > (64 << 20))
        return err_set(e, -EIO, "vmm: save: QEMU wrote %jd bytes of device state",
                       (intmax_t)st.st_size);
    size_t len = (size_t)st.st_size;
    /* The configuration section is the machine's name (no capabilities: none was set to save);
     * the VM description is an empty JSON object. */
    size_t cfg_len = put_section(NULL, QEMU_VM_CONFIGURATION, QEMU_MACHINE);
    size_t desc_len = put_section(NULL, QEMU_VM_VMDESCRIPTION, "{}");
    uint8_t *buf = xmalloc(len + cfg_len + desc_len);
    int rc = 0;
    ssize_t n = pread(fd, buf, len, 0);
    if (n != (ssize_t)len || memcmp(buf, "QEVM", 4) != 0) {
        rc = n < 0 ? err_errno(e, "vmm: save: read state")
                   : err_set(e, -EIO, "vmm: save: QEMU's device state has no stream header");
        goto out;
    }
    memmove(buf + QEMU_STREAM_HEADER_LEN + cfg_len, buf + QEMU_STREAM_HEADER_LEN,
            len - QEMU_STREAM_HEADER_LEN);
    put_section(buf + QEMU_STREAM_HEADER_LEN, QEMU_VM_CONFIGURATION, QEMU_MACHINE);
    put_section(buf + len + cfg_len, QEMU_VM_VMDESCRIPTION, "{}");
    size_t total = len + cfg_len + desc_len;
    if (pwrite(fd, buf, total, 0) != (ssize_t)total)
        rc = err_errno(e, "vmm: save: write state");
out:
    free(buf);
    return rc;
}

/* Device state of a VM whose RAM is a private mapping: migration would stream all of RAM, so
 * QEMU writes its devices only (xen-save-devices-state, which any accelerator has), into a file
 * description of its own on fd's file, handed over as an fd set (QEMU opens /dev/fdset/N). */
static int save_devices(vmm_vm_t *vm, int fd, err_t *e)
{
    if (ftruncate(fd, 0) < 0)
        return err_errno(e, "vmm: save: truncate state");
    char self[64];
    snprintf(self, sizeof self, "/proc/self/fd/%d", fd);
    int wfd = open(self, O_WRONLY | O_CLOEXEC);
    if (wfd < 0)
        return err_errno(e, "vmm: save: reopen state");
    int rc = qmp_execute_fd(vm->qmp, "add-fd", json_pack("{s:i}", "fdset-id", STATE_FDSET), wfd,
                            NULL, QMP_CALL_TIMEOUT_MS, e);
    close(wfd);
    for (json_t *ev; vm->qmp && (ev = qmp_take_event(vm->qmp));)
        json_decref(ev);
    if (rc < 0)
        return rc;
    char path[32];
    snprintf(path, sizeof path, "/dev/fdset/%d", STATE_FDSET);
    rc = vmm_qmp(vm, "xen-save-devices-state", json_pack("{s:s, s:b}", "filename", path, "live", 0),
                 NULL, QMP_CALL_TIMEOUT_MS, e);
    err_t re = {0};
    if (vmm_qmp(vm, "remove-fd", json_pack("{s:i}", "fdset-id", STATE_FDSET), NULL,
                QMP_CALL_TIMEOUT_MS, &re) < 0)
        log_warn("vmm.remove_fd_failed", "sandbox=%s err=\"%s\"", vm->id, re.msg);
    if (rc < 0)
        return rc;
    return fix_device_stream(fd, e);
}

int vmm_save(vmm_vm_t *vm, int fd, int timeout_ms, err_t *e)
{
    int64_t t0 = now_ms(), deadline = t0 + (timeout_ms > 0 ? timeout_ms : 30000);
    char st[32];
    int rc = vmm_query_status(vm, st, sizeof st, e);
    if (rc < 0)
        return rc;
    if (strcmp(st, "running") == 0 && (rc = vmm_pause(vm, e)) < 0)
        return rc;
    int64_t t_stop = now_ms();
    if (vm->mem_private) {
        if ((rc = save_devices(vm, fd, e)) < 0) {
            err_wrap(e, "vmm: save");
            return rc;
        }
        log_info("vmm.saved", "sandbox=%s devices_only=1 stop_ms=%lld dur_ms=%lld", vm->id,
                 (long long)(t_stop - t0), (long long)(now_ms() - t0));
        return 0;
    }
    /* RAM is the shared file: x-ignore-shared leaves it out, so the stream is device state
     * only (tens of KiB). QEMU's default bandwidth cap (32 MiB/s) would still pace it. */
    if ((rc = ignore_shared(vm, e)) < 0 ||
        (rc = vmm_qmp(vm, "migrate-set-parameters",
                      json_pack("{s:I}", "max-bandwidth", (json_int_t)(1LL << 40)), NULL,
                      QMP_CALL_TIMEOUT_MS, e)) < 0 ||
        (rc = pass_state_fd(vm, fd, e)) < 0 ||
        (rc = vmm_qmp(vm, "migrate", json_pack("{s:s}", "uri", "fd:wrenn-state"), NULL,
                      QMP_CALL_TIMEOUT_MS, e)) < 0 ||
        (rc = wait_migration(vm, deadline, e)) < 0) {
        err_wrap(e, "vmm: save");
        return rc;
    }
    log_info("vmm.saved", "sandbox=%s stop_ms=%lld dur_ms=%lld", vm->id, (long long)(t_stop - t0),
             (long long)(now_ms() - t0));
    return 0;
}

int vmm_restore(vmm_vm_t *vm, int fd, int timeout_ms, err_t *e)
{
    int64_t t0 = now_ms(), deadline = t0 + (timeout_ms > 0 ? timeout_ms : 30000);
    int rc;
    /* A stream saved by migration carries the x-ignore-shared capability in its configuration
     * section, and QEMU loads it only with the same capability set; one of devices only
     * (save_devices) carries none and must be loaded without. */
    char head[512];
    ssize_t hn = pread(fd, head, sizeof head, 0);
    bool caps = hn > 0 && memmem(head, (size_t)hn, "x-ignore-shared", 15) != NULL;
    if ((caps && (rc = ignore_shared(vm, e)) < 0) || (rc = pass_state_fd(vm, fd, e)) < 0 ||
        (rc = vmm_qmp(vm, "migrate-incoming", json_pack("{s:s}", "uri", "fd:wrenn-state"), NULL,
                      QMP_CALL_TIMEOUT_MS, e)) < 0 ||
        (rc = wait_migration(vm, deadline, e)) < 0) {
        err_wrap(e, "vmm: restore");
        return rc;
    }
    int64_t t_load = now_ms();
    /* The state was saved stopped, so the VM comes up paused; "inmigrate" lingers briefly. */
    char st[32];
    for (;;) {
        if ((rc = vmm_query_status(vm, st, sizeof st, e)) < 0)
            return rc;
        if (strcmp(st, "inmigrate") != 0)
            break;
        if (now_ms() > deadline)
            return err_set(e, -ETIMEDOUT, "vmm: restore: still in inmigrate");
        struct timespec ts = {0, 1000000L};
        nanosleep(&ts, NULL);
    }
    if (strcmp(st, "running") != 0 && (rc = vmm_resume(vm, e)) < 0)
        return err_wrap(e, "vmm: restore: cont in state %s", st);
    log_info("vmm.restored", "sandbox=%s load_ms=%lld dur_ms=%lld", vm->id,
             (long long)(t_load - t0), (long long)(now_ms() - t0));
    return 0;
}

/* ---- RAM of a private mapping ----------------------------------------------------------- */

/* Where the VMM maps its RAM file: the mapping of that inode (same device) exactly as large as
 * guest memory, from offset 0. */
static int find_ram_mapping(const vmm_vm_t *vm, uintptr_t *addr, err_t *e)
{
    struct stat st;
    if (stat(vm->mem_path, &st) < 0)
        return err_errno(e, "vmm: RAM file");
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/maps", (int)vm->pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return err_errno(e, "vmm: maps of the VMM");
    char line[PATH_MAX + 256];
    int rc = err_set(e, -ESRCH, "vmm: the VMM does not map its RAM file");
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi, off, ino;
        unsigned maj, mnr;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s %lx %x:%x %lu", &lo, &hi, perms, &off, &maj, &mnr, &ino) != 7)
            continue;
        if (ino == (unsigned long)st.st_ino && maj == major(st.st_dev) && mnr == minor(st.st_dev) &&
            off == 0 && hi - lo == vm->mem_bytes) {
            *addr = (uintptr_t)lo;
            rc = 0;
            break;
        }
    }
    fclose(f);
    return rc;
}

/* Copying the changed pages out: runs of changed pages cut into chunks of at most CAP_CHUNK
 * pages, taken by workers (one per CPU, at most 4): each reads its chunk from the VMM
 * (process_vm_readv) and writes its non-zero pages to the file (zero pages stay holes: the
 * layer records them as zero). */
#define CAP_CHUNK 2048u

typedef struct cap_run {
    uint64_t p0, n;
} cap_run_t;

typedef struct cap {
    pid_t pid;
    uintptr_t base;
    size_t page;
    int out_fd;
    cap_run_t *runs;
    size_t nruns, caprun;
    atomic_size_t next;
    pthread_mutex_t lock; /* first error */
    int rc;
    err_t e;
} cap_t;

static void cap_fail(cap_t *c, int rc, const char *what)
{
    pthread_mutex_lock(&c->lock);
    if (c->rc == 0) {
        c->rc = rc;
        err_set(&c->e, rc, "vmm: %s: %s", what, strerror(-rc));
    }
    pthread_mutex_unlock(&c->lock);
}

static bool page_zero(const char *p, size_t len)
{
    const uint64_t *w = (const uint64_t *)(const void *)p;
    for (size_t i = 0; i < len / sizeof *w; i++)
        if (w[i])
            return false;
    return true;
}

static int write_full(int fd, const char *p, size_t len, off_t off)
{
    while (len > 0) {
        ssize_t w = pwrite(fd, p, len, off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? -errno : -EIO;
        p += w;
        len -= (size_t)w;
        off += w;
    }
    return 0;
}

static void *cap_worker(void *ud)
{
    cap_t *c = ud;
    size_t page = c->page;
    void *mem = NULL; /* page-aligned: out_fd may be O_DIRECT */
    if (posix_memalign(&mem, page, CAP_CHUNK * page) != 0) {
        cap_fail(c, -ENOMEM, "capture buffer");
        return NULL;
    }
    char *buf = mem;
    for (;;) {
        size_t i = atomic_fetch_add(&c->next, 1);
        if (i >= c->nruns || __atomic_load_n(&c->rc, __ATOMIC_RELAXED) != 0)
            break;
        cap_run_t r = c->runs[i];
        struct iovec local = {buf, r.n * page};
        struct iovec remote = {(void *)(c->base + r.p0 * page), r.n * page};
        ssize_t got = process_vm_readv(c->pid, &local, 1, &remote, 1, 0);
        if (got != (ssize_t)(r.n * page)) {
            cap_fail(c, got < 0 ? -errno : -EIO, "read guest RAM");
            break;
        }
        /* Write each stretch of non-zero pages. */
        for (uint64_t a = 0; a < r.n;) {
            if (page_zero(buf + a * page, page)) {
                a++;
                continue;
            }
            uint64_t b = a + 1;
            while (b < r.n && !page_zero(buf + b * page, page))
                b++;
            int rc =
                write_full(c->out_fd, buf + a * page, (b - a) * page, (off_t)((r.p0 + a) * page));
            if (rc < 0) {
                cap_fail(c, rc, "write guest RAM");
                break;
            }
            a = b;
        }
    }
    free(buf);
    return NULL;
}

static void cap_add(cap_t *c, uint64_t p0, uint64_t n)
{
    while (n > 0) {
        uint64_t k = n < CAP_CHUNK ? n : CAP_CHUNK;
        if (c->nruns == c->caprun) {
            c->caprun = c->caprun ? 2 * c->caprun : 256;
            c->runs = xrealloc(c->runs, c->caprun * sizeof *c->runs);
        }
        c->runs[c->nruns++] = (cap_run_t){p0, k};
        p0 += k;
        n -= k;
    }
}

/* pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst) */
#define PM_PRESENT (1ULL << 63)
#define PM_SWAPPED (1ULL << 62)
#define PM_FILE    (1ULL << 61)

int64_t vmm_ram_capture(vmm_vm_t *vm, int out_fd, uint8_t *dirty, err_t *e)
{
    if (!vm || !vm->mem_private)
        return err_set(e, -EINVAL, "vmm: capture: the VM's RAM is not a private mapping");
    int64_t t0 = now_ms();
    uintptr_t base = 0;
    int rc = find_ram_mapping(vm, &base, e);
    if (rc < 0)
        return rc;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    uint64_t npages = vm->mem_bytes / page;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/pagemap", (int)vm->pid);
    int pm = open(path, O_RDONLY | O_CLOEXEC);
    if (pm < 0)
        return err_errno(e, "vmm: pagemap of the VMM");
    cap_t c = {.pid = vm->pid, .base = base, .page = page, .out_fd = out_fd};
    pthread_mutex_init(&c.lock, NULL);
    enum { ENTRIES = 16384 };
    uint64_t *ent = xmalloc(ENTRIES * sizeof *ent);
    int64_t total = 0;
    uint64_t run0 = 0, runn = 0; /* the run of changed pages being gathered */
    for (uint64_t p = 0; p < npages && rc == 0;) {
        size_t k = npages - p < ENTRIES ? (size_t)(npages - p) : ENTRIES;
        ssize_t got = pread(pm, ent, k * sizeof *ent, (off_t)((base / page + p) * sizeof *ent));
        if (got != (ssize_t)(k * sizeof *ent)) {
            rc = got < 0 ? err_errno(e, "vmm: read pagemap")
                         : err_set(e, -EIO, "vmm: short read of pagemap");
            break;
        }
        for (size_t i = 0; i < k; i++) {
            /* A page the guest wrote is the VMM's own (anonymous) copy, in memory or swapped
             * out; one it only read is the file's page. */
            bool changed = (ent[i] & PM_SWAPPED) || ((ent[i] & PM_PRESENT) && !(ent[i] & PM_FILE));
            uint64_t pg = p + i;
            if (!changed)
                continue;
            dirty[pg >> 3] |= (uint8_t)(1u << (pg & 7));
            total++;
            if (runn && run0 + runn == pg) {
                runn++;
                continue;
            }
            if (runn)
                cap_add(&c, run0, runn);
            run0 = pg;
            runn = 1;
        }
        p += k;
    }
    free(ent);
    close(pm);
    if (rc == 0 && runn)
        cap_add(&c, run0, runn);
    if (rc == 0 && c.nruns) {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        size_t nt = ncpu < 1 ? 1 : ncpu > 4 ? 4 : (size_t)ncpu;
        if (nt > c.nruns)
            nt = c.nruns;
        pthread_t th[4];
        size_t started = 0;
        for (size_t i = 1; i < nt; i++)
            if (pthread_create(&th[started], NULL, cap_worker, &c) == 0)
                started++;
        cap_worker(&c);
        for (size_t i = 0; i < started; i++)
            pthread_join(th[i], NULL);
        if (c.rc < 0) {
            rc = c.rc;
            if (e)
                *e = c.e;
        }
    }
    free(c.runs);
    pthread_mutex_destroy(&c.lock);
    if (rc < 0)
        return rc;
    log_info("vmm.ram_captured", "sandbox=%s pages=%lld dur_ms=%lld", vm->id, (long long)total,
             (long long)(now_ms() - t0));
    return total;
}
