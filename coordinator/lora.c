/* lora — see lora.h. */
#include "lora.h"

#include "lora_fmt.h"

#include "err.h"
#include "fileio.h"
#include "gguf.h"
#include "log.h"
#include "quant.h"
#include "rng.h"
#include "safetensors.h"
#include "sha.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const tgt_names[LORA_NTARGETS] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                                     "ffn_gate", "ffn_up", "ffn_down"};
static const char *const tgt_peft[LORA_NTARGETS] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
static const char *const tgt_peft_short[LORA_NTARGETS] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

#define WHY(...)                                                                                   \
	do {                                                                                       \
		if (why && whylen)                                                                 \
			snprintf(why, whylen, __VA_ARGS__);                                        \
	} while (0)

const char *lora_target_name(int t)
{
	return (t >= 0 && t < LORA_NTARGETS) ? tgt_names[t] : NULL;
}

const char *lora_target_peft(int t)
{
	return (t >= 0 && t < LORA_NTARGETS) ? tgt_peft[t] : NULL;
}

int lora_target_parse(const char *s, int *t)
{
	for (int i = 0; i < LORA_NTARGETS; i++)
		if (strcmp(s, tgt_names[i]) == 0) {
			*t = i;
			return 0;
		}
	return FL_EINVAL;
}

int lora_targets_parse(const char *s, uint32_t *mask, char *why, size_t whylen)
{
	uint32_t m = 0;
	const char *p = s;
	while (*p) {
		while (*p == ' ' || *p == ',')
			p++;
		if (!*p)
			break;
		const char *e = p;
		while (*e && *e != ',' && *e != ' ')
			e++;
		char tok[32];
		size_t n = (size_t)(e - p);
		int t;
		if (n >= sizeof tok) {
			WHY("unknown LoRA target '%.*s'", (int)(n > 40 ? 40 : n), p);
			return FL_EINVAL;
		}
		memcpy(tok, p, n);
		tok[n] = 0;
		if (lora_target_parse(tok, &t)) {
			WHY("unknown LoRA target '%s' (known: attn_q attn_k attn_v attn_output "
			    "ffn_gate ffn_up ffn_down)",
			    tok);
			return FL_EINVAL;
		}
		m |= 1u << t;
		p = e;
	}
	if (!m) {
		WHY("no LoRA target given");
		return FL_EINVAL;
	}
	*mask = m;
	return 0;
}

void lora_targets_str(uint32_t mask, char *out, size_t cap)
{
	size_t k = 0;
	if (cap)
		out[0] = 0;
	for (int t = 0; t < LORA_NTARGETS; t++) {
		if (!(mask & (1u << t)))
			continue;
		int w =
		    snprintf(out + k, cap > k ? cap - k : 0, "%s%s", k ? "," : "", tgt_names[t]);
		if (w < 0 || (size_t)w >= (cap > k ? cap - k : 0))
			return;
		k += (size_t)w;
	}
}

int lora_name(char *out, size_t cap, uint32_t layer, int target, int is_b)
{
	if (target < 0 || target >= LORA_NTARGETS)
		return FL_EINVAL;
	int n = snprintf(out, cap, "blk.%" PRIu32 ".%s.lora_%c", layer, tgt_names[target],
	                 is_b ? 'b' : 'a');
	return (n < 0 || (size_t)n >= cap) ? FL_EINVAL : 0;
}

static int arch_check(const lora_arch *a, uint32_t mask, char *why, size_t whylen)
{
	if (a->n_layers == 0 || a->n_layers > LORA_MAX_LAYERS) {
		WHY("layer count %" PRIu32 " out of range 1..%d", a->n_layers, LORA_MAX_LAYERS);
		return FL_EINVAL;
	}
	for (int t = 0; t < LORA_NTARGETS; t++) {
		if (!(mask & (1u << t)))
			continue;
		if (a->in[t] == 0 || a->out[t] == 0 || a->in[t] > LORA_MAX_DIM ||
		    a->out[t] > LORA_MAX_DIM) {
			WHY("%s: shape %" PRIu64 "x%" PRIu64 " out of range (1..%u)", tgt_names[t],
			    a->out[t], a->in[t], LORA_MAX_DIM);
			return FL_EINVAL;
		}
	}
	if (a->n_head_kv && !a->n_head) {
		WHY("n_head_kv given without n_head");
		return FL_EINVAL;
	}
	return 0;
}

int lora_arch_from_gguf(const char *path, uint32_t mask, lora_arch *out, char *why, size_t whylen)
{
	gguf *g = NULL;
	char err[256];
	int rc = gguf_open(path, &g, err, sizeof err);
	if (rc) {
		WHY("%s", err);
		return rc;
	}
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
		WHY("%s: no transformer blocks (no %s.block_count, no blk.N.* tensors)", path,
		    archname);
		rc = FL_EFORMAT;
		goto out;
	}
	for (int t = 0; t < LORA_NTARGETS; t++) {
		if (!(mask & (1u << t)))
			continue;
		for (uint32_t l = 0; l < a.n_layers; l++) {
			gguf_tensor gt;
			snprintf(key, sizeof key, "blk.%" PRIu32 ".%s.weight", l, tgt_names[t]);
			if (gguf_tensor_find(g, key, &gt)) {
				WHY("%s: tensor %s not found (LoRA target %s)", path, key,
				    tgt_names[t]);
				rc = FL_EFORMAT;
				goto out;
			}
			if (gt.ndims != 2) {
				WHY("%s: tensor %s has %d dimensions, expected 2", path, key,
				    gt.ndims);
				rc = FL_EFORMAT;
				goto out;
			}
			if (l == 0) {
				a.in[t] = gt.ne[0];
				a.out[t] = gt.ne[1];
			} else if (a.in[t] != gt.ne[0] || a.out[t] != gt.ne[1]) {
				WHY("%s: tensor %s is %" PRIu64 "x%" PRIu64 ", layer 0 has %" PRIu64
				    "x%" PRIu64 " (layers must agree)",
				    path, key, gt.ne[1], gt.ne[0], a.out[t], a.in[t]);
				rc = FL_EFORMAT;
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
		if (!eq || eq > end) {
			WHY("adapter dims entry '%.*s' is not target=OUTxIN", (int)(end - p), p);
			return FL_EINVAL;
		}
		char tok[32];
		size_t n = (size_t)(eq - p);
		while (n > 0 && p[n - 1] == ' ')
			n--;
		int t;
		if (n >= sizeof tok) {
			WHY("adapter dims: unknown target '%.*s'", (int)(n > 40 ? 40 : n), p);
			return FL_EINVAL;
		}
		memcpy(tok, p, n);
		tok[n] = 0;
		if (lora_target_parse(tok, &t)) {
			WHY("adapter dims: unknown target '%s'", tok);
			return FL_EINVAL;
		}
		unsigned long long o, i;
		char tail;
		char val[64];
		size_t vn = (size_t)(end - eq - 1);
		if (vn >= sizeof val) {
			WHY("adapter dims: value for %s too long", tok);
			return FL_EINVAL;
		}
		memcpy(val, eq + 1, vn);
		val[vn] = 0;
		if (sscanf(val, " %llux%llu %c", &o, &i, &tail) != 2) {
			WHY("adapter dims: '%s' for %s is not OUTxIN", val, tok);
			return FL_EINVAL;
		}
		a.out[t] = o;
		a.in[t] = i;
		p = end;
	}
	for (int t = 0; t < LORA_NTARGETS; t++)
		if ((mask & (1u << t)) && (!a.in[t] || !a.out[t])) {
			WHY("adapter dims: no shape for target %s", tgt_names[t]);
			return FL_EINVAL;
		}
	int rc = arch_check(&a, mask, why, whylen);
	if (!rc)
		*out = a;
	return rc;
}

static int build(const lora_spec *spec, const lora_arch *arch, int init, tset **out)
{
	if (spec->rank == 0 || spec->rank > LORA_MAX_RANK || !spec->targets ||
	    (spec->targets & ~LORA_ALL_TARGETS))
		return FL_EINVAL;
	if (arch_check(arch, spec->targets, NULL, 0))
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

/* The q/k row permutation is defined once, in common/lora_fmt. */
int lora_rows_gguf_to_hf(const float *src, float *dst, uint64_t rows, uint64_t cols,
                         uint32_t n_head)
{
	return lfmt_rows_gguf_to_hf(src, dst, rows, cols, n_head);
}

int lora_rows_hf_to_gguf(const float *src, float *dst, uint64_t rows, uint64_t cols,
                         uint32_t n_head)
{
	return lfmt_rows_hf_to_gguf(src, dst, rows, cols, n_head);
}

/* Parses "blk.N.<target>.lora_[ab]". */
static int parse_name(const char *name, uint32_t *layer, int *target, int *is_b)
{
	unsigned long l;
	int pos = 0;
	if (sscanf(name, "blk.%lu.%n", &l, &pos) != 1 || pos == 0 || l >= LORA_MAX_LAYERS)
		return FL_EINVAL;
	const char *rest = name + pos;
	const char *dot = strrchr(rest, '.');
	if (!dot)
		return FL_EINVAL;
	char tok[32];
	size_t n = (size_t)(dot - rest);
	if (n >= sizeof tok)
		return FL_EINVAL;
	memcpy(tok, rest, n);
	tok[n] = 0;
	if (lora_target_parse(tok, target))
		return FL_EINVAL;
	if (strcmp(dot, ".lora_a") == 0)
		*is_b = 0;
	else if (strcmp(dot, ".lora_b") == 0)
		*is_b = 1;
	else
		return FL_EINVAL;
	*layer = (uint32_t)l;
	return 0;
}

int lora_export_peft(const tset *adapter, const lora_spec *spec, uint32_t n_head,
                     uint32_t n_head_kv, int unpermute, const char *base_model, const char *dir)
{
	tset *out = NULL;
	cJSON *cfg = NULL;
	char *txt = NULL;
	int rc = file_mkdirs(dir);
	if (rc) {
		LOGE("lora", "cannot create %s", dir);
		return rc;
	}
	rc = tset_new(&out);
	uint32_t used = 0;
	for (size_t i = 0; !rc && i < tset_count(adapter); i++) {
		const tensor *t = tset_at(adapter, i);
		uint32_t l;
		int tg, is_b;
		if (parse_name(t->name, &l, &tg, &is_b) || t->ndim != 2) {
			LOGE("lora", "export: tensor '%s' is not a canonical 2-D LoRA tensor",
			     t->name);
			rc = FL_EFORMAT;
			break;
		}
		used |= 1u << tg;
		char nm[160];
		snprintf(nm, sizeof nm,
		         "base_model.model.model.layers.%" PRIu32 ".%s.lora_%c.weight", l,
		         tgt_peft[tg], is_b ? 'B' : 'A');
		tensor *dst;
		rc = tset_insert(out, nm, 2, t->shape, t->data, &dst);
		if (rc)
			break;
		if (is_b && unpermute && (tg == LORA_ATTN_Q || tg == LORA_ATTN_K)) {
			uint32_t nh = tg == LORA_ATTN_Q ? n_head : (n_head_kv ? n_head_kv : n_head);
			if (nh == 0) {
				LOGE("lora",
				     "export: %s needs the head count to restore Hugging Face row "
				     "order (--n-head / --n-head-kv, or --no-unpermute)",
				     t->name);
				rc = FL_EINVAL;
				break;
			}
			rc = lora_rows_gguf_to_hf(t->data, dst->data, t->shape[0], t->shape[1], nh);
			if (rc) {
				LOGE("lora",
				     "export: %s has %" PRIu64
				     " rows, not a multiple of 2 x %" PRIu32 " heads",
				     t->name, t->shape[0], nh);
				break;
			}
		}
	}
	if (rc)
		goto out;
	char path[4096];
	snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
	st_kv meta[1] = {{"format", "pt"}};
	rc = st_write(path, out, ST_F32, meta, 1);
	if (rc) {
		LOGE("lora", "export: cannot write %s (%s)", path, fl_strerror(rc));
		goto out;
	}
	cfg = cJSON_CreateObject();
	rc = FL_ENOMEM;
	if (!cfg)
		goto out;
	cJSON *tm = cJSON_AddArrayToObject(cfg, "target_modules");
	for (int t = 0; tm && t < LORA_NTARGETS; t++)
		if ((spec->targets | used) & (1u << t))
			cJSON_AddItemToArray(tm, cJSON_CreateString(tgt_peft_short[t]));
	cJSON_AddStringToObject(cfg, "peft_type", "LORA");
	cJSON_AddStringToObject(cfg, "task_type", "CAUSAL_LM");
	cJSON_AddStringToObject(cfg, "base_model_name_or_path", base_model ? base_model : "");
	cJSON_AddNumberToObject(cfg, "r", spec->rank);
	cJSON_AddNumberToObject(cfg, "lora_alpha", spec->alpha);
	cJSON_AddNumberToObject(cfg, "lora_dropout", 0.0);
	cJSON_AddStringToObject(cfg, "bias", "none");
	cJSON_AddBoolToObject(cfg, "use_rslora", spec->rslora != 0);
	cJSON_AddBoolToObject(cfg, "fan_in_fan_out", 0);
	cJSON_AddBoolToObject(cfg, "inference_mode", 1);
	cJSON_AddBoolToObject(cfg, "init_lora_weights", 1);
	cJSON_AddNullToObject(cfg, "modules_to_save");
	cJSON_AddObjectToObject(cfg, "rank_pattern");
	cJSON_AddObjectToObject(cfg, "alpha_pattern");
	txt = cJSON_Print(cfg);
	if (!txt)
		goto out;
	snprintf(path, sizeof path, "%s/adapter_config.json", dir);
	size_t n = strlen(txt);
	char *t2 = realloc(txt, n + 2);
	if (!t2)
		goto out;
	txt = t2;
	txt[n] = '\n';
	rc = file_write_atomic(path, txt, n + 1);
out:
	free(txt);
	cJSON_Delete(cfg);
	tset_free(out);
	return rc;
}
