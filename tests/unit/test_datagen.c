/* datagen: deterministic, well-formed, and different per site. */
#include "testutil.h"

#include "datagen.h"
#include "err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Checks every line: "HH:MM site ID <rest>" with rest one of the four
 * shapes; counts alerts. */
static void check_lines(const buf *b, int site, size_t want, size_t *alerts)
{
	const char *name = dgen_site_name(site);
	size_t n = 0;
	*alerts = 0;
	const char *p = (const char *)b->data, *end = p + b->len;
	while (p < end) {
		const char *e = memchr(p, '\n', (size_t)(end - p));
		assert_non_null(e);
		char line[256];
		size_t l = (size_t)(e - p);
		assert_true(l > 0 && l < sizeof line);
		memcpy(line, p, l);
		line[l] = 0;
		int hh, mm, id, used = 0;
		char sname[32], letter;
		assert_int_equal(
		    sscanf(line, "%2d:%2d %31s %c%d %n", &hh, &mm, sname, &letter, &id, &used), 5);
		assert_true(hh >= 0 && hh < 24 && mm >= 0 && mm < 60 && id >= 1 && id <= 8);
		assert_string_equal(sname, name);
		const char *rest = line + used;
		if (strncmp(rest, "ALERT ", 6) == 0)
			(*alerts)++;
		else if (strncmp(rest, "MAINT ", 6) != 0 &&
		         strcmp(rest, "down for maintenance") != 0)
			assert_true(strstr(rest, "=") &&
			            (strstr(rest, " ok") || strstr(rest, " warn ")));
		n++;
		p = e + 1;
	}
	assert_int_equal(n, want);
}

static void test_sites(void **state)
{
	(void)state;
	for (int s = 0; s <= DGEN_DEPOT; s++) {
		buf a, b, c;
		buf_init(&a, 0);
		buf_init(&b, 0);
		buf_init(&c, 0);
		assert_int_equal(dgen_generate(s, 7, 3000, &a), 0);
		assert_int_equal(dgen_generate(s, 7, 3000, &b), 0);
		assert_int_equal(dgen_generate(s, 8, 3000, &c), 0);
		assert_int_equal(a.len, b.len);
		assert_memory_equal(a.data, b.data, a.len);
		assert_true(a.len != c.len || memcmp(a.data, c.data, a.len) != 0);
		size_t alerts;
		check_lines(&a, s, 3000, &alerts);
		assert_true(alerts > 10); /* failures do happen */
		buf_fini(&a);
		buf_fini(&b);
		buf_fini(&c);
	}
	assert_int_equal(dgen_site_parse("mill"), 2);
	assert_int_equal(dgen_site_parse("3"), 3);
	assert_int_equal(dgen_site_parse("moon"), -1);
	assert_int_equal(dgen_site_parse("9"), -1);
	buf x;
	buf_init(&x, 0);
	assert_int_equal(dgen_generate(9, 1, 10, &x), FL_EINVAL);
	buf_fini(&x);
}

static void test_cli(void **state)
{
	(void)state;
	const char *bin = getenv("FEDLORA_NODE_BIN");
	if (!bin)
		skip();
	char *d = tu_mkdtemp();
	assert_int_equal(tu_system("'%s' gen-data --site foundry --out '%s/s' --lines 50 "
	                           "--eval-lines 7 >/dev/null",
	                           bin, d),
	                 0);
	assert_int_equal(tu_system("test $(wc -l < '%s/s/train.txt') -eq 50 && "
	                           "test $(wc -l < '%s/s/eval.txt') -eq 7 && "
	                           "! cmp -s '%s/s/train.txt' '%s/s/eval.txt'",
	                           d, d, d, d),
	                 0);
	assert_int_equal(
	    tu_system("'%s' gen-data --site atlantis --out '%s/t' 2>/dev/null", bin, d), 2);
	assert_int_equal(
	    tu_system("'%s' gen-data --site 1 --out '%s/t' --lines -3 2>/dev/null", bin, d), 2);
	tu_rmtree(d);
	free(d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_sites),
	    cmocka_unit_test(test_cli),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
