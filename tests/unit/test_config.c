/* config: precedence file < env < flag, and errors that name key and place. */
#include "testutil.h"

#include "config.h"
#include "err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const cfg_key schema[] = {
    {"server", "listen", CFG_STR, "tcp://127.0.0.1:7070", 0, 0, NULL, "endpoint"},
    {"server", "max_nodes", CFG_INT, "100", 1, 100000, NULL, "cap"},
    {"server", "verbose", CFG_BOOL, "false", 0, 0, NULL, "chatty"},
    {"rounds", "lr", CFG_DOUBLE, "0.001", 0, 10, NULL, "learning rate"},
    {"rounds", "max_message", CFG_SIZE, "64MiB", 0, 0, NULL, "cap"},
    {"rounds", "strategy", CFG_ENUM, "fedavg", 0, 0, "fedavg|fedadam|median", "how"},
    {"rounds", "local-steps", CFG_INT, "10", 0, 0, NULL, "steps"},
    {"tls", "crl", CFG_STR, NULL, 0, 0, NULL, "optional CRL"},
};
#define NK ((int)(sizeof schema / sizeof schema[0]))

static char *g_dir;

static int setup(void **s)
{
	(void)s;
	g_dir = tu_mkdtemp();
	return g_dir ? 0 : -1;
}
static int teardown(void **s)
{
	(void)s;
	tu_rmtree(g_dir);
	free(g_dir);
	return 0;
}

static const char *write_ini(const char *name, const char *text)
{
	static char p[512];
	snprintf(p, sizeof p, "%s/%s", g_dir, name);
	FILE *f = fopen(p, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	return p;
}

static void test_defaults(void **s)
{
	(void)s;
	cfg *c;
	assert_int_equal(cfg_new(schema, NK, &c), 0);
	assert_string_equal(cfg_str(c, "server.listen"), "tcp://127.0.0.1:7070");
	assert_int_equal(cfg_int(c, "server.max_nodes"), 100);
	assert_false(cfg_bool(c, "server.verbose"));
	assert_true(cfg_double(c, "rounds.lr") == 0.001);
	assert_int_equal(cfg_size(c, "rounds.max_message"), 64u << 20);
	assert_string_equal(cfg_str(c, "rounds.strategy"), "fedavg");
	assert_false(cfg_is_set(c, "tls.crl"));
	assert_null(cfg_str(c, "tls.crl"));
	assert_string_equal(cfg_source(c, "server.listen"), "default");
	cfg_free(c);
}

static void test_precedence_file_env_flag(void **s)
{
	(void)s;
	const char *p = write_ini("a.conf", "; comment\n[server]\nmax_nodes = 7\nverbose = yes\n"
	                                    "[rounds]\nlr = 0.5\nstrategy = median\n");
	char *env[] = {"FEDLORA_SERVER_MAX_NODES=8", "FEDLORA_ROUNDS_LOCAL_STEPS=3",
	               "FEDLORA_SRC=/ignored/not/a/section", "PATH=/bin", NULL};
	char a0[] = "prog", a1[] = "--server.max_nodes=9", a2[] = "positional",
	     a3[] = "--rounds.max_message=2K";
	char *argv[] = {a0, a1, a2, a3, NULL};
	int argc = 4;
	/* Apply in "wrong" order: flags first, file last; precedence must hold. */
	cfg *c;
	assert_int_equal(cfg_new(schema, NK, &c), 0);
	assert_int_equal(cfg_load_args(c, &argc, argv), 0);
	assert_int_equal(argc, 2);
	assert_string_equal(argv[1], "positional");
	assert_int_equal(cfg_load_env(c, env), 0);
	assert_int_equal(cfg_load_file(c, p), 0);
	assert_int_equal(cfg_int(c, "server.max_nodes"), 9);   /* flag */
	assert_int_equal(cfg_int(c, "rounds.local-steps"), 3); /* env */
	assert_true(cfg_bool(c, "server.verbose"));            /* file */
	assert_true(cfg_double(c, "rounds.lr") == 0.5);        /* file */
	assert_string_equal(cfg_str(c, "rounds.strategy"), "median");
	assert_int_equal(cfg_size(c, "rounds.max_message"), 2048); /* flag */
	assert_non_null(strstr(cfg_source(c, "server.verbose"), ":4"));
	assert_non_null(strstr(cfg_source(c, "rounds.local-steps"), "FEDLORA_ROUNDS_LOCAL_STEPS"));
	cfg_free(c);

	/* env over file without flags */
	assert_int_equal(cfg_new(schema, NK, &c), 0);
	assert_int_equal(cfg_load_file(c, p), 0);
	assert_int_equal(cfg_load_env(c, env), 0);
	assert_int_equal(cfg_int(c, "server.max_nodes"), 8);
	cfg_free(c);
}

static void expect_file_error(const char *text, int code, const char *needle)
{
	cfg *c;
	assert_int_equal(cfg_new(schema, NK, &c), 0);
	const char *p = write_ini("bad.conf", text);
	int rc = cfg_load_file(c, p);
	if (rc != code || !strstr(cfg_error(c), needle))
		fail_msg("config '%s': rc %d (want %d), error '%s' (want '%s')", text, rc, code,
		         cfg_error(c), needle);
	cfg_free(c);
}

static void test_file_errors(void **s)
{
	(void)s;
	expect_file_error("[server]\nnope = 1\n", FL_ECONFIG, "bad.conf:2: unknown key 'nope'");
	expect_file_error("[nowhere]\nx = 1\n", FL_ECONFIG, "unknown section [nowhere]");
	expect_file_error("[server]\n\nmax_nodes = many\n", FL_ECONFIG,
	                  "bad.conf:3: server.max_nodes = 'many' is not an integer");
	expect_file_error("[server]\nmax_nodes = 0\n", FL_ECONFIG, "out of range");
	expect_file_error("[server]\nverbose = perhaps\n", FL_ECONFIG, "is not a boolean");
	expect_file_error("[rounds]\nlr = nan\n", FL_ECONFIG, "is not a number");
	expect_file_error("[rounds]\nmax_message = 12Q\n", FL_ECONFIG, "is not a size");
	expect_file_error("[rounds]\nstrategy = fedmagic\n", FL_ECONFIG,
	                  "'fedmagic' is not one of fedavg|fedadam|median");
	expect_file_error("[server\nx=1\n", FL_ECONFIG, "bad.conf:1: syntax error");
	char longline[600];
	memset(longline, 'x', sizeof longline);
	memcpy(longline, "[server]\nlisten = ", 18);
	longline[sizeof longline - 2] = '\n';
	longline[sizeof longline - 1] = 0;
	expect_file_error(longline, FL_ECONFIG, "line too long");

	cfg *c;
	assert_int_equal(cfg_new(schema, NK, &c), 0);
	char p[512];
	snprintf(p, sizeof p, "%s/does-not-exist.conf", g_dir);
	assert_int_equal(cfg_load_file(c, p), FL_ENOENT);
	assert_non_null(strstr(cfg_error(c), "does-not-exist.conf"));
	cfg_free(c);
}

static void test_env_and_flag_errors(void **s)
{
	(void)s;
	cfg *c;
	assert_int_equal(cfg_new(schema, NK, &c), 0);
	char *env[] = {"FEDLORA_SERVER_MAXNODES=3", NULL};
	assert_int_equal(cfg_load_env(c, env), FL_ECONFIG);
	assert_non_null(strstr(cfg_error(c), "FEDLORA_SERVER_MAXNODES"));
	char *env2[] = {"FEDLORA_ROUNDS_LR=fast", NULL};
	assert_int_equal(cfg_load_env(c, env2), FL_ECONFIG);
	assert_non_null(strstr(cfg_error(c), "FEDLORA_ROUNDS_LR"));
	assert_non_null(strstr(cfg_error(c), "rounds.lr"));
	char a0[] = "p", a1[] = "--server.bogus=1";
	char *argv[] = {a0, a1, NULL};
	int argc = 2;
	assert_int_equal(cfg_load_args(c, &argc, argv), FL_ECONFIG);
	assert_non_null(strstr(cfg_error(c), "unknown configuration key 'server.bogus'"));
	char b1[] = "--rounds.lr=-1";
	char *argv2[] = {a0, b1, NULL};
	argc = 2;
	assert_int_equal(cfg_load_args(c, &argc, argv2), FL_ECONFIG);
	assert_non_null(strstr(cfg_error(c), "flag --rounds.lr"));
	cfg_free(c);
}

static void test_parsers(void **s)
{
	(void)s;
	uint64_t sz;
	assert_int_equal(cfg_parse_size("1GiB", &sz), 0);
	assert_int_equal(sz, 1ull << 30);
	assert_int_equal(cfg_parse_size("10", &sz), 0);
	assert_int_equal(sz, 10);
	assert_int_equal(cfg_parse_size("-1", &sz), FL_EINVAL);
	assert_int_equal(cfg_parse_size("99999999999999999999G", &sz), FL_EINVAL);
	int64_t i;
	assert_int_equal(cfg_parse_int("0x10", &i), 0);
	assert_int_equal(i, 16);
	assert_int_equal(cfg_parse_int("12abc", &i), FL_EINVAL);
	assert_int_equal(cfg_parse_int("", &i), FL_EINVAL);
	double d;
	assert_int_equal(cfg_parse_double("inf", &d), FL_EINVAL);
	assert_int_equal(cfg_parse_double("1e-3", &d), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_defaults),    cmocka_unit_test(test_precedence_file_env_flag),
	    cmocka_unit_test(test_file_errors), cmocka_unit_test(test_env_and_flag_errors),
	    cmocka_unit_test(test_parsers),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
