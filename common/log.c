/* log — see log.h. */
#include "log.h"

#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum log_level g_level = LOG_LVL_INFO;
static enum log_format g_format = LOG_FMT_TEXT;
static int g_fd = 2;
static const char *g_name = "fedlora";

void log_set_level(enum log_level lvl)
{
	g_level = lvl;
}
void log_set_format(enum log_format fmt)
{
	g_format = fmt;
}
void log_set_fd(int fd)
{
	g_fd = fd;
}
void log_set_name(const char *name)
{
	g_name = name ? name : "fedlora";
}
enum log_level log_get_level(void)
{
	return g_level;
}

static const char *lvl_names[] = {"debug", "info", "warn", "error"};

int log_parse_level(const char *s, enum log_level *out)
{
	static const char *all[] = {"debug", "info", "warn", "error", "off"};
	for (int i = 0; i < 5; i++)
		if (s && strcmp(s, all[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	return FL_EINVAL;
}

int log_parse_format(const char *s, enum log_format *out)
{
	if (s && strcmp(s, "text") == 0)
		*out = LOG_FMT_TEXT;
	else if (s && strcmp(s, "json") == 0)
		*out = LOG_FMT_JSON;
	else
		return FL_EINVAL;
	return 0;
}

/* Appends s JSON-escaped to out[*n..cap); truncates silently at cap. */
static void json_escape(char *out, size_t cap, size_t *n, const char *s)
{
	for (; *s && *n + 7 < cap; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') {
			out[(*n)++] = '\\';
			out[(*n)++] = (char)c;
		} else if (c == '\n') {
			out[(*n)++] = '\\';
			out[(*n)++] = 'n';
		} else if (c < 0x20) {
			*n += (size_t)snprintf(out + *n, cap - *n, "\\u%04x", c);
		} else {
			out[(*n)++] = (char)c;
		}
	}
}

void log_msg(enum log_level lvl, const char *mod, const char *fmt, ...)
{
	if (lvl < g_level || lvl >= LOG_LVL_OFF)
		return;
	char msg[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);

	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	struct tm tm;
	gmtime_r(&ts.tv_sec, &tm);
	char when[96];
	snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
	         tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
	         (long)(ts.tv_nsec / 1000000L) % 1000);

	char line[4096];
	size_t n = 0;
	if (g_format == LOG_FMT_JSON) {
		n = (size_t)snprintf(line, sizeof line,
		                     "{\"ts\":\"%s\",\"level\":\"%s\",\"proc\":\"", when,
		                     lvl_names[lvl]);
		json_escape(line, sizeof line, &n, g_name);
		n += (size_t)snprintf(line + n, sizeof line - n, "\",\"mod\":\"");
		json_escape(line, sizeof line, &n, mod ? mod : "");
		n += (size_t)snprintf(line + n, sizeof line - n, "\",\"msg\":\"");
		json_escape(line, sizeof line, &n, msg);
		n += (size_t)snprintf(line + n, sizeof line - n, "\"}\n");
	} else {
		int w = snprintf(line, sizeof line, "%s %-5s %s[%s] %s\n", when, lvl_names[lvl],
		                 g_name, mod ? mod : "", msg);
		n = w < 0 ? 0 : (size_t)w;
	}
	if (n >= sizeof line) {
		n = sizeof line - 1;
		line[n - 1] = '\n';
	}
	size_t off = 0;
	while (off < n) {
		ssize_t k = write(g_fd, line + off, n - off);
		if (k <= 0)
			break;
		off += (size_t)k;
	}
}
