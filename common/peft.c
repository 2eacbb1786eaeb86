/* peft — see peft.h. */
#include "peft.h"

#include "err.h"
#include "fileio.h"
#include "lora_fmt.h"
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PEFT_CONFIG_MAX ((size_t)1 << 20)
#define PEFT_PATH_MAX   4096

static int join(char *out, size_t cap, const char *dir, const char *file)
{
	int n = snprintf(out, cap, "%s/%s", dir, file);
	return (n < 0 || (size_t)n >= cap) ? FL_EINVAL : 0;
}

int peft_is_name(const char *name)
{
	return strncmp(name, PEFT_PREFIX, strlen(PEFT_PREFIX)) == 0;
}

int peft_config_beside(const char *file, char *out, size_t cap)
{
	const char *sl = strrchr(file, '/');
	int n;
	if (!sl)
		n = snprintf(out, cap, "./%s", PEFT_CONFIG);
	else if (sl == file)
		n = snprintf(out, cap, "/%s", PEFT_CONFIG);
	else
		n = snprintf(out, cap, "%.*s/%s", (int)(sl - file), file, PEFT_CONFIG);
	return (n < 0 || (size_t)n >= cap) ? FL_EINVAL : 0;
}

/* The float written as the shortest decimal that reads back as the same
 * float (0.3f, not 0.300000011920929 as the double's digits would give):
 * PEFT configs are read by people and by Python. */
double peft_short_decimal(float x)
{
	char t[32];
	if (!isfinite(x))
		return (double)x;
	for (int p = 1; p <= 9; p++) {
		snprintf(t, sizeof t, "%.*g", p, (double)x);
		if (strtof(t, NULL) == x)
			return strtod(t, NULL);
	}
	return (double)x;
}

int peft_write(const tset *ad, const lora_spec *spec, const peft_base *b, const char *dir,
               char *why, size_t whylen)
{
	tset *outs = NULL;
	cJSON *conf = NULL;
	char *txt = NULL;
	char path[PEFT_PATH_MAX];
	int rc = file_mkdirs_public(dir);
	if (rc != 0)
		return fl_fail(why, whylen, rc, "cannot create directory %s", dir);
	if ((rc = tset_new(&outs)) != 0)
		return fl_fail(why, whylen, rc, "out of memory");
	uint32_t used = 0;
	for (size_t i = 0; i < tset_count(ad); i++) {
		const tensor *t = tset_at(ad, i);
		uint32_t l;
		int tg, is_b;
		if (lora_parse_name(t->name, &l, &tg, &is_b) != 0 || t->ndim != 2) {
			rc = fl_fail(why, whylen, FL_EFORMAT,
			             "tensor '%s' is not a canonical 2-D LoRA tensor", t->name);
			goto out;
		}
		used |= 1u << tg;
		char nm[160];
		snprintf(nm, sizeof nm, PEFT_PREFIX "%" PRIu32 ".%s.lora_%c.weight", l,
		         lora_target_hf(tg), is_b ? 'B' : 'A');
		tensor *dst;
		if ((rc = tset_insert(outs, nm, 2, t->shape, t->data, &dst)) != 0) {
			fl_fail(why, whylen, rc, "cannot add %s (%s)", nm, fl_strerror(rc));
			goto out;
		}
		if (!is_b || !b->unpermute || (tg != LORA_ATTN_Q && tg != LORA_ATTN_K))
			continue;
		uint32_t nh =
		    tg == LORA_ATTN_Q ? b->n_head : (b->n_head_kv ? b->n_head_kv : b->n_head);
		if (nh == 0) {
			rc = fl_fail(why, whylen, FL_EINVAL,
			             "%s needs the head count to restore Hugging Face row order",
			             t->name);
			goto out;
		}
		if (lora_rows_gguf_to_hf(t->data, dst->data, t->shape[0], t->shape[1], nh) != 0) {
			rc = fl_fail(why, whylen, FL_EMISMATCH,
			             "%s has %" PRIu64 " rows, not a multiple of 2 x %" PRIu32
			             " heads",
			             t->name, t->shape[0], nh);
			goto out;
		}
	}
	if ((rc = join(path, sizeof path, dir, PEFT_WEIGHTS)) != 0) {
		fl_fail(why, whylen, rc, "path too long");
		goto out;
	}
	st_kv meta[1] = {{"format", "pt"}};
	if ((rc = st_write_mode(path, outs, ST_F32, meta, 1, FILE_PUBLIC)) != 0) {
		fl_fail(why, whylen, rc, "cannot write %s (%s)", path, fl_strerror(rc));
		goto out;
	}
	rc = FL_ENOMEM;
	if (!(conf = cJSON_CreateObject()))
		goto out;
	cJSON *tm = cJSON_AddArrayToObject(conf, "target_modules");
	for (int t = 0; tm && t < LORA_NTARGETS; t++)
		if ((spec->targets | used) & (1u << t))
			cJSON_AddItemToArray(tm, cJSON_CreateString(lora_target_hf_short(t)));
	cJSON_AddStringToObject(conf, "peft_type", "LORA");
	cJSON_AddStringToObject(conf, "task_type", "CAUSAL_LM");
	cJSON_AddStringToObject(conf, "base_model_name_or_path", b->name ? b->name : "");
	cJSON_AddNumberToObject(conf, "r", spec->rank);
	cJSON_AddNumberToObject(conf, "lora_alpha", peft_short_decimal(spec->alpha));
	cJSON_AddNumberToObject(conf, "lora_dropout", 0.0);
	cJSON_AddStringToObject(conf, "bias", "none");
	cJSON_AddBoolToObject(conf, "use_rslora", spec->rslora != 0);
	cJSON_AddBoolToObject(conf, "fan_in_fan_out", 0);
	cJSON_AddBoolToObject(conf, "inference_mode", 1);
	cJSON_AddBoolToObject(conf, "init_lora_weights", 1);
	cJSON_AddNullToObject(conf, "modules_to_save");
	cJSON_AddObjectToObject(conf, "rank_pattern");
	cJSON_AddObjectToObject(conf, "alpha_pattern");
	if (!(txt = cJSON_Print(conf)))
		goto out;
	size_t n = strlen(txt);
	char *t2 = realloc(txt, n + 2);
	if (!t2)
		goto out;
	txt = t2;
	txt[n] = '\n';
	if ((rc = join(path, sizeof path, dir, PEFT_CONFIG)) != 0) {
		fl_fail(why, whylen, rc, "path too long");
		goto out;
	}
	file_piece pc = {txt, n + 1};
	if ((rc = file_write_atomic_vm(path, &pc, 1, FILE_PUBLIC)) != 0)
		fl_fail(why, whylen, rc, "cannot write %s (%s)", path, fl_strerror(rc));
out:
	if (rc == FL_ENOMEM && why && whylen && !why[0])
		fl_fail(why, whylen, rc, "out of memory");
	free(txt);
	cJSON_Delete(conf);
	tset_free(outs);
	return rc;
}

int peft_write_base(const tset *ad, const gguf *base, const lora_spec *p, const char *base_id,
                    const char *dir, char *why, size_t whylen)
{
	lfmt_base b;
	uint32_t r;
	int rc = lfmt_prepare_write(ad, base, p, &b, &r, why, whylen);
	if (rc != 0)
		return rc;
	/* target_modules: the targets that have tensors; r: the tensors' */
	lora_spec s = {.rank = r, .alpha = p->alpha, .rslora = p->rslora};
	peft_base pb = {.n_head = b.n_head,
	                .n_head_kv = b.n_head_kv,
	                .unpermute = b.qk_permuted,
	                .name = base_id ? base_id : b.name};
	return peft_write(ad, &s, &pb, dir, why, whylen);
}

static int json_empty_obj(const cJSON *o)
{
	return !o || cJSON_IsNull(o) || (cJSON_IsObject(o) && o->child == NULL);
}

int peft_parse_config(const char *json, size_t n, lora_spec *p, char *why, size_t whylen)
{
	cJSON *root = cJSON_ParseWithLength(json, n);
	int rc = FL_EFORMAT;
	if (!root || !cJSON_IsObject(root)) {
		fl_fail(why, whylen, rc, "adapter_config.json is not a JSON object");
		goto out;
	}
	const cJSON *pt = cJSON_GetObjectItemCaseSensitive(root, "peft_type");
	if (pt && !(cJSON_IsString(pt) && strcmp(pt->valuestring, "LORA") == 0)) {
		rc = fl_fail(why, whylen, FL_EUNSUPPORTED,
		             "adapter_config.json: peft_type is not LORA");
		goto out;
	}
	const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "r");
	const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, "lora_alpha");
	if (!cJSON_IsNumber(r) || !(r->valuedouble >= 1 && r->valuedouble <= LORA_MAX_RANK) ||
	    r->valuedouble != floor(r->valuedouble)) {
		fl_fail(why, whylen, rc, "adapter_config.json: \"r\" is not an integer in 1..%d",
		        LORA_MAX_RANK);
		goto out;
	}
	if (!cJSON_IsNumber(a) || !isfinite(a->valuedouble) || fabs(a->valuedouble) > 1e30) {
		fl_fail(why, whylen, rc,
		        "adapter_config.json: \"lora_alpha\" is not a finite number");
		goto out;
	}
	const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "use_rslora");
	if (rs && !cJSON_IsBool(rs) && !cJSON_IsNull(rs)) {
		fl_fail(why, whylen, rc, "adapter_config.json: \"use_rslora\" is not a boolean");
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
		rc = fl_fail(why, whylen, FL_EUNSUPPORTED,
		             "adapter_config.json: %s is not supported", bad);
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

int peft_read_config(const char *path, lora_spec *p, char *why, size_t whylen)
{
	uint8_t *txt = NULL;
	size_t n = 0;
	int rc = file_read_all(path, PEFT_CONFIG_MAX, &txt, &n);
	if (rc != 0)
		return fl_fail(why, whylen, rc, "cannot read %s (%s)", path, fl_strerror(rc));
	char sub[256];
	rc = peft_parse_config((const char *)txt, n, p, sub, sizeof sub);
	free(txt);
	if (rc != 0)
		return fl_fail(why, whylen, rc, "%s: %s", path, sub);
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
	if (lora_parse_layer(&s, &l) != 0 || *s != '.')
		return FL_EINVAL;
	s++;
	for (int t = 0; t < LORA_NTARGETS; t++) {
		size_t ml = strlen(lora_target_hf(t));
		if (strncmp(s, lora_target_hf(t), ml) != 0)
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
		return fl_fail(why, whylen, rc, "out of memory");
	for (size_t i = 0; i < tset_count(in); i++) {
		const tensor *t = tset_at(in, i);
		uint32_t l;
		int tg, is_b;
		if (peft_name(t->name, &l, &tg, &is_b) != 0) {
			rc =
			    fl_fail(why, whylen, FL_EUNSUPPORTED,
			            "%s: tensor '%s' is not a LoRA A/B weight of a decoder-layer "
			            "projection (base_model.model.model.layers.N.<module>.lora_A|B."
			            "weight)",
			            src, t->name);
			goto out;
		}
		if (t->ndim != 2) {
			rc = fl_fail(why, whylen, FL_EFORMAT, "%s: tensor %s is not 2-D", src,
			             t->name);
			goto out;
		}
		char cn[64];
		lora_name(cn, sizeof cn, l, tg, is_b);
		tensor *dst;
		if ((rc = tset_insert(s, cn, 2, t->shape, t->data, &dst)) != 0) {
			fl_fail(why, whylen, rc, "%s: tensor %s: %s", src, t->name,
			        rc == FL_EMISMATCH ? "duplicate" : fl_strerror(rc));
			goto out;
		}
		if (is_b && b.qk_permuted && (tg == LORA_ATTN_Q || tg == LORA_ATTN_K)) {
			uint32_t nh = tg == LORA_ATTN_Q ? b.n_head : b.n_head_kv;
			if (lora_rows_hf_to_gguf(t->data, dst->data, t->shape[0], t->shape[1],
			                         nh)) {
				rc = fl_fail(why, whylen, FL_EMISMATCH,
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

int peft_load_raw(const tset *raw, const gguf *base, const char *cfg_path, const char *src,
                  tset **out, lora_spec *p, char *why, size_t whylen)
{
	lora_spec cp;
	tset *s = NULL;
	uint32_t r;
	int rc = peft_read_config(cfg_path, &cp, why, whylen);
	if (rc == 0)
		rc = peft_to_canon(raw, base, &s, src, why, whylen);
	if (rc == 0)
		rc = lfmt_check(s, base, &r, why, whylen);
	if (rc == 0 && r != cp.rank)
		rc = fl_fail(why, whylen, FL_EMISMATCH,
		             "%s says r = %" PRIu32 " but the tensors have rank %" PRIu32, cfg_path,
		             cp.rank, r);
	if (rc != 0) {
		tset_free(s);
		return rc;
	}
	*p = cp;
	*out = s;
	return 0;
}

int peft_read(const char *dir, const gguf *base, tset **out, lora_spec *p, char *why, size_t whylen)
{
	char cfgp[PEFT_PATH_MAX], path[PEFT_PATH_MAX];
	tset *raw = NULL;
	st_file *f = NULL;
	if (join(cfgp, sizeof cfgp, dir, PEFT_CONFIG) != 0 ||
	    join(path, sizeof path, dir, PEFT_WEIGHTS) != 0)
		return fl_fail(why, whylen, FL_EINVAL, "path too long");
	if (!file_exists(cfgp))
		return fl_fail(why, whylen, FL_ENOENT, "cannot read %s (%s)", cfgp,
		               fl_strerror(FL_ENOENT));
	int rc = lfmt_read_st(path, &raw, &f, why, whylen);
	if (rc == 0)
		rc = peft_load_raw(raw, base, cfgp, path, out, p, why, whylen);
	st_close(f);
	tset_free(raw);
	return rc;
}
