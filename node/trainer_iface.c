/* trainer_iface — LoRA spec helpers and the trainer registry. */
#include "trainer_iface.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "err.h"

extern const ntr_ops ntr_synth_ops;
extern const ntr_ops ntr_lora_ops;

static const char *const target_names[NTR_T_COUNT] = {
    "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down",
};

static void say(char *err, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(char *err, size_t n, const char *fmt, ...)
{
	if (!err || !n)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, n, fmt, ap);
	va_end(ap);
}

const char *ntr_target_name(int i)
{
	return i >= 0 && i < NTR_T_COUNT ? target_names[i] : NULL;
}

static int target_index(const char *s, size_t n)
{
	for (int i = 0; i < NTR_T_COUNT; i++)
		if (strlen(target_names[i]) == n && memcmp(target_names[i], s, n) == 0)
			return i;
	return -1;
}

int ntr_targets_parse(const char *s, uint32_t *out, char *err, size_t errlen)
{
	if (!s) {
		say(err, errlen, "no LoRA targets given");
		return FL_EINVAL;
	}
	if (strcmp(s, "all") == 0) {
		*out = (1u << NTR_T_COUNT) - 1;
		return 0;
	}
	uint32_t t = 0;
	const char *p = s;
	while (*p) {
		while (*p == ' ' || *p == ',')
			p++;
		if (!*p)
			break;
		const char *e = p;
		while (*e && *e != ',' && *e != ' ')
			e++;
		int i = target_index(p, (size_t)(e - p));
		if (i < 0) {
			say(err, errlen,
			    "unknown LoRA target '%.*s' (expected attn_q, attn_k, attn_v, "
			    "attn_output, "
			    "ffn_gate, ffn_up, ffn_down or all)",
			    (int)(e - p > 40 ? 40 : e - p), p);
			return FL_EINVAL;
		}
		t |= 1u << i;
		p = e;
	}
	if (!t) {
		say(err, errlen, "empty list of LoRA targets");
		return FL_EINVAL;
	}
	*out = t;
	return 0;
}

void ntr_targets_format(uint32_t targets, char *out, size_t n)
{
	size_t used = 0;
	if (!n)
		return;
	out[0] = 0;
	for (int i = 0; i < NTR_T_COUNT; i++) {
		if (!(targets & (1u << i)))
			continue;
		int k = snprintf(out + used, n - used, "%s%s", used ? "," : "", target_names[i]);
		if (k < 0 || (size_t)k >= n - used)
			return;
		used += (size_t)k;
	}
}

int ntr_lora_from_proto(const Fedlora__LoraSpec *m, ntr_lora *out, char *err, size_t errlen)
{
	if (!m) {
		say(err, errlen, "no LoRA spec");
		return FL_EPROTO;
	}
	if (m->rank == 0 || m->rank > NTR_MAX_RANK) {
		say(err, errlen, "LoRA rank %u outside 1..%u", m->rank, NTR_MAX_RANK);
		return FL_EPROTO;
	}
	if (!isfinite(m->alpha) || m->alpha <= 0) {
		say(err, errlen, "LoRA alpha %g is not a positive number", (double)m->alpha);
		return FL_EPROTO;
	}
	uint32_t t = 0;
	for (size_t i = 0; i < m->n_targets; i++) {
		const char *s = m->targets[i] ? m->targets[i] : "";
		int k = target_index(s, strlen(s));
		if (k < 0) {
			say(err, errlen, "unknown LoRA target '%.40s'", s);
			return FL_EPROTO;
		}
		t |= 1u << k;
	}
	if (!t) {
		say(err, errlen, "LoRA spec names no target module");
		return FL_EPROTO;
	}
	ntr_lora l = {m->rank, m->alpha, t, m->rslora ? 1 : 0, m->ffa ? 1 : 0, m->init_seed};
	*out = l;
	return 0;
}

void ntr_lora_to_proto(const ntr_lora *l, Fedlora__LoraSpec *m, char **names)
{
	fedlora__lora_spec__init(m);
	m->rank = l->rank;
	m->alpha = l->alpha;
	m->rslora = l->rslora != 0;
	m->ffa = l->ffa != 0;
	m->init_seed = l->init_seed;
	size_t n = 0;
	for (int i = 0; i < NTR_T_COUNT; i++)
		if (l->targets & (1u << i))
			names[n++] = (char *)target_names[i];
	m->n_targets = n;
	m->targets = names;
}

int ntr_lora_compare(const ntr_lora *a, const ntr_lora *b, char *err, size_t errlen)
{
	char ta[128], tb[128];
	if (a->rank != b->rank) {
		say(err, errlen, "LoRA rank %u vs %u", a->rank, b->rank);
		return FL_EMISMATCH;
	}
	if (a->targets != b->targets) {
		ntr_targets_format(a->targets, ta, sizeof ta);
		ntr_targets_format(b->targets, tb, sizeof tb);
		say(err, errlen, "LoRA targets %s vs %s", ta, tb);
		return FL_EMISMATCH;
	}
	if (a->alpha != b->alpha) {
		say(err, errlen, "LoRA alpha %g vs %g", (double)a->alpha, (double)b->alpha);
		return FL_EMISMATCH;
	}
	if (!a->rslora != !b->rslora) {
		say(err, errlen, "rslora %s vs %s", a->rslora ? "on" : "off",
		    b->rslora ? "on" : "off");
		return FL_EMISMATCH;
	}
	if (!a->ffa != !b->ffa) {
		say(err, errlen, "FFA-LoRA %s vs %s", a->ffa ? "on" : "off", b->ffa ? "on" : "off");
		return FL_EMISMATCH;
	}
	return 0;
}

float ntr_lora_scale(const ntr_lora *l)
{
	double r = (double)l->rank;
	return (float)(l->rslora ? (double)l->alpha / sqrt(r) : (double)l->alpha / r);
}

int ntr_tensor_name(int layer, int target, int is_b, char *out, size_t n)
{
	if (layer < 0 || target < 0 || target >= NTR_T_COUNT)
		return FL_EINVAL;
	int k =
	    snprintf(out, n, "blk.%d.%s.lora_%s", layer, target_names[target], is_b ? "b" : "a");
	if (k < 0 || (size_t)k >= n)
		return FL_ETOOBIG;
	return 0;
}

int ntr_is_lora_b(const char *name)
{
	size_t n = strlen(name);
	return n >= 7 && strcmp(name + n - 7, ".lora_b") == 0;
}

const ntr_ops *ntr_find(const char *name)
{
	if (!name)
		return NULL;
	if (strcmp(name, ntr_synth_ops.name) == 0)
		return &ntr_synth_ops;
	if (strcmp(name, ntr_lora_ops.name) == 0)
		return &ntr_lora_ops;
	return NULL;
}

const char *ntr_names(void)
{
	return "lora|synth";
}
