/* lora_fmt — see lora_fmt.h. */
#include "lora_fmt.h"

#include "err.h"
#include "fileio.h"
#include "gguf_lora.h"
#include "peft.h"
#include "safetensors.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define LFMT_PATH_MAX 4096

static int get_u32_key(const gguf *g, const char *key, uint32_t lo, uint32_t hi, int64_t def,
                       uint32_t *out, char *why, size_t whylen)
{
	uint64_t v;
	int rc = gguf_get_uint(g, key, &v);
	if (rc == FL_ENOENT && def >= 0)
		v = (uint64_t)def;
	else if (rc == FL_ENOENT)
		return fl_fail(why, whylen, FL_EFORMAT, "base model lacks metadata key %s", key);
	else if (rc != 0)
		return fl_fail(why, whylen, FL_EFORMAT, "base model key %s is not an integer (%s)",
		               key, fl_strerror(rc));
	if (v < lo || v > hi)
		return fl_fail(why, whylen, FL_EFORMAT,
		               "base model key %s = %" PRIu64 " is outside [%" PRIu32 ", %" PRIu32
		               "]",
		               key, v, lo, hi);
	*out = (uint32_t)v;
	return 0;
}

int lfmt_base_from_gguf(const gguf *g, lfmt_base *out, char *why, size_t whylen)
{
	lfmt_base b;
	memset(&b, 0, sizeof b);
	gguf_str s;
	if (gguf_get_str(g, "general.architecture", &s) != 0)
		return fl_fail(why, whylen, FL_EFORMAT, "base model lacks general.architecture");
	if (s.n == 0 || s.n >= sizeof b.arch || memchr(s.p, 0, s.n))
		return fl_fail(why, whylen, FL_EFORMAT,
		               "base model general.architecture is unusable");
	memcpy(b.arch, s.p, s.n);
	char key[96];
	int rc;
	snprintf(key, sizeof key, "%s.block_count", b.arch);
	if ((rc = get_u32_key(g, key, 1, LORA_MAX_LAYERS, -1, &b.n_layers, why, whylen)) != 0)
		return rc;
	snprintf(key, sizeof key, "%s.attention.head_count", b.arch);
	if ((rc = get_u32_key(g, key, 1, 65536, -1, &b.n_head, why, whylen)) != 0)
		return rc;
	snprintf(key, sizeof key, "%s.attention.head_count_kv", b.arch);
	if ((rc = get_u32_key(g, key, 1, 65536, b.n_head, &b.n_head_kv, why, whylen)) != 0)
		return rc;
	b.qk_permuted = strcmp(b.arch, "llama") == 0;
	/* the Hugging Face id when the GGUF says it (llama.cpp's converter
	 * writes general.source.huggingface.repository or a huggingface.co
	 * general.source.repo_url / url), else general.name */
	static const char hf[] = "https://huggingface.co/";
	static const char *const keys[] = {"general.source.huggingface.repository",
	                                   "general.source.repo_url", "general.source.url",
	                                   "general.name"};
	for (size_t k = 0; k < sizeof keys / sizeof *keys && !b.name[0]; k++) {
		if (gguf_get_str(g, keys[k], &s) != 0 || s.n == 0)
			continue;
		const char *p = s.p;
		size_t n = s.n;
		if (k == 1 || k == 2) { /* a URL: only a huggingface.co one names a model id */
			if (n <= sizeof hf - 1 || memcmp(p, hf, sizeof hf - 1) != 0)
				continue;
			p += sizeof hf - 1;
			n -= sizeof hf - 1;
			while (n && p[n - 1] == '/')
				n--;
		}
		n = n < sizeof b.name - 1 ? n : sizeof b.name - 1;
		memcpy(b.name, p, n);
		b.name[n] = 0;
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)b.name[i] < 0x20)
				b.name[i] = '?';
	}
	*out = b;
	return 0;
}

/* Base tensor of (layer, target) as [out, in]; FL_EMISMATCH with a reason
 * when the base lacks it or it is not 2-D. */
static int base_shape(const gguf *base, uint32_t l, int t, uint64_t *out_rows, uint64_t *in_cols,
                      char *why, size_t whylen)
{
	char bn[64];
	gguf_tensor bt;
	lora_base_name(bn, sizeof bn, l, t);
	if (gguf_tensor_find(base, bn, &bt) != 0)
		return fl_fail(why, whylen, FL_EMISMATCH,
		               "the base model has no tensor %s (adapter for another base?)", bn);
	if (bt.ndims > 2 && (bt.ne[2] != 1 || bt.ne[3] != 1))
		return fl_fail(why, whylen, FL_EMISMATCH, "base tensor %s is not 2-D", bn);
	*in_cols = bt.ne[0];
	*out_rows = bt.ne[1];
	return 0;
}

int lfmt_check(const tset *ad, const gguf *base, uint32_t *rank, char *why, size_t whylen)
{
	size_t n = tset_count(ad);
	uint32_t r = 0;
	if (n == 0)
		return fl_fail(why, whylen, FL_EFORMAT, "the adapter holds no tensors");
	for (size_t i = 0; i < n; i++) {
		const tensor *t = tset_at(ad, i);
		uint32_t l;
		int tg, is_b;
		if (lora_parse_name(t->name, &l, &tg, &is_b) != 0)
			return fl_fail(
			    why, whylen, FL_EFORMAT,
			    "adapter tensor '%s' is not named blk.N.<target>.lora_a|lora_b",
			    t->name);
		if (t->ndim != 2)
			return fl_fail(why, whylen, FL_EFORMAT,
			               "adapter tensor %s has %" PRIu32 " dimensions, expected 2",
			               t->name, t->ndim);
		uint64_t out_rows = 0, in_cols = 0;
		int rc = base_shape(base, l, tg, &out_rows, &in_cols, why, whylen);
		if (rc != 0)
			return rc;
		uint64_t tr = is_b ? t->shape[1] : t->shape[0];
		uint64_t dim = is_b ? t->shape[0] : t->shape[1];
		uint64_t want = is_b ? out_rows : in_cols;
		if (dim != want)
			return fl_fail(
			    why, whylen, FL_EMISMATCH,
			    "adapter tensor %s is [%" PRIu64 ", %" PRIu64 "] but the base "
			    "tensor is [%" PRIu64 ", %" PRIu64
			    "] ([out, in]): expected %s = %" PRIu64 " (adapter for another base?)",
			    t->name, t->shape[0], t->shape[1], out_rows, in_cols,
			    is_b ? "rows" : "columns", want);
		if (tr < 1 || tr > LORA_MAX_RANK)
			return fl_fail(why, whylen, FL_EFORMAT,
			               "adapter tensor %s has rank %" PRIu64 " (1..%d)", t->name,
			               tr, LORA_MAX_RANK);
		if (r == 0)
			r = (uint32_t)tr;
		else if (tr != r)
			return fl_fail(why, whylen, FL_EFORMAT,
			               "adapter tensor %s has rank %" PRIu64
			               ", others have %" PRIu32,
			               t->name, tr, r);
		char other[64];
		lora_name(other, sizeof other, l, tg, !is_b);
		if (!tset_find(ad, other))
			return fl_fail(why, whylen, FL_EFORMAT,
			               "adapter tensor %s has no partner %s", t->name, other);
		for (size_t k = 0; k < t->n; k++)
			if (!isfinite(t->data[k]))
				return fl_fail(why, whylen, FL_ENUMERIC,
				               "adapter tensor %s holds NaN/Inf at element %zu",
				               t->name, k);
	}
	if (rank)
		*rank = r;
	return 0;
}

int lfmt_prepare_write(const tset *ad, const gguf *base, const lora_spec *p, lfmt_base *b,
                       uint32_t *rank, char *why, size_t whylen)
{
	int rc = lfmt_base_from_gguf(base, b, why, whylen);
	if (rc == 0)
		rc = lfmt_check(ad, base, rank, why, whylen);
	if (rc == 0 && p->rank != 0 && p->rank != *rank)
		rc = fl_fail(why, whylen, FL_EMISMATCH,
		             "rank %" PRIu32 " given but the adapter's tensors have rank %" PRIu32,
		             p->rank, *rank);
	return rc;
}

int lfmt_read_st(const char *path, tset **out, st_file **keep, char *why, size_t whylen)
{
	st_limits lim = {0};
	st_file *f = NULL;
	char sub[256];
	int rc = st_open(path, &lim, &f, sub, sizeof sub);
	if (rc != 0)
		return fl_fail(why, whylen, rc, "%s: %s", path, sub);
	rc = st_to_tset(f, out);
	if (rc != 0) {
		st_close(f);
		return fl_fail(why, whylen, rc, "%s: tensors cannot be read as f32 (%s)", path,
		               fl_strerror(rc));
	}
	*keep = f;
	return 0;
}

/* ------------------------------------------------------------------ */
/* lfmt_load                                                            */

static int parse_num(const char *s, double *v)
{
	char *end;
	if (!s || !*s)
		return FL_EINVAL;
	double d = strtod(s, &end);
	while (*end == ' ')
		end++;
	if (*end || !isfinite(d))
		return FL_EINVAL;
	*v = d;
	return 0;
}

/* Applies the override to what the file said; *has says which fields of
 * p the file set (1 alpha, 2 rslora). */
static int apply_override(lora_spec *p, int has, const lfmt_override *ov, uint32_t r,
                          const char *path, char *why, size_t whylen)
{
	if (ov && ov->has_alpha) {
		if ((has & 1) && p->alpha != ov->alpha)
			return fl_fail(
			    why, whylen, FL_EMISMATCH,
			    "%s says lora alpha = %g but --alpha %g was given (drop --alpha)", path,
			    (double)p->alpha, (double)ov->alpha);
		p->alpha = ov->alpha;
		has |= 1;
	}
	if (!(has & 1))
		return fl_fail(
		    why, whylen, FL_EINVAL,
		    "%s does not say its LoRA alpha (no %s metadata, no adapter_config.json "
		    "beside it): pass --alpha",
		    path, LFMT_META_ALPHA);
	if (ov && ov->rslora >= 0) {
		if ((has & 2) && p->rslora != ov->rslora)
			return fl_fail(why, whylen, FL_EMISMATCH,
			               "%s says rsLoRA is %s but the command line says %s", path,
			               p->rslora ? "on" : "off", ov->rslora ? "on" : "off");
		p->rslora = ov->rslora;
	}
	if (ov && ov->rank != 0 && ov->rank != r)
		return fl_fail(why, whylen, FL_EMISMATCH,
		               "--rank %" PRIu32
		               " given but the adapter's tensors have rank %" PRIu32,
		               ov->rank, r);
	p->rank = r;
	return 0;
}

int lfmt_load(const char *path, const gguf *base, const lfmt_override *ov, tset **out, lora_spec *p,
              char *why, size_t whylen)
{
	struct stat stt;
	lora_spec fp = {0};
	tset *s = NULL, *raw = NULL;
	st_file *f = NULL;
	uint32_t r = 0;
	int has = 0, rc;
	if (stat(path, &stt) != 0)
		return fl_fail(why, whylen, FL_ENOENT, "adapter %s does not exist", path);
	if (S_ISDIR(stt.st_mode)) {
		if ((rc = peft_read(path, base, &s, &fp, why, whylen)) != 0)
			return rc;
		r = fp.rank;
		has = 3;
		goto done;
	}
	if ((uint64_t)stt.st_size > LFMT_MAX_FILE)
		return fl_fail(why, whylen, FL_ETOOBIG,
		               "adapter %s is larger than %" PRIu64 " bytes", path, LFMT_MAX_FILE);
	/* GGUF by magic */
	{
		FILE *fh = fopen(path, "rb");
		unsigned char mg[4] = {0};
		size_t got = fh ? fread(mg, 1, 4, fh) : 0;
		if (fh)
			fclose(fh);
		if (got == 4 && memcmp(mg, "GGUF", 4) == 0) {
			if ((rc = gguf_lora_read(path, base, &s, &fp, why, whylen)) != 0)
				return rc;
			r = fp.rank;
			has = 3;
			goto done;
		}
	}
	if ((rc = lfmt_read_st(path, &raw, &f, why, whylen)) != 0)
		goto out;
	if (tset_count(raw) > 0 && peft_is_name(tset_at(raw, 0)->name)) {
		/* PEFT names: the config must be beside the file */
		char cfgp[LFMT_PATH_MAX];
		if (peft_config_beside(path, cfgp, sizeof cfgp) != 0) {
			rc = fl_fail(why, whylen, FL_EINVAL, "path too long");
			goto out;
		}
		if ((rc = peft_load_raw(raw, base, cfgp, path, &s, &fp, why, whylen)) != 0)
			goto out;
		r = fp.rank;
		has = 3;
		goto done;
	}
	/* canonical names */
	s = raw;
	raw = NULL;
	if ((rc = lfmt_check(s, base, &r, why, whylen)) != 0)
		goto out;
	{
		double v;
		const char *ma = st_meta(f, LFMT_META_ALPHA), *mr = st_meta(f, LFMT_META_RANK);
		const char *ms = st_meta(f, LFMT_META_RSLORA);
		if (ma) {
			if (parse_num(ma, &v) != 0) {
				rc = fl_fail(why, whylen, FL_EFORMAT,
				             "%s: metadata %s = '%s' is not a "
				             "finite number",
				             path, LFMT_META_ALPHA, ma);
				goto out;
			}
			fp.alpha = (float)v;
			has |= 1;
		}
		if (mr && (parse_num(mr, &v) != 0 || v != (double)r)) {
			rc = fl_fail(why, whylen, FL_EMISMATCH,
			             "%s: metadata %s = '%s' but the tensors have rank %" PRIu32,
			             path, LFMT_META_RANK, mr, r);
			goto out;
		}
		if (ms) {
			if (strcmp(ms, "true") == 0)
				fp.rslora = 1;
			else if (strcmp(ms, "false") == 0)
				fp.rslora = 0;
			else {
				rc = fl_fail(why, whylen, FL_EFORMAT,
				             "%s: metadata %s = '%s' is not true/false", path,
				             LFMT_META_RSLORA, ms);
				goto out;
			}
			has |= 2;
		}
		if (!(has & 1)) {
			char cfgp[LFMT_PATH_MAX];
			if (peft_config_beside(path, cfgp, sizeof cfgp) == 0 && file_exists(cfgp)) {
				lora_spec cp;
				if ((rc = peft_read_config(cfgp, &cp, why, whylen)) != 0)
					goto out;
				if (cp.rank != r) {
					rc = fl_fail(why, whylen, FL_EMISMATCH,
					             "%s says r = %" PRIu32
					             " but %s has rank %" PRIu32,
					             cfgp, cp.rank, path, r);
					goto out;
				}
				fp.alpha = cp.alpha;
				fp.rslora = cp.rslora;
				has |= 3;
			}
		}
	}
done:
	if ((rc = apply_override(&fp, has, ov, r, path, why, whylen)) != 0)
		goto out;
	*p = fp;
	*out = s;
	s = NULL;
	rc = 0;
out:
	st_close(f);
	tset_free(raw);
	tset_free(s);
	return rc;
}

int lfmt_export(const tset *ad, const char *base_path, const lora_spec *p, enum lfmt_format fmt,
                uint32_t type, const char *base_id, const char *out, char *why, size_t whylen)
{
	gguf *g = NULL;
	char gerr[256];
	int rc = gguf_open(base_path, &g, gerr, sizeof gerr);
	if (rc != 0)
		return fl_fail(why, whylen, rc, "%s: %s", base_path, gerr);
	if (fmt == LFMT_GGUF_LORA)
		rc = gguf_lora_write(ad, g, p, type, out, why, whylen);
	else if (fmt == LFMT_PEFT)
		rc = peft_write_base(ad, g, p, base_id, out, why, whylen);
	else
		rc = fl_fail(why, whylen, FL_EINVAL, "unknown adapter format %d", (int)fmt);
	gguf_free(g);
	return rc;
}
