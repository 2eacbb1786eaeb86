/* dp — see dp.h. */
#include "dp.h"

#include "err.h"
#include "fileio.h"
#include "log.h"
#include "sha.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WHY(...)                                                                                   \
	do {                                                                                       \
		if (why && whylen)                                                                 \
			snprintf(why, whylen, __VA_ARGS__);                                        \
	} while (0)

const double dp_orders[DP_NORDERS] = {
    2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14,  15,  16,  17,  18, 19,
    20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,  33,  34,  35,  36, 37,
    38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50,  51,  52,  53,  54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 72, 80, 96, 128, 192, 256, 384, 512};

int dp_opts_check(const dp_opts *o, uint32_t per_round, char *why, size_t whylen)
{
	if (o->mode == DP_OFF)
		return 0;
	if (o->mode != DP_CENTRAL && o->mode != DP_DISTRIBUTED) {
		WHY("privacy.mode must be off, central or distributed");
		return FL_EINVAL;
	}
	if (!(o->z >= 0.1 && o->z <= 1e4)) {
		WHY("privacy.noise_multiplier must be in [0.1, 10000] with privacy.mode on, not %g",
		    o->z);
		return FL_EINVAL;
	}
	if (!(o->clip > 0 && o->clip <= 1e6)) {
		WHY("privacy.clip must be in (0, 1e6] with privacy.mode on, not %g", o->clip);
		return FL_EINVAL;
	}
	if (!(o->delta > 0 && o->delta < 0.1)) {
		WHY("privacy.delta must be in (0, 0.1), not %g", o->delta);
		return FL_EINVAL;
	}
	if (!(o->target_eps > 0 && o->target_eps <= 1000)) {
		WHY("privacy.target_epsilon must be in (0, 1000], not %g", o->target_eps);
		return FL_EINVAL;
	}
	if (o->population < 1) {
		WHY("privacy.population (the number of nodes sampling draws from) must be set "
		    "with privacy.mode on");
		return FL_EINVAL;
	}
	if (per_round < 1) {
		WHY("privacy.mode needs rounds.nodes_per_round (the expected cohort K; "
		    "each node is sampled with probability K / privacy.population)");
		return FL_EINVAL;
	}
	if (per_round > o->population) {
		WHY("rounds.nodes_per_round (%u) exceeds privacy.population (%llu)", per_round,
		    (unsigned long long)o->population);
		return FL_EINVAL;
	}
	if (o->mode == DP_DISTRIBUTED &&
	    (dp_noise_shares(o, per_round) < 2 || dp_noise_shares(o, per_round) > per_round)) {
		WHY("privacy.noise_shares must be in [2, rounds.nodes_per_round = %u] with "
		    "privacy.mode = distributed, not %u",
		    per_round, dp_noise_shares(o, per_round));
		return FL_EINVAL;
	}
	return 0;
}

uint32_t dp_noise_shares(const dp_opts *o, uint32_t per_round)
{
	return o->shares ? o->shares : (uint32_t)ceil(0.8 * per_round);
}

/* ---- accountant ---- */

double dp_logsumexp(double a, double b)
{
	if (a == -INFINITY)
		return b;
	if (b == -INFINITY)
		return a;
	double m = a > b ? a : b;
	return m + log1p(exp(-fabs(a - b)));
}

double dp_rdp_step(double q, double sigma, unsigned alpha)
{
	if (q <= 0)
		return 0;
	if (!(sigma > 0))
		return INFINITY;
	double a = alpha;
	if (q >= 1)
		return a / (2 * sigma * sigma);
	/* A_alpha = sum_k C(a,k) (1-q)^(a-k) q^k exp((k^2 - k) / (2 sigma^2)),
	 * summed in log space */
	double lq = log(q), l1q = log1p(-q), la = lgamma(a + 1), acc = -INFINITY;
	for (unsigned k = 0; k <= alpha; k++) {
		double kk = k;
		double t = la - lgamma(kk + 1) - lgamma(a - kk + 1) + (a - kk) * l1q + kk * lq +
		           (kk * kk - kk) / (2 * sigma * sigma);
		acc = dp_logsumexp(acc, t);
	}
	double r = acc / (a - 1);
	return r > 0 ? r : 0; /* A_alpha >= 1; rounding can dip below */
}

void dp_rdp_compose(double rdp[DP_NORDERS], double q, double sigma, uint64_t steps)
{
	for (int i = 0; i < DP_NORDERS; i++)
		rdp[i] += (double)steps * dp_rdp_step(q, sigma, (unsigned)dp_orders[i]);
}

static double eps_conv(const double rdp[DP_NORDERS], double delta, int *best, int improved)
{
	double e = INFINITY;
	int bi = -1;
	double ld = log(delta);
	for (int i = 0; i < DP_NORDERS; i++) {
		double a = dp_orders[i], x;
		if (improved)
			x = rdp[i] + log1p(-1 / a) - (ld + log(a)) / (a - 1);
		else
			x = rdp[i] - ld / (a - 1);
		if (x < e) {
			e = x;
			bi = i;
		}
	}
	if (best)
		*best = bi;
	return e > 0 ? e : 0;
}

double dp_epsilon(const double rdp[DP_NORDERS], double delta, int *best)
{
	return eps_conv(rdp, delta, best, 1);
}

double dp_epsilon_classic(const double rdp[DP_NORDERS], double delta, int *best)
{
	return eps_conv(rdp, delta, best, 0);
}

double dp_epsilon_for(double q, double z, uint64_t rounds, double delta)
{
	double rdp[DP_NORDERS] = {0};
	dp_rdp_compose(rdp, q, z, rounds);
	return dp_epsilon(rdp, delta, NULL);
}

double dp_z_for(double q, uint64_t rounds, double delta, double target_eps)
{
	double lo = 1e-3, hi = 1e4;
	if (dp_epsilon_for(q, hi, rounds, delta) > target_eps)
		return -1;
	if (dp_epsilon_for(q, lo, rounds, delta) <= target_eps)
		return lo;
	while (hi - lo > 1e-6 * hi) {
		double mid = 0.5 * (lo + hi);
		if (dp_epsilon_for(q, mid, rounds, delta) <= target_eps)
			hi = mid;
		else
			lo = mid;
	}
	return hi;
}

/* ---- ledger ---- */

#define LEDGER_MAGIC "fedlora-privacy-ledger 1\n"
#define LEDGER_MAX   (64u << 10)

void dp_ledger_init(dp_ledger *l)
{
	memset(l, 0, sizeof *l);
}

int dp_ledger_path(const char *dir, char *out, size_t cap)
{
	int n = snprintf(out, cap, "%s/privacy.ledger", dir);
	return n < 0 || (size_t)n >= cap ? FL_ETOOBIG : 0;
}

static double num(const cJSON *o, const char *k, int *bad)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < 0) {
		*bad = 1;
		return 0;
	}
	return v->valuedouble;
}

int dp_ledger_load(const char *dir, dp_ledger *l, char *why, size_t whylen)
{
	char path[4096];
	uint8_t *data = NULL;
	size_t len = 0;
	cJSON *o = NULL;
	int rc = dp_ledger_path(dir, path, sizeof path);
	if (rc)
		return rc;
	if (!file_exists(path))
		return FL_ENOENT;
	rc = file_read_all(path, LEDGER_MAX, &data, &len);
	if (rc) {
		WHY("%s cannot be read (%s)", path, fl_strerror(rc));
		return rc == FL_ETOOBIG ? FL_EFORMAT : rc;
	}
	rc = FL_EFORMAT;
	size_t ml = strlen(LEDGER_MAGIC);
	if (len < ml || memcmp(data, LEDGER_MAGIC, ml)) {
		WHY("%s is not a privacy ledger (bad first line)", path);
		goto out;
	}
	char *body = (char *)data + ml;
	char *nl = memchr(body, '\n', len - ml);
	if (!nl) {
		WHY("%s is truncated", path);
		goto out;
	}
	size_t blen = (size_t)(nl - body);
	const char *tail = nl + 1;
	uint8_t sha[32], want[32];
	if (len - (size_t)(tail - (char *)data) != 7 + 64 + 1 || memcmp(tail, "sha256 ", 7) ||
	    tail[71] != '\n') {
		WHY("%s has no checksum line", path);
		goto out;
	}
	char hex[65];
	memcpy(hex, tail + 7, 64);
	hex[64] = 0;
	if (hex_decode(hex, want, 32) || sha256(body, blen, sha) || memcmp(sha, want, 32)) {
		WHY("%s does not match its checksum", path);
		goto out;
	}
	*nl = 0;
	o = cJSON_Parse(body);
	if (!o) {
		WHY("%s: body is not JSON", path);
		goto out;
	}
	dp_ledger t;
	dp_ledger_init(&t);
	int bad = 0;
	t.rounds = (uint64_t)num(o, "rounds", &bad);
	t.last_round = (uint64_t)num(o, "last_round", &bad);
	t.delta = num(o, "delta", &bad);
	t.epsilon = num(o, "epsilon", &bad);
	t.last_q = num(o, "last_q", &bad);
	t.last_z = num(o, "last_z", &bad);
	const cJSON *ord = cJSON_GetObjectItemCaseSensitive(o, "orders");
	const cJSON *rdp = cJSON_GetObjectItemCaseSensitive(o, "rdp");
	if (bad || !cJSON_IsArray(ord) || !cJSON_IsArray(rdp) ||
	    cJSON_GetArraySize(ord) != DP_NORDERS || cJSON_GetArraySize(rdp) != DP_NORDERS) {
		WHY("%s: missing or malformed fields", path);
		goto out;
	}
	for (int i = 0; i < DP_NORDERS; i++) {
		const cJSON *a = cJSON_GetArrayItem(ord, i), *r = cJSON_GetArrayItem(rdp, i);
		if (!cJSON_IsNumber(a) || a->valuedouble != dp_orders[i]) {
			WHY("%s was written with other RDP orders", path);
			goto out;
		}
		char *end = NULL;
		double v = cJSON_IsString(r) ? strtod(r->valuestring, &end) : -1;
		if (!end || *end || !(v >= 0) || !isfinite(v)) {
			WHY("%s: rdp[%d] is not a number >= 0", path, i);
			goto out;
		}
		t.rdp[i] = v;
	}
	*l = t;
	rc = 0;
out:
	cJSON_Delete(o);
	free(data);
	return rc;
}

int dp_ledger_save(const char *dir, const dp_ledger *l)
{
	char path[4096];
	int rc = dp_ledger_path(dir, path, sizeof path);
	if (rc)
		return rc;
	cJSON *o = cJSON_CreateObject();
	char *body = NULL, *all = NULL;
	rc = FL_ENOMEM;
	if (!o)
		goto out;
	cJSON_AddNumberToObject(o, "rounds", (double)l->rounds);
	cJSON_AddNumberToObject(o, "last_round", (double)l->last_round);
	cJSON_AddNumberToObject(o, "delta", l->delta);
	cJSON_AddNumberToObject(o, "epsilon", isfinite(l->epsilon) ? l->epsilon : 1e308);
	cJSON_AddNumberToObject(o, "last_q", l->last_q);
	cJSON_AddNumberToObject(o, "last_z", l->last_z);
	cJSON *ord = cJSON_AddArrayToObject(o, "orders");
	cJSON *rdp = cJSON_AddArrayToObject(o, "rdp");
	if (!ord || !rdp)
		goto out;
	for (int i = 0; i < DP_NORDERS; i++) {
		cJSON_AddItemToArray(ord, cJSON_CreateNumber(dp_orders[i]));
		/* hexadecimal floating point: exact round trip */
		char hx[40];
		snprintf(hx, sizeof hx, "%a", isfinite(l->rdp[i]) ? l->rdp[i] : 1e308);
		cJSON_AddItemToArray(rdp, cJSON_CreateString(hx));
	}
	body = cJSON_PrintUnformatted(o);
	if (!body)
		goto out;
	size_t blen = strlen(body), ml = strlen(LEDGER_MAGIC);
	uint8_t sha[32];
	char hex[65];
	if ((rc = sha256(body, blen, sha)) != 0)
		goto out;
	hex_encode(sha, 32, hex);
	size_t n = ml + blen + 1 + 7 + 64 + 1;
	all = malloc(n + 1);
	rc = FL_ENOMEM;
	if (!all)
		goto out;
	snprintf(all, n + 1, "%s%s\nsha256 %s\n", LEDGER_MAGIC, body, hex);
	rc = file_write_atomic(path, all, n);
out:
	free(all);
	free(body);
	cJSON_Delete(o);
	return rc;
}

/* ---- randomness ---- */

#define RNG_WORDS 512

struct dp_rng {
	EVP_CIPHER_CTX *ctx;
	uint64_t w[RNG_WORDS];
	size_t pos;
	int have_spare;
	int failed; /* the keystream could not be extended: every draw is 0 */
	double spare;
};

static int refill(dp_rng *r)
{
	static const uint8_t zero[RNG_WORDS * 8];
	int outl = 0;
	if (EVP_EncryptUpdate(r->ctx, (uint8_t *)r->w, &outl, zero, (int)sizeof zero) != 1 ||
	    outl != (int)sizeof zero)
		return FL_ECRYPTO;
	r->pos = 0;
	return 0;
}

int dp_rng_new(const uint8_t key[32], dp_rng **out)
{
	uint8_t k[32], iv[16] = {0};
	if (key)
		memcpy(k, key, 32);
	else if (RAND_bytes(k, 32) != 1) {
		LOGE("dp", "RAND_bytes failed: no seed for the privacy noise");
		return FL_ECRYPTO;
	}
	dp_rng *r = calloc(1, sizeof *r);
	if (!r)
		return FL_ENOMEM;
	r->ctx = EVP_CIPHER_CTX_new();
	int rc = FL_ECRYPTO;
	if (r->ctx && EVP_EncryptInit_ex(r->ctx, EVP_chacha20(), NULL, k, iv) == 1)
		rc = refill(r);
	OPENSSL_cleanse(k, sizeof k);
	if (rc) {
		LOGE("dp", "cannot start the ChaCha20 noise stream");
		dp_rng_free(r);
		return rc;
	}
	*out = r;
	return 0;
}

void dp_rng_free(dp_rng *r)
{
	if (!r)
		return;
	EVP_CIPHER_CTX_free(r->ctx);
	OPENSSL_cleanse(r, sizeof *r);
	free(r);
}

static uint64_t next64(dp_rng *r)
{
	if (r->failed)
		return 0;
	if (r->pos == RNG_WORDS && refill(r)) {
		/* ChaCha20 on a zero buffer does not fail once initialised; if it
		 * ever did, the callers see dp_rng_failed and discard the round */
		LOGE("dp", "noise stream failed");
		r->failed = 1;
		return 0;
	}
	return r->w[r->pos++];
}

double dp_rng_uniform(dp_rng *r)
{
	return (double)(next64(r) >> 11) * 0x1p-53;
}

double dp_rng_gauss(dp_rng *r)
{
	if (r->have_spare) {
		r->have_spare = 0;
		return r->spare;
	}
	double u1 = 1.0 - dp_rng_uniform(r); /* (0, 1] */
	double u2 = dp_rng_uniform(r);
	double m = sqrt(-2.0 * log(u1)), t = 2.0 * M_PI * u2;
	r->spare = m * sin(t);
	r->have_spare = 1;
	return m * cos(t);
}

int dp_rng_add_gauss(dp_rng *r, double sd, double *out, size_t n)
{
	for (size_t i = 0; i < n; i++)
		out[i] += sd * dp_rng_gauss(r);
	return r->failed ? FL_ECRYPTO : 0;
}

int dp_rng_failed(const dp_rng *r)
{
	return r->failed;
}
