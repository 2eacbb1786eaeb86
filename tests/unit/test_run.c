/* run: deploy/node.conf loads with the node's schema, and documents every
 * key of it (set or commented out) in the right section, with a comment. */
#include "testutil.h"

#include "config.h"
#include "err.h"
#include "fileio.h"
#include "run.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_example_config(void **state)
{
	(void)state;
	int n;
	const cfg_key *k = nrun_schema(&n);
	cfg *c = NULL;
	assert_int_equal(cfg_new(k, n, &c), 0);
	const char *path = tu_src_path("deploy/node.conf");
	int rc = cfg_load_file(c, path);
	if (rc)
		fail_msg("%s", cfg_error(c));
	assert_string_equal(cfg_str(c, "node.trainer"), "lora");
	cfg_free(c);

	uint8_t *txt = NULL;
	size_t len = 0;
	assert_int_equal(file_read_all(path, 1 << 20, &txt, &len), 0);
	for (int i = 0; i < n; i++) {
		/* find "[section]" then "key =" or "#key =" before the next section */
		char sec[64];
		snprintf(sec, sizeof sec, "\n[%s]\n", k[i].section);
		const char *s = strstr((char *)txt, sec);
		if (!s)
			fail_msg("deploy/node.conf has no [%s] section", k[i].section);
		s += strlen(sec);
		const char *end = strstr(s, "\n[");
		if (!end)
			end = (const char *)txt + len;
		int found = 0, commented = 0;
		for (const char *l = s; l < end && !found;) {
			const char *e = memchr(l, '\n', (size_t)(end - l));
			if (!e)
				e = end;
			const char *q = l;
			if (*q == '#')
				q++;
			size_t kl = strlen(k[i].key);
			if ((size_t)(e - q) > kl && strncmp(q, k[i].key, kl) == 0 &&
			    (q[kl] == ' ' || q[kl] == '=')) {
				found = 1;
				/* the line before it is a comment that explains it */
				const char *prev = l - 2;
				while (prev > s && *prev != '\n')
					prev--;
				if (*prev == '\n')
					prev++;
				commented = *prev == '#' && prev[1] == ' ';
			}
			l = e + 1;
		}
		if (!found)
			fail_msg("deploy/node.conf does not show %s.%s", k[i].section, k[i].key);
		if (!commented)
			fail_msg("deploy/node.conf: %s.%s has no explaining comment", k[i].section,
			         k[i].key);
	}
	free(txt);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_example_config),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
