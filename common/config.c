/* config — see config.h. */
#include "config.h"

#include "err.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Configs are a few KiB; anything this large is not one. */
#define CFG_MAX_FILE (1 << 20)

enum { PRIO_DEFAULT = 0, PRIO_FILE = 1, PRIO_ENV = 2, PRIO_FLAG = 3 };

typedef struct cfg_val {
	char *text; /* NULL when unset */
	int prio;
	char source[96];
	union {
		int64_t i;
		double d;
		int b;
		uint64_t sz;
	} v;
} cfg_val;

struct cfg {
	const cfg_key *schema;
	int n;
	cfg_val *vals;
	char err[512];
	/* INI parsing state */
	const char *path;
	int line;
	int rc;
};

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int
set_err(cfg *c, int rc, const char *fmt, ...);

static int set_err(cfg *c, int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fl_vfail(c->err, sizeof c->err, rc, fmt, ap);
	va_end(ap);
	return rc;
}

const char *cfg_error(const cfg *c)
{
	return c->err;
}

int cfg_parse_int(const char *s, int64_t *out)
{
	if (!s || !*s)
		return FL_EINVAL;
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 0);
	if (errno || *end)
		return FL_EINVAL;
	*out = v;
	return 0;
}

int cfg_parse_double(const char *s, double *out)
{
	if (!s || !*s)
		return FL_EINVAL;
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || *end || !isfinite(v))
		return FL_EINVAL;
	*out = v;
	return 0;
}

int cfg_parse_bool(const char *s, int *out)
{
	static const char *t[] = {"true", "yes", "on", "1"};
	static const char *f[] = {"false", "no", "off", "0"};
	if (!s)
		return FL_EINVAL;
	for (int i = 0; i < 4; i++) {
		if (strcasecmp(s, t[i]) == 0) {
			*out = 1;
			return 0;
		}
		if (strcasecmp(s, f[i]) == 0) {
			*out = 0;
			return 0;
		}
	}
	return FL_EINVAL;
}

int cfg_parse_size(const char *s, uint64_t *out)
{
	if (!s || !*s || *s == '-')
		return FL_EINVAL;
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s)
		return FL_EINVAL;
	uint64_t mul = 1;
	if (*end) {
		static const struct {
			const char *suf;
			uint64_t mul;
		} sfx[] = {{"K", 1024ull},          {"KiB", 1024ull},
		           {"KB", 1024ull},         {"M", 1024ull * 1024},
		           {"MiB", 1024ull * 1024}, {"MB", 1024ull * 1024},
		           {"G", 1ull << 30},       {"GiB", 1ull << 30},
		           {"GB", 1ull << 30},      {"B", 1}};
		int found = 0;
		for (unsigned i = 0; i < sizeof sfx / sizeof sfx[0]; i++)
			if (strcmp(end, sfx[i].suf) == 0) {
				mul = sfx[i].mul;
				found = 1;
			}
		if (!found)
			return FL_EINVAL;
	}
	if (v > UINT64_MAX / mul)
		return FL_EINVAL;
	*out = v * mul;
	return 0;
}

static int find_key(const cfg *c, const char *section, const char *key)
{
	for (int i = 0; i < c->n; i++)
		if (strcmp(c->schema[i].section, section) == 0 &&
		    strcmp(c->schema[i].key, key) == 0)
			return i;
	return -1;
}

static int find_name(const cfg *c, const char *name)
{
	const char *dot = strchr(name, '.');
	if (!dot)
		return -1;
	char sec[128];
	size_t n = (size_t)(dot - name);
	if (n >= sizeof sec)
		return -1;
	memcpy(sec, name, n);
	sec[n] = 0;
	return find_key(c, sec, dot + 1);
}

static int section_known(const cfg *c, const char *section)
{
	for (int i = 0; i < c->n; i++)
		if (strcmp(c->schema[i].section, section) == 0)
			return 1;
	return 0;
}

static int in_range(const cfg_key *k, double v)
{
	return !(k->min < k->max) || (v >= k->min && v <= k->max);
}

/* Validates and stores text for key i if prio >= the current one. */
static int assign(cfg *c, int i, const char *text, int prio, const char *source)
{
	const cfg_key *k = &c->schema[i];
	cfg_val *val = &c->vals[i];
	cfg_val nv = {0};
	int bad = 0;
	switch (k->type) {
	case CFG_STR:
		break;
	case CFG_INT:
		bad = cfg_parse_int(text, &nv.v.i) != 0;
		if (!bad && !in_range(k, (double)nv.v.i))
			return set_err(c, FL_ECONFIG, "%s: %s.%s = %s is out of range [%g, %g]",
			               source, k->section, k->key, text, k->min, k->max);
		break;
	case CFG_DOUBLE:
		bad = cfg_parse_double(text, &nv.v.d) != 0;
		if (!bad && !in_range(k, nv.v.d))
			return set_err(c, FL_ECONFIG, "%s: %s.%s = %s is out of range [%g, %g]",
			               source, k->section, k->key, text, k->min, k->max);
		break;
	case CFG_BOOL:
		bad = cfg_parse_bool(text, &nv.v.b) != 0;
		break;
	case CFG_SIZE:
		bad = cfg_parse_size(text, &nv.v.sz) != 0;
		if (!bad && !in_range(k, (double)nv.v.sz))
			return set_err(c, FL_ECONFIG, "%s: %s.%s = %s is out of range [%g, %g]",
			               source, k->section, k->key, text, k->min, k->max);
		break;
	case CFG_ENUM: {
		bad = 1;
		size_t tl = strlen(text);
		for (const char *p = k->choices; p && *p;) {
			const char *bar = strchr(p, '|');
			size_t n = bar ? (size_t)(bar - p) : strlen(p);
			if (n == tl && strncmp(p, text, n) == 0)
				bad = 0;
			p = bar ? bar + 1 : p + n;
		}
		if (bad)
			return set_err(c, FL_ECONFIG, "%s: %s.%s = '%s' is not one of %s", source,
			               k->section, k->key, text, k->choices);
		break;
	}
	}
	static const char *tname[] = {"a string",  "an integer", "a number",
	                              "a boolean", "a size",     "a choice"};
	if (bad)
		return set_err(c, FL_ECONFIG, "%s: %s.%s = '%s' is not %s", source, k->section,
		               k->key, text, tname[k->type]);
	if (prio < val->prio && val->text)
		return 0; /* a higher-precedence source already set it */
	nv.text = strdup(text);
	if (!nv.text)
		return set_err(c, FL_ENOMEM, "out of memory");
	nv.prio = prio;
	snprintf(nv.source, sizeof nv.source, "%s", source);
	free(val->text);
	*val = nv;
	return 0;
}

int cfg_new(const cfg_key *schema, int nkeys, cfg **out)
{
	cfg *c = calloc(1, sizeof *c);
	if (!c)
		return FL_ENOMEM;
	c->schema = schema;
	c->n = nkeys;
	c->vals = calloc((size_t)(nkeys > 0 ? nkeys : 1), sizeof *c->vals);
	if (!c->vals) {
		free(c);
		return FL_ENOMEM;
	}
	for (int i = 0; i < nkeys; i++) {
		if (schema[i].def && assign(c, i, schema[i].def, PRIO_DEFAULT, "default") != 0) {
			fprintf(stderr, "config schema: bad default for %s.%s: %s\n",
			        schema[i].section, schema[i].key, c->err);
			abort(); /* programmer error in the schema */
		}
	}
	*out = c;
	return 0;
}

void cfg_free(cfg *c)
{
	if (!c)
		return;
	for (int i = 0; i < c->n; i++)
		free(c->vals[i].text);
	free(c->vals);
	free(c);
}

/* ini_reader that counts lines and detects over-long ones. */
typedef struct line_reader {
	FILE *f;
	cfg *c;
	int too_long;
} line_reader;

static char *read_line(char *str, int num, void *stream)
{
	line_reader *lr = stream;
	char *s = fgets(str, num, lr->f);
	if (!s)
		return NULL;
	lr->c->line++;
	size_t n = strlen(s);
	if (n == (size_t)num - 1 && s[n - 1] != '\n' && !feof(lr->f) && !lr->too_long)
		lr->too_long = lr->c->line;
	return s;
}

static int on_ini_pair(void *user, const char *section, const char *name, const char *value)
{
	line_reader *lr = user;
	cfg *c = lr->c;
	if (c->rc)
		return 0;
	char src[96];
	snprintf(src, sizeof src, "%.80s:%d", c->path, c->line);
	if (!section[0]) {
		c->rc = set_err(c, FL_ECONFIG, "%s: key '%s' outside any [section]", src, name);
		return 0;
	}
	if (!section_known(c, section)) {
		c->rc = set_err(c, FL_ECONFIG, "%s: unknown section [%s]", src, section);
		return 0;
	}
	int i = find_key(c, section, name);
	if (i < 0) {
		c->rc = set_err(c, FL_ECONFIG, "%s: unknown key '%s' in section [%s]", src, name,
		                section);
		return 0;
	}
	int rc = assign(c, i, value, PRIO_FILE, src);
	if (rc)
		c->rc = rc;
	return rc == 0;
}

/* A config file is text: a directory (which fopen accepts and reads as
 * empty) or a file with control bytes is refused by name, before any of its
 * bytes could be echoed into a message about a key. */
static int check_text_file(cfg *c, FILE *f, const char *path)
{
	struct stat st;
	if (fstat(fileno(f), &st) != 0)
		return set_err(c, FL_EIO, "config file %s: %s", path, strerror(errno));
	if (S_ISDIR(st.st_mode))
		return set_err(c, FL_ECONFIG, "config file %s is a directory", path);
	if (!S_ISREG(st.st_mode))
		return set_err(c, FL_ECONFIG, "config file %s is not a regular file", path);
	if (st.st_size > CFG_MAX_FILE)
		return set_err(c, FL_ETOOBIG, "config file %s is larger than %d bytes", path,
		               CFG_MAX_FILE);
	int ch, line = 1;
	long off = 0;
	while ((ch = getc(f)) != EOF) {
		if ((ch < 0x20 && ch != '\n' && ch != '\r' && ch != '\t') || ch == 0x7f)
			return set_err(
			    c, FL_ECONFIG,
			    "config file %s:%d: not a text file (byte 0x%02x at offset %ld)", path,
			    line, (unsigned)ch, off);
		line += ch == '\n';
		off++;
	}
	if (ferror(f) || fseek(f, 0, SEEK_SET) != 0)
		return set_err(c, FL_EIO, "config file %s: cannot read: %s", path, strerror(errno));
	return 0;
}

int cfg_load_file(cfg *c, const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return set_err(c, errno == ENOENT ? FL_ENOENT : FL_EIO,
		               "cannot open config file %s: %s", path, strerror(errno));
	int crc = check_text_file(c, f, path);
	if (crc) {
		fclose(f);
		return crc;
	}
	line_reader lr = {f, c, 0};
	c->path = path;
	c->line = 0;
	c->rc = 0;
	ini_stop_on_first_error = 1; /* report the first problem, not a cascade */
	int r = ini_parse_stream(read_line, &lr, on_ini_pair, &lr);
	fclose(f);
	if (lr.too_long)
		return set_err(c, FL_ECONFIG, "%s:%d: line too long", path, lr.too_long);
	if (c->rc)
		return c->rc;
	if (r > 0)
		return set_err(c, FL_ECONFIG,
		               "%s:%d: syntax error (expected [section] or key = value)", path, r);
	if (r < 0)
		return set_err(c, FL_EIO, "%s: cannot parse", path);
	return 0;
}

/* "FEDLORA_" + upper(section) + "_" + upper(key), '.'/'-' -> '_'. */
static void env_name(const cfg_key *k, char *out, size_t cap)
{
	snprintf(out, cap, "FEDLORA_%s_%s", k->section, k->key);
	for (char *p = out; *p; p++)
		*p = (*p == '.' || *p == '-') ? '_' : (char)toupper((unsigned char)*p);
}

int cfg_load_env(cfg *c, char **envp)
{
	for (char **e = envp; e && *e; e++) {
		if (strncmp(*e, "FEDLORA_", 8) != 0)
			continue;
		const char *eq = strchr(*e, '=');
		if (!eq)
			continue;
		size_t nlen = (size_t)(eq - *e);
		int matched = 0, sec_prefix = 0;
		for (int i = 0; i < c->n; i++) {
			char nm[160];
			env_name(&c->schema[i], nm, sizeof nm);
			if (strlen(nm) == nlen && strncmp(nm, *e, nlen) == 0) {
				char src[200];
				snprintf(src, sizeof src, "environment %.*s", (int)nlen, *e);
				int rc = assign(c, i, eq + 1, PRIO_ENV, src);
				if (rc)
					return rc;
				matched = 1;
				break;
			}
			/* Does the variable start with this key's section prefix? */
			char *us = strchr(nm + 8, '_');
			size_t plen = us ? (size_t)(us - nm) + 1 : 0;
			if (plen && nlen > plen && strncmp(nm, *e, plen) == 0)
				sec_prefix = 1;
		}
		if (!matched && sec_prefix)
			return set_err(c, FL_ECONFIG,
			               "environment %.*s: names no configuration key", (int)nlen,
			               *e);
	}
	return 0;
}

int cfg_set(cfg *c, const char *name, const char *value, const char *source)
{
	int i = find_name(c, name);
	if (i < 0)
		return set_err(c, FL_ECONFIG, "%s: unknown configuration key '%s'", source, name);
	return assign(c, i, value, PRIO_FLAG, source);
}

int cfg_load_args(cfg *c, int *argc, char **argv)
{
	int w = 1;
	for (int r = 1; r < *argc; r++) {
		const char *a = argv[r];
		const char *eq = a[0] == '-' && a[1] == '-' ? strchr(a, '=') : NULL;
		const char *dot = eq ? memchr(a + 2, '.', (size_t)(eq - a - 2)) : NULL;
		if (!dot) {
			argv[w++] = argv[r];
			continue;
		}
		char name[160];
		size_t n = (size_t)(eq - a - 2);
		if (n >= sizeof name)
			return set_err(c, FL_ECONFIG, "flag %s: name too long", a);
		memcpy(name, a + 2, n);
		name[n] = 0;
		char src[200];
		snprintf(src, sizeof src, "flag --%s", name);
		int rc = cfg_set(c, name, eq + 1, src);
		if (rc)
			return rc;
	}
	*argc = w;
	argv[w] = NULL;
	return 0;
}

static const cfg_val *get(const cfg *c, const char *name, cfg_type want)
{
	int i = find_name(c, name);
	if (i < 0 || c->schema[i].type != want) {
		fprintf(stderr, "config: programmer error: %s is not a declared key of that type\n",
		        name);
		abort();
	}
	return &c->vals[i];
}

int cfg_is_set(const cfg *c, const char *name)
{
	int i = find_name(c, name);
	return i >= 0 && c->vals[i].text != NULL;
}

const char *cfg_str(const cfg *c, const char *name)
{
	int i = find_name(c, name);
	if (i < 0 || (c->schema[i].type != CFG_STR && c->schema[i].type != CFG_ENUM)) {
		fprintf(stderr, "config: programmer error: %s is not a string key\n", name);
		abort();
	}
	return c->vals[i].text;
}

int64_t cfg_int(const cfg *c, const char *name)
{
	return get(c, name, CFG_INT)->v.i;
}
double cfg_double(const cfg *c, const char *name)
{
	return get(c, name, CFG_DOUBLE)->v.d;
}
int cfg_bool(const cfg *c, const char *name)
{
	return get(c, name, CFG_BOOL)->v.b;
}
uint64_t cfg_size(const cfg *c, const char *name)
{
	return get(c, name, CFG_SIZE)->v.sz;
}

const char *cfg_source(const cfg *c, const char *name)
{
	int i = find_name(c, name);
	if (i < 0 || !c->vals[i].text)
		return "unset";
	return c->vals[i].source;
}

void cfg_dump(const cfg *c, FILE *f)
{
	for (int i = 0; i < c->n; i++)
		fprintf(f, "%s.%s = %s  # %s\n", c->schema[i].section, c->schema[i].key,
		        c->vals[i].text ? c->vals[i].text : "",
		        c->vals[i].text ? c->vals[i].source : "unset");
}

void cfg_help(const cfg_key *schema, int nkeys, FILE *f)
{
	const char *sec = "";
	for (int i = 0; i < nkeys; i++) {
		if (strcmp(sec, schema[i].section) != 0) {
			sec = schema[i].section;
			fprintf(f, "\n  [%s]\n", sec);
		}
		char env[160];
		env_name(&schema[i], env, sizeof env);
		fprintf(f, "    %-22s %s (default: %s; env %s)\n", schema[i].key, schema[i].help,
		        schema[i].def ? schema[i].def : "none", env);
	}
}
