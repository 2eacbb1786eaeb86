/* secagg — see secagg.h. The protocol's reasons are in docs/PRIVACY.md,
 * the byte layouts in docs/FORMATS.md. */
#include "secagg.h"

#include "err.h"
#include "rng.h"
#include "sha.h"
#include "shamir.h"
#include "tlsctx.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SA_CHUNK     4096 /* PRG words per EVP call: 16 KiB, stays in L1/L2 */
#define SA_WORDS     8    /* field elements per 32-byte secret (u32 words) */
#define SIGN_CONTEXT "fedlora-secagg-v1"
#define INFO_ENC     "fedlora-secagg-v1 enc"
#define INFO_MASK    "fedlora-secagg-v1 mask"
#define MAX_TRIES    256 /* candidate subsets when decoding a share set with liars */

static const uint8_t zero_block[SA_CHUNK * 4];

/* ---- small helpers ---- */

static void st32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static void st64(uint8_t *p, uint64_t v)
{
	st32(p, (uint32_t)v);
	st32(p + 4, (uint32_t)(v >> 32));
}

static uint32_t ld32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t ld64(const uint8_t *p)
{
	return (uint64_t)ld32(p) | (uint64_t)ld32(p + 4) << 32;
}

/* OpenSSL's error queue as one sentence after a prefix. */
static int crypto_fail(char *why, size_t whylen, const char *what)
{
	char e[200];
	tlsctx_errstr(e, sizeof e);
	return fl_fail(why, whylen, FL_ECRYPTO, "%s failed%s%s", what, e[0] ? ": " : "", e);
}

/* Index of v in the ascending list a[0..n), or -1. */
static long find_u32(const uint32_t *a, uint32_t n, uint32_t v)
{
	uint32_t lo = 0, hi = n;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (a[mid] < v)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n && a[lo] == v ? (long)lo : -1;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static void secret_to_field(const uint8_t s[SA_KEY_LEN], uint64_t f[SA_WORDS])
{
	for (int e = 0; e < SA_WORDS; e++)
		f[e] = ld32(s + 4 * e);
}

/* 0 when every element is a u32 (a valid encoding of 32 secret bytes). */
static int field_to_secret(const uint64_t f[SA_WORDS], uint8_t s[SA_KEY_LEN])
{
	for (int e = 0; e < SA_WORDS; e++) {
		if (f[e] > UINT32_MAX)
			return FL_EPROTO;
		st32(s + 4 * e, (uint32_t)f[e]);
	}
	return 0;
}

static void share_store(const uint64_t sh[SA_WORDS], uint8_t out[SA_SHARE_LEN])
{
	for (int e = 0; e < SA_WORDS; e++)
		st64(out + 8 * e, sh[e]);
}

/* 0, or FL_EPROTO when an element is outside the field. */
static int share_load(const uint8_t in[SA_SHARE_LEN], uint64_t sh[SA_WORDS])
{
	for (int e = 0; e < SA_WORDS; e++) {
		sh[e] = ld64(in + 8 * e);
		if (sh[e] >= SHAMIR_P)
			return FL_EPROTO;
	}
	return 0;
}

/* ---- crypto context: fetched algorithms and scratch, one per object ---- */

typedef struct sa_crypto {
	EVP_CIPHER *ctr, *gcm;
	EVP_KDF *hkdf;
	EVP_CIPHER_CTX *cctx;
	uint32_t *ks; /* SA_CHUNK keystream words */
} sa_crypto;

static void crypto_fini(sa_crypto *k)
{
	EVP_CIPHER_free(k->ctr);
	EVP_CIPHER_free(k->gcm);
	EVP_KDF_free(k->hkdf);
	EVP_CIPHER_CTX_free(k->cctx);
	free(k->ks);
	memset(k, 0, sizeof *k);
}

static int crypto_init(sa_crypto *k)
{
	memset(k, 0, sizeof *k);
	k->ctr = EVP_CIPHER_fetch(NULL, "AES-256-CTR", NULL);
	k->gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
	k->hkdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	k->cctx = EVP_CIPHER_CTX_new();
	k->ks = malloc(SA_CHUNK * sizeof *k->ks);
	if (!k->ks) {
		crypto_fini(k);
		return FL_ENOMEM;
	}
	if (!k->ctr || !k->gcm || !k->hkdf || !k->cctx) {
		crypto_fini(k);
		return FL_ECRYPTO;
	}
	return 0;
}

static int hkdf(sa_crypto *k, const uint8_t *salt, size_t saltlen, const uint8_t *ikm,
                size_t ikmlen, const uint8_t *info, size_t infolen, uint8_t *out, size_t outlen)
{
	EVP_KDF_CTX *kc = EVP_KDF_CTX_new(k->hkdf);
	OSSL_PARAM p[5], *q = p;
	if (!kc)
		return FL_ECRYPTO;
	*q++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
	*q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)ikm, ikmlen);
	*q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, infolen);
	if (salt && saltlen)
		*q++ =
		    OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, saltlen);
	*q = OSSL_PARAM_construct_end();
	int ok = EVP_KDF_derive(kc, out, outlen, p) == 1;
	EVP_KDF_CTX_free(kc);
	return ok ? 0 : FL_ECRYPTO;
}

static int x25519(const uint8_t sk[32], const uint8_t pk[32], uint8_t out[32])
{
	EVP_PKEY *a = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, sk, 32);
	EVP_PKEY *b = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, pk, 32);
	EVP_PKEY_CTX *c = a ? EVP_PKEY_CTX_new(a, NULL) : NULL;
	size_t len = 32;
	int ok = a && b && c && EVP_PKEY_derive_init(c) == 1 &&
	         EVP_PKEY_derive_set_peer(c, b) == 1 && EVP_PKEY_derive(c, out, &len) == 1 &&
	         len == 32;
	if (ok) {
		/* OpenSSL already refuses an all-zero result; say so here too */
		uint8_t acc = 0;
		for (int i = 0; i < 32; i++)
			acc |= out[i];
		ok = acc != 0;
	}
	EVP_PKEY_CTX_free(c);
	EVP_PKEY_free(a);
	EVP_PKEY_free(b);
	return ok ? 0 : FL_ECRYPTO;
}

/* Pairwise key: HKDF(X25519(sk, pk), info = label || round_id u64 LE). */
static int pair_key(sa_crypto *k, const char *label, uint64_t round_id, const uint8_t sk[32],
                    const uint8_t pk[32], uint8_t out[32])
{
	uint8_t z[32], info[40];
	size_t ll = strlen(label);
	memcpy(info, label, ll);
	st64(info + ll, round_id);
	int rc = x25519(sk, pk, z);
	if (rc == 0)
		rc = hkdf(k, NULL, 0, z, sizeof z, info, ll + 8, out, 32);
	OPENSSL_cleanse(z, sizeof z);
	return rc;
}

static int gcm(sa_crypto *k, int enc, const uint8_t key[32], const uint8_t nonce[12],
               const uint8_t *aad, size_t aadlen, const uint8_t *in, size_t len, uint8_t *out)
{
	EVP_CIPHER_CTX *c = k->cctx;
	int outl = 0, fin = 0;
	if (len > INT32_MAX || aadlen > INT32_MAX)
		return FL_EINVAL;
	if (EVP_CipherInit_ex2(c, k->gcm, key, nonce, enc, NULL) != 1)
		return FL_ECRYPTO;
	if (aadlen && EVP_CipherUpdate(c, NULL, &outl, aad, (int)aadlen) != 1)
		return FL_ECRYPTO;
	if (EVP_CipherUpdate(c, out, &outl, in, (int)len) != 1)
		return FL_ECRYPTO;
	if (enc) {
		if (EVP_CipherFinal_ex(c, out + outl, &fin) != 1 ||
		    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, 16, out + len) != 1)
			return FL_ECRYPTO;
		return 0;
	}
	if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, 16, (void *)(in + len)) != 1)
		return FL_ECRYPTO;
	if (EVP_CipherFinal_ex(c, out + outl, &fin) != 1) {
		ERR_clear_error();
		OPENSSL_cleanse(out, len);
		return FL_EAUTH;
	}
	return 0;
}

static int ctr_xor(sa_crypto *k, const uint8_t key[32], const uint8_t iv[16], const uint8_t *in,
                   uint8_t *out, size_t len)
{
	int outl;
	if (EVP_CipherInit_ex2(k->cctx, k->ctr, key, iv, 1, NULL) != 1)
		return FL_ECRYPTO;
	while (len) {
		size_t n = len > (1u << 30) ? (1u << 30) : len;
		if (EVP_CipherUpdate(k->cctx, out, &outl, in, (int)n) != 1)
			return FL_ECRYPTO;
		in += n;
		out += n;
		len -= n;
	}
	return 0;
}

/* acc[0..n) += sign * PRG(seed) (mod 2^32; the caller reduces mod 2^m). The
 * hot loop: one AES-CTR call per SA_CHUNK words, then an add the compiler
 * vectorises. */
static int prg_apply(sa_crypto *k, const uint8_t seed[32], int negate, uint32_t *acc, uint64_t n)
{
	static const uint8_t iv[16];
	int outl;
	if (EVP_CipherInit_ex2(k->cctx, k->ctr, seed, iv, 1, NULL) != 1)
		return FL_ECRYPTO;
	uint32_t *ks = k->ks;
	for (uint64_t off = 0; off < n; off += SA_CHUNK) {
		size_t c = n - off < SA_CHUNK ? (size_t)(n - off) : SA_CHUNK;
		if (EVP_CipherUpdate(k->cctx, (uint8_t *)ks, &outl, zero_block, (int)(c * 4)) != 1)
			return FL_ECRYPTO;
#if !(defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
		for (size_t i = 0; i < c; i++)
			ks[i] = ld32((const uint8_t *)&ks[i]);
#endif
		uint32_t *a = acc + off;
		if (negate)
			for (size_t i = 0; i < c; i++)
				a[i] -= ks[i];
		else
			for (size_t i = 0; i < c; i++)
				a[i] += ks[i];
	}
	return 0;
}

/* ---- exposed primitives ---- */

int sa_x25519(const uint8_t sk[SA_KEY_LEN], const uint8_t pk[SA_KEY_LEN], uint8_t out[SA_KEY_LEN])
{
	return x25519(sk, pk, out);
}

int sa_hkdf_sha256(const uint8_t *salt, size_t saltlen, const uint8_t *ikm, size_t ikmlen,
                   const uint8_t *info, size_t infolen, uint8_t *out, size_t outlen)
{
	sa_crypto k;
	if (outlen == 0 || outlen > 255 * 32)
		return FL_EINVAL;
	int rc = crypto_init(&k);
	if (rc == 0)
		rc = hkdf(&k, salt, saltlen, ikm, ikmlen, info, infolen, out, outlen);
	crypto_fini(&k);
	return rc;
}

/* One-shot GCM with its own fetched context. */
static int gcm_once(int enc, const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad,
                    size_t aadlen, const uint8_t *in, size_t len, uint8_t *out)
{
	sa_crypto k;
	int rc = crypto_init(&k);
	if (rc == 0)
		rc = gcm(&k, enc, key, nonce, aad, aadlen, in, len, out);
	crypto_fini(&k);
	return rc;
}

int sa_gcm_seal(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad, size_t aadlen,
                const uint8_t *pt, size_t len, uint8_t *out)
{
	return gcm_once(1, key, nonce, aad, aadlen, pt, len, out);
}

int sa_gcm_open(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad, size_t aadlen,
                const uint8_t *in, size_t len, uint8_t *out)
{
	return gcm_once(0, key, nonce, aad, aadlen, in, len, out);
}

int sa_ctr_xor(const uint8_t key[32], const uint8_t iv[16], const uint8_t *in, uint8_t *out,
               size_t len)
{
	sa_crypto k;
	int rc = crypto_init(&k);
	if (rc == 0)
		rc = ctr_xor(&k, key, iv, in, out, len);
	crypto_fini(&k);
	return rc;
}

int sa_prg(const uint8_t seed[SA_KEY_LEN], uint32_t *out, uint64_t n)
{
	sa_crypto k;
	int rc = crypto_init(&k);
	if (rc == 0) {
		memset(out, 0, n * sizeof *out);
		rc = prg_apply(&k, seed, 0, out, n);
	}
	crypto_fini(&k);
	return rc;
}

/* ---- parameters and the graph ---- */

uint32_t sa_degree(const sa_round *r)
{
	return r->k >= r->n - 1 ? r->n - 1 : r->k;
}

int sa_round_check(const sa_round *r, char *why, size_t whylen)
{
	if (!r)
		return fl_fail(why, whylen, FL_EINVAL, "no round parameters");
	if (r->n < 3 || r->n > SA_MAX_N)
		return fl_fail(why, whylen, FL_EINVAL, "secagg n = %u participants: must be 3..%u",
		               r->n, SA_MAX_N);
	if (r->k < 2)
		return fl_fail(why, whylen, FL_EINVAL, "secagg k = %u neighbours: must be >= 2",
		               r->k);
	if (r->k < r->n - 1 && r->k % 2)
		return fl_fail(why, whylen, FL_EINVAL,
		               "secagg k = %u neighbours: must be even when below n - 1 = %u", r->k,
		               r->n - 1);
	uint32_t deg = sa_degree(r);
	if ((uint64_t)r->n * deg > SA_MAX_EDGES)
		return fl_fail(why, whylen, FL_EINVAL,
		               "secagg n = %u times degree %u exceeds the cap of %u edges", r->n,
		               deg, SA_MAX_EDGES);
	if (r->t > deg || 2 * (uint64_t)r->t <= deg)
		return fl_fail(why, whylen, FL_EINVAL,
		               "secagg threshold t = %u: must satisfy degree/2 < t <= degree "
		               "(degree %u)",
		               r->t, deg);
	if (r->t > SHAMIR_MAX_T)
		return fl_fail(why, whylen, FL_EINVAL, "secagg threshold t = %u over the cap %u",
		               r->t, SHAMIR_MAX_T);
	if (r->mod_bits < 1 || r->mod_bits > SA_MAX_MOD_BITS)
		return fl_fail(why, whylen, FL_EINVAL, "secagg mod_bits = %u: must be 1..%u",
		               r->mod_bits, SA_MAX_MOD_BITS);
	if (r->dim < 1 || r->dim > SA_MAX_DIM)
		return fl_fail(why, whylen, FL_EINVAL, "secagg dim = %llu: must be 1..%llu",
		               (unsigned long long)r->dim, (unsigned long long)SA_MAX_DIM);
	return 0;
}

uint32_t sa_mod_bits(uint32_t level_bits, uint32_t n, uint32_t w_max)
{
	if (!level_bits || !n || !w_max || level_bits > 32)
		return 0;
	uint64_t prod = (uint64_t)n * w_max, p = 1;
	uint32_t lg = 0;
	while (p < prod) {
		p <<= 1;
		lg++;
	}
	uint32_t m = level_bits + lg + 1;
	return m > SA_MAX_MOD_BITS ? 0 : m;
}

void sa_params_default(uint32_t n, uint32_t *k, uint32_t *t)
{
	if (n < 3) {
		*k = *t = 0;
		return;
	}
	/* lg = ceil(1.5 log2 n): the smallest c with 2^c >= n^1.5, i.e. 4^c >= n^3 */
	uint64_t nn = n > SA_MAX_N ? SA_MAX_N : n;
	uint64_t n3 = nn * nn * nn, p = 1; /* <= 2^48 */
	uint32_t lg = 0;
	while (p < n3) {
		p <<= 2;
		lg++;
	}
	uint32_t kk = 2 * lg + 2;
	uint32_t deg = kk >= n - 1 ? n - 1 : kk;
	*k = kk >= n - 1 ? n - 1 : kk;
	*t = (2 * deg + 2) / 3;
	if (2 * *t <= deg)
		*t = deg / 2 + 1;
}

int sa_graph_seed(uint64_t round_id, const char *const *ids, uint32_t n, uint8_t out[32])
{
	static const char ctx[] = "fedlora-secagg-v1 graph";
	sha256_ctx *h = NULL;
	uint8_t b[8];
	if (!ids || n == 0 || n > SA_MAX_N)
		return FL_EINVAL;
	if (sha256_new(&h))
		return FL_ECRYPTO;
	st64(b, round_id);
	int rc = sha256_update(h, ctx, sizeof ctx - 1) || sha256_update(h, b, 8);
	for (uint32_t i = 0; i < n && !rc; i++) {
		size_t l = ids[i] ? strnlen(ids[i], SA_MAX_NODE_ID + 1) : SA_MAX_NODE_ID + 1;
		if (l > SA_MAX_NODE_ID) {
			sha256_free(h);
			return FL_EINVAL;
		}
		st32(b, (uint32_t)l);
		rc = sha256_update(h, b, 4) || sha256_update(h, ids[i], l);
	}
	if (rc) {
		sha256_free(h);
		return FL_ECRYPTO;
	}
	return sha256_final(h, out) ? FL_ECRYPTO : 0;
}

/* The round's permuted cycle: perm[pos] = node, pos_of[node] = pos. */
static int graph_perm(const sa_round *r, uint32_t *perm, uint32_t *pos_of)
{
	sa_crypto k;
	int rc = crypto_init(&k);
	if (rc)
		return rc;
	static const uint8_t iv[16];
	uint32_t buf[256];
	size_t have = 0, used = 0;
	int outl;
	if (EVP_CipherInit_ex2(k.cctx, k.ctr, r->graph_seed, iv, 1, NULL) != 1) {
		rc = FL_ECRYPTO;
		goto out;
	}
	for (uint32_t i = 0; i < r->n; i++)
		perm[i] = i;
	/* Fisher-Yates: swap i with a uniform j in [0, i], drawn by rejection
	 * from 32-bit words (no modulo bias). */
	for (uint32_t i = r->n - 1; i > 0; i--) {
		uint64_t range = (uint64_t)i + 1;
		uint64_t limit = ((uint64_t)1 << 32) - (((uint64_t)1 << 32) % range);
		uint32_t v;
		do {
			if (used == have) {
				if (EVP_CipherUpdate(k.cctx, (uint8_t *)buf, &outl, zero_block,
				                     sizeof buf) != 1) {
					rc = FL_ECRYPTO;
					goto out;
				}
				have = sizeof buf / 4;
				used = 0;
			}
			v = ld32((const uint8_t *)&buf[used++]);
		} while (v >= limit);
		uint32_t j = (uint32_t)(v % range);
		uint32_t tmp = perm[i];
		perm[i] = perm[j];
		perm[j] = tmp;
	}
	for (uint32_t p = 0; p < r->n; p++)
		pos_of[perm[p]] = p;
out:
	crypto_fini(&k);
	return rc;
}

/* i's neighbours from the cycle, sorted; out has sa_degree(r) entries. */
static void graph_nb(const sa_round *r, const uint32_t *perm, const uint32_t *pos_of, uint32_t i,
                     uint32_t *out)
{
	uint32_t deg = sa_degree(r), c = 0;
	if (deg == r->n - 1) {
		for (uint32_t j = 0; j < r->n; j++)
			if (j != i)
				out[c++] = j;
		return;
	}
	uint32_t p = pos_of[i];
	for (uint32_t d = 1; d <= deg / 2; d++) {
		out[c++] = perm[(p + d) % r->n];
		out[c++] = perm[(p + r->n - d) % r->n];
	}
	qsort(out, c, sizeof *out, cmp_u32);
}

int sa_neighbours(const sa_round *r, uint32_t i, uint32_t *out, uint32_t *count)
{
	if (sa_round_check(r, NULL, 0) != 0 || i >= r->n)
		return FL_EINVAL;
	uint32_t *perm = malloc(2 * (size_t)r->n * sizeof *perm);
	if (!perm)
		return FL_ENOMEM;
	int rc = graph_perm(r, perm, perm + r->n);
	if (rc == 0) {
		graph_nb(r, perm, perm + r->n, i, out);
		*count = sa_degree(r);
	}
	free(perm);
	return rc;
}

/* ---- packing ---- */

size_t sa_packed_len(const sa_round *r)
{
	return (size_t)((r->dim * r->mod_bits + 7) / 8);
}

void sa_pack(const uint32_t *x, uint64_t dim, uint32_t m, uint8_t *out)
{
	uint64_t buf = 0;
	uint32_t nb = 0;
	uint64_t mask = m == 32 ? 0xffffffffu : ((1u << m) - 1);
	for (uint64_t e = 0; e < dim; e++) {
		buf |= ((uint64_t)x[e] & mask) << nb;
		nb += m;
		if (nb >= 32) {
			st32(out, (uint32_t)buf);
			out += 4;
			buf >>= 32;
			nb -= 32;
		}
	}
	while (nb > 0) {
		*out++ = (uint8_t)buf;
		buf >>= 8;
		nb = nb > 8 ? nb - 8 : 0;
	}
}

/* Unpacks and adds into acc (mod 2^32) when add, else stores. */
static int unpack_op(const uint8_t *in, uint64_t dim, uint32_t m, uint32_t *acc, int add)
{
	size_t len = (size_t)((dim * m + 7) / 8), pos = 0;
	uint64_t buf = 0;
	uint32_t nb = 0;
	uint32_t mask = m == 32 ? 0xffffffffu : ((1u << m) - 1);
	for (uint64_t e = 0; e < dim; e++) {
		if (nb < m) {
			if (pos + 4 <= len) {
				buf |= (uint64_t)ld32(in + pos) << nb;
				pos += 4;
				nb += 32;
			} else {
				while (nb < m && pos < len) {
					buf |= (uint64_t)in[pos++] << nb;
					nb += 8;
				}
			}
		}
		uint32_t v = (uint32_t)buf & mask;
		buf >>= m;
		nb -= m;
		if (add)
			acc[e] += v;
		else
			acc[e] = v;
	}
	/* what is left in buf are the padding bits of the last byte */
	if (buf != 0 || pos != len)
		return FL_EPROTO;
	return 0;
}

int sa_unpack(const uint8_t *in, uint64_t dim, uint32_t m, uint32_t *x)
{
	return unpack_op(in, dim, m, x, 0);
}

/* ---- signed bytes, certificates ---- */

size_t sa_signed_bytes(uint64_t round_id, const sa_keys *k, uint8_t *out, size_t cap)
{
	size_t idl = k->node_id ? strnlen(k->node_id, SA_MAX_NODE_ID) : 0;
	size_t cl = sizeof SIGN_CONTEXT - 1;
	size_t total = cl + 8 + 4 + 4 + idl + 2 * SA_KEY_LEN;
	uint8_t tmp[sizeof SIGN_CONTEXT - 1 + 16 + SA_MAX_NODE_ID + 2 * SA_KEY_LEN], *p = tmp;
	memcpy(p, SIGN_CONTEXT, cl);
	p += cl;
	st64(p, round_id);
	st32(p + 8, k->index);
	st32(p + 12, (uint32_t)idl);
	p += 16;
	if (idl)
		memcpy(p, k->node_id, idl);
	p += idl;
	memcpy(p, k->enc_pk, SA_KEY_LEN);
	memcpy(p + SA_KEY_LEN, k->mask_pk, SA_KEY_LEN);
	if (out)
		memcpy(out, tmp, total < cap ? total : cap);
	return total;
}

/* Checks a roster entry's certificate and signature; 0 or a reason. */
static int check_entry(const sa_round *r, const sa_keys *k, X509_STORE *ca, char *why,
                       size_t whylen)
{
	X509 *x = NULL;
	X509_STORE_CTX *xs = NULL;
	EVP_MD_CTX *md = NULL;
	unsigned char *cn = NULL;
	int rc = FL_EAUTH;
	size_t idl = k->node_id ? strnlen(k->node_id, SA_MAX_NODE_ID + 1) : 0;
	if (!tlsctx_valid_name(k->node_id, idl)) {
		rc = fl_fail(why, whylen, FL_EPROTO, "node id is not a valid name");
		goto out;
	}
	if (!k->cert_der || k->cert_len == 0 || k->cert_len > SA_MAX_CERT) {
		rc = fl_fail(why, whylen, FL_EPROTO, "certificate length %zu not in 1..%u",
		             k->cert_len, SA_MAX_CERT);
		goto out;
	}
	if (!k->sig || k->sig_len == 0 || k->sig_len > SA_MAX_SIG) {
		rc = fl_fail(why, whylen, FL_EPROTO, "signature length %zu not in 1..%u",
		             k->sig_len, SA_MAX_SIG);
		goto out;
	}
	const unsigned char *p = k->cert_der;
	x = d2i_X509(NULL, &p, (long)k->cert_len);
	if (!x || p != k->cert_der + k->cert_len) {
		ERR_clear_error();
		rc = fl_fail(why, whylen, FL_EPROTO, "certificate is not one DER X.509 structure");
		goto out;
	}
	xs = X509_STORE_CTX_new();
	if (!xs || X509_STORE_CTX_init(xs, ca, x, NULL) != 1) {
		rc = crypto_fail(why, whylen, "X509_STORE_CTX_init");
		goto out;
	}
	if (X509_verify_cert(xs) != 1) {
		rc = fl_fail(why, whylen, FL_EAUTH,
		             "certificate does not verify against the federation CA: %s",
		             X509_verify_cert_error_string(X509_STORE_CTX_get_error(xs)));
		ERR_clear_error();
		goto out;
	}
	uint32_t xku = X509_get_extended_key_usage(x);
	if (xku == UINT32_MAX || !(xku & XKU_SSL_CLIENT)) {
		rc = fl_fail(why, whylen, FL_EAUTH,
		             "certificate lacks extended key usage clientAuth (not a node "
		             "certificate)");
		goto out;
	}
	X509_NAME *nm = X509_get_subject_name(x);
	int i = X509_NAME_get_index_by_NID(nm, NID_commonName, -1);
	int n = -1;
	if (i >= 0 && X509_NAME_get_index_by_NID(nm, NID_commonName, i) < 0)
		n = ASN1_STRING_to_UTF8(&cn, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(nm, i)));
	if (n < 0 || (size_t)n != idl || memcmp(cn, k->node_id, idl) != 0) {
		ERR_clear_error();
		rc = fl_fail(why, whylen, FL_EAUTH,
		             "certificate CN '%.64s' is not the node id '%s' (missing, repeated "
		             "or different)",
		             n > 0 ? (const char *)cn : "", k->node_id);
		goto out;
	}
	uint8_t msg[sizeof SIGN_CONTEXT + 16 + SA_MAX_NODE_ID + 2 * SA_KEY_LEN];
	size_t ml = sa_signed_bytes(r->round_id, k, msg, sizeof msg);
	md = EVP_MD_CTX_new();
	if (!md || EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, X509_get0_pubkey(x)) != 1) {
		rc = crypto_fail(why, whylen, "signature check setup");
		goto out;
	}
	if (EVP_DigestVerify(md, k->sig, k->sig_len, msg, ml) != 1) {
		ERR_clear_error();
		rc = fl_fail(why, whylen, FL_EAUTH,
		             "signature over the keys does not verify with the certificate's "
		             "key (keys substituted?)");
		goto out;
	}
	rc = 0;
out:
	OPENSSL_free(cn);
	EVP_MD_CTX_free(md);
	X509_STORE_CTX_free(xs);
	X509_free(x);
	return rc;
}

/* ---- client ---- */

enum { CL_NEW, CL_ADVERTISED, CL_SHARED, CL_RECEIVED, CL_MASKED, CL_REVEALED };

typedef struct cl_nb {
	uint32_t idx;
	uint8_t accepted, partner, have_share;
	uint8_t enc_pk[SA_KEY_LEN], mask_pk[SA_KEY_LEN];
	uint8_t key[32];                          /* AES-GCM key shared with this neighbour */
	uint8_t seed[32];                         /* pairwise mask seed s_ij */
	uint64_t sh_b[SA_WORDS], sh_sk[SA_WORDS]; /* c's shares of its secrets */
} cl_nb;

struct sa_client {
	sa_round r;
	uint32_t index, deg, state;
	char node_id[SA_MAX_NODE_ID + 1];
	sa_crypto cr;
	cl_nb *nb;
	uint8_t enc_sk[SA_KEY_LEN], mask_sk[SA_KEY_LEN], b[SA_KEY_LEN];
	sa_keys keys;
	uint8_t *sig, *cert;
	sa_share *shares;
	uint8_t *ct;
	sa_refusal *ref;
	uint32_t nref;
	uint8_t *packed;
	sa_reveal *rv;
};

void sa_client_free(sa_client *c)
{
	if (!c)
		return;
	if (c->nb)
		OPENSSL_cleanse(c->nb, (size_t)c->deg * sizeof *c->nb);
	free(c->nb);
	OPENSSL_cleanse(c->enc_sk, sizeof c->enc_sk);
	OPENSSL_cleanse(c->mask_sk, sizeof c->mask_sk);
	OPENSSL_cleanse(c->b, sizeof c->b);
	crypto_fini(&c->cr);
	OPENSSL_free(c->sig);
	OPENSSL_free(c->cert);
	free(c->shares);
	free(c->ct);
	free(c->ref);
	free(c->packed);
	free(c->rv);
	free(c);
}

int sa_client_new(const sa_round *r, uint32_t index, const char *node_id, sa_client **out,
                  char *why, size_t whylen)
{
	int rc = sa_round_check(r, why, whylen);
	if (rc)
		return rc;
	if (index >= r->n)
		return fl_fail(why, whylen, FL_EINVAL, "secagg index %u not below n = %u", index,
		               r->n);
	size_t idl = node_id ? strnlen(node_id, SA_MAX_NODE_ID + 1) : 0;
	if (!tlsctx_valid_name(node_id, idl))
		return fl_fail(why, whylen, FL_EINVAL, "secagg node id is not a valid name");
	sa_client *c = calloc(1, sizeof *c);
	uint32_t *tmp = NULL;
	if (!c)
		return FL_ENOMEM;
	c->r = *r;
	c->index = index;
	c->deg = sa_degree(r);
	memcpy(c->node_id, node_id, idl);
	rc = crypto_init(&c->cr);
	if (rc) {
		rc = rc == FL_ENOMEM ? rc : crypto_fail(why, whylen, "secagg crypto setup");
		goto out;
	}
	c->nb = calloc(c->deg, sizeof *c->nb);
	c->shares = calloc(c->deg, sizeof *c->shares);
	c->ct = malloc((size_t)c->deg * SA_SHARE_CT_LEN);
	c->ref = calloc(c->deg, sizeof *c->ref);
	c->rv = calloc(c->deg, sizeof *c->rv);
	tmp = malloc((size_t)c->deg * sizeof *tmp);
	if (!c->nb || !c->shares || !c->ct || !c->ref || !c->rv || !tmp) {
		rc = FL_ENOMEM;
		goto out;
	}
	uint32_t cnt;
	rc = sa_neighbours(r, index, tmp, &cnt);
	if (rc) {
		rc = fl_fail(why, whylen, rc, "secagg graph: %s", fl_strerror(rc));
		goto out;
	}
	for (uint32_t p = 0; p < c->deg; p++)
		c->nb[p].idx = tmp[p];
	*out = c;
	c = NULL;
out:
	free(tmp);
	sa_client_free(c);
	return rc;
}

static long cl_pos(const sa_client *c, uint32_t j)
{
	uint32_t lo = 0, hi = c->deg;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (c->nb[mid].idx < j)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < c->deg && c->nb[lo].idx == j ? (long)lo : -1;
}

static int x25519_keygen(uint8_t sk[32], uint8_t pk[32])
{
	EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
	size_t a = 32, b = 32;
	int ok = k && EVP_PKEY_get_raw_private_key(k, sk, &a) == 1 &&
	         EVP_PKEY_get_raw_public_key(k, pk, &b) == 1 && a == 32 && b == 32;
	EVP_PKEY_free(k);
	return ok ? 0 : FL_ECRYPTO;
}

int sa_client_advertise(sa_client *c, EVP_PKEY *sign_key, X509 *cert, sa_keys *out, char *why,
                        size_t whylen)
{
	EVP_MD_CTX *md = NULL;
	int rc;
	if (c->state != CL_NEW)
		return fl_fail(why, whylen, FL_ESTATE, "secagg keys already advertised");
	if (!sign_key || !cert)
		return fl_fail(why, whylen, FL_EINVAL,
		               "secagg advertise needs a key and certificate");
	if (X509_check_private_key(cert, sign_key) != 1) {
		ERR_clear_error();
		return fl_fail(why, whylen, FL_EINVAL,
		               "secagg signing key is not the certificate's private key");
	}
	if (x25519_keygen(c->enc_sk, c->keys.enc_pk) ||
	    x25519_keygen(c->mask_sk, c->keys.mask_pk) || RAND_bytes(c->b, sizeof c->b) != 1)
		return crypto_fail(why, whylen, "secagg key generation");
	c->keys.index = c->index;
	c->keys.node_id = c->node_id;
	int dl = i2d_X509(cert, &c->cert);
	if (dl <= 0 || dl > SA_MAX_CERT) {
		rc = dl <= 0 ? crypto_fail(why, whylen, "certificate DER encoding")
		             : fl_fail(why, whylen, FL_ETOOBIG, "certificate of %d bytes over %u",
		                       dl, SA_MAX_CERT);
		goto out;
	}
	uint8_t msg[sizeof SIGN_CONTEXT + 16 + SA_MAX_NODE_ID + 2 * SA_KEY_LEN];
	size_t ml = sa_signed_bytes(c->r.round_id, &c->keys, msg, sizeof msg);
	size_t sl = 0;
	md = EVP_MD_CTX_new();
	if (!md || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, sign_key) != 1 ||
	    EVP_DigestSign(md, NULL, &sl, msg, ml) != 1 || !(c->sig = OPENSSL_malloc(sl)) ||
	    EVP_DigestSign(md, c->sig, &sl, msg, ml) != 1) {
		rc = crypto_fail(why, whylen, "secagg key signature");
		goto out;
	}
	if (sl > SA_MAX_SIG) {
		rc = fl_fail(why, whylen, FL_ETOOBIG, "signature of %zu bytes over %u", sl,
		             SA_MAX_SIG);
		goto out;
	}
	c->keys.sig = c->sig;
	c->keys.sig_len = sl;
	c->keys.cert_der = c->cert;
	c->keys.cert_len = (size_t)dl;
	c->state = CL_ADVERTISED;
	*out = c->keys;
	rc = 0;
out:
	EVP_MD_CTX_free(md);
	if (rc) {
		OPENSSL_free(c->cert);
		OPENSSL_free(c->sig);
		c->cert = c->sig = NULL;
	}
	return rc;
}

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void
refuse(sa_client *c, uint32_t idx, const char *fmt, ...)
{
	sa_refusal *f = &c->ref[c->nref++];
	va_list ap;
	f->index = idx;
	va_start(ap, fmt);
	vsnprintf(f->reason, sizeof f->reason, fmt, ap);
	va_end(ap);
}

/* nonce = from u32 LE || to u32 LE || 0; AAD = round_id u64 LE || from || to */
static void share_nonce_aad(uint64_t round_id, uint32_t from, uint32_t to, uint8_t nonce[12],
                            uint8_t aad[16])
{
	st32(nonce, from);
	st32(nonce + 4, to);
	st32(nonce + 8, 0);
	st64(aad, round_id);
	st32(aad + 8, from);
	st32(aad + 12, to);
}

int sa_client_share(sa_client *c, const sa_keys *roster, uint32_t nroster, X509_STORE *ca,
                    const sa_share **out, uint32_t *nout, const sa_refusal **refused,
                    uint32_t *nrefused, char *why, size_t whylen)
{
	uint64_t *hx = NULL, *shb = NULL, *shk = NULL;
	uint64_t fb[SA_WORDS], fk[SA_WORDS];
	const sa_keys **ent = NULL;
	char r[160];
	int rc = 0;
	if (c->state != CL_ADVERTISED)
		return fl_fail(why, whylen, FL_ESTATE,
		               c->state == CL_NEW ? "secagg share before advertise"
		                                  : "secagg shares already made");
	if (!ca)
		return fl_fail(why, whylen, FL_EINVAL, "secagg share needs the federation CA");
	if (nroster && !roster)
		return fl_fail(why, whylen, FL_EINVAL, "secagg roster is NULL");
	size_t shl = (size_t)c->deg * SA_WORDS * sizeof *shb;
	ent = calloc(c->deg, sizeof *ent);
	hx = malloc((size_t)c->deg * sizeof *hx);
	shb = malloc(shl);
	shk = malloc(shl);
	if (!ent || !hx || !shb || !shk) {
		rc = FL_ENOMEM;
		goto out;
	}
	/* the roster entry of each neighbour (at most one per index) */
	for (uint32_t e = 0; e < nroster; e++) {
		long p = cl_pos(c, roster[e].index);
		if (p < 0)
			continue; /* not a neighbour (or c itself): not c's business */
		if (ent[p]) {
			rc = fl_fail(why, whylen, FL_EPROTO, "secagg roster holds index %u twice",
			             roster[e].index);
			goto out;
		}
		ent[p] = &roster[e];
	}
	c->nref = 0;
	for (uint32_t p = 0; p < c->deg; p++)
		c->nb[p].accepted = 0; /* a call that failed may be repeated */
	for (uint32_t p = 0; p < c->deg; p++) {
		cl_nb *nb = &c->nb[p];
		if (!ent[p]) {
			refuse(c, nb->idx, "%s", "no keys in the roster (did not advertise)");
			continue;
		}
		if (check_entry(&c->r, ent[p], ca, r, sizeof r) != 0) {
			refuse(c, nb->idx, "%s", r);
			continue;
		}
		nb->accepted = 1;
	}
	/* node ids must be unique among c and its accepted neighbours */
	for (uint32_t p = 0; p < c->deg; p++) {
		if (!c->nb[p].accepted)
			continue;
		int dup = strcmp(ent[p]->node_id, c->node_id) == 0;
		for (uint32_t q = 0; q < c->deg && !dup; q++)
			dup = q != p && c->nb[q].accepted &&
			      strcmp(ent[p]->node_id, ent[q]->node_id) == 0;
		if (dup)
			refuse(c, c->nb[p].idx, "node id '%s' appears twice in the round",
			       ent[p]->node_id);
	}
	for (uint32_t f = 0; f < c->nref; f++) {
		long p = cl_pos(c, c->ref[f].index);
		c->nb[p].accepted = 0;
	}
	uint32_t na = 0;
	for (uint32_t p = 0; p < c->deg; p++)
		if (c->nb[p].accepted)
			hx[na++] = (uint64_t)c->nb[p].idx + 1;
	if (na < c->r.t) {
		*refused = c->ref;
		*nrefused = c->nref;
		rc = fl_fail(why, whylen, FL_EAUTH,
		             "secagg: only %u of %u neighbours have valid signed keys, fewer "
		             "than the threshold %u: leaving the round",
		             na, c->deg, c->r.t);
		goto out;
	}
	/* pairwise keys */
	for (uint32_t p = 0; p < c->deg; p++) {
		cl_nb *nb = &c->nb[p];
		if (!nb->accepted)
			continue;
		memcpy(nb->enc_pk, ent[p]->enc_pk, SA_KEY_LEN);
		memcpy(nb->mask_pk, ent[p]->mask_pk, SA_KEY_LEN);
		if (pair_key(&c->cr, INFO_ENC, c->r.round_id, c->enc_sk, nb->enc_pk, nb->key) ||
		    pair_key(&c->cr, INFO_MASK, c->r.round_id, c->mask_sk, nb->mask_pk, nb->seed)) {
			ERR_clear_error();
			/* a valid signature on a small-order key: the peer misbehaves */
			nb->accepted = 0;
			refuse(c, nb->idx, "%s", "public key gives no shared secret (small order)");
		}
	}
	na = 0;
	for (uint32_t p = 0; p < c->deg; p++)
		if (c->nb[p].accepted)
			hx[na++] = (uint64_t)c->nb[p].idx + 1;
	if (na < c->r.t) {
		*refused = c->ref;
		*nrefused = c->nref;
		rc = fl_fail(why, whylen, FL_EAUTH,
		             "secagg: only %u usable neighbours, fewer than the threshold %u", na,
		             c->r.t);
		goto out;
	}
	secret_to_field(c->b, fb);
	secret_to_field(c->mask_sk, fk);
	if (shamir_split(fb, SA_WORDS, c->r.t, hx, na, shb) ||
	    shamir_split(fk, SA_WORDS, c->r.t, hx, na, shk)) {
		rc = crypto_fail(why, whylen, "secagg Shamir split");
		goto out;
	}
	uint32_t h = 0;
	for (uint32_t p = 0; p < c->deg; p++) {
		cl_nb *nb = &c->nb[p];
		if (!nb->accepted)
			continue;
		uint8_t pt[SA_SHARE_PT_LEN], nonce[12], aad[16];
		share_store(shb + (size_t)h * SA_WORDS, pt);
		share_store(shk + (size_t)h * SA_WORDS, pt + SA_SHARE_LEN);
		share_nonce_aad(c->r.round_id, c->index, nb->idx, nonce, aad);
		uint8_t *ct = c->ct + (size_t)h * SA_SHARE_CT_LEN;
		rc = gcm(&c->cr, 1, nb->key, nonce, aad, sizeof aad, pt, sizeof pt, ct);
		OPENSSL_cleanse(pt, sizeof pt);
		if (rc) {
			rc = crypto_fail(why, whylen, "secagg share encryption");
			goto out;
		}
		c->shares[h] = (sa_share){
		    .from = c->index, .to = nb->idx, .ct = ct, .ct_len = SA_SHARE_CT_LEN};
		h++;
	}
	c->state = CL_SHARED;
	*out = c->shares;
	*nout = h;
	*refused = c->ref;
	*nrefused = c->nref;
out:
	OPENSSL_cleanse(fb, sizeof fb);
	OPENSSL_cleanse(fk, sizeof fk);
	if (shb)
		OPENSSL_cleanse(shb, shl);
	if (shk)
		OPENSSL_cleanse(shk, shl);
	free(ent);
	free(hx);
	free(shb);
	free(shk);
	return rc;
}

int sa_client_receive(sa_client *c, const sa_share *shares, uint32_t n, const sa_refusal **bad,
                      uint32_t *nbad, char *why, size_t whylen)
{
	if (c->state != CL_SHARED)
		return fl_fail(why, whylen, FL_ESTATE,
		               c->state < CL_SHARED ? "secagg receive before sharing"
		                                    : "secagg shares already received");
	if (n > c->deg)
		return fl_fail(why, whylen, FL_EPROTO,
		               "secagg: %u shares routed, more than the %u neighbours", n, c->deg);
	if (n && !shares)
		return fl_fail(why, whylen, FL_EINVAL, "secagg shares are NULL");
	c->nref = 0;
	char r[80];
	for (uint32_t s = 0; s < n; s++) {
		const sa_share *sh = &shares[s];
		long p = cl_pos(c, sh->from);
		if (sh->to != c->index) {
			snprintf(r, sizeof r, "share addressed to %u, not to this node %u", sh->to,
			         c->index);
			refuse(c, sh->from, "%s", r);
			continue;
		}
		if (p < 0) {
			refuse(c, sh->from, "%s", "share from a node that is not a neighbour");
			continue;
		}
		cl_nb *nb = &c->nb[p];
		if (!nb->accepted) {
			refuse(c, sh->from, "%s", "share from a neighbour whose keys were refused");
			continue;
		}
		if (nb->partner) {
			refuse(c, sh->from, "%s", "second share from the same neighbour");
			continue;
		}
		/* from here on j and c mask with each other (the server's view) */
		nb->partner = 1;
		if (!sh->ct || sh->ct_len != SA_SHARE_CT_LEN) {
			snprintf(r, sizeof r, "share of %zu bytes, not %u", sh->ct_len,
			         SA_SHARE_CT_LEN);
			refuse(c, sh->from, "%s", r);
			continue;
		}
		uint8_t pt[SA_SHARE_PT_LEN], nonce[12], aad[16];
		share_nonce_aad(c->r.round_id, sh->from, c->index, nonce, aad);
		int rc =
		    gcm(&c->cr, 0, nb->key, nonce, aad, sizeof aad, sh->ct, SA_SHARE_PT_LEN, pt);
		if (rc == 0 &&
		    (share_load(pt, nb->sh_b) || share_load(pt + SA_SHARE_LEN, nb->sh_sk)))
			rc = FL_EPROTO;
		OPENSSL_cleanse(pt, sizeof pt);
		if (rc == FL_EAUTH) {
			refuse(c, sh->from, "%s",
			       "share does not decrypt (tag, round, sender or receiver wrong)");
			continue;
		}
		if (rc == FL_EPROTO) {
			refuse(c, sh->from, "%s", "share holds a value outside the field");
			continue;
		}
		if (rc)
			return crypto_fail(why, whylen, "secagg share decryption");
		nb->have_share = 1;
	}
	c->state = CL_RECEIVED;
	*bad = c->ref;
	*nbad = c->nref;
	return 0;
}

int sa_client_mask_into(sa_client *c, const uint32_t *x, uint8_t *out, size_t len, char *why,
                        size_t whylen)
{
	if (c->state != CL_RECEIVED)
		return fl_fail(why, whylen, FL_ESTATE,
		               c->state < CL_RECEIVED ? "secagg mask before the shares arrived"
		                                      : "secagg input already masked");
	size_t pl = sa_packed_len(&c->r);
	if (!out || len != pl)
		return fl_fail(why, whylen, FL_EINVAL,
		               "secagg mask output of %zu bytes, the packed vector has %zu", len,
		               pl);
	uint32_t np = 0;
	for (uint32_t p = 0; p < c->deg; p++)
		np += c->nb[p].partner;
	if (np < c->r.t)
		return fl_fail(why, whylen, FL_EAUTH,
		               "secagg: only %u neighbours sent shares, fewer than the threshold "
		               "%u: leaving the round",
		               np, c->r.t);
	uint32_t m = c->r.mod_bits;
	uint32_t lim = m == 32 ? 0 : (1u << m);
	for (uint64_t e = 0; lim && e < c->r.dim; e++)
		if (x[e] >= lim)
			return fl_fail(why, whylen, FL_EINVAL,
			               "secagg input element %llu = %u does not fit in %u bits",
			               (unsigned long long)e, x[e], m);
	/* scratch for the masked values: allocated once per round, wiped and
	 * freed before return (a client holds no dim-sized state after this) */
	uint32_t *acc = malloc(c->r.dim * sizeof *acc);
	if (!acc)
		return FL_ENOMEM;
	memcpy(acc, x, c->r.dim * sizeof *x);
	int rc = prg_apply(&c->cr, c->b, 0, acc, c->r.dim);
	for (uint32_t p = 0; p < c->deg && rc == 0; p++) {
		cl_nb *nb = &c->nb[p];
		if (nb->partner)
			rc = prg_apply(&c->cr, nb->seed, c->index > nb->idx, acc, c->r.dim);
	}
	if (rc == 0)
		sa_pack(acc, c->r.dim, m, out);
	OPENSSL_cleanse(acc, c->r.dim * sizeof *acc);
	free(acc);
	if (rc)
		return crypto_fail(why, whylen, "secagg masking");
	c->state = CL_MASKED;
	return 0;
}

int sa_client_mask(sa_client *c, const uint32_t *x, const uint8_t **packed, size_t *len, char *why,
                   size_t whylen)
{
	size_t pl = sa_packed_len(&c->r);
	if (c->state == CL_RECEIVED && !c->packed && !(c->packed = malloc(pl)))
		return FL_ENOMEM;
	int rc = sa_client_mask_into(c, x, c->packed, pl, why, whylen);
	if (rc == 0) {
		*packed = c->packed;
		*len = pl;
	}
	return rc;
}

int sa_client_reveal(sa_client *c, const uint32_t *survivors, uint32_t ns, const uint32_t *dropped,
                     uint32_t nd, const sa_reveal **out, uint32_t *nout, char *why, size_t whylen)
{
	if (c->state != CL_MASKED)
		return fl_fail(why, whylen, FL_ESTATE,
		               c->state < CL_MASKED ? "secagg unmask request before masking"
		                                    : "secagg shares already revealed");
	if ((uint64_t)ns + nd > c->deg)
		return fl_fail(why, whylen, FL_EPROTO,
		               "secagg unmask request names %llu nodes, more than the %u "
		               "neighbours",
		               (unsigned long long)ns + nd, c->deg);
	if ((ns && !survivors) || (nd && !dropped))
		return fl_fail(why, whylen, FL_EINVAL, "secagg unmask lists are NULL");
	/* 0 = not named, 1 = survivor, 2 = dropped */
	uint8_t *kind = calloc(c->deg ? c->deg : 1, 1);
	int rc = 0;
	if (!kind)
		return FL_ENOMEM;
	for (uint32_t l = 0; l < ns + nd; l++) {
		int surv = l < ns;
		uint32_t u = surv ? survivors[l] : dropped[l - ns];
		long p = cl_pos(c, u);
		if (p < 0) {
			rc = fl_fail(
			    why, whylen, FL_EPROTO,
			    "secagg unmask request names node %u, which is not a neighbour", u);
			goto out;
		}
		if (kind[p]) {
			rc = fl_fail(
			    why, whylen, FL_EPROTO, "secagg unmask request names node %u twice%s",
			    u, kind[p] != (surv ? 1 : 2) ? " (as survivor and as dropped)" : "");
			goto out;
		}
		if (!c->nb[p].partner) {
			/* the server routes shares only between partners: naming
			 * another node would only inflate the survivor count */
			rc = fl_fail(why, whylen, FL_EPROTO,
			             "secagg unmask request names node %u as %s, but it never "
			             "exchanged shares with this node",
			             u, surv ? "survivor" : "dropped");
			goto out;
		}
		kind[p] = surv ? 1 : 2;
	}
	if (ns < c->r.t) {
		rc = fl_fail(why, whylen, FL_EAUTH,
		             "secagg: only %u surviving neighbours, fewer than the threshold %u: "
		             "revealing nothing",
		             ns, c->r.t);
		goto out;
	}
	uint32_t nr = 0;
	for (uint32_t p = 0; p < c->deg; p++) {
		if (!kind[p] || !c->nb[p].have_share)
			continue;
		sa_reveal *v = &c->rv[nr++];
		v->from = c->index;
		v->owner = c->nb[p].idx;
		v->is_mask_key = kind[p] == 2;
		share_store(kind[p] == 2 ? c->nb[p].sh_sk : c->nb[p].sh_b, v->share);
	}
	c->state = CL_REVEALED;
	*out = c->rv;
	*nout = nr;
out:
	free(kind);
	return rc;
}

/* ---- server ---- */

enum { SV_KEYS, SV_SHARES, SV_MASKED, SV_REVEALS, SV_DONE };

typedef struct sv_node {
	uint8_t advertised, shared, masked, revealed, liar;
	char id[SA_MAX_NODE_ID + 1];
	uint8_t enc_pk[SA_KEY_LEN], mask_pk[SA_KEY_LEN];
	uint8_t *sig, *cert;
	size_t sig_len, cert_len;
	uint8_t *ct;      /* deg * SA_SHARE_CT_LEN: share to nb[p] */
	uint8_t *sent;    /* deg flags: a share to nb[p] arrived */
	uint8_t *partner; /* deg flags: shares went both ways with nb[p] */
	uint8_t *rv;      /* deg * SA_SHARE_LEN: revealed share about nb[p] */
	uint8_t *rv_kind; /* deg: 0 none, 1 b, 2 mask key */
} sv_node;

struct sa_server {
	sa_round r;
	uint32_t deg, phase;
	sa_crypto cr;
	uint32_t *nb; /* n * deg, row i = i's neighbours ascending */
	sv_node *node;
	uint32_t *sum; /* running sum of masked vectors, mod 2^32 */
	/* scratch for outputs */
	sa_keys *roster;
	sa_share *route;
	uint32_t *req; /* 2 * deg */
	uint32_t *surv, nsurv;
	uint32_t *liars, nliars;
};

void sa_server_free(sa_server *s)
{
	if (!s)
		return;
	if (s->node)
		for (uint32_t i = 0; i < s->r.n; i++) {
			sv_node *v = &s->node[i];
			free(v->sig);
			free(v->cert);
			free(v->ct);
			free(v->sent);
			free(v->partner);
			free(v->rv);
			free(v->rv_kind);
		}
	free(s->node);
	free(s->nb);
	free(s->sum);
	free(s->roster);
	free(s->route);
	free(s->req);
	free(s->surv);
	free(s->liars);
	crypto_fini(&s->cr);
	free(s);
}

int sa_server_new(const sa_round *r, sa_server **out, char *why, size_t whylen)
{
	int rc = sa_round_check(r, why, whylen);
	if (rc)
		return rc;
	sa_server *s = calloc(1, sizeof *s);
	uint32_t *perm = NULL;
	if (!s)
		return FL_ENOMEM;
	s->r = *r;
	s->deg = sa_degree(r);
	rc = crypto_init(&s->cr);
	if (rc) {
		rc = rc == FL_ENOMEM ? rc : crypto_fail(why, whylen, "secagg crypto setup");
		goto out;
	}
	s->nb = malloc((size_t)r->n * s->deg * sizeof *s->nb);
	s->node = calloc(r->n, sizeof *s->node);
	s->sum = calloc(r->dim, sizeof *s->sum);
	s->roster = calloc(s->deg, sizeof *s->roster);
	s->route = calloc(s->deg, sizeof *s->route);
	s->req = malloc(2 * (size_t)s->deg * sizeof *s->req);
	s->surv = malloc((size_t)r->n * sizeof *s->surv);
	s->liars = malloc((size_t)r->n * sizeof *s->liars);
	perm = malloc(2 * (size_t)r->n * sizeof *perm);
	if (!s->nb || !s->node || !s->sum || !s->roster || !s->route || !s->req || !s->surv ||
	    !s->liars || !perm) {
		rc = FL_ENOMEM;
		goto out;
	}
	rc = graph_perm(r, perm, perm + r->n);
	if (rc) {
		rc = crypto_fail(why, whylen, "secagg graph");
		goto out;
	}
	for (uint32_t i = 0; i < r->n; i++)
		graph_nb(r, perm, perm + r->n, i, s->nb + (size_t)i * s->deg);
	*out = s;
	s = NULL;
out:
	free(perm);
	sa_server_free(s);
	return rc;
}

static const uint32_t *sv_nb(const sa_server *s, uint32_t i)
{
	return s->nb + (size_t)i * s->deg;
}

static long sv_pos(const sa_server *s, uint32_t i, uint32_t j)
{
	return find_u32(sv_nb(s, i), s->deg, j);
}

int sa_server_add_keys(sa_server *s, const sa_keys *k, char *why, size_t whylen)
{
	if (s->phase != SV_KEYS)
		return fl_fail(why, whylen, FL_ESTATE, "secagg keys after the key phase closed");
	if (!k)
		return fl_fail(why, whylen, FL_EINVAL, "secagg keys are NULL");
	if (k->index >= s->r.n)
		return fl_fail(why, whylen, FL_EPROTO, "secagg keys for index %u, n is %u",
		               k->index, s->r.n);
	sv_node *v = &s->node[k->index];
	if (v->advertised)
		return fl_fail(why, whylen, FL_EPROTO, "secagg keys for index %u sent twice",
		               k->index);
	size_t idl = k->node_id ? strnlen(k->node_id, SA_MAX_NODE_ID + 1) : 0;
	if (!tlsctx_valid_name(k->node_id, idl))
		return fl_fail(why, whylen, FL_EPROTO, "secagg keys of index %u: invalid node id",
		               k->index);
	if (!k->sig || k->sig_len == 0 || k->sig_len > SA_MAX_SIG)
		return fl_fail(why, whylen, FL_EPROTO,
		               "secagg keys of index %u: signature length %zu not in 1..%u",
		               k->index, k->sig_len, SA_MAX_SIG);
	if (!k->cert_der || k->cert_len == 0 || k->cert_len > SA_MAX_CERT)
		return fl_fail(why, whylen, FL_EPROTO,
		               "secagg keys of index %u: certificate length %zu not in 1..%u",
		               k->index, k->cert_len, SA_MAX_CERT);
	v->sig = malloc(k->sig_len);
	v->cert = malloc(k->cert_len);
	if (!v->sig || !v->cert) {
		free(v->sig);
		free(v->cert);
		v->sig = v->cert = NULL;
		return FL_ENOMEM;
	}
	memcpy(v->sig, k->sig, k->sig_len);
	memcpy(v->cert, k->cert_der, k->cert_len);
	v->sig_len = k->sig_len;
	v->cert_len = k->cert_len;
	memcpy(v->id, k->node_id, idl);
	v->id[idl] = '\0';
	memcpy(v->enc_pk, k->enc_pk, SA_KEY_LEN);
	memcpy(v->mask_pk, k->mask_pk, SA_KEY_LEN);
	v->advertised = 1;
	return 0;
}

int sa_server_roster(sa_server *s, uint32_t i, const sa_keys **out, uint32_t *n)
{
	if (s->phase > SV_SHARES)
		return FL_ESTATE;
	if (i >= s->r.n || !s->node[i].advertised)
		return FL_ENOENT;
	s->phase = SV_SHARES;
	uint32_t c = 0;
	const uint32_t *nb = sv_nb(s, i);
	for (uint32_t p = 0; p < s->deg; p++) {
		const sv_node *v = &s->node[nb[p]];
		if (!v->advertised)
			continue;
		sa_keys *k = &s->roster[c++];
		k->index = nb[p];
		k->node_id = v->id;
		memcpy(k->enc_pk, v->enc_pk, SA_KEY_LEN);
		memcpy(k->mask_pk, v->mask_pk, SA_KEY_LEN);
		k->sig = v->sig;
		k->sig_len = v->sig_len;
		k->cert_der = v->cert;
		k->cert_len = v->cert_len;
	}
	*out = s->roster;
	*n = c;
	return 0;
}

int sa_server_add_shares(sa_server *s, uint32_t from, const sa_share *sh, uint32_t n, char *why,
                         size_t whylen)
{
	if (s->phase == SV_KEYS)
		s->phase = SV_SHARES;
	if (s->phase != SV_SHARES)
		return fl_fail(why, whylen, FL_ESTATE,
		               "secagg shares after the share phase closed");
	if (from >= s->r.n || !s->node[from].advertised)
		return fl_fail(why, whylen, FL_EPROTO,
		               "secagg shares from index %u, which did not advertise keys", from);
	sv_node *v = &s->node[from];
	if (v->shared)
		return fl_fail(why, whylen, FL_EPROTO, "secagg shares from index %u sent twice",
		               from);
	if (n > s->deg || (n && !sh))
		return fl_fail(why, whylen, FL_EPROTO,
		               "secagg: %u shares from index %u, more than its %u neighbours", n,
		               from, s->deg);
	uint8_t *sent = calloc(s->deg, 1);
	if (!sent)
		return FL_ENOMEM;
	int rc = 0;
	for (uint32_t e = 0; e < n; e++) {
		long p = sv_pos(s, from, sh[e].to);
		if (sh[e].from != from)
			rc = fl_fail(why, whylen, FL_EPROTO,
			             "secagg share from index %u claims to be from %u", from,
			             sh[e].from);
		else if (p < 0)
			rc = fl_fail(why, whylen, FL_EPROTO,
			             "secagg share from index %u to %u, not a neighbour", from,
			             sh[e].to);
		else if (!s->node[sh[e].to].advertised)
			rc = fl_fail(why, whylen, FL_EPROTO,
			             "secagg share from index %u to %u, which did not advertise",
			             from, sh[e].to);
		else if (sent[p])
			rc = fl_fail(why, whylen, FL_EPROTO,
			             "secagg shares from index %u name receiver %u twice", from,
			             sh[e].to);
		else if (!sh[e].ct || sh[e].ct_len != SA_SHARE_CT_LEN)
			rc = fl_fail(why, whylen, FL_EPROTO,
			             "secagg share from index %u to %u of %zu bytes, not %u", from,
			             sh[e].to, sh[e].ct_len, SA_SHARE_CT_LEN);
		if (rc)
			goto out;
		sent[p] = 1;
	}
	v->ct = malloc((size_t)s->deg * SA_SHARE_CT_LEN);
	if (!v->ct) {
		rc = FL_ENOMEM;
		goto out;
	}
	for (uint32_t e = 0; e < n; e++) {
		long p = sv_pos(s, from, sh[e].to);
		memcpy(v->ct + (size_t)p * SA_SHARE_CT_LEN, sh[e].ct, SA_SHARE_CT_LEN);
	}
	v->sent = sent;
	sent = NULL;
	v->shared = 1;
out:
	free(sent);
	return rc;
}

/* Closes phase 2: partner flags from the shares sent both ways. */
static int sv_close_shares(sa_server *s)
{
	for (uint32_t i = 0; i < s->r.n; i++) {
		sv_node *v = &s->node[i];
		if (!v->shared)
			continue;
		v->partner = calloc(s->deg, 1);
		if (!v->partner)
			return FL_ENOMEM;
		const uint32_t *nb = sv_nb(s, i);
		for (uint32_t p = 0; p < s->deg; p++) {
			const sv_node *w = &s->node[nb[p]];
			if (!v->sent[p] || !w->shared)
				continue;
			long q = sv_pos(s, nb[p], i);
			v->partner[p] = w->sent[q];
		}
	}
	s->phase = SV_MASKED;
	return 0;
}

int sa_server_route(sa_server *s, uint32_t i, const sa_share **out, uint32_t *n)
{
	if (s->phase < SV_MASKED) {
		int rc = sv_close_shares(s);
		if (rc)
			return rc;
	}
	if (s->phase != SV_MASKED)
		return FL_ESTATE;
	if (i >= s->r.n)
		return FL_ENOENT;
	uint32_t c = 0;
	const sv_node *v = &s->node[i];
	const uint32_t *nb = sv_nb(s, i);
	for (uint32_t p = 0; v->partner && p < s->deg; p++) {
		if (!v->partner[p])
			continue;
		uint32_t j = nb[p];
		long q = sv_pos(s, j, i);
		s->route[c++] = (sa_share){.from = j,
		                           .to = i,
		                           .ct = s->node[j].ct + (size_t)q * SA_SHARE_CT_LEN,
		                           .ct_len = SA_SHARE_CT_LEN};
	}
	*out = s->route;
	*n = c;
	return 0;
}

static uint32_t sv_npartners(const sa_server *s, uint32_t i)
{
	uint32_t c = 0;
	const sv_node *v = &s->node[i];
	for (uint32_t p = 0; v->partner && p < s->deg; p++)
		c += v->partner[p];
	return c;
}

int sa_server_add_masked(sa_server *s, uint32_t i, const uint8_t *packed, size_t len, char *why,
                         size_t whylen)
{
	if (s->phase < SV_MASKED) {
		int rc = sv_close_shares(s);
		if (rc)
			return rc;
	}
	if (s->phase != SV_MASKED)
		return fl_fail(why, whylen, FL_ESTATE,
		               "secagg masked input after the masking phase closed");
	if (i >= s->r.n)
		return fl_fail(why, whylen, FL_EPROTO, "secagg masked input for index %u, n is %u",
		               i, s->r.n);
	sv_node *v = &s->node[i];
	if (v->masked)
		return fl_fail(why, whylen, FL_EPROTO,
		               "secagg masked input from index %u sent twice", i);
	uint32_t np = sv_npartners(s, i);
	if (np < s->r.t)
		return fl_fail(why, whylen, FL_EPROTO,
		               "secagg masked input from index %u, which has %u masking partners, "
		               "fewer than the threshold %u",
		               i, np, s->r.t);
	size_t want = sa_packed_len(&s->r);
	if (!packed || len != want)
		return fl_fail(why, whylen, FL_EPROTO,
		               "secagg masked input from index %u has %zu bytes, not %zu", i, len,
		               want);
	/* the padding bits first, so that a refused vector leaves the sum alone */
	uint32_t padbits = (uint32_t)(want * 8 - s->r.dim * s->r.mod_bits);
	if (padbits && (packed[want - 1] >> (8 - padbits)) != 0)
		return fl_fail(why, whylen, FL_EPROTO,
		               "secagg masked input from index %u: padding bits are not zero", i);
	if (unpack_op(packed, s->r.dim, s->r.mod_bits, s->sum, 1) != 0)
		return fl_fail(why, whylen, FL_EPROTO,
		               "secagg masked input from index %u is not canonical", i);
	v->masked = 1;
	return 0;
}

static void sv_close_masked(sa_server *s)
{
	s->nsurv = 0;
	for (uint32_t i = 0; i < s->r.n; i++)
		if (s->node[i].masked)
			s->surv[s->nsurv++] = i;
	s->phase = SV_REVEALS;
}

void sa_server_survivors(const sa_server *s, const uint32_t **idx, uint32_t *n)
{
	*idx = s->surv;
	*n = s->phase >= SV_REVEALS ? s->nsurv : 0;
}

int sa_server_unmask_request(sa_server *s, uint32_t i, const uint32_t **survivors, uint32_t *ns,
                             const uint32_t **dropped, uint32_t *nd)
{
	if (s->phase == SV_MASKED)
		sv_close_masked(s);
	if (s->phase != SV_REVEALS)
		return FL_ESTATE;
	if (i >= s->r.n || !s->node[i].masked)
		return FL_ENOENT;
	const sv_node *v = &s->node[i];
	const uint32_t *nb = sv_nb(s, i);
	uint32_t a = 0, b = 0;
	for (uint32_t p = 0; p < s->deg; p++)
		if (v->partner[p] && s->node[nb[p]].masked)
			s->req[a++] = nb[p];
	for (uint32_t p = 0; p < s->deg; p++)
		if (v->partner[p] && !s->node[nb[p]].masked)
			s->req[s->deg + b++] = nb[p];
	*survivors = s->req;
	*ns = a;
	*dropped = s->req + s->deg;
	*nd = b;
	return 0;
}

int sa_server_add_reveals(sa_server *s, uint32_t from, const sa_reveal *rv, uint32_t n, char *why,
                          size_t whylen)
{
	if (s->phase == SV_MASKED)
		sv_close_masked(s);
	if (s->phase != SV_REVEALS)
		return fl_fail(why, whylen, FL_ESTATE, "secagg reveals outside the unmask phase");
	if (from >= s->r.n || !s->node[from].masked)
		return fl_fail(why, whylen, FL_EPROTO,
		               "secagg reveals from index %u, which is not a survivor", from);
	sv_node *v = &s->node[from];
	if (v->revealed)
		return fl_fail(why, whylen, FL_EPROTO, "secagg reveals from index %u sent twice",
		               from);
	if (n > s->deg || (n && !rv))
		return fl_fail(why, whylen, FL_EPROTO,
		               "secagg: %u reveals from index %u, more than its %u neighbours", n,
		               from, s->deg);
	uint8_t *kind = calloc(s->deg, 1);
	uint8_t *buf = malloc((size_t)s->deg * SA_SHARE_LEN);
	int rc = 0;
	if (!kind || !buf) {
		rc = FL_ENOMEM;
		goto out;
	}
	const uint32_t *nb = sv_nb(s, from);
	for (uint32_t e = 0; e < n; e++) {
		const sa_reveal *x = &rv[e];
		long p = sv_pos(s, from, x->owner);
		uint64_t tmp[SA_WORDS];
		if (x->from != from)
			rc = fl_fail(why, whylen, FL_EPROTO,
			             "secagg reveal from index %u claims to be from %u", from,
			             x->from);
		else if (p < 0 || !v->partner[p])
			rc = fl_fail(
			    why, whylen, FL_EPROTO,
			    "secagg reveal from index %u about %u, which it was not asked about",
			    from, x->owner);
		else if (x->is_mask_key > 1 || (x->is_mask_key != 0) != !s->node[nb[p]].masked)
			rc = fl_fail(
			    why, whylen, FL_EPROTO,
			    "secagg reveal from index %u about %u is of the wrong kind (%s "
			    "asked)",
			    from, x->owner, s->node[nb[p]].masked ? "self-mask seed" : "mask key");
		else if (kind[p])
			rc = fl_fail(why, whylen, FL_EPROTO,
			             "secagg reveals from index %u name owner %u twice", from,
			             x->owner);
		else if (share_load(x->share, tmp) != 0)
			rc = fl_fail(
			    why, whylen, FL_EPROTO,
			    "secagg reveal from index %u about %u holds a value outside the "
			    "field",
			    from, x->owner);
		if (rc)
			goto out;
		kind[p] = x->is_mask_key ? 2 : 1;
		memcpy(buf + (size_t)p * SA_SHARE_LEN, x->share, SA_SHARE_LEN);
	}
	v->rv = buf;
	v->rv_kind = kind;
	buf = NULL;
	kind = NULL;
	v->revealed = 1;
out:
	free(kind);
	free(buf);
	return rc;
}

/* Agreement of every point with the polynomial through the t points
 * (xs[sel], ys[sel]): ok[h] = 1 when point h lies on it. Returns the count,
 * or 0 on a failure. Leaves the selected points in sx, sy and their
 * barycentric weights in w (for the value at 0). O(t^2 + nsh * t). */
static uint32_t sv_agree(const uint64_t *xs, const uint64_t *ys, uint32_t nsh, const uint32_t *sel,
                         uint32_t t, uint64_t *sx, uint64_t *sy, uint64_t *w, uint64_t *scratch,
                         uint8_t *ok)
{
	uint32_t c = 0;
	for (uint32_t a = 0; a < t; a++) {
		sx[a] = xs[sel[a]];
		memcpy(sy + (size_t)a * SA_WORDS, ys + (size_t)sel[a] * SA_WORDS,
		       SA_WORDS * sizeof *sy);
	}
	if (shamir_bary_weights(sx, t, w, scratch) != 0)
		return 0;
	for (uint32_t h = 0; h < nsh; h++) {
		uint64_t v[SA_WORDS];
		ok[h] = shamir_bary_eval(sx, w, sy, t, SA_WORDS, xs[h], v, scratch) == 0 &&
		        memcmp(v, ys + (size_t)h * SA_WORDS, sizeof v) == 0;
		c += ok[h];
	}
	return c;
}

/* Reconstructs owner u's secret (kind 1: b, 2: mask key) from the reveals.
 * On success writes the 32 secret bytes. Marks liars. */
static int sv_recover(sa_server *s, uint32_t u, int kind, uint8_t secret[32], char *why,
                      size_t whylen)
{
	uint32_t deg = s->deg, t = s->r.t, nsh = 0;
	const uint32_t *nb = sv_nb(s, u);
	uint64_t *xs = malloc(deg * sizeof *xs), *ys = malloc((size_t)deg * SA_WORDS * sizeof *ys);
	uint64_t *sx = malloc(deg * sizeof *sx), *sy = malloc((size_t)deg * SA_WORDS * sizeof *sy);
	uint32_t *who = malloc(deg * sizeof *who), *sel = malloc(deg * sizeof *sel);
	uint8_t *ok = malloc(deg), *best_ok = malloc(deg);
	uint64_t *bw = malloc(deg * sizeof *bw);
	uint64_t *scratch = malloc(3 * (size_t)deg * sizeof *scratch);
	uint64_t f[SA_WORDS];
	int rc = 0;
	if (!xs || !ys || !sx || !sy || !who || !sel || !ok || !best_ok || !bw || !scratch) {
		rc = FL_ENOMEM;
		goto out;
	}
	for (uint32_t p = 0; p < deg; p++) {
		uint32_t j = nb[p];
		const sv_node *w = &s->node[j];
		if (!w->revealed || w->liar)
			continue;
		long q = sv_pos(s, j, u);
		if (w->rv_kind[q] != kind)
			continue;
		xs[nsh] = (uint64_t)j + 1;
		who[nsh] = j;
		if (share_load(w->rv + (size_t)q * SA_SHARE_LEN, ys + (size_t)nsh * SA_WORDS))
			continue; /* checked on arrival; cannot happen */
		nsh++;
	}
	const char *what = kind == 1 ? "self-mask seed" : "mask key";
	if (nsh < t) {
		rc =
		    fl_fail(why, whylen, FL_ESTATE,
		            "secagg: the %s of node %u has %u shares, fewer than the threshold %u: "
		            "round abandoned",
		            what, u, nsh, t);
		goto out;
	}
	/* candidate subsets: the first t, then windows, then pseudo-random */
	rng g;
	rng_seed(&g, ((uint64_t)u << 1) | (uint64_t)(kind - 1));
	uint32_t best = 0, found = 0;
	for (uint32_t tr = 0; tr < MAX_TRIES && !found; tr++) {
		if (tr < nsh) {
			for (uint32_t a = 0; a < t; a++)
				sel[a] = (tr + a) % nsh;
		} else {
			for (uint32_t a = 0; a < nsh; a++)
				sel[a] = a;
			for (uint32_t a = 0; a < t; a++) { /* partial Fisher-Yates */
				uint32_t b = a + (uint32_t)rng_below(&g, nsh - a);
				uint32_t tmp = sel[a];
				sel[a] = sel[b];
				sel[b] = tmp;
			}
			if (nsh == t)
				break;
		}
		uint32_t agree = sv_agree(xs, ys, nsh, sel, t, sx, sy, bw, scratch, ok);
		/* unique decoding: wrong shares e = nsh - agree with 2e <= nsh - t */
		if (2 * (nsh - agree) > nsh - t)
			continue;
		if (agree < t || shamir_bary_eval(sx, bw, sy, t, SA_WORDS, 0, f, scratch) != 0 ||
		    field_to_secret(f, secret) != 0)
			continue;
		if (kind == 2) {
			uint8_t pk[32];
			EVP_PKEY *k =
			    EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, secret, 32);
			size_t pl = 32;
			int match = k && EVP_PKEY_get_raw_public_key(k, pk, &pl) == 1 &&
			            memcmp(pk, s->node[u].mask_pk, 32) == 0;
			EVP_PKEY_free(k);
			if (!match)
				continue;
		}
		best = agree;
		memcpy(best_ok, ok, nsh);
		found = 1;
	}
	if (!found) {
		rc = fl_fail(why, whylen, FL_EPROTO,
		             "secagg: the %u shares of node %u's %s are inconsistent and no "
		             "liar can be singled out (a majority beyond the threshold %u is "
		             "needed): round abandoned",
		             nsh, u, what, t);
		goto out;
	}
	for (uint32_t h = 0; h < nsh && best < nsh; h++)
		if (!best_ok[h] && !s->node[who[h]].liar) {
			s->node[who[h]].liar = 1;
			s->liars[s->nliars++] = who[h];
		}
out:
	OPENSSL_cleanse(f, sizeof f);
	free(xs);
	free(ys);
	free(sx);
	free(sy);
	free(who);
	free(sel);
	free(ok);
	free(best_ok);
	free(bw);
	free(scratch);
	return rc;
}

int sa_server_finish(sa_server *s, uint32_t *sum, char *why, size_t whylen)
{
	if (s->phase == SV_MASKED)
		sv_close_masked(s);
	if (s->phase != SV_REVEALS)
		return fl_fail(why, whylen, FL_ESTATE,
		               s->phase == SV_DONE ? "secagg round already finished"
		                                   : "secagg finish before the unmask phase");
	s->phase = SV_DONE;
	if (s->nsurv < s->r.t)
		return fl_fail(why, whylen, FL_ESTATE,
		               "secagg: %u survivors, fewer than the threshold %u: round abandoned",
		               s->nsurv, s->r.t);
	uint8_t sec[32], sk[32];
	int rc = 0;
	for (uint32_t a = 0; a < s->nsurv && rc == 0; a++) {
		uint32_t u = s->surv[a];
		rc = sv_recover(s, u, 1, sec, why, whylen);
		if (rc == 0)
			rc = prg_apply(&s->cr, sec, 1, s->sum, s->r.dim);
	}
	for (uint32_t u = 0; u < s->r.n && rc == 0; u++) {
		const sv_node *v = &s->node[u];
		if (v->masked || !v->partner)
			continue;
		const uint32_t *nb = sv_nb(s, u);
		int needed = 0;
		for (uint32_t p = 0; p < s->deg; p++)
			needed |= v->partner[p] && s->node[nb[p]].masked;
		if (!needed)
			continue;
		rc = sv_recover(s, u, 2, sk, why, whylen);
		for (uint32_t p = 0; p < s->deg && rc == 0; p++) {
			uint32_t w = nb[p];
			if (!v->partner[p] || !s->node[w].masked)
				continue;
			/* w added +PRG(s_wu) when w < u, -PRG when w > u: undo it */
			rc =
			    pair_key(&s->cr, INFO_MASK, s->r.round_id, sk, s->node[w].mask_pk, sec);
			if (rc == 0)
				rc = prg_apply(&s->cr, sec, w < u, s->sum, s->r.dim);
			if (rc)
				rc = crypto_fail(why, whylen, "secagg mask removal");
		}
	}
	OPENSSL_cleanse(sec, sizeof sec);
	OPENSSL_cleanse(sk, sizeof sk);
	if (s->nliars)
		qsort(s->liars, s->nliars, sizeof *s->liars, cmp_u32);
	if (rc)
		return rc;
	uint32_t mask = s->r.mod_bits == 32 ? 0xffffffffu : ((1u << s->r.mod_bits) - 1);
	for (uint64_t e = 0; e < s->r.dim; e++)
		sum[e] = s->sum[e] & mask;
	return 0;
}

void sa_server_liars(const sa_server *s, const uint32_t **idx, uint32_t *n)
{
	*idx = s->liars;
	*n = s->nliars;
}
