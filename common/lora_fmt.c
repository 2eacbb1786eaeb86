/* lora_fmt — see lora_fmt.h. */
#include "lora_fmt.h"

#include "err.h"
#include "fileio.h"
#include "gtype.h"
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *const tgt_name[LFMT_NTARGETS] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                                    "ffn_gate", "ffn_up", "ffn_down"};
static const char *const tgt_hf[LFMT_NTARGETS] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
static const char *const tgt_hf_short[LFMT_NTARGETS] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

#define PEFT_PREFIX     "base_model.model.model.layers."
#define PEFT_CONFIG     "adapter_config.json"
#define PEFT_WEIGHTS    "adapter_model.safetensors"
#define PEFT_CONFIG_MAX ((size_t)1 << 20)
#define LFMT_PATH_MAX   4096

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static int
fail(char *why, size_t whylen, int rc, const char *fmt, ...)
{
	if (why && whylen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(why, whylen, fmt, ap);
		va_end(ap);
	}
	return rc;
}

const char *lfmt_target_name(int t)
{
	return (t >= 0 && t < LFMT_NTARGETS) ? tgt_name[t] : NULL;
}

const char *lfmt_target_hf(int t)
{
	return (t >= 0 && t < LFMT_NTARGETS) ? tgt_hf[t] : NULL;
}

double lfmt_scale(const lfmt_params *p)
{
	if (!p || p->rank == 0)
		return 0.0;
	return p->rslora ? (double)p->alpha / sqrt((double)p->rank)
	                 : (double)p->alpha / (double)p->rank;
}

static int target_of(const char *s, size_t n)
{
	for (int t = 0; t < LFMT_NTARGETS; t++)
		if (strlen(tgt_name[t]) == n && memcmp(tgt_name[t], s, n) == 0)
			return t;
	return -1;
}

/* Decimal layer number at *p (no sign, no leading zeros beyond "0"), up to
 * LFMT_MAX_LAYERS - 1; advances *p. */
static int parse_layer(const char **p, uint32_t *layer)
{
	const char *s = *p;
	uint32_t v = 0;
	int nd = 0;
	while (*s >= '0' && *s <= '9') {
		if (nd > 0 && v == 0)
			return FL_EINVAL; /* leading zero */
		v = v * 10 + (uint32_t)(*s - '0');
		if (v >= LFMT_MAX_LAYERS)
			return FL_EINVAL;
		s++;
		nd++;
	}
	if (nd == 0)
		return FL_EINVAL;
	*layer = v;
	*p = s;
	return 0;
}

int lfmt_parse_name(const char *name, uint32_t *layer, int *target, int *is_b)
{
	if (!name || strncmp(name, "blk.", 4) != 0)
		return FL_EINVAL;
	const char *s = name + 4;
	uint32_t l;
	if (parse_layer(&s, &l) != 0 || *s != '.')
		return FL_EINVAL;
	s++;
	const char *dot = strchr(s, '.');
	if (!dot)
		return FL_EINVAL;
	int t = target_of(s, (size_t)(dot - s));
	if (t < 0)
		return FL_EINVAL;
	int b;
	if (strcmp(dot, ".lora_a") == 0)
		b = 0;
	else if (strcmp(dot, ".lora_b") == 0)
		b = 1;
	else
		return FL_EINVAL;
	*layer = l;
	*target = t;
	*is_b = b;
	return 0;
}

static void canon_name(char *out, size_t cap, uint32_t l, int t, int is_b)
{
	snprintf(out, cap, "blk.%" PRIu32 ".%s.lora_%c", l, tgt_name[t], is_b ? 'b' : 'a');
}

static void base_name(char *out, size_t cap, uint32_t l, int t)
{
	snprintf(out, cap, "blk.%" PRIu32 ".%s.weight", l, tgt_name[t]);
}

static int get_u32_key(const gguf *g, const char *key, uint32_t lo, uint32_t hi, int64_t def,
                       uint32_t *out, char *why, size_t whylen)
{
	uint64_t v;
	int rc = gguf_get_uint(g, key, &v);
	if (rc == FL_ENOENT && def >= 0)
		v = (uint64_t)def;
	else if (rc == FL_ENOENT)
		return fail(why, whylen, FL_EFORMAT, "base model lacks metadata key %s", key);
	else if (rc != 0)
		return fail(why, whylen, FL_EFORMAT, "base model key %s is not an integer (%s)",
		            key, fl_strerror(rc));
	if (v < lo || v > hi)
		return fail(why, whylen, FL_EFORMAT,
		            "base model key %s = %" PRIu64 " is outside [%" PRIu32 ", %" PRIu32 "]",
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
		return fail(why, whylen, FL_EFORMAT, "base model lacks general.architecture");
	if (s.n == 0 || s.n >= sizeof b.arch || memchr(s.p, 0, s.n))
		return fail(why, whylen, FL_EFORMAT, "base model general.architecture is unusable");
	memcpy(b.arch, s.p, s.n);
	char key[96];
	int rc;
	snprintf(key, sizeof key, "%s.block_count", b.arch);
	if ((rc = get_u32_key(g, key, 1, LFMT_MAX_LAYERS, -1, &b.n_layers, why, whylen)) != 0)
		return rc;
	snprintf(key, sizeof key, "%s.attention.head_count", b.arch);
	if ((rc = get_u32_key(g, key, 1, 65536, -1, &b.n_head, why, whylen)) != 0)
		return rc;
	snprintf(key, sizeof key, "%s.attention.head_count_kv", b.arch);
	if ((rc = get_u32_key(g, key, 1, 65536, b.n_head, &b.n_head_kv, why, whylen)) != 0)
		return rc;
	b.qk_permuted = strcmp(b.arch, "llama") == 0;
	if (gguf_get_str(g, "general.name", &s) == 0) {
		size_t n = s.n < sizeof b.name - 1 ? s.n : sizeof b.name - 1;
		memcpy(b.name, s.p, n);
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
	base_name(bn, sizeof bn, l, t);
	if (gguf_tensor_find(base, bn, &bt) != 0)
		return fail(why, whylen, FL_EMISMATCH,
		            "the base model has no tensor %s (adapter for another base?)", bn);
	if (bt.ndims > 2 && (bt.ne[2] != 1 || bt.ne[3] != 1))
		return fail(why, whylen, FL_EMISMATCH, "base tensor %s is not 2-D", bn);
	*in_cols = bt.ne[0];
	*out_rows = bt.ne[1];
	return 0;
}

int lfmt_check(const tset *ad, const gguf *base, uint32_t *rank, char *why, size_t whylen)
{
	size_t n = tset_count(ad);
	uint32_t r = 0;
	if (n == 0)
		return fail(why, whylen, FL_EFORMAT, "the adapter holds no tensors");
	for (size_t i = 0; i < n; i++) {
		const tensor *t = tset_at(ad, i);
		uint32_t l;
		int tg, is_b;
		if (lfmt_parse_name(t->name, &l, &tg, &is_b) != 0)
			return fail(why, whylen, FL_EFORMAT,
			            "adapter tensor '%s' is not named blk.N.<target>.lora_a|lora_b",
			            t->name);
		if (t->ndim != 2)
			return fail(why, whylen, FL_EFORMAT,
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
			return fail(why, whylen, FL_EMISMATCH,
			            "adapter tensor %s is [%" PRIu64 ", %" PRIu64 "] but the base "
			            "tensor is [%" PRIu64 ", %" PRIu64
			            "] ([out, in]): expected %s = %" PRIu64
			            " (adapter for another base?)",
			            t->name, t->shape[0], t->shape[1], out_rows, in_cols,
			            is_b ? "rows" : "columns", want);
		if (tr < 1 || tr > LFMT_MAX_RANK)
			return fail(why, whylen, FL_EFORMAT,
			            "adapter tensor %s has rank %" PRIu64 " (1..%d)", t->name, tr,
			            LFMT_MAX_RANK);
		if (r == 0)
			r = (uint32_t)tr;
		else if (tr != r)
			return fail(why, whylen, FL_EFORMAT,
			            "adapter tensor %s has rank %" PRIu64 ", others have %" PRIu32,
			            t->name, tr, r);
		char other[64];
		canon_name(other, sizeof other, l, tg, !is_b);
		if (!tset_find(ad, other))
			return fail(why, whylen, FL_EFORMAT, "adapter tensor %s has no partner %s",
			            t->name, other);
		for (size_t k = 0; k < t->n; k++)
			if (!isfinite(t->data[k]))
				return fail(why, whylen, FL_ENUMERIC,
				            "adapter tensor %s holds NaN/Inf at element %zu",
				            t->name, k);
	}
	if (rank)
		*rank = r;
	return 0;
}

static int perm_check(uint64_t rows, uint32_t n_head)
{
	return (n_head == 0 || rows % (2ull * n_head)) ? FL_EINVAL : 0;
}

int lfmt_rows_gguf_to_hf(const float *src, float *dst, uint64_t rows, uint64_t cols,
                         uint32_t n_head)
{
	if (perm_check(rows, n_head))
		return FL_EINVAL;
	uint64_t d = rows / n_head;
	for (uint64_t h = 0; h < n_head; h++)
		for (uint64_t g = 0; g < d; g++) {
			uint64_t hf = (g % 2) * (d / 2) + g / 2;
			memcpy(dst + (h * d + hf) * cols, src + (h * d + g) * cols,
			       cols * sizeof(float));
		}
	return 0;
}

int lfmt_rows_hf_to_gguf(const float *src, float *dst, uint64_t rows, uint64_t cols,
                         uint32_t n_head)
{
	if (perm_check(rows, n_head))
		return FL_EINVAL;
	uint64_t d = rows / n_head;
	for (uint64_t h = 0; h < n_head; h++)
		for (uint64_t g = 0; g < d; g++) {
			uint64_t hf = (g % 2) * (d / 2) + g / 2;
			memcpy(dst + (h * d + g) * cols, src + (h * d + hf) * cols,
			       cols * sizeof(float));
		}
	return 0;
}

/* ------------------------------------------------------------------ */
/* GGUF LoRA                                                            */

/* Converts n floats (times mul) to `type` (F32/F16) into a new buffer. */
static int to_type(const float *src, size_t n, float mul, uint32_t type, void **out, size_t *size,
                   const char *name, char *why, size_t whylen)
{
	size_t sz;
	int rc = gtype_row_size(type, n, &sz);
	if (rc != 0)
		return fail(why, whylen, rc, "%s: cannot size %zu elements as %s", name, n,
		            gtype_name(type));
	float *tmp = malloc(n * sizeof(float));
	void *dst = malloc(sz ? sz : 1);
	if (!tmp || !dst) {
		free(tmp);
		free(dst);
		return fail(why, whylen, FL_ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < n; i++) {
		tmp[i] = src[i] * mul;
		if (type == GTYPE_F16 && !(fabsf(tmp[i]) <= 65504.0f)) {
			double v = tmp[i];
			free(tmp);
			free(dst);
			return fail(why, whylen, FL_ENUMERIC,
			            "%s element %zu = %g does not fit F16 (use --type f32)", name,
			            i, v);
		}
	}
	rc = gtype_quant_row(type, tmp, dst, n);
	free(tmp);
	if (rc != 0) {
		free(dst);
		return fail(why, whylen, rc, "%s: conversion to %s failed", name, gtype_name(type));
	}
	*out = dst;
	*size = sz;
	return 0;
}

int lfmt_write_gguf_lora(const tset *ad, const gguf *base, const lfmt_params *p, uint32_t type,
                         const char *path, char *why, size_t whylen)
{
	if (type != GTYPE_F32 && type != GTYPE_F16)
		return fail(why, whylen, FL_EINVAL,
		            "GGUF LoRA tensors are written as F32 or F16, not %s",
		            gtype_name(type) ? gtype_name(type) : "?");
	lfmt_base b;
	uint32_t r;
	int rc = lfmt_base_from_gguf(base, &b, why, whylen);
	if (rc == 0)
		rc = lfmt_check(ad, base, &r, why, whylen);
	if (rc != 0)
		return rc;
	if (p->rank != 0 && p->rank != r)
		return fail(why, whylen, FL_EMISMATCH,
		            "rank %" PRIu32 " given but the adapter's tensors have rank %" PRIu32,
		            p->rank, r);
	lfmt_params pp = *p;
	pp.rank = r;
	double s = lfmt_scale(&pp);
	if (!isfinite(s))
		return fail(why, whylen, FL_ENUMERIC, "LoRA scale is not finite");
	/* llama.cpp: scale = alpha / r with r = lora_b ne[0]; alpha == 0 means 1 */
	float alpha = (float)(s * r), bmul = 1.0f;
	if (alpha == 0.0f) {
		alpha = (float)r;
		bmul = 0.0f;
	}

	gguf_writer *w = gguf_writer_new();
	if (!w)
		return fail(why, whylen, FL_ENOMEM, "out of memory");
	size_t plen = strlen(b.arch);
	rc = gguf_set_str(w, "general.architecture", b.arch);
	if (rc == 0)
		rc = gguf_set_str(w, "general.type", "adapter");
	if (rc == 0 && gguf_find_key(base, "general.name") >= 0)
		rc = gguf_set_copy(w, base, "general.name");
	if (rc == 0)
		rc = gguf_set_u32(w, "general.file_type", type == GTYPE_F32 ? 0u : 1u);
	for (size_t i = 0; rc == 0 && i < gguf_kv_count(base); i++) {
		const char *k = gguf_kv_key(base, i);
		if (strncmp(k, b.arch, plen) == 0 && k[plen] == '.')
			rc = gguf_set_copy(w, base, k);
	}
	if (rc == 0)
		rc = gguf_set_str(w, "adapter.type", "lora");
	if (rc == 0)
		rc = gguf_set_f32(w, "adapter.lora.alpha", alpha);
	if (rc != 0) {
		fail(why, whylen, rc, "cannot build the adapter metadata (%s)", fl_strerror(rc));
		goto out;
	}
	for (size_t i = 0; i < tset_count(ad); i++) {
		const tensor *ta = tset_at(ad, i);
		uint32_t l;
		int tg, is_b;
		lfmt_parse_name(ta->name, &l, &tg, &is_b); /* checked above */
		if (is_b)
			continue;
		char nb[64], name[80];
		canon_name(nb, sizeof nb, l, tg, 1);
		const tensor *tb = tset_find(ad, nb);
		for (int k = 0; k < 2; k++) {
			const tensor *t = k ? tb : ta;
			snprintf(name, sizeof name, "blk.%" PRIu32 ".%s.weight.lora_%c", l,
			         tgt_name[tg], k ? 'b' : 'a');
			/* canonical [rows, cols] -> GGUF ne = {cols, rows}: same bytes */
			uint64_t ne[2] = {t->shape[1], t->shape[0]};
			void *data = NULL;
			size_t sz = 0;
			rc = to_type(t->data, t->n, k ? bmul : 1.0f, type, &data, &sz, t->name, why,
			             whylen);
			if (rc != 0)
				goto out;
			rc = gguf_add_tensor_own(w, name, type, 2, ne, data, sz);
			if (rc != 0) {
				fail(why, whylen, rc, "cannot add tensor %s (%s)", name,
				     fl_strerror(rc));
				goto out;
			}
		}
	}
	rc = gguf_writer_write(w, path);
	if (rc != 0)
		fail(why, whylen, rc, "cannot write %s (%s)", path, fl_strerror(rc));
out:
	gguf_writer_free(w);
	return rc;
}

int lfmt_read_gguf_lora(const char *path, const gguf *base, tset **out, lfmt_params *p, char *why,
                        size_t whylen)
{
	gguf *g = NULL;
	tset *s = NULL;
	char gerr[256];
	int rc = gguf_open(path, &g, gerr, sizeof gerr);
	if (rc != 0)
		return fail(why, whylen, rc, "%s: %s", path, gerr);
	gguf_str v;
	if (gguf_get_str(g, "general.type", &v) != 0 || v.n != 7 || memcmp(v.p, "adapter", 7)) {
		rc = fail(why, whylen, FL_EFORMAT, "%s: general.type is not \"adapter\"", path);
		goto out;
	}
	if (gguf_get_str(g, "adapter.type", &v) != 0 || v.n != 4 || memcmp(v.p, "lora", 4)) {
		rc = fail(why, whylen, FL_EFORMAT, "%s: adapter.type is not \"lora\"", path);
		goto out;
	}
	double alpha;
	if (gguf_get_float(g, "adapter.lora.alpha", &alpha) != 0 || !isfinite(alpha)) {
		rc = fail(why, whylen, FL_EFORMAT, "%s: adapter.lora.alpha missing or not finite",
		          path);
		goto out;
	}
	if (base) {
		gguf_str ba, aa;
		if (gguf_get_str(g, "general.architecture", &aa) != 0 ||
		    gguf_get_str(base, "general.architecture", &ba) != 0 || aa.n != ba.n ||
		    memcmp(aa.p, ba.p, aa.n) != 0) {
			rc = fail(why, whylen, FL_EMISMATCH,
			          "%s: general.architecture differs from the base model's", path);
			goto out;
		}
	}
	if ((rc = tset_new(&s)) != 0)
		goto out;
	for (size_t i = 0; i < gguf_tensor_count(g); i++) {
		gguf_tensor t;
		gguf_tensor_at(g, i, &t);
		size_t nl = strlen(t.name);
		int is_b;
		if (nl > 7 && strcmp(t.name + nl - 7, ".lora_a") == 0)
			is_b = 0;
		else if (nl > 7 && strcmp(t.name + nl - 7, ".lora_b") == 0)
			is_b = 1;
		else {
			rc = fail(why, whylen, FL_EFORMAT,
			          "%s: tensor %s is neither .lora_a nor .lora_b", path, t.name);
			goto out;
		}
		/* prefix must be blk.N.<target>.weight */
		char cn[80];
		uint32_t l;
		int tg, cb;
		size_t pl = nl - 7;
		if (pl < 8 || pl >= 64 || memcmp(t.name + pl - 7, ".weight", 7) != 0) {
			rc = fail(why, whylen, FL_EUNSUPPORTED,
			          "%s: tensor %s does not adapt a blk.N.<target>.weight tensor",
			          path, t.name);
			goto out;
		}
		snprintf(cn, sizeof cn, "%.*s.lora_%c", (int)(pl - 7), t.name, is_b ? 'b' : 'a');
		if (lfmt_parse_name(cn, &l, &tg, &cb) != 0) {
			rc = fail(why, whylen, FL_EUNSUPPORTED,
			          "%s: tensor %s adapts a tensor this project does not (targets: "
			          "attn_q attn_k attn_v attn_output ffn_gate ffn_up ffn_down)",
			          path, t.name);
			goto out;
		}
		if (t.ndims != 2) {
			rc =
			    fail(why, whylen, FL_EFORMAT, "%s: tensor %s is not 2-D", path, t.name);
			goto out;
		}
		uint64_t shape[2] = {t.ne[1], t.ne[0]};
		tensor *dst;
		rc = tset_insert(s, cn, 2, shape, NULL, &dst);
		if (rc != 0) {
			fail(why, whylen, rc, "%s: tensor %s: %s", path, t.name,
			     rc == FL_EMISMATCH ? "duplicate" : fl_strerror(rc));
			goto out;
		}
		size_t rb;
		if ((rc = gtype_row_size(t.type, t.ne[0], &rb)) != 0) {
			fail(why, whylen, rc, "%s: tensor %s: bad row size", path, t.name);
			goto out;
		}
		for (uint64_t rI = 0; rI < t.ne[1]; rI++) {
			rc = gtype_dequant_row(t.type, (const uint8_t *)t.data + rI * rb,
			                       dst->data + rI * t.ne[0], t.ne[0]);
			if (rc != 0) {
				fail(why, whylen, rc, "%s: tensor %s: cannot convert %s", path,
				     t.name, gtype_name(t.type));
				goto out;
			}
		}
	}
	uint32_t r = 0;
	if (base)
		rc = lfmt_check(s, base, &r, why, whylen);
	if (rc != 0)
		goto out;
	if (!base) {
		/* rank from any lora_a */
		for (size_t i = 0; i < tset_count(s) && r == 0; i++) {
			uint32_t l;
			int tg, b2;
			const tensor *t = tset_at(s, i);
			if (lfmt_parse_name(t->name, &l, &tg, &b2) == 0 && !b2)
				r = (uint32_t)t->shape[0];
		}
		if (r == 0 || r > LFMT_MAX_RANK) {
			rc = fail(why, whylen, FL_EFORMAT, "%s: no usable lora_a tensor", path);
			goto out;
		}
	}
	p->rank = r;
	p->rslora = 0;
	p->alpha = alpha == 0.0 ? (float)r : (float)alpha;
	*out = s;
	s = NULL;
out:
	tset_free(s);
	gguf_free(g);
	return rc;
}

/* ------------------------------------------------------------------ */
/* PEFT                                                                 */

static int join(char *out, size_t cap, const char *dir, const char *file)
{
	int n = snprintf(out, cap, "%s/%s", dir, file);
	return (n < 0 || (size_t)n >= cap) ? FL_EINVAL : 0;
}

int lfmt_write_peft(const tset *ad, const gguf *base, const lfmt_params *p, const char *dir,
                    char *why, size_t whylen)
{
	lfmt_base b;
	uint32_t r;
	tset *outs = NULL;
	cJSON *cfg = NULL;
	char *txt = NULL;
	char path[LFMT_PATH_MAX];
	int rc = lfmt_base_from_gguf(base, &b, why, whylen);
	if (rc == 0)
		rc = lfmt_check(ad, base, &r, why, whylen);
	if (rc != 0)
		return rc;
	if (p->rank != 0 && p->rank != r)
		return fail(why, whylen, FL_EMISMATCH,
		            "rank %" PRIu32 " given but the adapter's tensors have rank %" PRIu32,
		            p->rank, r);
	if ((rc = file_mkdirs(dir)) != 0)
		return fail(why, whylen, rc, "cannot create directory %s", dir);
	if ((rc = tset_new(&outs)) != 0)
		return fail(why, whylen, rc, "out of memory");
	uint32_t used = 0;
	for (size_t i = 0; i < tset_count(ad); i++) {
		const tensor *t = tset_at(ad, i);
		uint32_t l;
		int tg, is_b;
		lfmt_parse_name(t->name, &l, &tg, &is_b);
		used |= 1u << tg;
		char nm[160];
		snprintf(nm, sizeof nm, PEFT_PREFIX "%" PRIu32 ".%s.lora_%c.weight", l, tgt_hf[tg],
		         is_b ? 'B' : 'A');
		tensor *dst;
		if ((rc = tset_insert(outs, nm, 2, t->shape, t->data, &dst)) != 0) {
			fail(why, whylen, rc, "cannot add %s (%s)", nm, fl_strerror(rc));
			goto out;
		}
		if (is_b && b.qk_permuted && (tg == LFMT_ATTN_Q || tg == LFMT_ATTN_K)) {
			uint32_t nh = tg == LFMT_ATTN_Q ? b.n_head : b.n_head_kv;
			rc = lfmt_rows_gguf_to_hf(t->data, dst->data, t->shape[0], t->shape[1], nh);
			if (rc != 0) {
				fail(why, whylen, FL_EMISMATCH,
				     "%s has %" PRIu64 " rows, not a multiple of 2 x %" PRIu32
				     " heads",
				     t->name, t->shape[0], nh);
				goto out;
			}
		}
	}
	if ((rc = join(path, sizeof path, dir, PEFT_WEIGHTS)) != 0) {
		fail(why, whylen, rc, "path too long");
		goto out;
	}
	st_kv meta[1] = {{"format", "pt"}};
	if ((rc = st_write(path, outs, ST_F32, meta, 1)) != 0) {
		fail(why, whylen, rc, "cannot write %s (%s)", path, fl_strerror(rc));
		goto out;
	}
	rc = FL_ENOMEM;
	if (!(cfg = cJSON_CreateObject()))
		goto out;
	cJSON *tm = cJSON_AddArrayToObject(cfg, "target_modules");
	for (int t = 0; tm && t < LFMT_NTARGETS; t++)
		if (used & (1u << t))
			cJSON_AddItemToArray(tm, cJSON_CreateString(tgt_hf_short[t]));
	cJSON_AddStringToObject(cfg, "peft_type", "LORA");
	cJSON_AddStringToObject(cfg, "task_type", "CAUSAL_LM");
	cJSON_AddStringToObject(cfg, "base_model_name_or_path", b.name);
	cJSON_AddNumberToObject(cfg, "r", r);
	cJSON_AddNumberToObject(cfg, "lora_alpha", p->alpha);
	cJSON_AddNumberToObject(cfg, "lora_dropout", 0.0);
	cJSON_AddStringToObject(cfg, "bias", "none");
	cJSON_AddBoolToObject(cfg, "use_rslora", p->rslora != 0);
	cJSON_AddBoolToObject(cfg, "fan_in_fan_out", 0);
	cJSON_AddBoolToObject(cfg, "inference_mode", 1);
	cJSON_AddBoolToObject(cfg, "init_lora_weights", 1);
	cJSON_AddNullToObject(cfg, "modules_to_save");
	cJSON_AddObjectToObject(cfg, "rank_pattern");
	cJSON_AddObjectToObject(cfg, "alpha_pattern");
	if (!(txt = cJSON_Print(cfg)))
		goto out;
	size_t n = strlen(txt);
	char *t2 = realloc(txt, n + 2);
	if (!t2)
		goto out;
	txt = t2;
	txt[n] = '\n';
	if ((rc = join(path, sizeof path, dir, PEFT_CONFIG)) != 0) {
		fail(why, whylen, rc, "path too long");
		goto out;
	}
	if ((rc = file_write_atomic(path, txt, n + 1)) != 0)
		fail(why, whylen, rc, "cannot write %s (%s)", path, fl_strerror(rc));
out:
	if (rc == FL_ENOMEM && why && whylen && !why[0])
		fail(why, whylen, rc, "out of memory");
	free(txt);
	cJSON_Delete(cfg);
	tset_free(outs);
	return rc;
}

static int json_empty_obj(const cJSON *o)
{
	return !o || cJSON_IsNull(o) || (cJSON_IsObject(o) && o->child == NULL);
}

int lfmt_parse_peft_config(const char *json, size_t n, lfmt_params *p, char *why, size_t whylen)
{
	cJSON *root = cJSON_ParseWithLength(json, n);
	int rc = FL_EFORMAT;
	if (!root || !cJSON_IsObject(root)) {
		fail(why, whylen, rc, "adapter_config.json is not a JSON object");
		goto out;
	}
	const cJSON *pt = cJSON_GetObjectItemCaseSensitive(root, "peft_type");
	if (pt && !(cJSON_IsString(pt) && strcmp(pt->valuestring, "LORA") == 0)) {
		rc = fail(why, whylen, FL_EUNSUPPORTED,
		          "adapter_config.json: peft_type is not LORA");
		goto out;
	}
	const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "r");
	const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, "lora_alpha");
	if (!cJSON_IsNumber(r) || !(r->valuedouble >= 1 && r->valuedouble <= LFMT_MAX_RANK) ||
	    r->valuedouble != floor(r->valuedouble)) {
		fail(why, whylen, rc, "adapter_config.json: \"r\" is not an integer in 1..%d",
		     LFMT_MAX_RANK);
		goto out;
	}
	if (!cJSON_IsNumber(a) || !isfinite(a->valuedouble) || fabs(a->valuedouble) > 1e30) {
		fail(why, whylen, rc, "adapter_config.json: \"lora_alpha\" is not a finite number");
		goto out;
	}
	const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "use_rslora");
	if (rs && !cJSON_IsBool(rs) && !cJSON_IsNull(rs)) {
		fail(why, whylen, rc, "adapter_config.json: \"use_rslora\" is not a boolean");
		goto out;
	}
	const char *bad = NULL;
	if (!json_empty_obj(cJSON_GetObjectItemCaseSensitive(root, "rank_pattern")))
		bad = "rank_pattern (per-module ranks)";
	else if (!json_empty_obj(cJSON_GetObjectItemCaseSensitive(root, "alpha_pattern")))
		bad = "alpha_pattern (per-module alphas)";
	else if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "fan_in_fan_out")))
		bad = "fan_in_fan_out = true";
	else if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "use_dora")))
		bad = "use_dora = true (DoRA)";
	else {
		const cJSON *bias = cJSON_GetObjectItemCaseSensitive(root, "bias");
		if (bias && !cJSON_IsNull(bias) &&
		    !(cJSON_IsString(bias) && strcmp(bias->valuestring, "none") == 0))
			bad = "bias other than \"none\"";
	}
	if (bad) {
		rc = fail(why, whylen, FL_EUNSUPPORTED, "adapter_config.json: %s is not supported",
		          bad);
		goto out;
	}
	p->rank = (uint32_t)r->valuedouble;
	p->alpha = (float)a->valuedouble;
	p->rslora = cJSON_IsTrue(rs) ? 1 : 0;
	rc = 0;
out:
	cJSON_Delete(root);
	return rc;
}

static int read_config(const char *path, lfmt_params *p, char *why, size_t whylen)
{
	uint8_t *txt = NULL;
	size_t n = 0;
	int rc = file_read_all(path, PEFT_CONFIG_MAX, &txt, &n);
	if (rc != 0)
		return fail(why, whylen, rc, "cannot read %s (%s)", path, fl_strerror(rc));
	char sub[256];
	rc = lfmt_parse_peft_config((const char *)txt, n, p, sub, sizeof sub);
	free(txt);
	if (rc != 0)
		return fail(why, whylen, rc, "%s: %s", path, sub);
	return 0;
}

/* PEFT tensor name -> canonical. */
static int peft_name(const char *name, uint32_t *layer, int *target, int *is_b)
{
	size_t pl = strlen(PEFT_PREFIX);
	if (strncmp(name, PEFT_PREFIX, pl) != 0)
		return FL_EINVAL;
	const char *s = name + pl;
	uint32_t l;
	if (parse_layer(&s, &l) != 0 || *s != '.')
		return FL_EINVAL;
	s++;
	for (int t = 0; t < LFMT_NTARGETS; t++) {
		size_t ml = strlen(tgt_hf[t]);
		if (strncmp(s, tgt_hf[t], ml) != 0)
			continue;
		const char *rest = s + ml;
		if (strcmp(rest, ".lora_A.weight") == 0)
			*is_b = 0;
		else if (strcmp(rest, ".lora_B.weight") == 0)
			*is_b = 1;
		else
			continue;
		*layer = l;
		*target = t;
		return 0;
	}
	return FL_EINVAL;
}

/* PEFT-named set -> canonical set in GGUF q/k row order. */
static int peft_to_canon(const tset *in, const gguf *base, tset **out, const char *src, char *why,
                         size_t whylen)
{
	lfmt_base b;
	int rc = lfmt_base_from_gguf(base, &b, why, whylen);
	if (rc != 0)
		return rc;
	tset *s = NULL;
	if ((rc = tset_new(&s)) != 0)
		return fail(why, whylen, rc, "out of memory");
	for (size_t i = 0; i < tset_count(in); i++) {
		const tensor *t = tset_at(in, i);
		uint32_t l;
		int tg, is_b;
		if (peft_name(t->name, &l, &tg, &is_b) != 0) {
			rc = fail(why, whylen, FL_EUNSUPPORTED,
			          "%s: tensor '%s' is not a LoRA A/B weight of a decoder-layer "
			          "projection (base_model.model.model.layers.N.<module>.lora_A|B."
			          "weight)",
			          src, t->name);
			goto out;
		}
		if (t->ndim != 2) {
			rc =
			    fail(why, whylen, FL_EFORMAT, "%s: tensor %s is not 2-D", src, t->name);
			goto out;
		}
		char cn[64];
		canon_name(cn, sizeof cn, l, tg, is_b);
		tensor *dst;
		if ((rc = tset_insert(s, cn, 2, t->shape, t->data, &dst)) != 0) {
			fail(why, whylen, rc, "%s: tensor %s: %s", src, t->name,
			     rc == FL_EMISMATCH ? "duplicate" : fl_strerror(rc));
			goto out;
		}
		if (is_b && b.qk_permuted && (tg == LFMT_ATTN_Q || tg == LFMT_ATTN_K)) {
			uint32_t nh = tg == LFMT_ATTN_Q ? b.n_head : b.n_head_kv;
			if (lfmt_rows_hf_to_gguf(t->data, dst->data, t->shape[0], t->shape[1],
			                         nh)) {
				rc = fail(why, whylen, FL_EMISMATCH,
				          "%s: %s has %" PRIu64
				          " rows, not a multiple of 2 x %" PRIu32
				          " heads (adapter for another base?)",
				          src, t->name, t->shape[0], nh);
				goto out;
			}
		}
	}
	*out = s;
	s = NULL;
out:
	tset_free(s);
	return rc;
}

static int read_st(const char *path, tset **out, st_file **keep, char *why, size_t whylen)
{
	st_limits lim = {0};
	st_file *f = NULL;
	char sub[256];
	int rc = st_open(path, &lim, &f, sub, sizeof sub);
	if (rc != 0)
		return fail(why, whylen, rc, "%s: %s", path, sub);
	rc = st_to_tset(f, out);
	if (rc != 0) {
		st_close(f);
		return fail(why, whylen, rc, "%s: tensors cannot be read as f32 (%s)", path,
		            fl_strerror(rc));
	}
	*keep = f;
	return 0;
}

int lfmt_read_peft(const char *dir, const gguf *base, tset **out, lfmt_params *p, char *why,
                   size_t whylen)
{
	char path[LFMT_PATH_MAX];
	lfmt_params cp;
	tset *raw = NULL, *s = NULL;
	st_file *f = NULL;
	uint32_t r;
	int rc = join(path, sizeof path, dir, PEFT_CONFIG);
	if (rc != 0)
		return fail(why, whylen, rc, "path too long");
	if ((rc = read_config(path, &cp, why, whylen)) != 0)
		return rc;
	join(path, sizeof path, dir, PEFT_WEIGHTS);
	if ((rc = read_st(path, &raw, &f, why, whylen)) != 0)
		return rc;
	if ((rc = peft_to_canon(raw, base, &s, path, why, whylen)) != 0)
		goto out;
	if ((rc = lfmt_check(s, base, &r, why, whylen)) != 0)
		goto out;
	if (r != cp.rank) {
		rc = fail(why, whylen, FL_EMISMATCH,
		          "%s: adapter_config.json says r = %" PRIu32
		          " but the tensors have rank %" PRIu32,
		          dir, cp.rank, r);
		goto out;
	}
	*p = cp;
	*out = s;
	s = NULL;
out:
	st_close(f);
	tset_free(raw);
	tset_free(s);
	return rc;
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
static int apply_override(lfmt_params *p, int has, const lfmt_override *ov, uint32_t r,
                          const char *path, char *why, size_t whylen)
{
	if (ov && ov->has_alpha) {
		if ((has & 1) && p->alpha != ov->alpha)
			return fail(
			    why, whylen, FL_EMISMATCH,
			    "%s says lora alpha = %g but --alpha %g was given (drop --alpha)", path,
			    (double)p->alpha, (double)ov->alpha);
		p->alpha = ov->alpha;
		has |= 1;
	}
	if (!(has & 1))
		return fail(
		    why, whylen, FL_EINVAL,
		    "%s does not say its LoRA alpha (no %s metadata, no adapter_config.json "
		    "beside it): pass --alpha",
		    path, LFMT_META_ALPHA);
	if (ov && ov->rslora >= 0) {
		if ((has & 2) && p->rslora != ov->rslora)
			return fail(why, whylen, FL_EMISMATCH,
			            "%s says rsLoRA is %s but the command line says %s", path,
			            p->rslora ? "on" : "off", ov->rslora ? "on" : "off");
		p->rslora = ov->rslora;
	}
	if (ov && ov->rank != 0 && ov->rank != r)
		return fail(why, whylen, FL_EMISMATCH,
		            "--rank %" PRIu32 " given but the adapter's tensors have rank %" PRIu32,
		            ov->rank, r);
	p->rank = r;
	return 0;
}

static void dir_of(const char *path, char *out, size_t cap)
{
	const char *sl = strrchr(path, '/');
	if (!sl)
		snprintf(out, cap, ".");
	else if (sl == path)
		snprintf(out, cap, "/");
	else
		snprintf(out, cap, "%.*s", (int)(sl - path), path);
}

int lfmt_load(const char *path, const gguf *base, const lfmt_override *ov, tset **out,
              lfmt_params *p, char *why, size_t whylen)
{
	struct stat stt;
	lfmt_params fp = {0};
	tset *s = NULL, *raw = NULL;
	st_file *f = NULL;
	uint32_t r = 0;
	int has = 0, rc;
	if (stat(path, &stt) != 0)
		return fail(why, whylen, FL_ENOENT, "adapter %s does not exist", path);
	if (S_ISDIR(stt.st_mode)) {
		if ((rc = lfmt_read_peft(path, base, &s, &fp, why, whylen)) != 0)
			return rc;
		r = fp.rank;
		has = 3;
		goto done;
	}
	if ((uint64_t)stt.st_size > LFMT_MAX_FILE)
		return fail(why, whylen, FL_ETOOBIG, "adapter %s is larger than %" PRIu64 " bytes",
		            path, LFMT_MAX_FILE);
	/* GGUF by magic */
	{
		FILE *fh = fopen(path, "rb");
		unsigned char mg[4] = {0};
		size_t got = fh ? fread(mg, 1, 4, fh) : 0;
		if (fh)
			fclose(fh);
		if (got == 4 && memcmp(mg, "GGUF", 4) == 0) {
			if ((rc = lfmt_read_gguf_lora(path, base, &s, &fp, why, whylen)) != 0)
				return rc;
			r = fp.rank;
			has = 3;
			goto done;
		}
	}
	if ((rc = read_st(path, &raw, &f, why, whylen)) != 0)
		goto out;
	if (tset_count(raw) > 0 &&
	    strncmp(tset_at(raw, 0)->name, PEFT_PREFIX, strlen(PEFT_PREFIX)) == 0) {
		/* PEFT names: the config must be beside the file */
		char d[LFMT_PATH_MAX], cfgp[LFMT_PATH_MAX];
		dir_of(path, d, sizeof d);
		if (join(cfgp, sizeof cfgp, d, PEFT_CONFIG) != 0) {
			rc = fail(why, whylen, FL_EINVAL, "path too long");
			goto out;
		}
		if ((rc = read_config(cfgp, &fp, why, whylen)) != 0)
			goto out;
		if ((rc = peft_to_canon(raw, base, &s, path, why, whylen)) != 0)
			goto out;
		if ((rc = lfmt_check(s, base, &r, why, whylen)) != 0)
			goto out;
		if (r != fp.rank) {
			rc = fail(why, whylen, FL_EMISMATCH,
			          "%s says r = %" PRIu32 " but the tensors have rank %" PRIu32,
			          cfgp, fp.rank, r);
			goto out;
		}
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
				rc = fail(why, whylen, FL_EFORMAT,
				          "%s: metadata %s = '%s' is not a "
				          "finite number",
				          path, LFMT_META_ALPHA, ma);
				goto out;
			}
			fp.alpha = (float)v;
			has |= 1;
		}
		if (mr && (parse_num(mr, &v) != 0 || v != (double)r)) {
			rc = fail(why, whylen, FL_EMISMATCH,
			          "%s: metadata %s = '%s' but the tensors have rank %" PRIu32, path,
			          LFMT_META_RANK, mr, r);
			goto out;
		}
		if (ms) {
			if (strcmp(ms, "true") == 0)
				fp.rslora = 1;
			else if (strcmp(ms, "false") == 0)
				fp.rslora = 0;
			else {
				rc = fail(why, whylen, FL_EFORMAT,
				          "%s: metadata %s = '%s' is not true/false", path,
				          LFMT_META_RSLORA, ms);
				goto out;
			}
			has |= 2;
		}
		if (!(has & 1)) {
			char d[LFMT_PATH_MAX], cfgp[LFMT_PATH_MAX];
			dir_of(path, d, sizeof d);
			if (join(cfgp, sizeof cfgp, d, PEFT_CONFIG) == 0 && file_exists(cfgp)) {
				lfmt_params cp;
				if ((rc = read_config(cfgp, &cp, why, whylen)) != 0)
					goto out;
				if (cp.rank != r) {
					rc =
					    fail(why, whylen, FL_EMISMATCH,
					         "%s says r = %" PRIu32 " but %s has rank %" PRIu32,
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

int lfmt_export(const tset *ad, const char *base_path, const lfmt_params *p, enum lfmt_format fmt,
                uint32_t type, const char *out, char *why, size_t whylen)
{
	gguf *g = NULL;
	char gerr[256];
	int rc = gguf_open(base_path, &g, gerr, sizeof gerr);
	if (rc != 0)
		return fail(why, whylen, rc, "%s: %s", base_path, gerr);
	if (fmt == LFMT_GGUF_LORA)
		rc = lfmt_write_gguf_lora(ad, g, p, type, out, why, whylen);
	else if (fmt == LFMT_PEFT)
		rc = lfmt_write_peft(ad, g, p, out, why, whylen);
	else
		rc = fail(why, whylen, FL_EINVAL, "unknown adapter format %d", (int)fmt);
	gguf_free(g);
	return rc;
}
