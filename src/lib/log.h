/* One-line key=value logging: `ts=... lvl=... msg=... k=v ...`.
 *
 * The logger is the one piece of process-wide mutable state besides the config: set its level
 * once at start-up with log_init(); after that it is safe to call from any thread (each line is a
 * single write(2)). Never pass secrets, tokens or request bodies.
 */
#ifndef WRENN_LOG_H
#define WRENN_LOG_H

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3, LOG_OFF = 4 };

/** Set the minimum level and the program name printed as `prog=`. Call before threads start. */
void log_init(const char *prog, enum log_level level);

/** Parse "debug|info|warn|error|off"; returns the level or -EINVAL. */
int log_parse_level(const char *s);

/** Log one event. `msg` is a short event name; `fmt` formats the key=value tail (may be NULL). */
void log_kv(enum log_level lvl, const char *msg, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_debug(msg, ...) log_kv(LOG_DEBUG, msg, __VA_ARGS__)
#define log_info(msg, ...)  log_kv(LOG_INFO, msg, __VA_ARGS__)
#define log_warn(msg, ...)  log_kv(LOG_WARN, msg, __VA_ARGS__)
#define log_error(msg, ...) log_kv(LOG_ERROR, msg, __VA_ARGS__)

/** True when lines at lvl would be printed (to skip building expensive values). */
int log_enabled(enum log_level lvl);

#endif
