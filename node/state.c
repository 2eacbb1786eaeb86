/* state — see state.h. */
#include "state.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "err.h"
#include "fileio.h"
#include "log.h"
#include "safetensors.h"
#include "sha.h"

#define NST_MAGIC     "fedlora-node-state 1"
#define NST_MAX_STATE (64u * 1024u)
#define NST_PATH_MAX  4096

struct nst {
	char *dir;
	uint8_t base_fp[32], shape_fp[32];
	uint64_t version;
	uint8_t sha[32];
	tset *global;
	tset *residual;
	uint64_t residual_round;
	nst_counters c;
};

static int path_of(const nst *s, const char *name, char *out, size_t n)
{
	int k = snprintf(out, n, "%s/%s", s->dir, name);
	return k < 0 || (size_t)k >= n ? FL_ETOOBIG : 0;
}

/* ---- node.state ---- */

typedef struct kvdef {
	const char *key;
	uint64_t *u;
	double *d;
} kvdef;

static int counter_defs(nst_counters *c, kvdef *d)
{
	int n = 0;
#define U(name) d[n++] = (kvdef){#name, &c->name, NULL}
	U(sessions);
	U(rounds_started);
	U(rounds_trained);
	U(updates_sent);
	U(updates_accepted);
	U(updates_rejected);
	U(snapshots);
	U(deltas);
	U(hash_mismatches);
	U(bytes_up);
	U(bytes_down);
	U(last_round_uploaded);
	U(eval_version);
#undef U
	d[n++] = (kvdef){"eval_loss", NULL, &c->eval_loss};
	return n;
}

int nst_save(nst *s)
{
	if (!s->dir)
		return 0;
	buf b;
	buf_init(&b, NST_MAX_STATE);
	char line[256], hex[65];
	kvdef defs[32];
	int n = counter_defs(&s->c, defs), rc = 0;
	int k = snprintf(line, sizeof line, "%s\n", NST_MAGIC);
	rc = buf_append(&b, line, (size_t)k);
	hex_encode(s->base_fp, 32, hex);
	k = snprintf(line, sizeof line, "base_fingerprint %s\n", hex);
	if (!rc)
		rc = buf_append(&b, line, (size_t)k);
	hex_encode(s->shape_fp, 32, hex);
	k = snprintf(line, sizeof line, "adapter_fingerprint %s\n", hex);
	if (!rc)
		rc = buf_append(&b, line, (size_t)k);
	for (int i = 0; i < n && !rc; i++) {
		if (defs[i].u)
			k = snprintf(line, sizeof line, "%s %" PRIu64 "\n", defs[i].key,
			             *defs[i].u);
		else
			k = snprintf(line, sizeof line, "%s %.17g\n", defs[i].key, *defs[i].d);
		rc = buf_append(&b, line, (size_t)k);
	}
	uint8_t sum[32];
	if (!rc)
		rc = sha256(b.data, b.len, sum);
	if (!rc) {
		hex_encode(sum, 32, hex);
		k = snprintf(line, sizeof line, "sha256 %s\n", hex);
		rc = buf_append(&b, line, (size_t)k);
	}
	char path[NST_PATH_MAX];
	if (!rc)
		rc = path_of(s, "node.state", path, sizeof path);
	if (!rc)
		rc = file_write_atomic(path, b.data, b.len);
	buf_fini(&b);
	if (rc)
		LOGE("state", "cannot write %s/node.state: %s", s->dir, fl_strerror(rc));
	return rc;
}

/* Parses node.state; FL_EFORMAT with a reason on anything unexpected. */
static int parse_state(const char *text, size_t len, uint8_t base_fp[32], uint8_t shape_fp[32],
                       nst_counters *c, char *why, size_t wl)
{
	const char *sumline = NULL;
	/* The checksum line is the last one. */
	if (len < 2 || text[len - 1] != '\n') {
		snprintf(why, wl, "truncated (no final newline)");
		return FL_EFORMAT;
	}
	for (const char *p = text + len - 1; p > text; p--)
		if (p[-1] == '\n') {
			sumline = p;
			break;
		}
	if (!sumline || strncmp(sumline, "sha256 ", 7) != 0 ||
	    (size_t)(text + len - sumline) != 7 + 64 + 1) {
		snprintf(why, wl, "no checksum line");
		return FL_EFORMAT;
	}
	char hex[65];
	memcpy(hex, sumline + 7, 64);
	hex[64] = 0;
	uint8_t want[32], got[32];
	if (hex_decode(hex, want, 32) != 0 || sha256(text, (size_t)(sumline - text), got) != 0 ||
	    memcmp(want, got, 32) != 0) {
		snprintf(why, wl, "checksum mismatch");
		return FL_EFORMAT;
	}
	kvdef defs[32];
	nst_counters tmp;
	memset(&tmp, 0, sizeof tmp);
	tmp.eval_loss = NAN;
	int n = counter_defs(&tmp, defs), have_base = 0, have_shape = 0;
	const char *p = text;
	size_t ml = strlen(NST_MAGIC);
	if ((size_t)(sumline - p) < ml + 1 || memcmp(p, NST_MAGIC, ml) != 0 || p[ml] != '\n') {
		snprintf(why, wl, "bad magic line");
		return FL_EFORMAT;
	}
	p += ml + 1;
	while (p < sumline) {
		const char *e = memchr(p, '\n', (size_t)(sumline - p));
		if (!e)
			break;
		char ln[256];
		size_t l = (size_t)(e - p);
		if (l >= sizeof ln) {
			snprintf(why, wl, "line too long");
			return FL_EFORMAT;
		}
		memcpy(ln, p, l);
		ln[l] = 0;
		p = e + 1;
		char *sp = strchr(ln, ' ');
		if (!sp) {
			snprintf(why, wl, "malformed line '%.40s'", ln);
			return FL_EFORMAT;
		}
		*sp = 0;
		const char *key = ln, *val = sp + 1;
		if (strcmp(key, "base_fingerprint") == 0) {
			if (hex_decode(val, base_fp, 32) != 0)
				goto bad;
			have_base = 1;
			continue;
		}
		if (strcmp(key, "adapter_fingerprint") == 0) {
			if (hex_decode(val, shape_fp, 32) != 0)
				goto bad;
			have_shape = 1;
			continue;
		}
		int i;
		for (i = 0; i < n; i++)
			if (strcmp(defs[i].key, key) == 0)
				break;
		if (i == n)
			continue; /* a key from a newer version: ignored */
		char *end = NULL;
		errno = 0;
		if (defs[i].u) {
			unsigned long long v = strtoull(val, &end, 10);
			if (errno || end == val || *end || val[0] == '-')
				goto bad;
			*defs[i].u = v;
		} else {
			double v = strtod(val, &end);
			if (errno || end == val || *end)
				goto bad;
			*defs[i].d = v;
		}
		continue;
	bad:
		snprintf(why, wl, "bad value for %.40s", key);
		return FL_EFORMAT;
	}
	if (!have_base || !have_shape) {
		snprintf(why, wl, "missing fingerprints");
		return FL_EFORMAT;
	}
	*c = tmp;
	return 0;
}

/* ---- adapters on disk ---- */

static int parse_u64(const char *s, uint64_t *out)
{
	if (!s || !*s || *s == '-')
		return FL_EFORMAT;
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end)
		return FL_EFORMAT;
	*out = v;
	return 0;
}

/* Loads name, checks the metadata fingerprint against the tensors and the
 * layout against shape_fp. *num gets the metadata number under num_key. */
static int load_adapter(const nst *s, const char *name, const char *num_key, int check_shape,
                        tset **out, uint64_t *num, uint8_t sha[32])
{
	char path[NST_PATH_MAX], why[256] = "";
	int rc = path_of(s, name, path, sizeof path);
	if (rc)
		return rc;
	if (!file_exists(path))
		return FL_ENOENT;
	st_file *f = NULL;
	tset *t = NULL;
	uint8_t want[32], got[32];
	rc = st_open(path, NULL, &f, why, sizeof why);
	if (rc)
		goto out;
	if (parse_u64(st_meta(f, num_key), num) != 0 || !st_meta(f, ST_META_SHA256) ||
	    hex_decode(st_meta(f, ST_META_SHA256), want, 32) != 0) {
		snprintf(why, sizeof why, "metadata %s/%s missing or invalid", num_key,
		         ST_META_SHA256);
		rc = FL_EFORMAT;
		goto out;
	}
	if ((rc = st_to_tset(f, &t)) != 0) {
		snprintf(why, sizeof why, "cannot convert tensors: %s", fl_strerror(rc));
		goto out;
	}
	if ((rc = tset_fingerprint(t, got)) != 0)
		goto out;
	if (memcmp(want, got, 32) != 0) {
		snprintf(why, sizeof why, "content does not match its recorded SHA-256");
		rc = FL_EMISMATCH;
		goto out;
	}
	if (check_shape) {
		uint8_t sf[32];
		if ((rc = tset_shape_fingerprint(t, sf)) != 0)
			goto out;
		if (memcmp(sf, s->shape_fp, 32) != 0) {
			snprintf(why, sizeof why, "adapter layout differs from this configuration");
			rc = FL_EMISMATCH;
			goto out;
		}
	}
	memcpy(sha, got, 32);
	*out = t;
	t = NULL;
out:
	if (rc && rc != FL_ENOENT)
		LOGW("state", "ignoring %s: %s", path, why[0] ? why : fl_strerror(rc));
	st_close(f);
	tset_free(t);
	return rc;
}

static int save_adapter(const nst *s, const char *name, const tset *t, const char *num_key,
                        uint64_t num, const uint8_t sha[32])
{
	char path[NST_PATH_MAX], numtxt[24], hex[65];
	if (!s->dir)
		return 0;
	int rc = path_of(s, name, path, sizeof path);
	if (rc)
		return rc;
	snprintf(numtxt, sizeof numtxt, "%" PRIu64, num);
	hex_encode(sha, 32, hex);
	st_kv meta[2] = {{num_key, numtxt}, {ST_META_SHA256, hex}};
	rc = st_write(path, t, ST_F32, meta, 2);
	if (rc)
		LOGE("state", "cannot write %s: %s", path, fl_strerror(rc));
	return rc;
}

static void remove_file(const nst *s, const char *name)
{
	char path[NST_PATH_MAX];
	if (s->dir && path_of(s, name, path, sizeof path) == 0 && remove(path) == 0)
		file_fsync_dir(s->dir);
}

int nst_open(const char *dir, const uint8_t base_fp[32], const uint8_t shape_fp[32], nst **out)
{
	int rc;
	nst *s = calloc(1, sizeof *s);
	if (!s)
		return FL_ENOMEM;
	memcpy(s->base_fp, base_fp, 32);
	memcpy(s->shape_fp, shape_fp, 32);
	s->c.eval_loss = NAN;
	if (!dir) {
		*out = s;
		return 0;
	}
	s->dir = strdup(dir);
	if (!s->dir) {
		free(s);
		return FL_ENOMEM;
	}
	if ((rc = file_mkdirs(dir)) != 0) {
		LOGE("state", "cannot create state_dir %s: %s", dir, fl_strerror(rc));
		nst_free(s);
		return rc;
	}
	char path[NST_PATH_MAX], why[256] = "";
	int foreign = 0;
	uint8_t *text = NULL;
	size_t len = 0;
	if ((rc = path_of(s, "node.state", path, sizeof path)) != 0) {
		nst_free(s);
		return rc;
	}
	if (file_exists(path)) {
		uint8_t bf[32], sf[32];
		nst_counters c;
		rc = file_read_all(path, NST_MAX_STATE, &text, &len);
		if (rc)
			snprintf(why, sizeof why, "%s", fl_strerror(rc));
		else
			rc = parse_state((const char *)text, len, bf, sf, &c, why, sizeof why);
		free(text);
		if (rc) {
			LOGW("state", "ignoring %s: %s; starting with fresh counters", path, why);
		} else if (memcmp(bf, base_fp, 32) != 0 || memcmp(sf, shape_fp, 32) != 0) {
			LOGW("state",
			     "%s was written for another %s; discarding the old global adapter, "
			     "residual and counters",
			     path, memcmp(bf, base_fp, 32) ? "base model" : "adapter layout");
			foreign = 1;
		} else {
			s->c = c;
		}
	}
	if (foreign) {
		remove_file(s, "global.safetensors");
		remove_file(s, "residual.safetensors");
	} else {
		tset *g = NULL;
		uint64_t v = 0;
		uint8_t sha[32];
		if (load_adapter(s, "global.safetensors", ST_META_VERSION, 1, &g, &v, sha) == 0) {
			s->global = g;
			s->version = v;
			memcpy(s->sha, sha, 32);
		}
		tset *r = NULL;
		uint64_t round = 0;
		if (load_adapter(s, "residual.safetensors", ST_META_ROUND, 0, &r, &round, sha) ==
		    0) {
			s->residual = r;
			s->residual_round = round;
		}
	}
	if ((rc = nst_save(s)) != 0) {
		nst_free(s);
		return rc;
	}
	*out = s;
	return 0;
}

void nst_free(nst *s)
{
	if (!s)
		return;
	tset_free(s->global);
	tset_free(s->residual);
	free(s->dir);
	free(s);
}

const char *nst_dir(const nst *s)
{
	return s->dir;
}

uint64_t nst_version(const nst *s)
{
	return s->version;
}

const uint8_t *nst_version_sha(const nst *s)
{
	return s->sha;
}

const tset *nst_global(const nst *s)
{
	return s->global;
}

int nst_set_global(nst *s, uint64_t version, tset *g, const uint8_t sha[32])
{
	uint8_t got[32];
	int rc = tset_fingerprint(g, got);
	if (!rc && memcmp(got, sha, 32) != 0)
		rc = FL_EMISMATCH;
	if (!rc)
		rc = save_adapter(s, "global.safetensors", g, ST_META_VERSION, version, sha);
	if (rc) {
		tset_free(g);
		return rc;
	}
	tset_free(s->global);
	s->global = g;
	s->version = version;
	memcpy(s->sha, sha, 32);
	return 0;
}

int nst_clear_global(nst *s)
{
	remove_file(s, "global.safetensors");
	tset_free(s->global);
	s->global = NULL;
	s->version = 0;
	memset(s->sha, 0, 32);
	return 0;
}

const tset *nst_residual(const nst *s)
{
	return s->residual;
}

uint64_t nst_residual_round(const nst *s)
{
	return s->residual_round;
}

int nst_commit_residual(nst *s, tset *r, uint64_t round)
{
	uint8_t sha[32];
	int rc = tset_fingerprint(r, sha);
	if (!rc)
		rc = save_adapter(s, "residual.safetensors", r, ST_META_ROUND, round, sha);
	if (rc) {
		tset_free(r);
		return rc;
	}
	tset_free(s->residual);
	s->residual = r;
	s->residual_round = round;
	return 0;
}

nst_counters *nst_counters_mut(nst *s)
{
	return &s->c;
}

const nst_counters *nst_counters_get(const nst *s)
{
	return &s->c;
}

int nst_append_metrics(nst *s, const char *line, size_t len)
{
	char path[NST_PATH_MAX];
	if (!s->dir)
		return 0;
	int rc = path_of(s, "metrics.jsonl", path, sizeof path);
	if (rc)
		return rc;
	char *tmp = malloc(len + 1);
	if (!tmp)
		return FL_ENOMEM;
	memcpy(tmp, line, len);
	tmp[len] = '\n';
	rc = file_append_sync(path, tmp, len + 1);
	free(tmp);
	return rc;
}
