/* log — leveled logging as text (terminals) or JSON lines (--log-format json).
 *
 * One line per call, written with a single write(2) so lines from several
 * threads never interleave. Never pass key material to these functions.
 * Configuration (log_set_*) is meant to happen once at start-up, before
 * threads; logging itself is thread-safe. */
#ifndef FL_LOG_H
#define FL_LOG_H

enum log_level { LOG_LVL_DEBUG = 0, LOG_LVL_INFO, LOG_LVL_WARN, LOG_LVL_ERROR, LOG_LVL_OFF };
enum log_format { LOG_FMT_TEXT = 0, LOG_FMT_JSON };

void log_set_level(enum log_level lvl);
void log_set_format(enum log_format fmt);
void log_set_fd(int fd); /* default 2 (stderr) */
/* Process name shown in every line ("node", "coord"); pointer kept. */
void log_set_name(const char *name);
enum log_level log_get_level(void);

/* Parse "debug|info|warn|error|off" / "text|json"; 0 or FL_EINVAL. */
int log_parse_level(const char *s, enum log_level *out);
int log_parse_format(const char *s, enum log_format *out);

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
void log_msg(enum log_level lvl, const char *mod, const char *fmt, ...);

#define LOGD(mod, ...) log_msg(LOG_LVL_DEBUG, mod, __VA_ARGS__)
#define LOGI(mod, ...) log_msg(LOG_LVL_INFO, mod, __VA_ARGS__)
#define LOGW(mod, ...) log_msg(LOG_LVL_WARN, mod, __VA_ARGS__)
#define LOGE(mod, ...) log_msg(LOG_LVL_ERROR, mod, __VA_ARGS__)

#endif
