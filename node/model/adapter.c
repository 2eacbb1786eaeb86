/* adapter — see adapter.h. */
#include "adapter.h"

#include "buf.h"
#include "err.h"
#include "quant.h"
#include "rng.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const tnames[ADP_NTARGETS] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                                 "ffn_gate", "ffn_up", "ffn_down"};

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int
say(char *err, size_t n, const char *fmt, ...)
{
	if (err && n) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, n, fmt, ap);
		va_end(ap);
	}
	return 0;
}

const char *adp_target_name(int t)
{
	return t >= 0 && t < ADP_NTARGETS ? tnames[t] : NULL;
}

int adp_targets_parse(const char *s, uint32_t *mask, char *err, size_t errlen)
{
	uint32_t m = 0;
	if (!s || !*s) {
		say(err, errlen, "empty target list");
		return FL_EINVAL;
	}
	const char *p = s;
	while (*p) {
		const char *e = strchr(p, ',');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		while (n && p[0] == ' ') {
			p++;
			n--;
		}
		while (n && p[n - 1] == ' ')
			n--;
		int found = -1;
		if (n == 3 && memcmp(p, "all", 3) == 0) {
			m |= ADP_ALL_TARGETS;
			found = ADP_NTARGETS;
		}
		for (int t = 0; t < ADP_NTARGETS && found < 0; t++)
			if (strlen(tnames[t]) == n && memcmp(p, tnames[t], n) == 0)
				found = t;
		if (found < 0) {
			say(err, errlen,
			    "unknown LoRA target '%.*s' (attn_q attn_k attn_v attn_output "
			    "ffn_gate ffn_up ffn_down, or all)",
			    (int)(n > 64 ? 64 : n), p);
			return FL_EINVAL;
		}
		if (found < ADP_NTARGETS)
			m |= 1u << found;
		p += n;
		while (*p == ' ')
			p++;
		if (*p == ',')
			p++;
	}
	if (!m) {
		say(err, errlen, "empty target list");
		return FL_EINVAL;
	}
	*mask = m;
	return 0;
}

void adp_targets_format(uint32_t mask, char *out, size_t n)
{
	size_t used = 0;
	if (!n)
		return;
	out[0] = 0;
	for (int t = 0; t < ADP_NTARGETS; t++) {
		if (!(mask & (1u << t)))
			continue;
		int w = snprintf(out + used, n - used, "%s%s", used ? "," : "", tnames[t]);
		if (w < 0 || (size_t)w >= n - used)
			return;
		used += (size_t)w;
	}
}

float adp_scale(const adp_spec *s)
{
	if (s->rank == 0)
		return 0.0f;
	return (float)(s->rslora ? (double)s->alpha / sqrt((double)s->rank)
	                         : (double)s->alpha / s->rank);
}

int adp_spec_check(const adp_spec *s, char *err, size_t errlen)
{
	if (s->rank < 1 || s->rank > ADP_MAX_RANK) {
		say(err, errlen, "LoRA rank %u is outside 1..%d", s->rank, ADP_MAX_RANK);
		return FL_EINVAL;
	}
	if (!isfinite(s->alpha) || s->alpha <= 0.0f) {
		say(err, errlen, "LoRA alpha %g must be positive and finite", (double)s->alpha);
		return FL_EINVAL;
	}
	if (!s->targets || (s->targets & ~ADP_ALL_TARGETS)) {
		say(err, errlen, "LoRA targets 0x%x: none or unknown", s->targets);
		return FL_EINVAL;
	}
	return 0;
}

int adp_name(char *out, size_t n, int layer, int target, int is_b)
{
	if (target < 0 || target >= ADP_NTARGETS || layer < 0)
		return FL_EINVAL;
	int w = snprintf(out, n, "blk.%d.%s.lora_%s", layer, tnames[target], is_b ? "b" : "a");
	return w < 0 || (size_t)w >= n ? FL_EINVAL : 0;
}

static int build(const model_config *c, const adp_spec *s, int init, uint64_t seed, tset **out)
{
	if (adp_spec_check(s, NULL, 0) != 0 || model_config_check(c) != 0)
		return FL_EINVAL;
	tset *ts = NULL;
	int rc = tset_new(&ts);
	char nm[64];
	for (int l = 0; rc == 0 && l < c->n_layers; l++)
		for (int t = 0; rc == 0 && t < ADP_NTARGETS; t++) {
			if (!(s->targets & (1u << t)))
				continue;
			int in, o;
			model_lora_dims(c, t, &in, &o);
			uint64_t sa[2] = {s->rank, (uint64_t)in}, sb[2] = {(uint64_t)o, s->rank};
			tensor *ta = NULL;
			if ((rc = adp_name(nm, sizeof nm, l, t, 0)) == 0)
				rc = tset_insert(ts, nm, 2, sa, NULL, &ta);
			if (rc == 0 && init) {
				rng r;
				rng_seed(&r, quant_seed_derive(seed, nm));
				const double bound = 1.0 / sqrt((double)in);
				for (size_t k = 0; k < ta->n; k++)
					ta->data[k] =
					    (float)((2.0 * rng_uniform(&r) - 1.0) * bound);
			}
			if (rc == 0 && (rc = adp_name(nm, sizeof nm, l, t, 1)) == 0)
				rc = tset_insert(ts, nm, 2, sb, NULL, NULL);
		}
	if (rc != 0) {
		tset_free(ts);
		return rc;
	}
	*out = ts;
	return 0;
}

int adp_layout(const model_config *c, const adp_spec *s, tset **out)
{
	return build(c, s, 0, 0, out);
}

int adp_init(const model_config *c, const adp_spec *s, uint64_t seed, tset **out)
{
	return build(c, s, 1, seed, out);
}

/* Parses "blk.N.<target>.lora_a|b". */
static int parse_name(const char *name, int *layer, int *target, int *is_b)
{
	if (strncmp(name, "blk.", 4) != 0)
		return FL_EINVAL;
	const char *p = name + 4;
	long l = 0;
	int digits = 0;
	while (*p >= '0' && *p <= '9' && digits < 7) {
		l = l * 10 + (*p - '0');
		p++;
		digits++;
	}
	if (!digits || *p != '.' || (digits > 1 && name[4] == '0'))
		return FL_EINVAL;
	p++;
	for (int t = 0; t < ADP_NTARGETS; t++) {
		size_t n = strlen(tnames[t]);
		if (strncmp(p, tnames[t], n) == 0 && p[n] == '.') {
			const char *q = p + n + 1;
			if (strcmp(q, "lora_a") == 0 || strcmp(q, "lora_b") == 0) {
				*layer = (int)l;
				*target = t;
				*is_b = q[5] == 'b';
				return 0;
			}
		}
	}
	return FL_EINVAL;
}

int adp_check(const model_config *c, const adp_spec *s, const tset *ad, char *err, size_t errlen)
{
	char nm[64];
	size_t expect = 0;
	if (adp_spec_check(s, err, errlen) != 0)
		return FL_EINVAL;
	for (int l = 0; l < c->n_layers; l++)
		for (int t = 0; t < ADP_NTARGETS; t++) {
			if (!(s->targets & (1u << t)))
				continue;
			int in, o;
			model_lora_dims(c, t, &in, &o);
			for (int b = 0; b < 2; b++) {
				adp_name(nm, sizeof nm, l, t, b);
				const tensor *x = tset_find(ad, nm);
				uint64_t r0 = b ? (uint64_t)o : s->rank,
				         r1 = b ? s->rank : (uint64_t)in;
				if (!x) {
					say(err, errlen, "adapter lacks tensor %s", nm);
					return FL_EMISMATCH;
				}
				if (x->ndim != 2 || x->shape[0] != r0 || x->shape[1] != r1) {
					say(err, errlen,
					    "adapter tensor %s has shape [%llu, %llu], the model "
					    "needs [%llu, %llu]",
					    nm, (unsigned long long)x->shape[0],
					    (unsigned long long)(x->ndim > 1 ? x->shape[1] : 0),
					    (unsigned long long)r0, (unsigned long long)r1);
					return FL_EMISMATCH;
				}
				expect++;
			}
		}
	if (tset_count(ad) != expect) {
		for (size_t i = 0; i < tset_count(ad); i++) {
			const tensor *x = tset_at(ad, i);
			int l, t, b;
			if (parse_name(x->name, &l, &t, &b) != 0 || l >= c->n_layers ||
			    !(s->targets & (1u << t))) {
				say(err, errlen, "adapter tensor %s is not part of this adapter",
				    x->name);
				return FL_EMISMATCH;
			}
		}
		say(err, errlen, "adapter has %zu tensors, expected %zu", tset_count(ad), expect);
		return FL_EMISMATCH;
	}
	return 0;
}

int adp_spec_from_tset(const model_config *c, const tset *ad, adp_spec *s, char *err, size_t errlen)
{
	adp_spec r = *s;
	r.rank = 0;
	r.targets = 0;
	for (size_t i = 0; i < tset_count(ad); i++) {
		const tensor *x = tset_at(ad, i);
		int l, t, b;
		if (parse_name(x->name, &l, &t, &b) != 0 || l >= c->n_layers) {
			say(err, errlen, "adapter tensor %s: not a LoRA tensor of this model",
			    x->name);
			return FL_EMISMATCH;
		}
		r.targets |= 1u << t;
		if (!b && x->ndim == 2 && r.rank == 0 && x->shape[0] <= ADP_MAX_RANK)
			r.rank = (uint32_t)x->shape[0];
	}
	if (r.rank == 0) {
		say(err, errlen, "adapter has no lora_a tensor");
		return FL_EMISMATCH;
	}
	int rc = adp_check(c, &r, ad, err, errlen);
	if (rc == 0)
		*s = r;
	return rc;
}

void adp_ptrs(const model_config *c, const tset *ts, int is_b, float **out)
{
	char nm[64];
	for (int l = 0; l < c->n_layers; l++)
		for (int t = 0; t < ADP_NTARGETS; t++) {
			adp_name(nm, sizeof nm, l, t, is_b);
			tensor *x = ts ? tset_find(ts, nm) : NULL;
			out[(size_t)l * ADP_NTARGETS + (size_t)t] = x ? x->data : NULL;
		}
}

struct adp_binding {
	model_lora lo;
	float **a, **b, **u;
	float *umem;
};

int adp_bind(const model_config *c, const adp_spec *s, const tset *ad, int max_rows,
             adp_binding **out)
{
	if (adp_check(c, s, ad, NULL, 0) != 0 || max_rows < 0)
		return FL_EINVAL;
	const size_t n = (size_t)c->n_layers * ADP_NTARGETS;
	adp_binding *bd = calloc(1, sizeof *bd);
	if (!bd)
		return FL_ENOMEM;
	bd->a = calloc(n, sizeof *bd->a);
	bd->b = calloc(n, sizeof *bd->b);
	bd->u = calloc(n, sizeof *bd->u);
	int rc = bd->a && bd->b && bd->u ? 0 : FL_ENOMEM;
	if (rc == 0) {
		adp_ptrs(c, ad, 0, bd->a);
		adp_ptrs(c, ad, 1, bd->b);
	}
	if (rc == 0 && max_rows > 0) {
		size_t k = 0, per, tot;
		for (size_t i = 0; i < n; i++)
			k += bd->a[i] != NULL;
		if (sz_mul((size_t)max_rows, s->rank, &per) != 0 || sz_mul(per, k, &tot) != 0)
			rc = FL_EOVERFLOW;
		else if (!(bd->umem = malloc(sizeof(float) * (tot ? tot : 1))))
			rc = FL_ENOMEM;
		for (size_t i = 0, j = 0; rc == 0 && i < n; i++)
			if (bd->a[i])
				bd->u[i] = bd->umem + per * j++;
	}
	if (rc != 0) {
		adp_binding_free(bd);
		return rc;
	}
	bd->lo.rank = (int)s->rank;
	bd->lo.scale = adp_scale(s);
	bd->lo.a = (const float *const *)bd->a;
	bd->lo.b = (const float *const *)bd->b;
	bd->lo.u = max_rows > 0 ? bd->u : NULL;
	*out = bd;
	return 0;
}

void adp_binding_free(adp_binding *b)
{
	if (!b)
		return;
	free(b->a);
	free(b->b);
	free(b->u);
	free(b->umem);
	free(b);
}

const model_lora *adp_binding_lora(const adp_binding *b)
{
	return &b->lo;
}
