/* metrics — Prometheus text metrics for the coordinator, served over HTTP by
 * libmicrohttpd on its own thread.
 *
 * Families are declared once (counter, gauge or histogram); series are
 * addressed by family name plus an optional label string such as
 * `reason="late"`. Updates take a mutex, so the event loop and the HTTP
 * thread can share one registry. Off unless metrics.listen is configured. */
#ifndef FL_METRICS_H
#define FL_METRICS_H
#include <stddef.h>

typedef struct metrics metrics;

enum metrics_type { METRICS_COUNTER, METRICS_GAUGE, METRICS_HISTOGRAM };

int metrics_new(metrics **out);
void metrics_free(metrics *m); /* stops the server first; NULL ok */

/* Declares a family; name must match [a-zA-Z_:][a-zA-Z0-9_:]*. Histograms
 * use fixed buckets in seconds (0.01 .. 600). */
int metrics_declare(metrics *m, const char *name, enum metrics_type type, const char *help);
/* labels: NULL or `key="value"[,key2="value2"]` (values escaped by caller
 * via metrics_label_escape when they come from outside). */
int metrics_add(metrics *m, const char *name, const char *labels, double delta);
int metrics_set(metrics *m, const char *name, const char *labels, double value);
/* Sets a counter to a running total counted elsewhere (e.g. the channel's
 * statistics); the caller keeps it from decreasing. */
int metrics_set_total(metrics *m, const char *name, const char *labels, double value);
int metrics_observe(metrics *m, const char *name, const char *labels, double value);
/* Current value of a counter/gauge series (0 if absent), for tests/status. */
double metrics_get(metrics *m, const char *name, const char *labels);

/* Renders the exposition text into a malloc'd string. */
int metrics_render(metrics *m, char **out, size_t *len);

/* Serves GET /metrics on "HOST:PORT" (e.g. "127.0.0.1:9464"; port 0 picks
 * one); *port_out gets the bound port. Other paths answer 404. */
int metrics_serve(metrics *m, const char *listen, int *port_out);

/* Escapes a label value (\\, \", \n) into out (cap bytes, truncating). */
void metrics_label_escape(const char *in, char *out, size_t cap);

#endif
