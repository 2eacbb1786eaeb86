/* cmd_util — see cmd_util.h. */
#include "cmd_util.h"

#include "cli.h"
#include "model/kernels.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "train.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int cmdu_usage(const char *cmd, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "fedlora-node %s: ", cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nRun 'fedlora-node %s --help' for usage.\n", cmd);
	return CLI_USAGE;
}

int cmdu_opt(const char *cmd, int argc, char **argv, int *i, const char *name, const char **val)
{
	int r = cli_opt(argc, argv, i, name, val);
	if (r < 0)
		cmdu_usage(cmd, "option %s needs a value", name);
	return r;
}

int cmdu_begin(int argc, char **argv, void (*usage)(FILE *f),
               int (*parse)(int argc, char **argv, void *opts), void *opts, const int *threads)
{
	if (cli_wants_help(argc, argv)) {
		usage(stdout);
		return CLI_OK;
	}
	cmdu_passive_openmp(argv);
	int rc = parse(argc, argv, opts);
	if (rc != 0)
		return rc;
	cmdu_threads(*threads);
	return -1;
}

int cmdu_int(const char *cmd, const char *opt, const char *s, long long lo, long long hi, int *out)
{
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno != 0 || end == s || *end != 0 || v < lo || v > hi)
		return cmdu_usage(cmd, "%s: expected an integer in [%lld, %lld], got '%s'", opt, lo,
		                  hi, s);
	*out = (int)v;
	return 0;
}

int cmdu_u64(const char *cmd, const char *opt, const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno != 0 || end == s || *end != 0 || s[0] == '-')
		return cmdu_usage(cmd, "%s: expected an unsigned integer, got '%s'", opt, s);
	*out = (uint64_t)v;
	return 0;
}

int cmdu_float(const char *cmd, const char *opt, const char *s, double lo, double hi, float *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno != 0 || end == s || *end != 0 || !isfinite(v) || v < lo || v > hi)
		return cmdu_usage(cmd, "%s: expected a number in [%g, %g], got '%s'", opt, lo, hi,
		                  s);
	*out = (float)v;
	return 0;
}

int cmdu_open_model(const char *cmd, const char *path, const char *adapter_path, float alpha,
                    model **m, trn_adapter **ad)
{
	char err[512];
	model *mm = NULL;
	int rc = model_load(path, &mm, err, sizeof err);
	if (rc != 0) {
		fprintf(stderr, "fedlora-node %s: %s\n", cmd, err);
		return rc;
	}
	*m = mm;
	if (!adapter_path)
		return 0;
	char desc[160];
	rc = trn_adapter_open(mm, adapter_path, alpha, ad, desc, sizeof desc, err, sizeof err);
	if (rc != 0) {
		fprintf(stderr, "fedlora-node %s: --adapter %s\n", cmd, err);
		return rc;
	}
	fprintf(stderr, "adapter %s: %s\n", adapter_path, desc);
	return 0;
}

int cmdu_open_tok(const char *cmd, const char *model_path, const gguf *g, tok **tk)
{
	char err[512];
	int rc = tok_from_gguf(g, tk, err, sizeof err);
	if (rc != 0)
		fprintf(stderr, "fedlora-node %s: %s: tokenizer: %s\n", cmd, model_path, err);
	return rc;
}

void cmdu_threads(int n)
{
	kern_set_threads(n);
}

void cmdu_passive_openmp(char **argv)
{
	if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT"))
		return; /* the user chose */
	if (setenv("OMP_WAIT_POLICY", "passive", 1) != 0)
		return;
	fflush(NULL);
	execv("/proc/self/exe", argv - 1);
	/* no /proc or exec refused: carry on with the default policy */
	unsetenv("OMP_WAIT_POLICY");
}
