/* dataset — see dataset.h. */
#include "dataset.h"

#include "buf.h"
#include "err.h"
#include "fileio.h"
#include "rng.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct ds {
	int32_t *tok;
	uint8_t *mask;
	size_t n, cap;
	size_t records, targets;
};

int ds_utf8_valid(const void *p, size_t n, size_t *bad)
{
	const uint8_t *s = p;
	size_t i = 0;
	while (i < n) {
		uint8_t c = s[i];
		size_t len;
		uint32_t cp, min;
		if (c < 0x80) {
			i++;
			continue;
		} else if ((c & 0xe0) == 0xc0) {
			len = 2;
			cp = c & 0x1f;
			min = 0x80;
		} else if ((c & 0xf0) == 0xe0) {
			len = 3;
			cp = c & 0x0f;
			min = 0x800;
		} else if ((c & 0xf8) == 0xf0) {
			len = 4;
			cp = c & 0x07;
			min = 0x10000;
		} else {
			goto bad;
		}
		if (n - i < len)
			goto bad;
		for (size_t k = 1; k < len; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				goto bad;
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			goto bad;
		i += len;
	}
	return 1;
bad:
	if (bad)
		*bad = i;
	return 0;
}

void ds_free(ds *d)
{
	if (!d)
		return;
	free(d->tok);
	free(d->mask);
	free(d);
}

static ds *ds_alloc(void)
{
	return calloc(1, sizeof(ds));
}

static int ds_reserve(ds *d, size_t more)
{
	size_t need;
	if (sz_add(d->n, more, &need) != 0)
		return FL_EOVERFLOW;
	if (need <= d->cap)
		return 0;
	size_t cap = d->cap ? d->cap : 1024;
	while (cap < need) {
		if (cap > SIZE_MAX / 2)
			return FL_EOVERFLOW;
		cap *= 2;
	}
	if (cap > (size_t)1 << 34)
		return FL_ETOOBIG;
	int32_t *t = realloc(d->tok, sizeof(int32_t) * cap);
	if (!t)
		return FL_ENOMEM;
	d->tok = t;
	uint8_t *m = realloc(d->mask, cap);
	if (!m)
		return FL_ENOMEM;
	d->mask = m;
	d->cap = cap;
	return 0;
}

static int ds_push(ds *d, int32_t id, uint8_t target)
{
	int rc = ds_reserve(d, 1);
	if (rc != 0)
		return rc;
	d->tok[d->n] = id;
	d->mask[d->n] = target;
	d->n++;
	return 0;
}

/* Recount targets (the first token of the stream has no predecessor). */
static void ds_finish(ds *d)
{
	d->targets = 0;
	if (d->n)
		d->mask[0] = 0;
	for (size_t i = 1; i < d->n; i++)
		d->targets += d->mask[i] != 0;
}

size_t ds_n_tokens(const ds *d)
{
	return d->n;
}
size_t ds_n_targets(const ds *d)
{
	return d->targets;
}
size_t ds_n_records(const ds *d)
{
	return d->records;
}
const int32_t *ds_token_data(const ds *d)
{
	return d->tok;
}
const uint8_t *ds_mask_data(const ds *d)
{
	return d->mask;
}

/* Tokenizes n bytes (flags as tok_encode) into a malloc'd array. */
static int encode(const tok *tk, const char *s, size_t n, int flags, int32_t **ids, size_t *cnt)
{
	size_t cap = tok_encode_bound(n);
	if (cap == SIZE_MAX || cap > ((size_t)1 << 31))
		return FL_ETOOBIG;
	int32_t *p = malloc(sizeof(int32_t) * (cap ? cap : 1));
	if (!p)
		return FL_ENOMEM;
	int rc = tok_encode(tk, s, n, flags, p, cap, cnt);
	if (rc != 0) {
		free(p);
		return rc;
	}
	*ids = p;
	return 0;
}

static size_t line_of(const char *p, size_t off)
{
	size_t line = 1;
	for (size_t i = 0; i < off; i++)
		line += p[i] == '\n';
	return line;
}

/* ---- plain text --------------------------------------------------------------- */

int ds_text_check(const char *name, const void *data, size_t n, char *err, size_t errlen)
{
	const char *p = data;
	size_t bad, i;
	for (i = 0; i < n && isspace((unsigned char)p[i]); i++)
		;
	if (i == n)
		return fl_fail(err, errlen, FL_EFORMAT, "%s: the file is empty (no text in it)",
		               name);
	if (!ds_utf8_valid(p, n, &bad))
		return fl_fail(err, errlen, FL_EFORMAT,
		               "%s:%zu: not valid UTF-8 (byte 0x%02x at file offset %zu)", name,
		               line_of(p, bad), (unsigned)(uint8_t)p[bad], bad);
	return 0;
}

static int parse_text(const char *name, const char *p, size_t n, const tok *tk, ds *all, char *err,
                      size_t errlen)
{
	int rc = ds_text_check(name, p, n, err, errlen);
	if (rc != 0)
		return rc;
	int32_t *ids = NULL;
	size_t cnt = 0;
	rc = encode(tk, p, n, TOK_ADD_SPECIAL, &ids, &cnt);
	if (rc != 0)
		return fl_fail(err, errlen, rc, "%s: cannot tokenize: %s", name, fl_strerror(rc));
	const int32_t bos = tok_bos(tk);
	rc = ds_reserve(all, cnt);
	for (size_t k = 0; rc == 0 && k < cnt; k++)
		rc = ds_push(all, ids[k], ids[k] != bos || k > 0);
	free(ids);
	if (rc != 0)
		return fl_fail(err, errlen, rc, "%s: %s", name, fl_strerror(rc));
	all->records = 1;
	return 0;
}

/* ---- JSONL --------------------------------------------------------------------- */

/* A string field: NULL when absent; FL_EFORMAT when present but not a
 * string. */
static int str_field(const cJSON *o, const char *key, const char **out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	*out = NULL;
	if (!v)
		return 0;
	if (!cJSON_IsString(v) || !v->valuestring)
		return FL_EFORMAT;
	*out = v->valuestring;
	return 0;
}

typedef struct rec_ctx {
	const char *name;
	size_t line;
	char *err;
	size_t errlen;
	const tok *tk;
	ds *all;
	size_t *starts; /* record start offsets in all */
	size_t nrec, caprec;
} rec_ctx;

static int add_record(rec_ctx *c, const char *text, const char *prompt)
{
	int32_t *ids = NULL, *pids = NULL;
	size_t n = 0, np = 0, start = 0;
	int rc = encode(c->tk, text, strlen(text), 0, &ids, &n);
	if (rc == 0 && prompt)
		rc = encode(c->tk, prompt, strlen(prompt), 0, &pids, &np);
	if (rc != 0) {
		free(ids);
		return fl_fail(c->err, c->errlen, rc, "%s:%zu: cannot tokenize: %s", c->name,
		               c->line, fl_strerror(rc));
	}
	if (prompt) {
		while (start < np && start < n && pids[start] == ids[start])
			start++;
		if (start >= n) {
			free(ids);
			free(pids);
			return fl_fail(c->err, c->errlen, FL_EFORMAT,
			               "%s:%zu: the response adds no tokens", c->name, c->line);
		}
	}
	if (c->nrec == c->caprec) {
		size_t cap = c->caprec ? 2 * c->caprec : 256;
		size_t *s = realloc(c->starts, sizeof(size_t) * cap);
		if (!s) {
			rc = FL_ENOMEM;
			goto out;
		}
		c->starts = s;
		c->caprec = cap;
	}
	c->starts[c->nrec++] = c->all->n;
	const int32_t bos = tok_bos(c->tk), eos = tok_eos(c->tk);
	if ((rc = ds_reserve(c->all, n + 2)) != 0)
		goto out;
	if (tok_adds_bos(c->tk) && bos >= 0)
		ds_push(c->all, bos, 0);
	for (size_t k = 0; k < n; k++)
		ds_push(c->all, ids[k], k >= start);
	if (eos >= 0)
		ds_push(c->all, eos, 1);
out:
	free(ids);
	free(pids);
	if (rc != 0)
		return fl_fail(c->err, c->errlen, rc, "%s:%zu: %s", c->name, c->line,
		               fl_strerror(rc));
	return 0;
}

static int render(buf *b, const char *instr, const char *input, const char *output)
{
	int rc = buf_append(b, "### Instruction:\n", 17);
	rc |= buf_append(b, instr, strlen(instr));
	rc |= buf_append(b, "\n\n", 2);
	if (input && *input) {
		rc |= buf_append(b, "### Input:\n", 11);
		rc |= buf_append(b, input, strlen(input));
		rc |= buf_append(b, "\n\n", 2);
	}
	rc |= buf_append(b, "### Response:\n", 14);
	if (output)
		rc |= buf_append(b, output, strlen(output));
	rc |= buf_append(b, "", 1); /* NUL */
	return rc ? FL_ENOMEM : 0;
}

static int parse_line(rec_ctx *c, const char *p, size_t n)
{
	size_t bad;
	if (n > DS_MAX_LINE)
		return fl_fail(c->err, c->errlen, FL_ETOOBIG, "%s:%zu: line of %zu bytes (cap %zu)",
		               c->name, c->line, n, DS_MAX_LINE);
	if (!ds_utf8_valid(p, n, &bad))
		return fl_fail(c->err, c->errlen, FL_EFORMAT,
		               "%s:%zu: not valid UTF-8 (byte 0x%02x at column %zu)", c->name,
		               c->line, (unsigned)(uint8_t)p[bad], bad + 1);
	const char *end = NULL;
	cJSON *o = cJSON_ParseWithLengthOpts(p, n, &end, 0);
	if (!o) {
		size_t col = end && end >= p && end <= p + n ? (size_t)(end - p) + 1 : 1;
		return fl_fail(c->err, c->errlen, FL_EFORMAT,
		               "%s:%zu: invalid JSON (at column %zu)", c->name, c->line, col);
	}
	int rc = 0;
	for (const char *q = end; q && q < p + n; q++)
		if (!isspace((unsigned char)*q)) {
			rc = fl_fail(c->err, c->errlen, FL_EFORMAT,
			             "%s:%zu: invalid JSON (trailing characters at column %zu)",
			             c->name, c->line, (size_t)(q - p) + 1);
			goto out;
		}
	if (!cJSON_IsObject(o)) {
		rc = fl_fail(c->err, c->errlen, FL_EFORMAT, "%s:%zu: the line is not a JSON object",
		             c->name, c->line);
		goto out;
	}
	const char *text, *instr, *input, *output;
	if (str_field(o, "text", &text) != 0) {
		rc = fl_fail(c->err, c->errlen, FL_EFORMAT,
		             "%s:%zu: field \"text\" is not a string", c->name, c->line);
		goto out;
	}
	if (text) {
		if (!*text) {
			rc = fl_fail(c->err, c->errlen, FL_EFORMAT,
			             "%s:%zu: field \"text\" is empty", c->name, c->line);
			goto out;
		}
		if (!ds_utf8_valid(text, strlen(text), NULL)) {
			rc = fl_fail(c->err, c->errlen, FL_EFORMAT,
			             "%s:%zu: field \"text\" decodes to invalid UTF-8", c->name,
			             c->line);
			goto out;
		}
		rc = add_record(c, text, NULL);
		goto out;
	}
	const char *names[3] = {"instruction", "input", "output"};
	const char **vals[3] = {&instr, &input, &output};
	for (int i = 0; i < 3; i++) {
		if (str_field(o, names[i], vals[i]) != 0) {
			rc = fl_fail(c->err, c->errlen, FL_EFORMAT,
			             "%s:%zu: field \"%s\" is not a string", c->name, c->line,
			             names[i]);
			goto out;
		}
		if (*vals[i] && !ds_utf8_valid(*vals[i], strlen(*vals[i]), NULL)) {
			rc = fl_fail(c->err, c->errlen, FL_EFORMAT,
			             "%s:%zu: field \"%s\" decodes to invalid UTF-8", c->name,
			             c->line, names[i]);
			goto out;
		}
	}
	if (!instr || !output) {
		rc = fl_fail(c->err, c->errlen, FL_EFORMAT,
		             "%s:%zu: missing field \"%s\" (a record needs \"text\", or "
		             "\"instruction\" and \"output\")",
		             c->name, c->line,
		             !instr && !output ? "text"
		             : !instr          ? "instruction"
		                               : "output");
		goto out;
	}
	if (!*instr || !*output) {
		rc = fl_fail(c->err, c->errlen, FL_EFORMAT, "%s:%zu: field \"%s\" is empty",
		             c->name, c->line, !*instr ? "instruction" : "output");
		goto out;
	}
	buf full, prompt;
	buf_init(&full, DS_MAX_LINE * 2);
	buf_init(&prompt, DS_MAX_LINE * 2);
	rc = render(&full, instr, input, output);
	if (rc == 0)
		rc = render(&prompt, instr, input, NULL);
	if (rc == 0)
		rc = add_record(c, (const char *)full.data, (const char *)prompt.data);
	else
		rc =
		    fl_fail(c->err, c->errlen, rc, "%s:%zu: %s", c->name, c->line, fl_strerror(rc));
	buf_fini(&full);
	buf_fini(&prompt);
out:
	cJSON_Delete(o);
	return rc;
}

static int parse_jsonl(rec_ctx *c, const char *p, size_t n)
{
	size_t i = 0;
	c->line = 0;
	while (i < n) {
		const char *nl = memchr(p + i, '\n', n - i);
		size_t e = nl ? (size_t)(nl - p) : n, len = e - i;
		c->line++;
		if (len && p[i + len - 1] == '\r')
			len--;
		size_t k = 0;
		while (k < len && (p[i + k] == ' ' || p[i + k] == '\t'))
			k++;
		if (k < len) {
			int rc = parse_line(c, p + i, len);
			if (rc != 0)
				return rc;
		}
		i = e + 1;
	}
	if (c->nrec == 0)
		return fl_fail(c->err, c->errlen, FL_EFORMAT,
		               "%s: the file is empty (no JSON records)", c->name);
	return 0;
}

/* ---- split ------------------------------------------------------------------------ */

static int copy_range(ds *dst, const ds *src, size_t a, size_t b)
{
	int rc = ds_reserve(dst, b - a);
	if (rc != 0)
		return rc;
	memcpy(dst->tok + dst->n, src->tok + a, sizeof(int32_t) * (b - a));
	memcpy(dst->mask + dst->n, src->mask + a, b - a);
	dst->n += b - a;
	return 0;
}

static int detect_format(const char *name, int format)
{
	if (format != DS_FMT_AUTO)
		return format;
	const char *dot = name ? strrchr(name, '.') : NULL;
	if (dot && (strcasecmp(dot, ".jsonl") == 0 || strcasecmp(dot, ".json") == 0))
		return DS_FMT_JSONL;
	return DS_FMT_TEXT;
}

int ds_parse(const char *name, const void *data, size_t n, const tok *tk, const ds_opts *o,
             ds **train, ds **heldout, char *err, size_t errlen)
{
	if (!name)
		name = "(data)";
	if (!tk || !o || !train || (!data && n) || !(o->holdout >= 0.0 && o->holdout <= 0.9) ||
	    (o->holdout > 0.0 && !heldout))
		return fl_fail(err, errlen, FL_EINVAL, "%s: bad data options", name);
	if (n > DS_MAX_FILE)
		return fl_fail(err, errlen, FL_ETOOBIG,
		               "%s: %zu bytes, larger than the %zu-byte cap", name, n, DS_MAX_FILE);
	const int fmt = detect_format(name, o->format);
	const char *p = data ? data : "";
	ds *all = ds_alloc(), *tr = ds_alloc(), *ev = o->holdout > 0.0 ? ds_alloc() : NULL;
	rec_ctx c = {.name = name, .err = err, .errlen = errlen, .tk = tk, .all = all};
	uint32_t *perm = NULL;
	uint8_t *held = NULL;
	int rc = 0;
	if (!all || !tr || (o->holdout > 0.0 && !ev)) {
		rc = fl_fail(err, errlen, FL_ENOMEM, "%s: out of memory", name);
		goto out;
	}
	if (fmt == DS_FMT_TEXT) {
		if ((rc = parse_text(name, p, n, tk, all, err, errlen)) != 0)
			goto out;
		size_t k = (size_t)llround(o->holdout * (double)all->n);
		if (ev && (all->n < 4 || k < 2 || all->n - k < 2)) {
			rc = fl_fail(err, errlen, FL_EINVAL,
			             "%s: %zu tokens are too few to hold out %.0f%% for evaluation",
			             name, all->n, o->holdout * 100);
			goto out;
		}
		if (!ev)
			k = 0;
		if ((rc = copy_range(tr, all, 0, all->n - k)) != 0 ||
		    (ev && (rc = copy_range(ev, all, all->n - k, all->n)) != 0)) {
			rc = fl_fail(err, errlen, rc, "%s: %s", name, fl_strerror(rc));
			goto out;
		}
		tr->records = 1;
		if (ev)
			ev->records = 1;
	} else {
		if ((rc = parse_jsonl(&c, p, n)) != 0)
			goto out;
		size_t k = 0;
		if (ev) {
			if (c.nrec < 2 || c.nrec > UINT32_MAX) {
				rc = fl_fail(err, errlen, FL_EINVAL,
				             "%s: %zu records are too few to hold out %.0f%% for "
				             "evaluation",
				             name, c.nrec, o->holdout * 100);
				goto out;
			}
			k = (size_t)llround(o->holdout * (double)c.nrec);
			k = k < 1 ? 1 : k > c.nrec - 1 ? c.nrec - 1 : k;
			perm = malloc(sizeof(uint32_t) * c.nrec);
			held = calloc(c.nrec, 1);
			if (!perm || !held) {
				rc = fl_fail(err, errlen, FL_ENOMEM, "%s: out of memory", name);
				goto out;
			}
			for (size_t i = 0; i < c.nrec; i++)
				perm[i] = (uint32_t)i;
			rng r;
			rng_seed(&r, o->seed ^ 0x6865646c646f7574ull);
			rng_shuffle_u32(&r, perm, c.nrec);
			for (size_t i = 0; i < k; i++)
				held[perm[i]] = 1;
		}
		for (size_t i = 0; i < c.nrec && rc == 0; i++) {
			size_t a = c.starts[i], b = i + 1 < c.nrec ? c.starts[i + 1] : all->n;
			ds *dst = held && held[i] ? ev : tr;
			rc = copy_range(dst, all, a, b);
			dst->records++;
		}
		if (rc != 0) {
			rc = fl_fail(err, errlen, rc, "%s: %s", name, fl_strerror(rc));
			goto out;
		}
	}
	ds_finish(tr);
	if (ev)
		ds_finish(ev);
	if (tr->targets == 0) {
		rc = fl_fail(err, errlen, FL_EFORMAT,
		             "%s: no token to train on (need at least 2 tokens)", name);
		goto out;
	}
	*train = tr;
	tr = NULL;
	if (heldout) {
		*heldout = ev;
		ev = NULL;
	}
out:
	free(c.starts);
	free(perm);
	free(held);
	ds_free(all);
	ds_free(tr);
	ds_free(ev);
	return rc;
}

int ds_load(const char *path, const tok *tk, const ds_opts *o, ds **train, ds **heldout, char *err,
            size_t errlen)
{
	uint8_t *p = NULL;
	size_t n = 0;
	int rc = file_read_all(path, DS_MAX_FILE, &p, &n);
	if (rc != 0)
		return fl_fail(err, errlen, rc, "%s: %s", path,
		               rc == FL_ETOOBIG ? "larger than the 1 GiB cap" : file_why(path, rc));
	rc = ds_parse(path, p, n, tk, o, train, heldout, err, errlen);
	free(p);
	return rc;
}

/* ---- packing -------------------------------------------------------------------------- */

size_t ds_n_windows(const ds *d, int ctx)
{
	if (ctx < 1 || d->n < 2)
		return 0;
	return (d->n - 1 + (size_t)ctx - 1) / (size_t)ctx;
}

int ds_window(const ds *d, int ctx, size_t w, int32_t *inp, int32_t *tgt)
{
	int cnt = 0;
	const size_t base = w * (size_t)ctx;
	for (int j = 0; j < ctx; j++) {
		const size_t i = base + (size_t)j;
		inp[j] = i < d->n ? d->tok[i] : 0;
		if (i + 1 < d->n && d->mask[i + 1]) {
			tgt[j] = d->tok[i + 1];
			cnt++;
		} else {
			tgt[j] = -1;
		}
	}
	return cnt;
}

int ds_window_index(const ds *d, int ctx, uint32_t **idx, size_t *n)
{
	const size_t nw = ds_n_windows(d, ctx);
	if (nw > UINT32_MAX)
		return FL_ETOOBIG;
	uint32_t *p = malloc(sizeof(uint32_t) * (nw ? nw : 1));
	if (!p)
		return FL_ENOMEM;
	size_t k = 0;
	for (size_t w = 0; w < nw; w++) {
		const size_t a = w * (size_t)ctx + 1;
		const size_t b = a + (size_t)ctx < d->n ? a + (size_t)ctx : d->n;
		for (size_t i = a; i < b; i++)
			if (d->mask[i]) {
				p[k++] = (uint32_t)w;
				break;
			}
	}
	*idx = p;
	*n = k;
	return 0;
}
