#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum log_level min_level = LOG_INFO;
static const char *prog_name = "wrenn";

static const char *const names[] = {"debug", "info", "warn", "error", "off"};

void log_init(const char *prog, enum log_level level)
{
    prog_name = prog;
    min_level = level;
}

int log_parse_level(const char *s)
{
    for (int i = 0; i <= LOG_OFF; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    return -EINVAL;
}

int log_enabled(enum log_level lvl)
{
    return lvl >= min_level && lvl < LOG_OFF;
}

void log_kv(enum log_level lvl, const char *msg, const char *fmt, ...)
{
    if (!log_enabled(lvl))
        return;
    int saved = errno;
    char line[1024];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n =
        snprintf(line, sizeof line, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ lvl=%s prog=%s msg=%s",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 ts.tv_nsec / 1000000, names[lvl], prog_name, msg);
    if (fmt && n > 0 && (size_t)n < sizeof line - 2) {
        line[n++] = ' ';
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
        va_end(ap);
        if (m > 0)
            n += m;
    }
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 2)
        n = (int)sizeof line - 2;
    /* One event, one line: control characters in values (a client's percent-decoded path, say)
     * must not end the line early or forge another one. */
    for (int i = 0; i < n; i++)
        if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f)
            line[i] = '?';
    line[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
    errno = saved;
}
