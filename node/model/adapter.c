/* adapter — see adapter.h. */
#include "adapter.h"

#include "buf.h"
#include "err.h"

#include <stdlib.h>
#include <string.h>

_Static_assert(MODEL_LORA_NT == LORA_NTARGETS, "model_lora projections are common/lora's targets");

int adp_arch(const model_config *c, lora_arch *out)
{
	if (model_config_check(c) != 0)
		return FL_EINVAL;
	lora_arch a;
	memset(&a, 0, sizeof a);
	a.n_layers = (uint32_t)c->n_layers;
	a.n_head = (uint32_t)c->n_heads;
	a.n_head_kv = (uint32_t)c->n_kv_heads;
	for (int t = 0; t < LORA_NTARGETS; t++) {
		int in, o;
		model_lora_dims(c, t, &in, &o);
		a.in[t] = (uint64_t)in;
		a.out[t] = (uint64_t)o;
	}
	*out = a;
	return 0;
}

int adp_layout(const model_config *c, const lora_spec *s, tset **out)
{
	lora_arch a;
	return adp_arch(c, &a) != 0 ? FL_EINVAL : lora_layout(s, &a, out);
}

int adp_init(const model_config *c, const lora_spec *s, uint64_t seed, tset **out)
{
	lora_arch a;
	lora_spec sp = *s;
	sp.init_seed = seed;
	return adp_arch(c, &a) != 0 ? FL_EINVAL : lora_init(&sp, &a, out);
}

int adp_check(const model_config *c, const lora_spec *s, const tset *ad, char *err, size_t errlen)
{
	lora_arch a;
	if (adp_arch(c, &a) != 0)
		return fl_fail(err, errlen, FL_EINVAL, "invalid model config");
	return lora_layout_check(s, &a, ad, err, errlen);
}

int adp_spec_from_tset(const model_config *c, const tset *ad, lora_spec *s, char *err,
                       size_t errlen)
{
	lora_arch a;
	if (adp_arch(c, &a) != 0)
		return fl_fail(err, errlen, FL_EINVAL, "invalid model config");
	return lora_spec_from_tset(&a, ad, s, err, errlen);
}

void adp_ptrs(const model_config *c, const tset *ts, int is_b, float **out)
{
	char nm[64];
	for (int l = 0; l < c->n_layers; l++)
		for (int t = 0; t < LORA_NTARGETS; t++) {
			lora_name(nm, sizeof nm, (uint32_t)l, t, is_b);
			tensor *x = ts ? tset_find(ts, nm) : NULL;
			out[(size_t)l * LORA_NTARGETS + (size_t)t] = x ? x->data : NULL;
		}
}

struct adp_binding {
	model_lora lo;
	float **a, **b, **u;
	float *umem;
};

int adp_bind(const model_config *c, const lora_spec *s, const tset *ad, int max_rows,
             adp_binding **out)
{
	if (adp_check(c, s, ad, NULL, 0) != 0 || max_rows < 0)
		return FL_EINVAL;
	const size_t n = (size_t)c->n_layers * LORA_NTARGETS;
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
	bd->lo.scale = (float)lora_scale(s);
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
