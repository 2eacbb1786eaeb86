/* lora — see lora.h. */
#include "lora.h"

#include "config.h"
#include "err.h"
#include "gguf.h"
#include "quant.h"
#include "rng.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *const tgt_name[LORA_NTARGETS] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                                    "ffn_gate", "ffn_up", "ffn_down"};
static const char *const tgt_hf[LORA_NTARGETS] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
static const char *const tgt_hf_short[LORA_NTARGETS] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

#define KNOWN_TARGETS "attn_q attn_k attn_v attn_output ffn_gate ffn_up ffn_down"

const char *lora_target_name(int t)
{
	return (t >= 0 && t < LORA_NTARGETS) ? tgt_name[t] : NULL;
}

const char *lora_target_hf(int t)
{
	return (t >= 0 && t < LORA_NTARGETS) ? tgt_hf[t] : NULL;
}

const char *lora_target_hf_short(int t)
{
	return (t >= 0 && t < LORA_NTARGETS) ? tgt_hf_short[t] : NULL;
}

int lora_target_find(const char *s, size_t n)
{
	for (int t = 0; t < LORA_NTARGETS; t++)
		if (strlen(tgt_name[t]) == n && memcmp(tgt_name[t], s, n) == 0)
			return t;
	return -1;
}

static int is_sep(char c)
{
	return c == ',' || c == ' ' || c == '\t';
}

int lora_targets_parse(const char *s, uint32_t *mask, char *why, size_t whylen)
{
	uint32_t m = 0;
	const char *p = s ? s : "";
	while (*p) {
		while (is_sep(*p))
			p++;
		if (!*p)
			break;
		const char *e = p;
		while (*e && !is_sep(*e))
			e++;
		size_t n = (size_t)(e - p);
		int t = lora_target_find(p, n);
		if (t >= 0)
			m |= 1u << t;
		else if (n == 3 && memcmp(p, "all", 3) == 0)
			m |= LORA_ALL_TARGETS;
		else
			return fl_fail(why, whylen, FL_EINVAL,
			               "unknown LoRA target '%.*s' (known: " KNOWN_TARGETS
			               ", or all)",
			               (int)(n > 40 ? 40 : n), p);
		p = e;
	}
	if (!m)
		return fl_fail(why, whylen, FL_EINVAL,
		               "no LoRA target given (known: " KNOWN_TARGETS ", or all)");
	*mask = m;
	return 0;
}

void lora_targets_format(uint32_t mask, char *out, size_t cap)
{
	size_t k = 0;
	if (!cap)
		return;
	out[0] = 0;
	for (int t = 0; t < LORA_NTARGETS; t++) {
		if (!(mask & (1u << t)))
			continue;
		int w = snprintf(out + k, cap - k, "%s%s", k ? "," : "", tgt_name[t]);
		if (w < 0 || (size_t)w >= cap - k)
			return;
		k += (size_t)w;
	}
}

/* ---- the spec and its range table ------------------------------------------- */

static const cfg_key lora_keys[] = {LORA_CFG_KEYS};
#define NKEYS ((int)(sizeof lora_keys / sizeof lora_keys[0]))

const struct cfg_key *lora_cfg_keys(int *n)
{
	*n = NKEYS;
	return lora_keys;
}

static const cfg_key *key_row(const char *key)
{
	for (int i = 0; i < NKEYS; i++)
		if (strcmp(lora_keys[i].key, key) == 0)
			return &lora_keys[i];
	return NULL; /* not reached: every caller names a row of LORA_CFG_KEYS */
}

/* v within the row's [min, max]; else the configuration layer's sentence.
 * is_float: v is a float that came from the row's double range (alpha), so
 * the bounds are compared as floats too (1e-6 parses to a float below the
 * double 1e-6). */
static int in_range(const char *key, double v, int is_float, const char *text, char *why,
                    size_t whylen)
{
	const cfg_key *k = key_row(key);
	double lo = is_float ? (double)(float)k->min : k->min;
	double hi = is_float ? (double)(float)k->max : k->max;
	if (v >= lo && v <= hi)
		return 0;
	return fl_fail(why, whylen, FL_EINVAL, "%s.%s = %s is out of range [%g, %g]", k->section,
	               k->key, text, k->min, k->max);
}

int lora_spec_check(const lora_spec *s, char *why, size_t whylen)
{
	char txt[48];
	snprintf(txt, sizeof txt, "%" PRIu32, s->rank);
	int rc = in_range("rank", (double)s->rank, 0, txt, why, whylen);
	if (rc == 0) {
		snprintf(txt, sizeof txt, "%g", (double)s->alpha);
		/* NaN fails both comparisons, so it is refused here too */
		rc = in_range("alpha", (double)s->alpha, 1, txt, why, whylen);
	}
	if (rc == 0) {
		snprintf(txt, sizeof txt, "%" PRIu64, s->init_seed);
		rc = in_range("init_seed", (double)s->init_seed, 0, txt, why, whylen);
	}
	if (rc == 0 && (!s->targets || (s->targets & ~LORA_ALL_TARGETS)))
		rc = fl_fail(why, whylen, FL_EINVAL,
		             "lora.targets: %s (known: " KNOWN_TARGETS ", or all)",
		             s->targets ? "unknown target bits" : "no LoRA target given");
	return rc;
}

int lora_spec_from_cfg(const struct cfg *c, lora_spec *out, char *why, size_t whylen)
{
	lora_spec s;
	memset(&s, 0, sizeof s);
	char w[256];
	if (lora_targets_parse(cfg_str(c, "lora.targets"), &s.targets, w, sizeof w) != 0)
		return fl_fail(why, whylen, FL_ECONFIG, "lora.targets: %s", w);
	s.rank = (uint32_t)cfg_int(c, "lora.rank");
	s.alpha = (float)cfg_double(c, "lora.alpha");
	s.rslora = cfg_bool(c, "lora.rslora");
	s.ffa = cfg_bool(c, "lora.ffa");
	s.init_seed = (uint64_t)cfg_int(c, "lora.init_seed");
	if (lora_spec_check(&s, why, whylen) != 0)
		return FL_ECONFIG;
	*out = s;
	return 0;
}

double lora_scale(const lora_spec *s)
{
	if (!s || s->rank == 0)
		return 0.0;
	return s->rslora ? (double)s->alpha / sqrt((double)s->rank)
	                 : (double)s->alpha / (double)s->rank;
}

int lora_spec_from_proto(const Fedlora__LoraSpec *m, lora_spec *out, char *why, size_t whylen)
{
	if (!m)
		return fl_fail(why, whylen, FL_EPROTO, "no LoRA spec");
	lora_spec s = {.rank = m->rank,
	               .alpha = m->alpha,
	               .rslora = m->rslora ? 1 : 0,
	               .ffa = m->ffa ? 1 : 0,
	               .init_seed = m->init_seed};
	for (size_t i = 0; i < m->n_targets; i++) {
		const char *n = m->targets[i] ? m->targets[i] : "";
		int t = lora_target_find(n, strlen(n));
		if (t < 0)
			return fl_fail(why, whylen, FL_EPROTO, "unknown LoRA target '%.40s'", n);
		s.targets |= 1u << t;
	}
	if (lora_spec_check(&s, why, whylen) != 0)
		return FL_EPROTO;
	*out = s;
	return 0;
}

void lora_spec_to_proto(const lora_spec *s, Fedlora__LoraSpec *m, char **names)
{
	fedlora__lora_spec__init(m);
	m->rank = s->rank;
	m->alpha = s->alpha;
	m->rslora = s->rslora != 0;
	m->ffa = s->ffa != 0;
	m->init_seed = s->init_seed;
	size_t n = 0;
	for (int t = 0; t < LORA_NTARGETS; t++)
		if (s->targets & (1u << t))
			names[n++] = (char *)tgt_name[t];
	m->n_targets = n;
	m->targets = names;
}

static const char *onoff(int v)
{
	return v ? "on" : "off";
}

int lora_spec_compare(const lora_spec *a, const lora_spec *b, char *why, size_t whylen)
{
	char ta[128], tb[128];
	if (a->rank != b->rank)
		return fl_fail(why, whylen, FL_EMISMATCH, "LoRA rank %u vs %u", a->rank, b->rank);
	if (a->targets != b->targets) {
		lora_targets_format(a->targets, ta, sizeof ta);
		lora_targets_format(b->targets, tb, sizeof tb);
		return fl_fail(why, whylen, FL_EMISMATCH, "LoRA targets %s vs %s", ta, tb);
	}
	if (a->alpha != b->alpha)
		return fl_fail(why, whylen, FL_EMISMATCH, "LoRA alpha %g vs %g", (double)a->alpha,
		               (double)b->alpha);
	if (!a->rslora != !b->rslora)
		return fl_fail(why, whylen, FL_EMISMATCH, "rslora %s vs %s", onoff(a->rslora),
		               onoff(b->rslora));
	if (!a->ffa != !b->ffa)
		return fl_fail(why, whylen, FL_EMISMATCH, "FFA-LoRA %s vs %s", onoff(a->ffa),
		               onoff(b->ffa));
	return 0;
}

/* ---- tensor names ------------------------------------------------------------- */

static int name_with(char *out, size_t cap, uint32_t layer, int target, const char *suffix)
{
	if (target < 0 || target >= LORA_NTARGETS)
		return FL_EINVAL;
	int n = snprintf(out, cap, "blk.%" PRIu32 ".%s.%s", layer, tgt_name[target], suffix);
	return (n < 0 || (size_t)n >= cap) ? FL_EINVAL : 0;
}

int lora_name(char *out, size_t cap, uint32_t layer, int target, int is_b)
{
	return name_with(out, cap, layer, target, is_b ? "lora_b" : "lora_a");
}

int lora_base_name(char *out, size_t cap, uint32_t layer, int target)
{
	return name_with(out, cap, layer, target, "weight");
}

int lora_parse_layer(const char **p, uint32_t *layer)
{
	const char *s = *p;
	uint32_t v = 0;
	int nd = 0;
	for (; *s >= '0' && *s <= '9'; s++, nd++) {
		if (nd > 0 && v == 0)
			return FL_EINVAL; /* leading zero */
		v = v * 10 + (uint32_t)(*s - '0');
		if (v >= LORA_MAX_LAYERS)
			return FL_EINVAL;
	}
	if (nd == 0)
		return FL_EINVAL;
	*layer = v;
	*p = s;
	return 0;
}

int lora_parse_name(const char *name, uint32_t *layer, int *target, int *is_b)
{
	if (!name || strncmp(name, "blk.", 4) != 0)
		return FL_EINVAL;
	const char *s = name + 4;
	uint32_t v;
	if (lora_parse_layer(&s, &v) != 0 || *s != '.')
		return FL_EINVAL;
	s++;
	const char *dot = strchr(s, '.');
	if (!dot)
		return FL_EINVAL;
	int t = lora_target_find(s, (size_t)(dot - s));
	if (t < 0)
		return FL_EINVAL;
	int b;
	if (strcmp(dot, ".lora_a") == 0)
		b = 0;
	else if (strcmp(dot, ".lora_b") == 0)
		b = 1;
	else
		return FL_EINVAL;
	*layer = v;
	*target = t;
	*is_b = b;
	return 0;
}

int lora_is_b(const char *name)
{
	size_t n = strlen(name);
	return n >= 7 && strcmp(name + n - 7, ".lora_b") == 0;
}

/* ---- shapes --------------------------------------------------------------------- */

static int arch_check(const lora_arch *a, uint32_t mask, char *why, size_t whylen)
{
	if (a->n_layers == 0 || a->n_layers > LORA_MAX_LAYERS)
		return fl_fail(why, whylen, FL_EINVAL, "layer count %" PRIu32 " out of range 1..%d",
		               a->n_layers, LORA_MAX_LAYERS);
	for (int t = 0; t < LORA_NTARGETS; t++) {
		if (!(mask & (1u << t)))
			continue;
		if (a->in[t] == 0 || a->out[t] == 0 || a->in[t] > LORA_MAX_DIM ||
		    a->out[t] > LORA_MAX_DIM)
			return fl_fail(why, whylen, FL_EINVAL,
			               "%s: shape %" PRIu64 "x%" PRIu64 " out of range (1..%u)",
			               tgt_name[t], a->out[t], a->in[t], LORA_MAX_DIM);
	}
	if (a->n_head_kv && !a->n_head)
		return fl_fail(why, whylen, FL_EINVAL, "n_head_kv given without n_head");
	return 0;
}

int lora_arch_from_gguf(const char *path, uint32_t mask, lora_arch *out, char *why, size_t whylen)
{
	gguf *g = NULL;
	char err[256];
	int rc = gguf_open(path, &g, err, sizeof err);
	if (rc)
		return fl_fail(why, whylen, rc, "%s: %s", path, err);
	lora_arch a;
	memset(&a, 0, sizeof a);
	gguf_str arch = {0};
	char key[160];
	char archname[64] = "llama";
	if (gguf_get_str(g, "general.architecture", &arch) == 0 && arch.n > 0 &&
	    arch.n < sizeof archname) {
		memcpy(archname, arch.p, arch.n);
		archname[arch.n] = 0;
	}
	uint64_t v;
	snprintf(key, sizeof key, "%s.block_count", archname);
	if (gguf_get_uint(g, key, &v) == 0 && v > 0 && v <= LORA_MAX_LAYERS) {
		a.n_layers = (uint32_t)v;
	} else {
		/* no block_count: the highest blk.N.* index + 1 */
		for (size_t i = 0; i < gguf_tensor_count(g); i++) {
			gguf_tensor t;
			unsigned long n;
			if (gguf_tensor_at(g, i, &t) == 0 && sscanf(t.name, "blk.%lu.", &n) == 1 &&
			    n < LORA_MAX_LAYERS && n + 1 > a.n_layers)
				a.n_layers = (uint32_t)(n + 1);
		}
	}
	snprintf(key, sizeof key, "%s.attention.head_count", archname);
	if (gguf_get_uint(g, key, &v) == 0 && v > 0 && v < (1u << 20))
		a.n_head = (uint32_t)v;
	snprintf(key, sizeof key, "%s.attention.head_count_kv", archname);
	if (gguf_get_uint(g, key, &v) == 0 && v > 0 && v < (1u << 20))
		a.n_head_kv = (uint32_t)v;
	else
		a.n_head_kv = a.n_head;
	if (a.n_layers == 0) {
		rc = fl_fail(why, whylen, FL_EFORMAT,
		             "%s: no transformer blocks (no %s.block_count, no blk.N.* tensors)",
		             path, archname);
		goto out;
	}
	for (int t = 0; t < LORA_NTARGETS; t++) {
		if (!(mask & (1u << t)))
			continue;
		for (uint32_t l = 0; l < a.n_layers; l++) {
			gguf_tensor gt;
			lora_base_name(key, sizeof key, l, t);
			if (gguf_tensor_find(g, key, &gt)) {
				rc = fl_fail(why, whylen, FL_EFORMAT,
				             "%s: tensor %s not found (LoRA target %s)", path, key,
				             tgt_name[t]);
				goto out;
			}
			if (gt.ndims != 2) {
				rc = fl_fail(why, whylen, FL_EFORMAT,
				             "%s: tensor %s has %d dimensions, expected 2", path,
				             key, gt.ndims);
				goto out;
			}
			if (l == 0) {
				a.in[t] = gt.ne[0];
				a.out[t] = gt.ne[1];
			} else if (a.in[t] != gt.ne[0] || a.out[t] != gt.ne[1]) {
				rc = fl_fail(why, whylen, FL_EFORMAT,
				             "%s: tensor %s is %" PRIu64 "x%" PRIu64
				             ", layer 0 has %" PRIu64 "x%" PRIu64
				             " (layers must agree)",
				             path, key, gt.ne[1], gt.ne[0], a.out[t], a.in[t]);
				goto out;
			}
		}
	}
	rc = arch_check(&a, mask, why, whylen);
	if (!rc)
		*out = a;
out:
	gguf_free(g);
	return rc;
}

int lora_arch_parse(uint32_t n_layers, const char *dims, uint32_t n_head, uint32_t n_head_kv,
                    uint32_t mask, lora_arch *out, char *why, size_t whylen)
{
	lora_arch a;
	memset(&a, 0, sizeof a);
	a.n_layers = n_layers;
	a.n_head = n_head;
	a.n_head_kv = n_head_kv ? n_head_kv : n_head;
	const char *p = dims ? dims : "";
	while (*p) {
		while (*p == ' ' || *p == ',')
			p++;
		if (!*p)
			break;
		const char *eq = strchr(p, '=');
		const char *end = strchr(p, ',');
		if (!end)
			end = p + strlen(p);
		if (!eq || eq > end)
			return fl_fail(why, whylen, FL_EINVAL,
			               "adapter dims entry '%.*s' is not target=OUTxIN",
			               (int)(end - p), p);
		size_t n = (size_t)(eq - p);
		while (n > 0 && p[n - 1] == ' ')
			n--;
		int t = lora_target_find(p, n);
		if (t < 0)
			return fl_fail(why, whylen, FL_EINVAL,
			               "adapter dims: unknown target '%.*s'",
			               (int)(n > 40 ? 40 : n), p);
		unsigned long long o, i;
		char tail;
		char val[64];
		size_t vn = (size_t)(end - eq - 1);
		if (vn >= sizeof val)
			return fl_fail(why, whylen, FL_EINVAL,
			               "adapter dims: value for %s too long", tgt_name[t]);
		memcpy(val, eq + 1, vn);
		val[vn] = 0;
		if (sscanf(val, " %llux%llu %c", &o, &i, &tail) != 2)
			return fl_fail(why, whylen, FL_EINVAL,
			               "adapter dims: '%s' for %s is not OUTxIN", val, tgt_name[t]);
		a.out[t] = o;
		a.in[t] = i;
		p = end;
	}
	for (int t = 0; t < LORA_NTARGETS; t++)
		if ((mask & (1u << t)) && (!a.in[t] || !a.out[t]))
			return fl_fail(why, whylen, FL_EINVAL,
			               "adapter dims: no shape for target %s", tgt_name[t]);
	int rc = arch_check(&a, mask, why, whylen);
	if (!rc)
		*out = a;
	return rc;
}

/* ---- layout, v0 ------------------------------------------------------------------- */

/* What the layout needs of a spec: a rank in the table and known targets. */
static int layout_spec_ok(const lora_spec *spec)
{
	return spec->rank >= 1 && spec->rank <= LORA_MAX_RANK && spec->targets &&
	       !(spec->targets & ~LORA_ALL_TARGETS);
}

static int build(const lora_spec *spec, const lora_arch *arch, int init, tset **out)
{
	if (!layout_spec_ok(spec) || arch_check(arch, spec->targets, NULL, 0))
		return FL_EINVAL;
	tset *s = NULL;
	int rc = tset_new(&s);
	char nm[64];
	for (uint32_t l = 0; !rc && l < arch->n_layers; l++)
		for (int t = 0; !rc && t < LORA_NTARGETS; t++) {
			if (!(spec->targets & (1u << t)))
				continue;
			uint64_t sa[2] = {spec->rank, arch->in[t]};
			uint64_t sb[2] = {arch->out[t], spec->rank};
			tensor *ta;
			rc = lora_name(nm, sizeof nm, l, t, 0);
			if (!rc)
				rc = tset_insert(s, nm, 2, sa, NULL, &ta);
			if (!rc && init) {
				rng r;
				rng_seed(&r, quant_seed_derive(spec->init_seed, nm));
				double bound = 1.0 / sqrt((double)arch->in[t]);
				for (size_t k = 0; k < ta->n; k++)
					ta->data[k] =
					    (float)((2.0 * rng_uniform(&r) - 1.0) * bound);
			}
			if (!rc)
				rc = lora_name(nm, sizeof nm, l, t, 1);
			if (!rc)
				rc = tset_insert(s, nm, 2, sb, NULL, NULL);
		}
	if (rc) {
		tset_free(s);
		return rc;
	}
	*out = s;
	return 0;
}

int lora_layout(const lora_spec *spec, const lora_arch *arch, tset **out)
{
	return build(spec, arch, 0, out);
}

int lora_init(const lora_spec *spec, const lora_arch *arch, tset **out)
{
	return build(spec, arch, 1, out);
}

int lora_layout_check(const lora_spec *spec, const lora_arch *arch, const tset *ad, char *why,
                      size_t whylen)
{
	char nm[64];
	size_t expect = 0;
	if (!layout_spec_ok(spec))
		return fl_fail(why, whylen, FL_EINVAL,
		               "LoRA rank %" PRIu32 " or targets 0x%x unusable", spec->rank,
		               spec->targets);
	for (uint32_t l = 0; l < arch->n_layers; l++)
		for (int t = 0; t < LORA_NTARGETS; t++) {
			if (!(spec->targets & (1u << t)))
				continue;
			for (int b = 0; b < 2; b++) {
				lora_name(nm, sizeof nm, l, t, b);
				const tensor *x = tset_find(ad, nm);
				uint64_t r0 = b ? arch->out[t] : spec->rank;
				uint64_t r1 = b ? spec->rank : arch->in[t];
				if (!x)
					return fl_fail(why, whylen, FL_EMISMATCH,
					               "adapter lacks tensor %s", nm);
				if (x->ndim != 2 || x->shape[0] != r0 || x->shape[1] != r1)
					return fl_fail(
					    why, whylen, FL_EMISMATCH,
					    "adapter tensor %s has shape [%" PRIu64 ", %" PRIu64
					    "], the model needs [%" PRIu64 ", %" PRIu64 "]",
					    nm, x->shape[0], x->ndim > 1 ? x->shape[1] : 0, r0, r1);
				expect++;
			}
		}
	if (tset_count(ad) == expect)
		return 0;
	for (size_t i = 0; i < tset_count(ad); i++) {
		const tensor *x = tset_at(ad, i);
		uint32_t l;
		int t, b;
		if (lora_parse_name(x->name, &l, &t, &b) != 0 || l >= arch->n_layers ||
		    !(spec->targets & (1u << t)))
			return fl_fail(why, whylen, FL_EMISMATCH,
			               "adapter tensor %s is not part of this adapter", x->name);
	}
	return fl_fail(why, whylen, FL_EMISMATCH, "adapter has %zu tensors, expected %zu",
	               tset_count(ad), expect);
}

int lora_spec_from_tset(const lora_arch *arch, const tset *ad, lora_spec *spec, char *why,
                        size_t whylen)
{
	lora_spec r = *spec;
	r.rank = 0;
	r.targets = 0;
	for (size_t i = 0; i < tset_count(ad); i++) {
		const tensor *x = tset_at(ad, i);
		uint32_t l;
		int t, b;
		if (lora_parse_name(x->name, &l, &t, &b) != 0 || l >= arch->n_layers)
			return fl_fail(why, whylen, FL_EMISMATCH,
			               "adapter tensor %s: not a LoRA tensor of this model",
			               x->name);
		r.targets |= 1u << t;
		if (!b && x->ndim == 2 && r.rank == 0 && x->shape[0] <= LORA_MAX_RANK)
			r.rank = (uint32_t)x->shape[0];
	}
	if (r.rank == 0)
		return fl_fail(why, whylen, FL_EMISMATCH, "adapter has no lora_a tensor");
	int rc = lora_layout_check(&r, arch, ad, why, whylen);
	if (rc == 0)
		*spec = r;
	return rc;
}

/* ---- q/k row order ------------------------------------------------------------- */

/* One definition of the permutation for both directions: HF row hf of
 * head h sits at GGUF row g. */
static int permute_rows(const float *src, float *dst, uint64_t rows, uint64_t cols, uint32_t n_head,
                        int to_hf)
{
	if (n_head == 0 || rows % (2ull * n_head))
		return FL_EINVAL;
	uint64_t d = rows / n_head;
	for (uint64_t h = 0; h < n_head; h++)
		for (uint64_t g = 0; g < d; g++) {
			uint64_t rg = h * d + g, rh = h * d + (g % 2) * (d / 2) + g / 2;
			memcpy(dst + (to_hf ? rh : rg) * cols, src + (to_hf ? rg : rh) * cols,
			       cols * sizeof(float));
		}
	return 0;
}

int lora_rows_gguf_to_hf(const float *src, float *dst, uint64_t rows, uint64_t cols,
                         uint32_t n_head)
{
	return permute_rows(src, dst, rows, cols, n_head, 1);
}

int lora_rows_hf_to_gguf(const float *src, float *dst, uint64_t rows, uint64_t cols,
                         uint32_t n_head)
{
	return permute_rows(src, dst, rows, cols, n_head, 0);
}
