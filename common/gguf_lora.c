/* gguf_lora — see gguf_lora.h. */
#include "gguf_lora.h"

#include "err.h"
#include "gtype.h"
#include "lora_fmt.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Converts n floats (times mul) to `type` (F32/F16) into a new buffer. */
static int to_type(const float *src, size_t n, float mul, uint32_t type, void **out, size_t *size,
                   const char *name, char *why, size_t whylen)
{
	size_t sz;
	int rc = gtype_row_size(type, n, &sz);
	if (rc != 0)
		return fl_fail(why, whylen, rc, "%s: cannot size %zu elements as %s", name, n,
		               gtype_name(type));
	float *tmp = malloc(n * sizeof(float));
	void *dst = malloc(sz ? sz : 1);
	if (!tmp || !dst) {
		free(tmp);
		free(dst);
		return fl_fail(why, whylen, FL_ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < n; i++) {
		tmp[i] = src[i] * mul;
		if (type == GTYPE_F16 && !(fabsf(tmp[i]) <= 65504.0f)) {
			double v = tmp[i];
			free(tmp);
			free(dst);
			return fl_fail(why, whylen, FL_ENUMERIC,
			               "%s element %zu = %g does not fit F16 (use --type f32)",
			               name, i, v);
		}
	}
	rc = gtype_quant_row(type, tmp, dst, n);
	free(tmp);
	if (rc != 0) {
		free(dst);
		return fl_fail(why, whylen, rc, "%s: conversion to %s failed", name,
		               gtype_name(type));
	}
	*out = dst;
	*size = sz;
	return 0;
}

int gguf_lora_write(const tset *ad, const gguf *base, const lora_spec *p, uint32_t type,
                    const char *path, char *why, size_t whylen)
{
	if (type != GTYPE_F32 && type != GTYPE_F16)
		return fl_fail(why, whylen, FL_EINVAL,
		               "GGUF LoRA tensors are written as F32 or F16, not %s",
		               gtype_name(type) ? gtype_name(type) : "?");
	lfmt_base b;
	uint32_t r;
	int rc = lfmt_prepare_write(ad, base, p, &b, &r, why, whylen);
	if (rc != 0)
		return rc;
	lora_spec pp = *p;
	pp.rank = r;
	double s = lora_scale(&pp);
	if (!isfinite(s))
		return fl_fail(why, whylen, FL_ENUMERIC, "LoRA scale is not finite");
	/* llama.cpp: scale = alpha / r with r = lora_b ne[0]; alpha == 0 means 1 */
	float alpha = (float)(s * r), bmul = 1.0f;
	if (alpha == 0.0f) {
		alpha = (float)r;
		bmul = 0.0f;
	}

	gguf_writer *w = gguf_writer_new();
	if (!w)
		return fl_fail(why, whylen, FL_ENOMEM, "out of memory");
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
		fl_fail(why, whylen, rc, "cannot build the adapter metadata (%s)", fl_strerror(rc));
		goto out;
	}
	for (size_t i = 0; i < tset_count(ad); i++) {
		const tensor *ta = tset_at(ad, i);
		uint32_t l;
		int tg, is_b;
		lora_parse_name(ta->name, &l, &tg, &is_b); /* checked above */
		if (is_b)
			continue;
		char nb[64], name[80];
		lora_name(nb, sizeof nb, l, tg, 1);
		const tensor *tb = tset_find(ad, nb);
		for (int k = 0; k < 2; k++) {
			const tensor *t = k ? tb : ta;
			snprintf(name, sizeof name, "blk.%" PRIu32 ".%s.weight.lora_%c", l,
			         lora_target_name(tg), k ? 'b' : 'a');
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
				fl_fail(why, whylen, rc, "cannot add tensor %s (%s)", name,
				        fl_strerror(rc));
				goto out;
			}
		}
	}
	rc = gguf_writer_write(w, path);
	if (rc != 0)
		fl_fail(why, whylen, rc, "cannot write %s (%s)", path, fl_strerror(rc));
out:
	gguf_writer_free(w);
	return rc;
}

int gguf_lora_read(const char *path, const gguf *base, tset **out, lora_spec *p, char *why,
                   size_t whylen)
{
	gguf *g = NULL;
	tset *s = NULL;
	char gerr[256];
	int rc = gguf_open(path, &g, gerr, sizeof gerr);
	if (rc != 0)
		return fl_fail(why, whylen, rc, "%s: %s", path, gerr);
	gguf_str v;
	if (gguf_get_str(g, "general.type", &v) != 0 || v.n != 7 || memcmp(v.p, "adapter", 7)) {
		rc = fl_fail(why, whylen, FL_EFORMAT, "%s: general.type is not \"adapter\"", path);
		goto out;
	}
	if (gguf_get_str(g, "adapter.type", &v) != 0 || v.n != 4 || memcmp(v.p, "lora", 4)) {
		rc = fl_fail(why, whylen, FL_EFORMAT, "%s: adapter.type is not \"lora\"", path);
		goto out;
	}
	double alpha;
	if (gguf_get_float(g, "adapter.lora.alpha", &alpha) != 0 || !isfinite(alpha)) {
		rc = fl_fail(why, whylen, FL_EFORMAT,
		             "%s: adapter.lora.alpha missing or not finite", path);
		goto out;
	}
	if (base) {
		gguf_str ba, aa;
		if (gguf_get_str(g, "general.architecture", &aa) != 0 ||
		    gguf_get_str(base, "general.architecture", &ba) != 0 || aa.n != ba.n ||
		    memcmp(aa.p, ba.p, aa.n) != 0) {
			rc =
			    fl_fail(why, whylen, FL_EMISMATCH,
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
			rc = fl_fail(why, whylen, FL_EFORMAT,
			             "%s: tensor %s is neither .lora_a nor .lora_b", path, t.name);
			goto out;
		}
		/* prefix must be blk.N.<target>.weight */
		char cn[80];
		uint32_t l;
		int tg, cb;
		size_t pl = nl - 7;
		if (pl < 8 || pl >= 64 || memcmp(t.name + pl - 7, ".weight", 7) != 0) {
			rc = fl_fail(why, whylen, FL_EUNSUPPORTED,
			             "%s: tensor %s does not adapt a blk.N.<target>.weight tensor",
			             path, t.name);
			goto out;
		}
		snprintf(cn, sizeof cn, "%.*s.lora_%c", (int)(pl - 7), t.name, is_b ? 'b' : 'a');
		if (lora_parse_name(cn, &l, &tg, &cb) != 0) {
			rc =
			    fl_fail(why, whylen, FL_EUNSUPPORTED,
			            "%s: tensor %s adapts a tensor this project does not (targets: "
			            "attn_q attn_k attn_v attn_output ffn_gate ffn_up ffn_down)",
			            path, t.name);
			goto out;
		}
		if (t.ndims != 2) {
			rc = fl_fail(why, whylen, FL_EFORMAT, "%s: tensor %s is not 2-D", path,
			             t.name);
			goto out;
		}
		uint64_t shape[2] = {t.ne[1], t.ne[0]};
		tensor *dst;
		rc = tset_insert(s, cn, 2, shape, NULL, &dst);
		if (rc != 0) {
			fl_fail(why, whylen, rc, "%s: tensor %s: %s", path, t.name,
			        rc == FL_EMISMATCH ? "duplicate" : fl_strerror(rc));
			goto out;
		}
		size_t rb;
		if ((rc = gtype_row_size(t.type, t.ne[0], &rb)) != 0) {
			fl_fail(why, whylen, rc, "%s: tensor %s: bad row size", path, t.name);
			goto out;
		}
		for (uint64_t rI = 0; rI < t.ne[1]; rI++) {
			rc = gtype_dequant_row(t.type, (const uint8_t *)t.data + rI * rb,
			                       dst->data + rI * t.ne[0], t.ne[0]);
			if (rc != 0) {
				fl_fail(why, whylen, rc, "%s: tensor %s: cannot convert %s", path,
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
			if (lora_parse_name(t->name, &l, &tg, &b2) == 0 && !b2)
				r = (uint32_t)t->shape[0];
		}
		if (r == 0 || r > LORA_MAX_RANK) {
			rc = fl_fail(why, whylen, FL_EFORMAT, "%s: no usable lora_a tensor", path);
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
