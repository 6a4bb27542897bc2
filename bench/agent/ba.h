/* What the benchmarks that drive a real wrenn-agent share (bench/agent, bench/snapshot): timing
 * and percentiles, the image cache, one agent started on a private root, its RPCs, and the
 * guest's /health for raw-QEMU baselines. Single-threaded setup; ba_call is thread-safe. */
#ifndef WRENN_BENCH_BA_H
#define WRENN_BENCH_BA_H

#include <jansson.h>
#include <stdbool.h>
#include <sys/types.h>

#define BA_SECRET "bench-secret-0123456789abcdef"

/** The agent a benchmark started. */
typedef struct ba_agent {
    pid_t pid;
    char url[64];      /* http://127.0.0.1:<port> */
    char scratch[256]; /* its temporary directory (log, port file, root) */
    char root[300];    /* its --root, whose images/ and kernels/ link to the cache */
} ba_agent_t;

extern ba_agent_t ba_agent;

/** Monotonic milliseconds. */
double ba_now_ms(void);
/** The p-quantile (0..1) of v[0..n) (sorts v); -1 when n <= 0. */
double ba_pct(double *v, int n, double p);
/** The image cache (WRENN_BENCH_IMAGE_CACHE, default /var/cache/wrenn/bench-images). */
const char *ba_cache(void);
/** Build (or find cached) image name in the cache with `agent_bin image build`, its guest agent
 * the wrenn-envd of agent_bin's own build (WRENN_BENCH_ENVD_BIN overrides): a bench measures
 * the envd it ships with, not an ASan one that a test run left in a shared cache. 0 or -1. */
int ba_ensure_image(const char *agent_bin, const char *name);
/** The host TSC in kHz, as the agent hands it to a TCG guest. */
unsigned ba_tsc_khz(void);

/** Start bin on a fresh root under /tmp/<name>-XXXXXX and wait for its port. The log goes to
 * WRENN_BENCH_AGENT_LOG when set (kept), else into the scratch directory. */
int ba_start_agent(const char *bin, const char *name);
/** SIGTERM and reap the agent, remove the scratch directory. */
void ba_stop_agent(void);
/** Print the agent log's warn and error lines to stderr. */
void ba_show_agent_warnings(void);

/** Unary RPC; *status gets the HTTP status (-1: no answer); returns the parsed body or NULL. */
json_t *ba_call(const char *method, const char *body, long *status);
/** Exec /bin/echo hi in the sandbox: true when "hi\n" came back. */
bool ba_exec_hi(const char *id);
/** DestroySandbox, answer ignored. */
void ba_destroy(const char *id);

/** The number after `key` (e.g. "VmRSS:", "Pss:", "MemFree:") in a /proc file of "key value kB"
 * lines, in KiB; -1 when the file or the key is missing. */
long ba_proc_kib(const char *path, const char *key);

/** One try of the guest's envd /health behind host_ip, with the agent's connect policy: *net_up
 * (false at first) becomes true once a connect was refused, and then allows longer connects. */
bool ba_health(const char *host_ip, bool *net_up);

#endif
