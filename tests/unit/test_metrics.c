/* metrics: exposition text and a real HTTP GET over loopback. */
#include "testutil.h"

#include "err.h"
#include "metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void test_render(void **s)
{
	(void)s;
	metrics *m;
	assert_int_equal(metrics_new(&m), 0);
	assert_int_equal(metrics_declare(m, "fedlora_rounds_total", METRICS_COUNTER, "Rounds"), 0);
	assert_int_equal(metrics_declare(m, "fedlora_nodes", METRICS_GAUGE, "Connected nodes"), 0);
	assert_int_equal(
	    metrics_declare(m, "fedlora_round_seconds", METRICS_HISTOGRAM, "Round time"), 0);
	assert_int_equal(metrics_declare(m, "bad name", METRICS_GAUGE, ""), FL_EINVAL);
	assert_int_equal(metrics_add(m, "fedlora_rounds_total", "outcome=\"committed\"", 1), 0);
	assert_int_equal(metrics_add(m, "fedlora_rounds_total", "outcome=\"committed\"", 2), 0);
	assert_int_equal(metrics_add(m, "fedlora_rounds_total", "outcome=\"abandoned\"", 1), 0);
	assert_int_equal(metrics_set(m, "fedlora_nodes", NULL, 4), 0);
	assert_int_equal(metrics_set(m, "fedlora_rounds_total", NULL, 4),
	                 FL_EINVAL); /* not a gauge */
	assert_int_equal(metrics_observe(m, "fedlora_round_seconds", NULL, 0.3), 0);
	assert_int_equal(metrics_observe(m, "fedlora_round_seconds", NULL, 7), 0);
	assert_int_equal(metrics_add(m, "nope", NULL, 1), FL_EINVAL);
	assert_true(metrics_get(m, "fedlora_rounds_total", "outcome=\"committed\"") == 3);
	char *txt;
	size_t n;
	assert_int_equal(metrics_render(m, &txt, &n), 0);
	assert_int_equal(strlen(txt), n);
	assert_non_null(strstr(txt, "# TYPE fedlora_rounds_total counter\n"));
	assert_non_null(strstr(txt, "fedlora_rounds_total{outcome=\"committed\"} 3\n"));
	assert_non_null(strstr(txt, "fedlora_nodes 4\n"));
	assert_non_null(strstr(txt, "fedlora_round_seconds_bucket{le=\"0.5\"} 1\n"));
	assert_non_null(strstr(txt, "fedlora_round_seconds_bucket{le=\"10\"} 2\n"));
	assert_non_null(strstr(txt, "fedlora_round_seconds_bucket{le=\"+Inf\"} 2\n"));
	assert_non_null(strstr(txt, "fedlora_round_seconds_sum 7.2999999999999998\n"));
	assert_non_null(strstr(txt, "fedlora_round_seconds_count 2\n"));
	free(txt);
	char esc[64];
	metrics_label_escape("a\"b\\c\nd", esc, sizeof esc);
	assert_string_equal(esc, "a\\\"b\\\\c\\nd");
	metrics_free(m);
}

static char *http_get(int port, const char *path)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(fd >= 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	char req[256];
	int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
	assert_int_equal(write(fd, req, (size_t)n), n);
	size_t cap = 1 << 16, len = 0;
	char *out = malloc(cap);
	ssize_t k;
	while ((k = read(fd, out + len, cap - 1 - len)) > 0)
		len += (size_t)k;
	out[len] = 0;
	close(fd);
	return out;
}

static void test_http(void **s)
{
	(void)s;
	metrics *m;
	assert_int_equal(metrics_new(&m), 0);
	metrics_declare(m, "fedlora_updates_total", METRICS_COUNTER, "Updates");
	metrics_add(m, "fedlora_updates_total", "result=\"accepted\"", 5);
	int port = 0;
	assert_int_equal(metrics_serve(m, "127.0.0.1:0", &port), 0);
	assert_true(port > 0);
	char *r = http_get(port, "/metrics");
	assert_non_null(strstr(r, "200 OK"));
	assert_non_null(strstr(r, "text/plain; version=0.0.4"));
	assert_non_null(strstr(r, "fedlora_updates_total{result=\"accepted\"} 5\n"));
	free(r);
	r = http_get(port, "/nothing");
	assert_non_null(strstr(r, "404"));
	free(r);
	metrics_free(m);
	assert_int_equal(metrics_new(&m), 0);
	assert_int_equal(metrics_serve(m, "localhost-ish", &port), FL_ECONFIG);
	assert_int_equal(metrics_serve(m, "127.0.0.1:99999", &port), FL_ECONFIG);
	metrics_free(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_render),
	    cmocka_unit_test(test_http),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
