/* datagen — see datagen.h. */
#include "datagen.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "err.h"
#include "fileio.h"
#include "rng.h"

#define DGEN_MAX_LINES 10000000u
#define DGEN_MACHINES  8

typedef struct site_def {
	const char *name;
	char prefix;         /* machine id letter */
	int machines;        /* machines on the site */
	const char *k[3];    /* sensor names */
	double base[3];      /* normal value */
	double noise[3];     /* normal spread */
	int decimals[3];     /* printed precision */
	int drift;           /* index of the sensor that degrades */
	double drift_step;   /* change per reading while degrading */
	double warn_at;      /* |deviation| that makes a warning */
	double alert_at;     /* ... and an alert */
	const char *warn;    /* warning text */
	const char *alert;   /* alert text (machine id follows) */
	const char *act_pre; /* alert action: "<pre> <machine>, <post>" */
	const char *act_post;
	const char *maint; /* maintenance text */
	int interval;      /* minutes between readings */
} site_def;

static const site_def sites[DGEN_SITES + 1] = {
    {"harbor",
     'P',
     6,
     {"temp", "pres", "vib"},
     {48, 4.2, 0.3},
     {2, 0.1, 0.05},
     {0, 1, 1},
     1,
     -0.15,
     0.5,
     1.1,
     "pres low",
     "seal leak",
     "stop pump",
     "replace seal",
     "seal replaced, pressure 4.2 bar",
     5},
    {"foundry",
     'F',
     4,
     {"temp", "fan", "gas"},
     {870, 1450, 12},
     {6, 20, 0.4},
     {0, 0, 1},
     0,
     9,
     40,
     90,
     "temp high",
     "overheat",
     "cut burner on",
     "check fan",
     "fan belt changed, temp 865 C",
     10},
    {"mill",
     'C',
     8,
     {"speed", "vib", "load"},
     {1.8, 0.8, 55},
     {0.05, 0.1, 4},
     {1, 1, 0},
     1,
     0.35,
     1.2,
     2.8,
     "vib rising",
     "bearing wear",
     "slow belt",
     "order bearing",
     "bearing replaced, vib 0.7 mm/s",
     5},
    {"plant",
     'K',
     5,
     {"amp", "pres", "oil"},
     {24, 7.5, 62},
     {1, 0.2, 2},
     {0, 1, 0},
     0,
     1.6,
     5,
     11,
     "current high",
     "motor overload",
     "unload compressor",
     "inspect motor",
     "motor rewound, 23 A",
     15},
    {"depot",
     'M',
     6,
     {"temp", "load", "vib"},
     {35, 40, 0.5},
     {3, 8, 0.1},
     {0, 0, 1},
     2,
     0.2,
     0.6,
     1.4,
     "check machine",
     "fault",
     "stop machine",
     "call technician",
     "serviced, running",
     10},
};

const char *dgen_site_name(int site)
{
	return site >= 0 && site <= DGEN_DEPOT ? sites[site].name : NULL;
}

int dgen_site_parse(const char *s)
{
	if (!s || !*s)
		return -1;
	for (int i = 0; i <= DGEN_DEPOT; i++)
		if (strcmp(s, sites[i].name) == 0)
			return i;
	char *end;
	long v = strtol(s, &end, 10);
	if (*end || v < 0 || v > DGEN_DEPOT)
		return -1;
	return (int)v;
}

static int put(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int put(buf *b, const char *fmt, ...)
{
	char line[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof line)
		return FL_ETOOBIG;
	return buf_append(b, line, (size_t)n);
}

/* State of one machine: healthy, then (sometimes) degrading until an
 * alert, down for maintenance, then healthy again. */
typedef struct machine {
	double dev; /* deviation of the drifting sensor */
	int degrading;
	int down; /* readings left in maintenance */
} machine;

int dgen_generate(int site, uint64_t seed, size_t lines, buf *out)
{
	if (site < 0 || site > DGEN_DEPOT || lines > DGEN_MAX_LINES)
		return FL_EINVAL;
	const site_def *s = &sites[site];
	machine m[DGEN_MACHINES];
	memset(m, 0, sizeof m);
	rng r;
	rng_seed(&r, seed * 0x9e3779b97f4a7c15ULL + (uint64_t)site * 7919 + 1);
	int minute = 6 * 60 + (int)rng_below(&r, 60);
	int rc = 0;
	for (size_t i = 0; i < lines && !rc; i++) {
		int id = (int)rng_below(&r, (uint64_t)s->machines);
		machine *x = &m[id];
		minute = (minute + s->interval / 2 + (int)rng_below(&r, (uint64_t)s->interval)) %
		         (24 * 60);
		char t[8];
		snprintf(t, sizeof t, "%02d:%02d", minute / 60, minute % 60);
		if (x->down) {
			if (--x->down == 0)
				rc = put(out, "%s %s %c%d MAINT %s\n", t, s->name, s->prefix,
				         id + 1, s->maint);
			else
				rc = put(out, "%s %s %c%d down for maintenance\n", t, s->name,
				         s->prefix, id + 1);
			continue;
		}
		if (!x->degrading && rng_uniform(&r) < 0.04)
			x->degrading = 1;
		if (x->degrading)
			x->dev += s->drift_step * (0.6 + 0.8 * rng_uniform(&r));
		double v[3];
		for (int k = 0; k < 3; k++)
			v[k] = s->base[k] + s->noise[k] * rng_normal(&r) +
			       (k == s->drift ? x->dev : 0);
		double a = x->dev < 0 ? -x->dev : x->dev;
		if (a >= s->alert_at) {
			char act[96];
			snprintf(act, sizeof act, "%s %c%d, %s", s->act_pre, s->prefix, id + 1,
			         s->act_post);
			rc = put(out, "%s %s %c%d ALERT %s - %s\n", t, s->name, s->prefix, id + 1,
			         s->alert, act);
			x->dev = 0;
			x->degrading = 0;
			x->down = 2 + (int)rng_below(&r, 3);
			continue;
		}
		rc = put(out, "%s %s %c%d %s=%.*f %s=%.*f %s=%.*f %s\n", t, s->name, s->prefix,
		         id + 1, s->k[0], s->decimals[0], v[0], s->k[1], s->decimals[1], v[1],
		         s->k[2], s->decimals[2], v[2], a >= s->warn_at ? "warn" : "ok");
		if (!rc && a >= s->warn_at) {
			/* "warn" is followed by its reason on the same line */
			out->len--;
			rc = put(out, " %s\n", s->warn);
		}
	}
	return rc;
}

static int write_file(const char *dir, const char *name, int site, uint64_t seed, size_t lines)
{
	char path[4096];
	int k = snprintf(path, sizeof path, "%s/%s", dir, name);
	if (k < 0 || (size_t)k >= sizeof path)
		return FL_ETOOBIG;
	buf b;
	buf_init(&b, 0);
	int rc = dgen_generate(site, seed, lines, &b);
	if (!rc)
		rc = file_write_atomic(path, b.data, b.len);
	if (!rc)
		printf("%s: %zu lines, %zu bytes\n", path, lines, b.len);
	else
		fprintf(stderr, "gen-data: cannot write %s: %s\n", path, fl_strerror(rc));
	buf_fini(&b);
	return rc;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: fedlora-node gen-data --site SITE --out DIR [--lines N] [--eval-lines N]"
	           " [--seed S]\n\n"
	           "Writes synthetic predictive-maintenance logs of one site to DIR/train.txt and\n"
	           "DIR/eval.txt (held out). Sites: harbor (0), foundry (1), mill (2), plant (3),\n"
	           "and depot (4), the generic mix used to pretrain a base model. Each site has\n"
	           "its own machines, sensor ranges and failure patterns (non-IID shards).\n"
	           "Defaults: --lines 3000 --eval-lines 400 --seed 1.\n");
}

static int parse_size(const char *opt, const char *v, size_t *out)
{
	char *end;
	unsigned long long x = strtoull(v ? v : "", &end, 10);
	if (!v || !*v || *end || *v == '-' || x > DGEN_MAX_LINES) {
		fprintf(stderr, "gen-data: %s: expected a count in 0..%u, got '%s'\n", opt,
		        DGEN_MAX_LINES, v ? v : "");
		return CLI_USAGE;
	}
	*out = (size_t)x;
	return 0;
}

int dgen_main(int argc, char **argv)
{
	const char *out = NULL, *site_s = NULL;
	size_t lines = 3000, eval_lines = 400;
	uint64_t seed = 1;
	if (cli_wants_help(argc, argv)) {
		usage(stdout);
		return CLI_OK;
	}
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--site") == 0 && v) {
			site_s = v;
			i++;
		} else if (strcmp(a, "--out") == 0 && v) {
			out = v;
			i++;
		} else if (strcmp(a, "--lines") == 0) {
			if (parse_size(a, v, &lines))
				return CLI_USAGE;
			i++;
		} else if (strcmp(a, "--eval-lines") == 0) {
			if (parse_size(a, v, &eval_lines))
				return CLI_USAGE;
			i++;
		} else if (strcmp(a, "--seed") == 0 && v) {
			char *end;
			unsigned long long x = strtoull(v, &end, 10);
			if (*end || !*v || *v == '-') {
				fprintf(stderr, "gen-data: --seed: expected an integer, got '%s'\n",
				        v);
				return CLI_USAGE;
			}
			seed = x;
			i++;
		} else {
			fprintf(stderr, "gen-data: unknown or incomplete argument '%s'\n", a);
			usage(stderr);
			return CLI_USAGE;
		}
	}
	int site = dgen_site_parse(site_s);
	if (!out || site < 0) {
		fprintf(stderr, "gen-data: %s\n",
		        !out ? "--out DIR is required"
		             : "--site: expected harbor, foundry, mill, "
		               "plant, depot or 0..4");
		return CLI_USAGE;
	}
	if (file_mkdirs(out) != 0) {
		fprintf(stderr, "gen-data: cannot create %s\n", out);
		return CLI_FAIL;
	}
	/* the held-out file is another stream of the same site */
	if (write_file(out, "train.txt", site, seed, lines) ||
	    write_file(out, "eval.txt", site, seed ^ 0xe7a1e7a1ULL, eval_lines))
		return CLI_FAIL;
	return CLI_OK;
}
