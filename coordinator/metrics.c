/* metrics — see metrics.h. */
#include "metrics.h"

#include "buf.h"
#include "err.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FAMILIES 64
#define MAX_SERIES   1024
#define NBUCKETS     12

static const double bucket_le[NBUCKETS] = {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120, 600};

typedef struct series {
	int fam;
	char labels[160];
	double value; /* counter/gauge; histogram sum */
	double count; /* histogram */
	double buckets[NBUCKETS];
} series;

typedef struct family {
	char name[96];
	char help[192];
	enum metrics_type type;
} family;

struct metrics {
	pthread_mutex_t mu;
	family fam[MAX_FAMILIES];
	int nfam;
	series *ser;
	int nser;
	struct MHD_Daemon *httpd;
};

int metrics_new(metrics **out)
{
	metrics *m = calloc(1, sizeof *m);
	if (!m)
		return FL_ENOMEM;
	m->ser = calloc(MAX_SERIES, sizeof *m->ser);
	if (!m->ser) {
		free(m);
		return FL_ENOMEM;
	}
	pthread_mutex_init(&m->mu, NULL);
	*out = m;
	return 0;
}

void metrics_free(metrics *m)
{
	if (!m)
		return;
	if (m->httpd)
		MHD_stop_daemon(m->httpd);
	pthread_mutex_destroy(&m->mu);
	free(m->ser);
	free(m);
}

static int valid_name(const char *s)
{
	if (!s || !*s || (*s >= '0' && *s <= '9'))
		return 0;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '_' || *s == ':'))
			return 0;
	return 1;
}

int metrics_declare(metrics *m, const char *name, enum metrics_type type, const char *help)
{
	if (!valid_name(name) || strlen(name) >= sizeof m->fam[0].name)
		return FL_EINVAL;
	pthread_mutex_lock(&m->mu);
	int rc = 0;
	for (int i = 0; i < m->nfam; i++)
		if (strcmp(m->fam[i].name, name) == 0)
			goto out; /* idempotent */
	if (m->nfam == MAX_FAMILIES) {
		rc = FL_ETOOBIG;
		goto out;
	}
	family *f = &m->fam[m->nfam++];
	snprintf(f->name, sizeof f->name, "%s", name);
	snprintf(f->help, sizeof f->help, "%s", help ? help : "");
	f->type = type;
out:
	pthread_mutex_unlock(&m->mu);
	return rc;
}

/* Finds or creates a series; caller holds the mutex. */
static series *lookup(metrics *m, const char *name, const char *labels, enum metrics_type want)
{
	int fi = -1;
	for (int i = 0; i < m->nfam; i++)
		if (strcmp(m->fam[i].name, name) == 0)
			fi = i;
	if (fi < 0 || m->fam[fi].type != want)
		return NULL;
	if (!labels)
		labels = "";
	if (strlen(labels) >= sizeof m->ser[0].labels)
		return NULL;
	for (int i = 0; i < m->nser; i++)
		if (m->ser[i].fam == fi && strcmp(m->ser[i].labels, labels) == 0)
			return &m->ser[i];
	if (m->nser == MAX_SERIES)
		return NULL;
	series *s = &m->ser[m->nser++];
	memset(s, 0, sizeof *s);
	s->fam = fi;
	snprintf(s->labels, sizeof s->labels, "%s", labels);
	return s;
}

int metrics_add(metrics *m, const char *name, const char *labels, double delta)
{
	pthread_mutex_lock(&m->mu);
	series *s = lookup(m, name, labels, METRICS_COUNTER);
	if (!s)
		s = lookup(m, name, labels, METRICS_GAUGE);
	if (s)
		s->value += delta;
	pthread_mutex_unlock(&m->mu);
	return s ? 0 : FL_EINVAL;
}

static int set_value(metrics *m, const char *name, const char *labels, enum metrics_type type,
                     double value)
{
	pthread_mutex_lock(&m->mu);
	series *s = lookup(m, name, labels, type);
	if (s)
		s->value = value;
	pthread_mutex_unlock(&m->mu);
	return s ? 0 : FL_EINVAL;
}

int metrics_set(metrics *m, const char *name, const char *labels, double value)
{
	return set_value(m, name, labels, METRICS_GAUGE, value);
}

int metrics_set_total(metrics *m, const char *name, const char *labels, double value)
{
	return set_value(m, name, labels, METRICS_COUNTER, value);
}

int metrics_observe(metrics *m, const char *name, const char *labels, double value)
{
	pthread_mutex_lock(&m->mu);
	series *s = lookup(m, name, labels, METRICS_HISTOGRAM);
	if (s) {
		s->value += value;
		s->count += 1;
		for (int b = 0; b < NBUCKETS; b++)
			if (value <= bucket_le[b])
				s->buckets[b] += 1;
	}
	pthread_mutex_unlock(&m->mu);
	return s ? 0 : FL_EINVAL;
}

double metrics_get(metrics *m, const char *name, const char *labels)
{
	double v = 0;
	pthread_mutex_lock(&m->mu);
	for (int i = 0; i < m->nser; i++)
		if (strcmp(m->fam[m->ser[i].fam].name, name) == 0 &&
		    strcmp(m->ser[i].labels, labels ? labels : "") == 0)
			v = m->ser[i].value;
	pthread_mutex_unlock(&m->mu);
	return v;
}

static int bprintf(buf *b, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

static int bprintf(buf *b, const char *fmt, ...)
{
	char tmp[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	if (n < 0)
		return FL_EINVAL;
	return buf_append(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* "{a="b"}" or "{a="b",le="0.5"}" or "" */
static void label_set(char *out, size_t cap, const char *labels, const char *extra)
{
	int has = labels && *labels, hx = extra && *extra;
	if (!has && !hx)
		out[0] = 0;
	else
		snprintf(out, cap, "{%s%s%s}", has ? labels : "", has && hx ? "," : "",
		         hx ? extra : "");
}

int metrics_render(metrics *m, char **out, size_t *len)
{
	static const char *tn[] = {"counter", "gauge", "histogram"};
	buf b;
	buf_init(&b, 16u << 20);
	int rc = 0;
	pthread_mutex_lock(&m->mu);
	for (int f = 0; f < m->nfam && !rc; f++) {
		const family *fam = &m->fam[f];
		rc = bprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", fam->name, fam->help, fam->name,
		             tn[fam->type]);
		for (int i = 0; i < m->nser && !rc; i++) {
			const series *s = &m->ser[i];
			if (s->fam != f)
				continue;
			char ls[256];
			if (fam->type != METRICS_HISTOGRAM) {
				label_set(ls, sizeof ls, s->labels, NULL);
				rc = bprintf(&b, "%s%s %.17g\n", fam->name, ls, s->value);
				continue;
			}
			for (int k = 0; k < NBUCKETS && !rc; k++) {
				char le[48];
				snprintf(le, sizeof le, "le=\"%g\"", bucket_le[k]);
				label_set(ls, sizeof ls, s->labels, le);
				rc = bprintf(&b, "%s_bucket%s %.17g\n", fam->name, ls,
				             s->buckets[k]);
			}
			label_set(ls, sizeof ls, s->labels, "le=\"+Inf\"");
			if (!rc)
				rc = bprintf(&b, "%s_bucket%s %.17g\n", fam->name, ls, s->count);
			label_set(ls, sizeof ls, s->labels, NULL);
			if (!rc)
				rc = bprintf(&b, "%s_sum%s %.17g\n%s_count%s %.17g\n", fam->name,
				             ls, s->value, fam->name, ls, s->count);
		}
	}
	pthread_mutex_unlock(&m->mu);
	if (!rc)
		rc = buf_put_u8(&b, 0);
	if (rc) {
		buf_fini(&b);
		return rc;
	}
	*out = (char *)b.data;
	*len = b.len - 1;
	return 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **req_cls)
{
	(void)version;
	(void)upload_data;
	(void)upload_size;
	(void)req_cls;
	metrics *m = cls;
	struct MHD_Response *resp;
	unsigned status = MHD_HTTP_OK;
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
		static const char msg[] = "method not allowed\n";
		resp = MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg,
		                                       MHD_RESPMEM_PERSISTENT);
		status = MHD_HTTP_METHOD_NOT_ALLOWED;
	} else if (strcmp(url, "/metrics") == 0) {
		char *txt = NULL;
		size_t n = 0;
		if (metrics_render(m, &txt, &n) != 0)
			return MHD_NO;
		resp = MHD_create_response_from_buffer(n, txt, MHD_RESPMEM_MUST_FREE);
		if (resp)
			MHD_add_response_header(resp, "Content-Type",
			                        "text/plain; version=0.0.4; charset=utf-8");
	} else if (strcmp(url, "/healthz") == 0) {
		static const char ok[] = "ok\n";
		resp = MHD_create_response_from_buffer(sizeof ok - 1, (void *)ok,
		                                       MHD_RESPMEM_PERSISTENT);
	} else {
		static const char nf[] = "not found: try /metrics\n";
		resp = MHD_create_response_from_buffer(sizeof nf - 1, (void *)nf,
		                                       MHD_RESPMEM_PERSISTENT);
		status = MHD_HTTP_NOT_FOUND;
	}
	if (!resp)
		return MHD_NO;
	enum MHD_Result r = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return r;
}

/* libmicrohttpd's own messages ("Failed to bind to port 0": it knows only
 * the port argument, 0 with MHD_OPTION_SOCK_ADDR) go to the debug log; the
 * error a person sees is metrics_serve's, with the real address. */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 0)))
#endif
static void
mhd_log(void *cls, const char *fmt, va_list ap)
{
	(void)cls;
	char line[256];
	vsnprintf(line, sizeof line, fmt, ap);
	size_t n = strlen(line);
	while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		line[--n] = 0;
	LOGD("metrics", "libmicrohttpd: %s", line);
}

/* Why the address cannot be served, from a bind of our own (after the
 * daemon failed to start); "" when the bind works. */
static const char *bind_problem(const struct sockaddr_in *sa)
{
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return strerror(errno);
	int one = 1;
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	const char *why =
	    bind(s, (const struct sockaddr *)sa, sizeof *sa) == 0 ? "" : strerror(errno);
	close(s);
	return why;
}

int metrics_serve(metrics *m, const char *listen, int *port_out)
{
	char host[128];
	const char *colon = strrchr(listen, ':');
	if (!colon || (size_t)(colon - listen) >= sizeof host) {
		LOGE("metrics", "metrics.listen '%s' is not HOST:PORT", listen);
		return FL_ECONFIG;
	}
	memcpy(host, listen, (size_t)(colon - listen));
	host[colon - listen] = 0;
	char *end;
	long port = strtol(colon + 1, &end, 10);
	if (*end || port < 0 || port > 65535) {
		LOGE("metrics", "metrics.listen '%s': bad port", listen);
		return FL_ECONFIG;
	}
	struct sockaddr_in sa;
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)port);
	if (inet_pton(AF_INET, strcmp(host, "*") == 0 ? "0.0.0.0" : host, &sa.sin_addr) != 1) {
		LOGE("metrics", "metrics.listen '%s': host must be an IPv4 address or *", listen);
		return FL_ECONFIG;
	}
	m->httpd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL,
	                            NULL, on_request, m, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
	                            MHD_OPTION_SOCK_ADDR, &sa, MHD_OPTION_CONNECTION_LIMIT, 32u,
	                            MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END);
	if (!m->httpd) {
		const char *why = bind_problem(&sa);
		LOGE("metrics", "cannot serve metrics on %s: %s", listen,
		     why[0] ? why : "the HTTP server did not start");
		return FL_EBUSY;
	}
	const union MHD_DaemonInfo *info = MHD_get_daemon_info(m->httpd, MHD_DAEMON_INFO_BIND_PORT);
	if (port_out)
		*port_out = info ? info->port : (int)port;
	LOGI("metrics", "serving Prometheus metrics on http://%s:%d/metrics", host,
	     info ? info->port : (int)port);
	return 0;
}

void metrics_label_escape(const char *in, char *out, size_t cap)
{
	size_t k = 0;
	for (; *in && k + 3 < cap; in++) {
		if (*in == '\\' || *in == '"') {
			out[k++] = '\\';
			out[k++] = *in;
		} else if (*in == '\n') {
			out[k++] = '\\';
			out[k++] = 'n';
		} else {
			out[k++] = *in;
		}
	}
	out[k] = 0;
}
