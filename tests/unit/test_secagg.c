/* Unit tests for secagg: the primitives against published vectors (RFC 7748
 * X25519, RFC 5869 HKDF, GCM spec / NIST CAVP AES-256-GCM, NIST SP 800-38A
 * F.5.5 AES-256-CTR, the PRG against AES-256-ECB of the counter blocks),
 * packing, the graph, and whole rounds in one process: n = 8..50, dropouts
 * at every phase, at the threshold and one beyond, nodes that lie in their
 * reveals, a coordinator that swaps keys or certificates, tampered shares,
 * the masked vectors' uniformity, and the result bit for bit equal to the
 * plain sum. */
#include "testutil.h"

#include "err.h"
#include "secagg.h"
#include "sha.h"
#include "testpki.h"

#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void hex(const char *s, uint8_t *out, size_t n)
{
	assert_int_equal(strlen(s), 2 * n);
	assert_int_equal(hex_decode(s, out, n), 0);
}

/* ---- primitives ---- */

static void test_x25519(void **state)
{
	(void)state;
	uint8_t sk[32], pk[32], out[32], want[32];
	/* RFC 7748 5.2, first vector */
	hex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4", sk, 32);
	hex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c", pk, 32);
	hex("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552", want, 32);
	assert_int_equal(sa_x25519(sk, pk, out), 0);
	assert_memory_equal(out, want, 32);
	/* RFC 7748 6.1: both public keys from the base point, one shared key */
	uint8_t a[32], b[32], apub[32], bpub[32], base[32] = {9}, k1[32], k2[32];
	hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a", a, 32);
	hex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb", b, 32);
	assert_int_equal(sa_x25519(a, base, apub), 0);
	assert_int_equal(sa_x25519(b, base, bpub), 0);
	hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a", want, 32);
	assert_memory_equal(apub, want, 32);
	hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f", want, 32);
	assert_memory_equal(bpub, want, 32);
	hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742", want, 32);
	assert_int_equal(sa_x25519(a, bpub, k1), 0);
	assert_int_equal(sa_x25519(b, apub, k2), 0);
	assert_memory_equal(k1, want, 32);
	assert_memory_equal(k2, want, 32);
	/* a small-order point (u = 0) gives the all-zero secret: refused */
	uint8_t zero[32] = {0};
	assert_int_equal(sa_x25519(a, zero, out), FL_ECRYPTO);
}

static void test_hkdf(void **state)
{
	(void)state;
	/* RFC 5869 A.1 */
	uint8_t ikm[22], salt[13], info[10], okm[42], want[42];
	memset(ikm, 0x0b, sizeof ikm);
	for (int i = 0; i < 13; i++)
		salt[i] = (uint8_t)i;
	for (int i = 0; i < 10; i++)
		info[i] = (uint8_t)(0xf0 + i);
	hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
	    want, 42);
	assert_int_equal(sa_hkdf_sha256(salt, 13, ikm, 22, info, 10, okm, 42), 0);
	assert_memory_equal(okm, want, 42);
	assert_int_equal(sa_hkdf_sha256(salt, 13, ikm, 22, info, 10, okm, 0), FL_EINVAL);
}

static void test_gcm(void **state)
{
	(void)state;
	/* GCM spec (McGrew & Viega) test case 14: AES-256, zero key/IV, one
	 * zero block */
	uint8_t key[32] = {0}, iv[12] = {0}, pt[16] = {0}, out[32], want[32], back[16];
	hex("cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919", want, 32);
	assert_int_equal(sa_gcm_seal(key, iv, NULL, 0, pt, 16, out), 0);
	assert_memory_equal(out, want, 32);
	assert_int_equal(sa_gcm_open(key, iv, NULL, 0, out, 16, back), 0);
	assert_memory_equal(back, pt, 16);
	/* NIST CAVP gcmEncryptExtIV256 (with AAD) */
	uint8_t aad[20], p2[16];
	hex("83688deb4af8007f9b713b47cfa6c73e35ea7a3aa4ecdb414dded03bf7a0fd3a", key, 32);
	hex("0b459724904e010a46901cf3", iv, 12);
	hex("794a14ccd178c8ebfd1379dc704c5e208f9d8424", aad, 20);
	hex("33d893a2114ce06fc15d55e454cf90c3", p2, 16);
	hex("cc66bee423e3fcd4c0865715e95866960fb291bd3dba94a1dfd8b286cfb97ac5", want, 32);
	assert_int_equal(sa_gcm_seal(key, iv, aad, 20, p2, 16, out), 0);
	assert_memory_equal(out, want, 32);
	assert_int_equal(sa_gcm_open(key, iv, aad, 20, out, 16, back), 0);
	assert_memory_equal(back, p2, 16);
	/* any flipped bit in ciphertext, tag or AAD fails */
	out[3] ^= 1;
	assert_int_equal(sa_gcm_open(key, iv, aad, 20, out, 16, back), FL_EAUTH);
	out[3] ^= 1;
	out[20] ^= 0x80;
	assert_int_equal(sa_gcm_open(key, iv, aad, 20, out, 16, back), FL_EAUTH);
	out[20] ^= 0x80;
	aad[0] ^= 1;
	assert_int_equal(sa_gcm_open(key, iv, aad, 20, out, 16, back), FL_EAUTH);
}

static void test_ctr_and_prg(void **state)
{
	(void)state;
	/* NIST SP 800-38A F.5.5 CTR-AES256.Encrypt */
	uint8_t key[32], iv[16], pt[64], ct[64], want[64];
	hex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4", key, 32);
	hex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff", iv, 16);
	hex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
	    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710",
	    pt, 64);
	hex("601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5"
	    "2b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6",
	    want, 64);
	assert_int_equal(sa_ctr_xor(key, iv, pt, ct, 64), 0);
	assert_memory_equal(ct, want, 64);
	/* The PRG = AES-256 of the counter blocks 0, 1, 2, ... (big-endian),
	 * words little-endian: checked against ECB on the counter blocks,
	 * across the library's internal chunk boundary (4096 words). */
	enum { NW = 3 * 4096 + 7 };
	uint32_t *w = malloc(NW * sizeof *w);
	assert_non_null(w);
	assert_int_equal(sa_prg(key, w, NW), 0);
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
	assert_non_null(c);
	assert_int_equal(EVP_EncryptInit_ex(c, EVP_aes_256_ecb(), NULL, key, NULL), 1);
	EVP_CIPHER_CTX_set_padding(c, 0);
	uint64_t blocks[] = {0, 1, 1023, 1024, 1025, 2047, 2048, 3000, NW / 4 - 1};
	for (size_t b = 0; b < sizeof blocks / sizeof *blocks; b++) {
		uint8_t ctrb[16] = {0}, ks[16];
		int ol;
		for (int i = 0; i < 8; i++)
			ctrb[15 - i] = (uint8_t)(blocks[b] >> (8 * i));
		assert_int_equal(EVP_EncryptUpdate(c, ks, &ol, ctrb, 16), 1);
		for (int j = 0; j < 4; j++) {
			uint32_t v = (uint32_t)ks[4 * j] | (uint32_t)ks[4 * j + 1] << 8 |
			             (uint32_t)ks[4 * j + 2] << 16 | (uint32_t)ks[4 * j + 3] << 24;
			assert_int_equal(w[blocks[b] * 4 + j], v);
		}
	}
	/* the tail after the last full block: the prefix of a longer stream */
	uint32_t *w2 = malloc((NW + 100) * sizeof *w2);
	assert_non_null(w2);
	assert_int_equal(sa_prg(key, w2, NW + 100), 0);
	assert_memory_equal(w, w2, NW * sizeof *w);
	EVP_CIPHER_CTX_free(c);
	free(w);
	free(w2);
}

/* ---- packing, parameters, graph ---- */

static void test_pack(void **state)
{
	(void)state;
	/* by hand: m = 3, {5, 2, 7} -> bits 101 010 111 from bit 0 -> 0xd5 0x01 */
	uint32_t x[3] = {5, 2, 7}, y[3];
	uint8_t b[2];
	sa_pack(x, 3, 3, b);
	assert_int_equal(b[0], 0xd5);
	assert_int_equal(b[1], 0x01);
	assert_int_equal(sa_unpack(b, 3, 3, y), 0);
	assert_memory_equal(x, y, sizeof x);
	b[1] |= 0x80; /* a padding bit set: not canonical */
	assert_int_equal(sa_unpack(b, 3, 3, y), FL_EPROTO);
	/* every width and a few lengths round-trip */
	uint64_t rs = 3;
	enum { D = 1003 };
	uint32_t *v = malloc(D * sizeof *v), *u = malloc(D * sizeof *u);
	uint8_t *p = malloc(D * 4 + 8);
	assert_true(v && u && p);
	for (uint32_t m = 1; m <= 32; m++) {
		for (uint64_t d = 1; d <= D; d += 167) {
			for (uint64_t e = 0; e < d; e++)
				v[e] = (uint32_t)tu_rand(&rs) &
				       (m == 32 ? 0xffffffffu : (1u << m) - 1);
			size_t len = (size_t)((d * m + 7) / 8);
			memset(p, 0xee, D * 4 + 8);
			sa_pack(v, d, m, p);
			assert_int_equal(p[len], 0xee); /* writes exactly len bytes */
			assert_int_equal(sa_unpack(p, d, m, u), 0);
			assert_memory_equal(u, v, d * sizeof *v);
			/* bit e*m+j of the string is bit j of element e */
			uint64_t e = d / 2;
			for (uint32_t j = 0; j < m; j++) {
				uint64_t bit = e * m + j;
				assert_int_equal((p[bit / 8] >> (bit % 8)) & 1, (v[e] >> j) & 1);
			}
		}
	}
	free(v);
	free(u);
	free(p);
}

static void test_params(void **state)
{
	(void)state;
	assert_int_equal(sa_mod_bits(4, 10, 1), 4 + 4 + 1);
	assert_int_equal(sa_mod_bits(4, 1000, 1), 4 + 10 + 1);
	assert_int_equal(sa_mod_bits(4, 100, 16), 4 + 11 + 1);
	assert_int_equal(sa_mod_bits(8, 1024, 1), 8 + 10 + 1);
	assert_int_equal(sa_mod_bits(8, 65536, 65536), 0); /* 8 + 32 + 1 > 32 */
	assert_int_equal(sa_mod_bits(0, 10, 1), 0);
	uint32_t k, t;
	sa_params_default(10, &k, &t);
	assert_int_equal(k, 9); /* 2*5+2 = 12 >= 9: complete */
	assert_int_equal(t, 6);
	sa_params_default(100, &k, &t);
	assert_int_equal(k, 22);
	assert_int_equal(t, 15);
	sa_params_default(1000, &k, &t);
	assert_int_equal(k, 32);
	assert_int_equal(t, 22);
	for (uint32_t n = 3; n < 3000; n += 7) {
		sa_params_default(n, &k, &t);
		sa_round r = {.n = n, .k = k, .t = t, .mod_bits = 16, .dim = 10};
		char why[200];
		assert_int_equal(sa_round_check(&r, why, sizeof why), 0);
	}
	sa_round r = {.n = 20, .k = 6, .t = 4, .mod_bits = 16, .dim = 10};
	char why[200] = "";
	assert_int_equal(sa_round_check(&r, why, sizeof why), 0);
	r.k = 5;
	assert_int_equal(sa_round_check(&r, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "k = 5"));
	r.k = 6;
	r.t = 3; /* 2t <= deg */
	assert_int_equal(sa_round_check(&r, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "threshold"));
	r.t = 7;
	assert_int_equal(sa_round_check(&r, why, sizeof why), FL_EINVAL);
	r.t = 4;
	r.mod_bits = 33;
	assert_int_equal(sa_round_check(&r, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "mod_bits"));
	r.mod_bits = 16;
	r.dim = 0;
	assert_int_equal(sa_round_check(&r, why, sizeof why), FL_EINVAL);
	r.dim = 10;
	r.n = 2;
	assert_int_equal(sa_round_check(&r, why, sizeof why), FL_EINVAL);
	r.n = 5000;
	r.k = 4999; /* complete: 5000 * 4999 edges over the cap */
	r.t = 4000;
	assert_int_equal(sa_round_check(&r, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "edges"));
}

static void test_graph(void **state)
{
	(void)state;
	sa_round r = {.n = 200, .k = 16, .t = 11, .mod_bits = 16, .dim = 1};
	for (int i = 0; i < 32; i++)
		r.graph_seed[i] = (uint8_t)(i * 7 + 1);
	uint32_t *nb = malloc((size_t)r.n * 16 * sizeof *nb), cnt;
	assert_non_null(nb);
	for (uint32_t i = 0; i < r.n; i++) {
		assert_int_equal(sa_neighbours(&r, i, nb + i * 16, &cnt), 0);
		assert_int_equal(cnt, 16);
		for (uint32_t a = 0; a < 16; a++) {
			assert_int_not_equal(nb[i * 16 + a], i);
			if (a)
				assert_true(nb[i * 16 + a] >
				            nb[i * 16 + a - 1]); /* sorted, distinct */
		}
	}
	/* symmetric */
	for (uint32_t i = 0; i < r.n; i++)
		for (uint32_t a = 0; a < 16; a++) {
			uint32_t j = nb[i * 16 + a];
			int found = 0;
			for (uint32_t b = 0; b < 16; b++)
				found |= nb[j * 16 + b] == i;
			assert_true(found);
		}
	/* connected (a cycle with chords): BFS from 0 reaches everyone */
	uint8_t seen[200] = {1};
	uint32_t queue[200] = {0}, qh = 0, qt = 1;
	while (qh < qt) {
		uint32_t i = queue[qh++];
		for (uint32_t a = 0; a < 16; a++) {
			uint32_t j = nb[i * 16 + a];
			if (!seen[j]) {
				seen[j] = 1;
				queue[qt++] = j;
			}
		}
	}
	assert_int_equal(qt, r.n);
	/* another seed, another graph; the same seed, the same graph */
	uint32_t other[16];
	r.graph_seed[0] ^= 1;
	int differs = 0;
	for (uint32_t i = 0; i < 20; i++) {
		assert_int_equal(sa_neighbours(&r, i, other, &cnt), 0);
		differs |= memcmp(other, nb + i * 16, sizeof other) != 0;
	}
	assert_true(differs);
	r.graph_seed[0] ^= 1;
	assert_int_equal(sa_neighbours(&r, 5, other, &cnt), 0);
	assert_memory_equal(other, nb + 5 * 16, sizeof other);
	/* the recomputable seed: SHA-256 of the documented bytes, computed
	 * here independently with EVP */
	const char *ids[3] = {"alpha", "b", "node-7"};
	uint8_t seed[32], want[32], msg[128];
	size_t ml = 0;
	memcpy(msg, "fedlora-secagg-v1 graph", 23);
	ml = 23;
	for (int i = 0; i < 8; i++)
		msg[ml++] = (uint8_t)(0x0102030405060708ull >> (8 * i));
	for (int i = 0; i < 3; i++) {
		uint32_t l = (uint32_t)strlen(ids[i]);
		for (int j = 0; j < 4; j++)
			msg[ml++] = (uint8_t)(l >> (8 * j));
		memcpy(msg + ml, ids[i], l);
		ml += l;
	}
	unsigned int wl = 0;
	assert_int_equal(EVP_Digest(msg, ml, want, &wl, EVP_sha256(), NULL), 1);
	assert_int_equal(sa_graph_seed(0x0102030405060708ull, ids, 3, seed), 0);
	assert_memory_equal(seed, want, 32);
	ids[1] = "c"; /* another participant list, another seed */
	assert_int_equal(sa_graph_seed(0x0102030405060708ull, ids, 3, want), 0);
	assert_true(memcmp(seed, want, 32) != 0);
	ids[1] = NULL;
	assert_int_equal(sa_graph_seed(1, ids, 3, seed), FL_EINVAL);
	/* k >= n - 1: everyone */
	sa_round c = {.n = 7, .k = 100, .t = 4, .mod_bits = 8, .dim = 1};
	assert_int_equal(sa_neighbours(&c, 3, other, &cnt), 0);
	assert_int_equal(cnt, 6);
	uint32_t all[6] = {0, 1, 2, 4, 5, 6};
	assert_memory_equal(other, all, sizeof all);
	assert_int_equal(sa_neighbours(&c, 7, other, &cnt), FL_EINVAL);
	free(nb);
}

/* ---- whole rounds ---- */

#define MAXN 50

static struct pki {
	EVP_PKEY *ca_key, *key[MAXN], *rogue_key;
	X509 *ca, *cert[MAXN], *rogue_ca, *rogue[MAXN], *server_cert;
	X509_STORE *store;
	char id[MAXN][16];
} g;

static int pki_setup(void **state)
{
	(void)state;
	g.ca_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	g.rogue_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	if (!g.ca_key || !g.rogue_key)
		return -1;
	g.ca = tp_make_cert(g.ca_key, "fedlora-test-ca", NULL, NULL, 1, NULL, NULL, 1);
	g.rogue_ca = tp_make_cert(g.rogue_key, "fedlora-test-ca", NULL, NULL, 1, NULL, NULL, 1);
	if (!g.ca || !g.rogue_ca)
		return -1;
	for (int i = 0; i < MAXN; i++) {
		snprintf(g.id[i], sizeof g.id[i], "node-%03d", i);
		g.key[i] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
		if (!g.key[i])
			return -1;
		g.cert[i] =
		    tp_make_cert(g.key[i], g.id[i], g.ca, g.ca_key, 0, "clientAuth", NULL, 100 + i);
		/* the same CN and key under a CA the federation does not trust */
		g.rogue[i] = tp_make_cert(g.key[i], g.id[i], g.rogue_ca, g.rogue_key, 0,
		                          "clientAuth", NULL, 100 + i);
		if (!g.cert[i] || !g.rogue[i])
			return -1;
	}
	/* a serverAuth certificate of the federation CA with a node's CN (what
	 * a coordinator holds): not a node certificate */
	g.server_cert = tp_make_cert(g.key[0], g.id[0], g.ca, g.ca_key, 0, "serverAuth", NULL, 99);
	g.store = X509_STORE_new();
	if (!g.server_cert || !g.store || X509_STORE_add_cert(g.store, g.ca) != 1)
		return -1;
	return 0;
}

static int pki_teardown(void **state)
{
	(void)state;
	for (int i = 0; i < MAXN; i++) {
		EVP_PKEY_free(g.key[i]);
		X509_free(g.cert[i]);
		X509_free(g.rogue[i]);
	}
	X509_free(g.server_cert);
	X509_free(g.ca);
	X509_free(g.rogue_ca);
	EVP_PKEY_free(g.ca_key);
	EVP_PKEY_free(g.rogue_key);
	X509_STORE_free(g.store);
	return 0;
}

/* Phase after which a node vanishes. */
enum { STAY, DROP_BEFORE_KEYS, DROP_AFTER_KEYS, DROP_AFTER_SHARE, DROP_AFTER_MASK };

/* Roster tampering by the coordinator (for node `victim`, the entry of
 * node `of`). */
enum {
	TAMPER_NONE,
	TAMPER_MASK_PK,
	TAMPER_ENC_PK,
	TAMPER_ROGUE_CERT,
	TAMPER_OTHER_NODE,
	TAMPER_SERVER_CERT
};

typedef struct scen {
	uint32_t n, k, t, m;
	uint64_t dim;
	uint8_t drop[MAXN];
	uint8_t lie[MAXN]; /* alters its reveals */
	int tamper, victim, of;
	int flip_to, flip_from; /* flips a ciphertext byte of from -> to (-1: none) */
	int small_x;            /* inputs are small signed levels, not uniform */
} scen;

typedef struct outcome {
	int rc;
	char why[300];
	uint32_t *sum, *plain, *masked_sum;
	uint32_t surv[MAXN], nsurv;
	uint32_t liars[MAXN], nliars;
	int client_rc[MAXN];     /* first failing client call, 0 when none */
	char victim_reason[200]; /* the victim's refusal of `of`, when any */
	char flip_reason[200];
	uint8_t *masked0; /* node 0's masked vector (packed), when it masked */
	size_t masked0_len;
} outcome;

static void scen_init(scen *s, uint32_t n, uint32_t k, uint32_t t, uint32_t m, uint64_t dim)
{
	memset(s, 0, sizeof *s);
	s->n = n;
	s->k = k;
	s->t = t;
	s->m = m;
	s->dim = dim;
	s->victim = s->of = s->flip_to = s->flip_from = -1;
}

static void outcome_free(outcome *o)
{
	free(o->sum);
	free(o->plain);
	free(o->masked_sum);
	free(o->masked0);
}

/* Runs one round of s, filling o. Checks the calls that must succeed. */
static void run_round(const scen *s, outcome *o)
{
	memset(o, 0, sizeof *o);
	sa_round r = {.round_id = 0x1234567890ull + s->n,
	              .n = s->n,
	              .k = s->k,
	              .t = s->t,
	              .mod_bits = s->m,
	              .dim = s->dim};
	for (int i = 0; i < 32; i++)
		r.graph_seed[i] = (uint8_t)(s->n * 31 + i);
	char why[300];
	sa_client *c[MAXN] = {0};
	sa_server *sv = NULL;
	uint32_t mask = s->m == 32 ? 0xffffffffu : (1u << s->m) - 1;
	uint32_t *x = malloc(s->n * s->dim * sizeof *x);
	o->sum = calloc(s->dim, sizeof *o->sum);
	o->plain = calloc(s->dim, sizeof *o->plain);
	o->masked_sum = calloc(s->dim, sizeof *o->masked_sum);
	assert_true(x && o->sum && o->plain && o->masked_sum);
	uint64_t rs = s->n * 1000003ull + s->dim;
	for (uint64_t e = 0; e < s->n * s->dim; e++) {
		if (s->small_x) /* levels in [-7, 7] as m-bit two's complement */
			x[e] = (uint32_t)((int32_t)(tu_rand(&rs) % 15) - 7) & mask;
		else
			x[e] = (uint32_t)tu_rand(&rs) & mask;
	}
	assert_int_equal(sa_server_new(&r, &sv, why, sizeof why), 0);
	uint8_t alive[MAXN];
	for (uint32_t i = 0; i < s->n; i++) {
		alive[i] = s->drop[i] != DROP_BEFORE_KEYS;
		assert_int_equal(sa_client_new(&r, i, g.id[i], &c[i], why, sizeof why), 0);
	}
	/* 1. advertise */
	for (uint32_t i = 0; i < s->n; i++) {
		if (!alive[i])
			continue;
		sa_keys k;
		assert_int_equal(
		    sa_client_advertise(c[i], g.key[i], g.cert[i], &k, why, sizeof why), 0);
		assert_int_equal(sa_server_add_keys(sv, &k, why, sizeof why), 0);
		if (s->drop[i] == DROP_AFTER_KEYS)
			alive[i] = 0;
	}
	/* 2. rosters and shares */
	uint8_t *certbuf = NULL;
	for (uint32_t i = 0; i < s->n; i++) {
		if (!alive[i])
			continue;
		const sa_keys *ro;
		uint32_t nro;
		assert_int_equal(sa_server_roster(sv, i, &ro, &nro), 0);
		sa_keys copy[MAXN];
		memcpy(copy, ro, nro * sizeof *ro);
		for (uint32_t e = 0; e < nro && (int)i == s->victim; e++) {
			if ((int)copy[e].index != s->of)
				continue;
			X509 *sub = NULL;
			switch (s->tamper) {
			case TAMPER_MASK_PK:
				copy[e].mask_pk[5] ^= 0x40; /* coordinator's own key, say */
				break;
			case TAMPER_ENC_PK:
				assert_int_equal(sa_x25519((const uint8_t[32]){1, 2, 3},
				                           (const uint8_t[32]){9}, copy[e].enc_pk),
				                 0);
				break;
			case TAMPER_ROGUE_CERT:
				sub = g.rogue[s->of];
				break;
			case TAMPER_OTHER_NODE: /* a valid certificate of another node */
				sub = g.cert[(s->of + 1) % s->n];
				break;
			case TAMPER_SERVER_CERT:
				sub = g.server_cert;
				copy[e].node_id = g.id[0];
				break;
			}
			if (sub) {
				OPENSSL_free(certbuf);
				certbuf = NULL;
				int dl = i2d_X509(sub, &certbuf);
				assert_true(dl > 0);
				copy[e].cert_der = certbuf;
				copy[e].cert_len = (size_t)dl;
			}
		}
		const sa_share *sh;
		const sa_refusal *ref;
		uint32_t nsh, nref;
		int rc = sa_client_share(c[i], copy, nro, g.store, &sh, &nsh, &ref, &nref, why,
		                         sizeof why);
		if (rc == 0 || rc == FL_EAUTH)
			for (uint32_t f = 0; f < nref; f++)
				if ((int)i == s->victim && (int)ref[f].index == s->of)
					snprintf(o->victim_reason, sizeof o->victim_reason, "%s",
					         ref[f].reason);
		if (rc) {
			o->client_rc[i] = rc;
			alive[i] = 0;
			continue;
		}
		assert_int_equal(sa_server_add_shares(sv, i, sh, nsh, why, sizeof why), 0);
		if (s->drop[i] == DROP_AFTER_SHARE)
			alive[i] = 0;
	}
	OPENSSL_free(certbuf);
	/* 3. routing, masking */
	for (uint32_t i = 0; i < s->n; i++) {
		if (!alive[i])
			continue;
		const sa_share *sh;
		uint32_t nsh;
		assert_int_equal(sa_server_route(sv, i, &sh, &nsh), 0);
		sa_share copy[MAXN];
		uint8_t ct[MAXN][SA_SHARE_CT_LEN];
		for (uint32_t e = 0; e < nsh; e++) {
			copy[e] = sh[e];
			memcpy(ct[e], sh[e].ct, SA_SHARE_CT_LEN);
			copy[e].ct = ct[e];
			if ((int)i == s->flip_to && (int)sh[e].from == s->flip_from)
				ct[e][17] ^= 4;
		}
		const sa_refusal *bad;
		uint32_t nbad;
		assert_int_equal(sa_client_receive(c[i], copy, nsh, &bad, &nbad, why, sizeof why),
		                 0);
		for (uint32_t f = 0; f < nbad; f++)
			if ((int)i == s->flip_to && (int)bad[f].index == s->flip_from)
				snprintf(o->flip_reason, sizeof o->flip_reason, "%s",
				         bad[f].reason);
		const uint8_t *packed;
		size_t len;
		int rc = sa_client_mask(c[i], x + i * s->dim, &packed, &len, why, sizeof why);
		if (rc) {
			o->client_rc[i] = rc;
			alive[i] = 0;
			continue;
		}
		assert_int_equal(len, sa_packed_len(&r));
		if (i == 0) {
			o->masked0 = malloc(len);
			memcpy(o->masked0, packed, len);
			o->masked0_len = len;
		}
		/* what an instrumented coordinator sees: sum of the masked vectors */
		uint32_t *tmp = malloc(s->dim * sizeof *tmp);
		assert_non_null(tmp);
		assert_int_equal(sa_unpack(packed, s->dim, s->m, tmp), 0);
		for (uint64_t e = 0; e < s->dim; e++)
			o->masked_sum[e] += tmp[e];
		free(tmp);
		assert_int_equal(sa_server_add_masked(sv, i, packed, len, why, sizeof why), 0);
		if (s->drop[i] == DROP_AFTER_MASK)
			alive[i] = 0;
	}
	/* 4. unmask */
	uint32_t any_survivor = 0;
	for (uint32_t i = 0; i < s->n; i++) {
		const uint32_t *su, *dr;
		uint32_t ns, nd;
		int rrc = sa_server_unmask_request(sv, i, &su, &ns, &dr, &nd);
		if (rrc == FL_ENOENT)
			continue;
		assert_int_equal(rrc, 0);
		any_survivor++;
		if (!alive[i])
			continue;
		const sa_reveal *rv;
		uint32_t nrv;
		int rc = sa_client_reveal(c[i], su, ns, dr, nd, &rv, &nrv, why, sizeof why);
		if (rc) {
			o->client_rc[i] = rc;
			continue;
		}
		sa_reveal lied[MAXN];
		memcpy(lied, rv, nrv * sizeof *rv);
		if (s->lie[i])
			for (uint32_t e = 0; e < nrv; e++)
				lied[e].share[8] ^= 0x01; /* element 1, still in the field */
		assert_int_equal(sa_server_add_reveals(sv, i, lied, nrv, why, sizeof why), 0);
	}
	const uint32_t *sidx;
	sa_server_survivors(sv, &sidx, &o->nsurv);
	memcpy(o->surv, sidx, o->nsurv * sizeof *sidx);
	for (uint32_t a = 0; a < o->nsurv; a++)
		for (uint64_t e = 0; e < s->dim; e++)
			o->plain[e] = (o->plain[e] + x[sidx[a] * s->dim + e]) & mask;
	for (uint64_t e = 0; e < s->dim; e++)
		o->masked_sum[e] &= mask;
	o->rc = sa_server_finish(sv, o->sum, o->why, sizeof o->why);
	const uint32_t *li;
	sa_server_liars(sv, &li, &o->nliars);
	memcpy(o->liars, li, o->nliars * sizeof *li);
	(void)any_survivor;
	for (uint32_t i = 0; i < s->n; i++)
		sa_client_free(c[i]);
	sa_server_free(sv);
	free(x);
}

static void expect_exact(const scen *s, const outcome *o)
{
	if (o->rc)
		fail_msg("round failed: %s (%s)", o->why, fl_errname(o->rc));
	assert_memory_equal(o->sum, o->plain, s->dim * sizeof *o->sum);
	/* the coordinator's view before unmasking is not the sum */
	assert_true(memcmp(o->masked_sum, o->plain, s->dim * sizeof *o->plain) != 0);
}

static void test_round_sizes(void **state)
{
	(void)state;
	uint32_t ns[] = {8, 13, 20, 33, 50};
	for (size_t a = 0; a < sizeof ns / sizeof *ns; a++) {
		scen s;
		uint32_t k, t;
		sa_params_default(ns[a], &k, &t);
		scen_init(&s, ns[a], k, t, ns[a] == 13 ? 32 : sa_mod_bits(4, ns[a], 1), 517);
		outcome o;
		run_round(&s, &o);
		expect_exact(&s, &o);
		assert_int_equal(o.nsurv, ns[a]);
		assert_int_equal(o.nliars, 0);
		outcome_free(&o);
	}
	/* the complete graph at n = 50 (t = 33), with a dropout and a liar */
	{
		scen s;
		outcome o;
		scen_init(&s, 50, 49, 33, 12, 200);
		s.drop[20] = DROP_AFTER_SHARE;
		s.lie[7] = 1;
		run_round(&s, &o);
		expect_exact(&s, &o);
		assert_int_equal(o.nliars, 1);
		assert_int_equal(o.liars[0], 7);
		outcome_free(&o);
	}
	/* a sparse graph with a small k */
	scen s;
	scen_init(&s, 30, 4, 3, 9, 300);
	s.small_x = 1;
	outcome o;
	run_round(&s, &o);
	expect_exact(&s, &o);
	outcome_free(&o);
}

static void test_dropouts_each_phase(void **state)
{
	(void)state;
	scen s;
	uint32_t k, t;
	sa_params_default(40, &k, &t); /* k = 2*8+2 = 18, t = 12 */
	scen_init(&s, 40, k, t, sa_mod_bits(4, 40, 3), 777);
	s.small_x = 1;
	s.drop[3] = DROP_BEFORE_KEYS;
	s.drop[11] = DROP_AFTER_KEYS;
	s.drop[17] = DROP_AFTER_SHARE;
	s.drop[25] = DROP_AFTER_SHARE;
	s.drop[30] = DROP_AFTER_MASK; /* during unmasking: masked, never reveals */
	outcome o;
	run_round(&s, &o);
	expect_exact(&s, &o);
	/* 3, 11, 17, 25 are not in the sum; 30 is */
	assert_int_equal(o.nsurv, 36);
	for (uint32_t a = 0; a < o.nsurv; a++)
		assert_true(o.surv[a] != 3 && o.surv[a] != 11 && o.surv[a] != 17 &&
		            o.surv[a] != 25);
	outcome_free(&o);
}

/* Complete graph n = 8, t = 5: each survivor needs 5 surviving neighbours
 * (to be unmasked) and each secret 5 reveals. */
static void test_threshold_masking(void **state)
{
	(void)state;
	scen s;
	outcome o;
	scen_init(&s, 8, 7, 5, 12, 400);
	s.drop[1] = s.drop[6] = DROP_AFTER_SHARE; /* 6 survivors, 5 neighbours each: at t */
	run_round(&s, &o);
	expect_exact(&s, &o);
	assert_int_equal(o.nsurv, 6);
	outcome_free(&o);
	s.drop[4] = DROP_AFTER_SHARE; /* one beyond: survivors refuse, round abandoned */
	run_round(&s, &o);
	assert_int_equal(o.rc, FL_ESTATE);
	assert_non_null(strstr(o.why, "threshold"));
	assert_non_null(strstr(o.why, "abandoned"));
	for (uint32_t i = 0; i < 8; i++)
		if (!s.drop[i])
			assert_int_equal(o.client_rc[i], FL_EAUTH);
	outcome_free(&o);
}

static void test_threshold_unmask(void **state)
{
	(void)state;
	scen s;
	outcome o;
	scen_init(&s, 8, 7, 5, 12, 400);
	s.drop[2] = s.drop[5] = DROP_AFTER_MASK; /* 6 reveal: 5 shares of some seeds */
	run_round(&s, &o);
	expect_exact(&s, &o);
	assert_int_equal(o.nsurv, 8); /* both are in the sum */
	outcome_free(&o);
	s.drop[7] = DROP_AFTER_MASK; /* 5 reveal: 4 shares of their own seeds */
	run_round(&s, &o);
	assert_int_equal(o.rc, FL_ESTATE);
	assert_non_null(strstr(o.why, "4 shares, fewer than the threshold 5"));
	outcome_free(&o);
	/* dropped before masking and during unmasking at once: 6 reveal, the
	 * seeds of the 6 have 5 shares each, 0's mask key and 3's seed 6 */
	scen_init(&s, 8, 7, 5, 12, 400);
	s.drop[0] = DROP_AFTER_SHARE;
	s.drop[3] = DROP_AFTER_MASK;
	run_round(&s, &o);
	expect_exact(&s, &o);
	outcome_free(&o);
}

static void test_liars(void **state)
{
	(void)state;
	scen s;
	outcome o;
	/* complete n = 12, t = 6: each secret gets 10 reveals, 2 liars decodable */
	scen_init(&s, 12, 11, 6, 16, 300);
	s.lie[4] = 1;
	run_round(&s, &o);
	expect_exact(&s, &o);
	assert_int_equal(o.nliars, 1);
	assert_int_equal(o.liars[0], 4);
	outcome_free(&o);
	/* two liars, and a dropped node whose mask key they lie about */
	s.lie[9] = 1;
	s.drop[7] = DROP_AFTER_SHARE;
	run_round(&s, &o);
	expect_exact(&s, &o);
	assert_int_equal(o.nliars, 2);
	assert_int_equal(o.liars[0], 4);
	assert_int_equal(o.liars[1], 9);
	outcome_free(&o);
	/* t + 1 shares and a liar: detected, not attributable -> abandoned */
	scen_init(&s, 8, 7, 5, 16, 100);
	s.drop[6] = DROP_AFTER_MASK; /* the others' seeds have 6 = t + 1 reveals */
	s.lie[1] = 1;
	run_round(&s, &o);
	assert_int_equal(o.rc, FL_EPROTO);
	assert_non_null(strstr(o.why, "inconsistent"));
	outcome_free(&o);
}

static void test_swapped_keys(void **state)
{
	(void)state;
	const int kinds[] = {TAMPER_MASK_PK, TAMPER_ENC_PK, TAMPER_ROGUE_CERT, TAMPER_OTHER_NODE,
	                     TAMPER_SERVER_CERT};
	const char *expect[] = {"signature", "signature", "federation CA", "CN", "clientAuth"};
	for (size_t a = 0; a < sizeof kinds / sizeof *kinds; a++) {
		scen s;
		outcome o;
		scen_init(&s, 10, 9, 6, 14, 200);
		s.tamper = kinds[a];
		s.victim = 2;
		s.of = kinds[a] == TAMPER_SERVER_CERT ? 0 : 7;
		run_round(&s, &o);
		if (!strstr(o.victim_reason, expect[a]))
			fail_msg("tamper %d: refusal '%s' lacks '%s'", kinds[a], o.victim_reason,
			         expect[a]);
		/* the pair does not mask with each other; the sum is still exact */
		expect_exact(&s, &o);
		outcome_free(&o);
	}
}

static void test_tampered_share(void **state)
{
	(void)state;
	scen s;
	outcome o;
	scen_init(&s, 10, 9, 6, 14, 200);
	s.flip_to = 3;
	s.flip_from = 8;
	s.drop[8] = DROP_AFTER_SHARE; /* 3 holds no usable share of 8's key */
	run_round(&s, &o);
	assert_non_null(strstr(o.flip_reason, "does not decrypt"));
	expect_exact(&s, &o);
	outcome_free(&o);
}

/* chi-square over 64 bins of 6 bits of m-bit values, from bit `shift`:
 * m - 6 for the top bits, 0 for the residues mod 64 */
static double chi2_bits(const uint32_t *v, uint64_t n, uint32_t shift)
{
	double cnt[64] = {0};
	for (uint64_t e = 0; e < n; e++)
		cnt[(v[e] >> shift) & 63] += 1;
	double exp = (double)n / 64, c = 0;
	for (int b = 0; b < 64; b++)
		c += (cnt[b] - exp) * (cnt[b] - exp) / exp;
	return c;
}

static void test_uniform(void **state)
{
	(void)state;
	scen s;
	outcome o;
	scen_init(&s, 10, 9, 6, 12, 40000);
	s.small_x = 1; /* inputs: levels in [-7, 7], far from uniform */
	run_round(&s, &o);
	expect_exact(&s, &o);
	uint32_t *v = malloc(s.dim * sizeof *v);
	assert_non_null(v);
	assert_int_equal(sa_unpack(o.masked0, s.dim, s.m, v), 0);
	/* 63 degrees of freedom: P(chi2 > 130) < 1e-6 under uniformity */
	double cm = chi2_bits(v, s.dim, s.m - 6), cr = chi2_bits(v, s.dim, 0);
	double cs = chi2_bits(o.sum, s.dim, s.m - 6), csr = chi2_bits(o.sum, s.dim, 0);
	double cms = chi2_bits(o.masked_sum, s.dim, s.m - 6);
	print_message("chi2 (63 dof): masked vector top bits %.1f, residues mod 64 %.1f; masked "
	              "sum %.1f; plain sum %.1f / %.1f\n",
	              cm, cr, cms, cs, csr);
	assert_true(cm < 130);
	assert_true(cr < 130);
	assert_true(cms < 130);
	/* the test has power: the plain sum (small signed values) fails it */
	assert_true(cs > 1000);
	assert_true(csr > 1000);
	/* the plain sum decodes as small signed integers: |sum| <= 10 * 7 */
	for (uint64_t e = 0; e < s.dim; e++) {
		int32_t val = (int32_t)(o.sum[e] << (32 - s.m)) >> (32 - s.m);
		assert_true(val >= -70 && val <= 70);
	}
	free(v);
	outcome_free(&o);
}

/* Out-of-order calls and malformed input: clear errors, state unchanged. */
static void test_bad_input(void **state)
{
	(void)state;
	sa_round r = {.round_id = 9, .n = 5, .k = 4, .t = 3, .mod_bits = 10, .dim = 33};
	char why[300];
	sa_client *c[5];
	sa_server *sv;
	assert_int_equal(sa_server_new(&r, &sv, why, sizeof why), 0);
	assert_int_equal(sa_client_new(&r, 5, "node-000", &c[0], why, sizeof why), FL_EINVAL);
	assert_int_equal(sa_client_new(&r, 0, "bad id!", &c[0], why, sizeof why), FL_EINVAL);
	sa_keys k[5];
	for (uint32_t i = 0; i < 5; i++) {
		assert_int_equal(sa_client_new(&r, i, g.id[i], &c[i], why, sizeof why), 0);
		assert_int_equal(sa_client_mask(c[i], NULL, NULL, NULL, why, sizeof why),
		                 FL_ESTATE);
	}
	/* a key that is not the certificate's */
	assert_int_equal(sa_client_advertise(c[0], g.key[1], g.cert[0], &k[0], why, sizeof why),
	                 FL_EINVAL);
	for (uint32_t i = 0; i < 5; i++) {
		assert_int_equal(
		    sa_client_advertise(c[i], g.key[i], g.cert[i], &k[i], why, sizeof why), 0);
		assert_int_equal(sa_server_add_keys(sv, &k[i], why, sizeof why), 0);
	}
	assert_int_equal(sa_client_advertise(c[0], g.key[0], g.cert[0], &k[0], why, sizeof why),
	                 FL_ESTATE);
	assert_int_equal(sa_server_add_keys(sv, &k[0], why, sizeof why), FL_EPROTO);
	assert_non_null(strstr(why, "twice"));
	sa_keys big = k[1];
	big.index = 7;
	assert_int_equal(sa_server_add_keys(sv, &big, why, sizeof why), FL_EPROTO);
	/* roster with a repeated index */
	const sa_keys *ro;
	uint32_t nro;
	assert_int_equal(sa_server_roster(sv, 0, &ro, &nro), 0);
	assert_int_equal(nro, 4);
	sa_keys dup[5];
	memcpy(dup, ro, 4 * sizeof *ro);
	dup[4] = dup[0];
	const sa_share *sh;
	const sa_refusal *ref;
	uint32_t nsh, nref;
	assert_int_equal(
	    sa_client_share(c[0], dup, 5, g.store, &sh, &nsh, &ref, &nref, why, sizeof why),
	    FL_EPROTO);
	assert_non_null(strstr(why, "twice"));
	/* oversized fields: two refused leaves 2 < t = 3, the client gives up */
	memcpy(dup, ro, 4 * sizeof *ro);
	dup[0].cert_len = SA_MAX_CERT + 1;
	dup[1].sig_len = 0;
	assert_int_equal(
	    sa_client_share(c[0], dup, 4, g.store, &sh, &nsh, &ref, &nref, why, sizeof why),
	    FL_EAUTH);
	assert_non_null(strstr(why, "only 2 of 4"));
	assert_int_equal(nref, 2);
	assert_non_null(strstr(ref[0].reason, "certificate length"));
	assert_non_null(strstr(ref[1].reason, "signature length"));
	/* one refused (node 4): shares to 1, 2, 3 */
	memcpy(dup, ro, 4 * sizeof *ro);
	dup[3].sig_len = SA_MAX_SIG + 1;
	assert_int_equal(
	    sa_client_share(c[0], dup, 4, g.store, &sh, &nsh, &ref, &nref, why, sizeof why), 0);
	assert_int_equal(nref, 1);
	assert_int_equal(ref[0].index, 4);
	assert_int_equal(nsh, 3);
	/* server: shares with a wrong sender, length, receiver */
	sa_share bad = sh[0];
	bad.from = 3;
	assert_int_equal(sa_server_add_shares(sv, 0, &bad, 1, why, sizeof why), FL_EPROTO);
	bad = sh[0];
	bad.ct_len = 10;
	assert_int_equal(sa_server_add_shares(sv, 0, &bad, 1, why, sizeof why), FL_EPROTO);
	assert_non_null(strstr(why, "10 bytes"));
	bad = sh[0];
	bad.to = 0;
	assert_int_equal(sa_server_add_shares(sv, 0, &bad, 1, why, sizeof why), FL_EPROTO);
	assert_int_equal(sa_server_add_shares(sv, 0, sh, nsh, why, sizeof why), 0);
	assert_int_equal(sa_server_add_shares(sv, 0, sh, nsh, why, sizeof why), FL_EPROTO);
	for (uint32_t i = 1; i < 5; i++) {
		assert_int_equal(sa_server_roster(sv, i, &ro, &nro), 0);
		assert_int_equal(sa_client_share(c[i], ro, nro, g.store, &sh, &nsh, &ref, &nref,
		                                 why, sizeof why),
		                 0);
		assert_int_equal(sa_server_add_shares(sv, i, sh, nsh, why, sizeof why), 0);
	}
	assert_int_equal(sa_server_add_keys(sv, &k[0], why, sizeof why), FL_ESTATE);
	/* masking: out-of-range input, wrong lengths */
	uint32_t x[33] = {0};
	x[20] = 1024;
	for (uint32_t i = 0; i < 5; i++) {
		const sa_share *rt;
		uint32_t nrt;
		const sa_refusal *bd;
		uint32_t nbd;
		assert_int_equal(sa_server_route(sv, i, &rt, &nrt), 0);
		assert_int_equal(sa_client_receive(c[i], rt, nrt, &bd, &nbd, why, sizeof why), 0);
	}
	const uint8_t *p;
	size_t len;
	assert_int_equal(sa_client_mask(c[1], x, &p, &len, why, sizeof why), FL_EINVAL);
	assert_non_null(strstr(why, "element 20"));
	x[20] = 5;
	uint8_t small[8];
	assert_int_equal(sa_client_mask_into(c[1], x, small, sizeof small, why, sizeof why),
	                 FL_EINVAL);
	assert_int_equal(sa_client_mask(c[1], x, &p, &len, why, sizeof why), 0);
	assert_int_equal(len, (33 * 10 + 7) / 8);
	assert_int_equal(sa_server_add_masked(sv, 1, p, len - 1, why, sizeof why), FL_EPROTO);
	uint8_t pad[42];
	memcpy(pad, p, len);
	pad[len - 1] |= 0x80; /* 330 bits: the top 6 bits of the last byte are padding */
	assert_int_equal(sa_server_add_masked(sv, 1, pad, len, why, sizeof why), FL_EPROTO);
	assert_non_null(strstr(why, "padding"));
	assert_int_equal(sa_server_add_masked(sv, 1, p, len, why, sizeof why), 0);
	assert_int_equal(sa_server_add_masked(sv, 1, p, len, why, sizeof why), FL_EPROTO);
	/* 0 -> 4 was never sent: 0 and 4 mask with 3 partners each (= t) */
	for (uint32_t i = 0; i < 5; i++) {
		if (i == 1)
			continue;
		assert_int_equal(sa_client_mask(c[i], x, &p, &len, why, sizeof why), 0);
		assert_int_equal(sa_server_add_masked(sv, i, p, len, why, sizeof why), 0);
	}
	/* unmask requests that a client refuses */
	const sa_reveal *rv;
	uint32_t nrv;
	uint32_t s1[3] = {2, 3, 4}, both[1] = {3}, nonnb[1] = {1};
	assert_int_equal(sa_client_reveal(c[1], s1, 3, both, 1, &rv, &nrv, why, sizeof why),
	                 FL_EPROTO);
	assert_non_null(strstr(why, "as survivor and as dropped"));
	assert_int_equal(sa_client_reveal(c[1], s1, 3, nonnb, 1, &rv, &nrv, why, sizeof why),
	                 FL_EPROTO);
	assert_non_null(strstr(why, "not a neighbour"));
	assert_int_equal(sa_client_reveal(c[1], s1, 2, NULL, 0, &rv, &nrv, why, sizeof why),
	                 FL_EAUTH);
	/* node 0 never exchanged shares with 4: 4 cannot count as its survivor */
	uint32_t s0[3] = {1, 2, 4};
	assert_int_equal(sa_client_reveal(c[0], s0, 3, NULL, 0, &rv, &nrv, why, sizeof why),
	                 FL_EPROTO);
	assert_non_null(strstr(why, "node 4 as survivor, but it never exchanged shares"));
	/* the real request, and a reveal of the wrong kind at the server */
	const uint32_t *su, *dr;
	uint32_t ns, nd;
	assert_int_equal(sa_server_unmask_request(sv, 7, &su, &ns, &dr, &nd), FL_ENOENT);
	assert_int_equal(sa_server_unmask_request(sv, 1, &su, &ns, &dr, &nd), 0);
	uint32_t su1[4], dr1[4];
	memcpy(su1, su, ns * sizeof *su);
	memcpy(dr1, dr, nd * sizeof *dr);
	assert_int_equal(sa_client_reveal(c[1], su1, ns, dr1, nd, &rv, &nrv, why, sizeof why), 0);
	assert_int_equal(sa_client_reveal(c[1], su1, ns, dr1, nd, &rv, &nrv, why, sizeof why),
	                 FL_ESTATE);
	sa_reveal w = rv[0];
	w.is_mask_key = 1;
	assert_int_equal(sa_server_add_reveals(sv, 1, &w, 1, why, sizeof why), FL_EPROTO);
	assert_non_null(strstr(why, "wrong kind"));
	w = rv[0];
	memset(w.share, 0xff, 8); /* >= p */
	assert_int_equal(sa_server_add_reveals(sv, 1, &w, 1, why, sizeof why), FL_EPROTO);
	assert_non_null(strstr(why, "outside the field"));
	assert_int_equal(sa_server_add_reveals(sv, 0, rv, nrv, why, sizeof why), FL_EPROTO);
	assert_int_equal(sa_server_add_reveals(sv, 1, rv, nrv, why, sizeof why), 0);
	uint32_t sum[33];
	/* only one survivor revealed: finish fails cleanly, and only once */
	assert_int_equal(sa_server_finish(sv, sum, why, sizeof why), FL_ESTATE);
	assert_int_equal(sa_server_finish(sv, sum, why, sizeof why), FL_ESTATE);
	assert_non_null(strstr(why, "already finished"));
	for (uint32_t i = 0; i < 5; i++)
		sa_client_free(c[i]);
	sa_server_free(sv);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_x25519),
	    cmocka_unit_test(test_hkdf),
	    cmocka_unit_test(test_gcm),
	    cmocka_unit_test(test_ctr_and_prg),
	    cmocka_unit_test(test_pack),
	    cmocka_unit_test(test_params),
	    cmocka_unit_test(test_graph),
	    cmocka_unit_test(test_round_sizes),
	    cmocka_unit_test(test_dropouts_each_phase),
	    cmocka_unit_test(test_threshold_masking),
	    cmocka_unit_test(test_threshold_unmask),
	    cmocka_unit_test(test_liars),
	    cmocka_unit_test(test_swapped_keys),
	    cmocka_unit_test(test_tampered_share),
	    cmocka_unit_test(test_uniform),
	    cmocka_unit_test(test_bad_input),
	};
	return cmocka_run_group_tests(tests, pki_setup, pki_teardown);
}
