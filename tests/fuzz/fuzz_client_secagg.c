/* fuzz_client_secagg — a hostile coordinator against the node's side of a
 * secure round (SecAggRoster, SecAggShares, SecAggUnmask, and anything
 * else it may send meanwhile).
 *
 * The node "fuzz" (key and certificate from the constants below, signed by
 * a test CA) is welcomed, then gets a fixed secure RoundStart (round 1,
 * participants "a", "fuzz", "zz", k 2, t 2, the grid for its adapter), so
 * it advertises keys and trains (synth trainer). Then the input follows: a
 * sequence of messages, each a u32le length and that many bytes, every
 * message that decodes goes to the client. State lives in a fresh
 * directory under /dev/shm (or /tmp) for every input.
 *
 * Seeds: tests/fuzz/corpus/client_secagg/. To regenerate them, build this
 * file with -DFUZZ_CLIENT_SECAGG_MAKE_SEEDS and run it with the corpus
 * directory as argument (rosters carry real signatures of "a" and "zz"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/pem.h>

#include "buf.h"
#include "client.h"
#include "log.h"
#include "quant.h"
#include "sagrid.h"
#include "secagg.h"
#include "state.h"
#include "trainer_synth.h"
#include "wire.h"

#include "fuzz_ncl.h"
#include "fuzz_seed.h"
#include "fuzz_tmpdir.h"

/* Test-only PKI (EC P-256, made once with the openssl command line; CA
 * "fuzz-ca", nodes "a", "fuzz", "zz"): constants so that seeds made
 * once keep valid signatures. */
static const char PEM_CA[] = "-----BEGIN CERTIFICATE-----\n"
                             "MIIBizCCATGgAwIBAgIUAxJYm4LpUKviycX5PeQMyEn92OcwCgYIKoZIzj0EAwIw\n"
                             "EjEQMA4GA1UEAwwHZnV6ei1jYTAgFw0yNjEyMDcyMzI4MjdaGA8yMTI2MTExMzIz\n"
                             "MjgyN1owEjEQMA4GA1UEAwwHZnV6ei1jYTBZMBMGByqGSM49AgEGCCqGSM49AwEH\n"
                             "A0IABBawRBvTOHmidWBiTgYQVHY3cO9N6qbh52tNdIits4EWBb3tPOGftUmII+HV\n"
                             "AlretW9/RitP909uePvyhyuq/w6jYzBhMB0GA1UdDgQWBBSr5LFnyQLY/F7Va4iU\n"
                             "9gEWnB6YpjAfBgNVHSMEGDAWgBSr5LFnyQLY/F7Va4iU9gEWnB6YpjAPBgNVHRMB\n"
                             "Af8EBTADAQH/MA4GA1UdDwEB/wQEAwIBBjAKBggqhkjOPQQDAgNIADBFAiEAoZSl\n"
                             "t5nvNn872PT6omVc52xRJPeRNp923e5uK2Gr41QCIEUryAxRcDFJTdsGFe0VEkFx\n"
                             "9z+8KlJtQFLu61/2WiNA\n"
                             "-----END CERTIFICATE-----\n";
#ifdef FUZZ_CLIENT_SECAGG_MAKE_SEEDS
static const char PEM_A_CRT[] = "-----BEGIN CERTIFICATE-----\n"
                                "MIIBlDCCATqgAwIBAgIUNQO9CGIBq5xX5Y5w6Q/6lm32GekwCgYIKoZIzj0EAwIw\n"
                                "EjEQMA4GA1UEAwwHZnV6ei1jYTAgFw0yNjEyMDcyMzI4MjhaGA8yMTI2MTExMzIz\n"
                                "MjgyOFowDDEKMAgGA1UEAwwBYTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABGRd\n"
                                "UMLMuBkWERyiogfCFBHkAiugbLxjeWRYcuRBe6r0H0dHTY1QtvTYlPz5hfMjDmoz\n"
                                "wNpvtN1MiQY9R7Qe5kqjcjBwMAkGA1UdEwQCMAAwDgYDVR0PAQH/BAQDAgeAMBMG\n"
                                "A1UdJQQMMAoGCCsGAQUFBwMCMB0GA1UdDgQWBBT67guvAor8ErKPcHhC5fWxN78U\n"
                                "pjAfBgNVHSMEGDAWgBSr5LFnyQLY/F7Va4iU9gEWnB6YpjAKBggqhkjOPQQDAgNI\n"
                                "ADBFAiAoGA7UX3xQP0ZCQV7dKTjDOMUPL0pQD9nuMpDtFWP8fwIhAKJiOI+U566f\n"
                                "bZN2LHGpthuQZ1micS/SEAZCMBi5gmiB\n"
                                "-----END CERTIFICATE-----\n";
static const char PEM_A_KEY[] = "-----BEGIN PRIVATE KEY-----\n"
                                "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgiJwfd4vj/l8z89vg\n"
                                "tMaUIrmozsjfcszhdjRY32uJyqChRANCAARkXVDCzLgZFhEcoqIHwhQR5AIroGy8\n"
                                "Y3lkWHLkQXuq9B9HR02NULb02JT8+YXzIw5qM8Dab7TdTIkGPUe0HuZK\n"
                                "-----END PRIVATE KEY-----\n";
static const char PEM_ZZ_CRT[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBljCCATugAwIBAgIUNQO9CGIBq5xX5Y5w6Q/6lm32GeswCgYIKoZIzj0EAwIw\n"
    "EjEQMA4GA1UEAwwHZnV6ei1jYTAgFw0yNjEyMDcyMzI4MjlaGA8yMTI2MTExMzIz\n"
    "MjgyOVowDTELMAkGA1UEAwwCenowWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQX\n"
    "MMMAaqe+VhI6IYdoLxcvifUXBCBOUifKiGnTaICDo9fV4GwkNNgZ+/sfvw5DvUt5\n"
    "Mu9ckcJSgFOqNrZywRxOo3IwcDAJBgNVHRMEAjAAMA4GA1UdDwEB/wQEAwIHgDAT\n"
    "BgNVHSUEDDAKBggrBgEFBQcDAjAdBgNVHQ4EFgQU4T9XKZul3XeBmpQ3MZvGX/oo\n"
    "ov4wHwYDVR0jBBgwFoAUq+SxZ8kC2Pxe1WuIlPYBFpwemKYwCgYIKoZIzj0EAwID\n"
    "SQAwRgIhAKwos53OT02hAH6VwsB3CrRUMsn+FjPSLaYke94MfwNRAiEAgKW5IyR8\n"
    "etcE3ewh2HG9lqQeo88R3uqInWK0sV3YNqo=\n"
    "-----END CERTIFICATE-----\n";
static const char PEM_ZZ_KEY[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgW+DvhJZKnBvBiOty\n"
    "iYG/k7rgoh/Z/XyYkSFcWYkL3uehRANCAAQXMMMAaqe+VhI6IYdoLxcvifUXBCBO\n"
    "UifKiGnTaICDo9fV4GwkNNgZ+/sfvw5DvUt5Mu9ckcJSgFOqNrZywRxO\n"
    "-----END PRIVATE KEY-----\n";
#endif
static const char PEM_FUZZ_CRT[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBlzCCAT2gAwIBAgIUNQO9CGIBq5xX5Y5w6Q/6lm32GeowCgYIKoZIzj0EAwIw\n"
    "EjEQMA4GA1UEAwwHZnV6ei1jYTAgFw0yNjEyMDcyMzI4MjhaGA8yMTI2MTExMzIz\n"
    "MjgyOFowDzENMAsGA1UEAwwEZnV6ejBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IA\n"
    "BC3PwFVIsH7wwB1s97TNL+Ukubai30B11IZZQT5/do+1f+RIXB+eFulB94KqSZIW\n"
    "SOSrugmhbrdeDbxBkLDHXVSjcjBwMAkGA1UdEwQCMAAwDgYDVR0PAQH/BAQDAgeA\n"
    "MBMGA1UdJQQMMAoGCCsGAQUFBwMCMB0GA1UdDgQWBBS70qyKwK9OHwtT5gLkehza\n"
    "0Jk9VTAfBgNVHSMEGDAWgBSr5LFnyQLY/F7Va4iU9gEWnB6YpjAKBggqhkjOPQQD\n"
    "AgNIADBFAiEAktim3iy9hL+LTtitEGAzApaZAQB9j8S7oFUYEQnYawgCIGJYx2TM\n"
    "FPWbLNesaJ9Hh6h31msZPVSJu5bNRS/cuhXu\n"
    "-----END CERTIFICATE-----\n";
static const char PEM_FUZZ_KEY[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgfFpbcJDXInZbGHcI\n"
    "tDaFBAv4QXFHmNQHh/M5R8ZpNLmhRANCAAQtz8BVSLB+8MAdbPe0zS/lJLm2ot9A\n"
    "ddSGWUE+f3aPtX/kSFwfnhbpQfeCqkmSFkjkq7oJoW63Xg28QZCwx11U\n"
    "-----END PRIVATE KEY-----\n";

/* The round every input starts from. */
#define FZ_N 3
static char *g_ids[FZ_N] = {"a", "fuzz", "zz"};
static uint8_t g_seed[32]; /* sa_graph_seed of round 1 and g_ids */

static void *g_tr;
static tset *g_layout;
static char g_dir[64];
static EVP_PKEY *g_key;
static X509 *g_cert;
static X509_STORE *g_ca;

static EVP_PKEY *pem_key(const char *pem)
{
	BIO *b = BIO_new_mem_buf(pem, -1);
	EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
	BIO_free(b);
	if (!k)
		abort();
	return k;
}

static X509 *pem_cert(const char *pem)
{
	BIO *b = BIO_new_mem_buf(pem, -1);
	X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
	BIO_free(b);
	if (!x)
		abort();
	return x;
}

static void init(void)
{
	log_set_level(LOG_LVL_OFF);
	ntr_spec spec;
	memset(&spec, 0, sizeof spec);
	spec.lora.rank = 2;
	spec.lora.alpha = 4;
	spec.lora.targets = 1u << LORA_ATTN_Q;
	spec.lora.init_seed = 1;
	spec.max_steps = 4;
	spec.max_batch = 4;
	char err[128];
	if (ntr_synth_ops.open(&spec, &g_tr, err, sizeof err) ||
	    ntr_synth_ops.layout(g_tr, &g_layout))
		abort();
	snprintf(g_dir, sizeof g_dir, "%s", fz_tmpdir("fuzz_client_secagg"));
	if (sa_graph_seed(1, (const char *const *)g_ids, FZ_N, g_seed))
		abort();
	g_key = pem_key(PEM_FUZZ_KEY);
	g_cert = pem_cert(PEM_FUZZ_CRT);
	X509 *ca = pem_cert(PEM_CA);
	g_ca = X509_STORE_new();
	if (!g_ca || X509_STORE_add_cert(g_ca, ca) != 1)
		abort();
	X509_free(ca);
}

static void feed_env(ncl *c, Fedlora__Envelope *e)
{
	fz_feed_env(c, g_tr, 1, e);
}

static void round_start(ncl *c)
{
	size_t nt = tset_count(g_layout), D = 0;
	float steps[64];
	if (nt > 64)
		abort();
	for (size_t i = 0; i < nt; i++) {
		D += tset_at(g_layout, i)->n;
		steps[i] = 0.01f;
	}
	Fedlora__SecAggSetup su = FEDLORA__SEC_AGG_SETUP__INIT;
	su.k = 2;
	su.t = 2;
	su.level_bits = 4;
	su.w_max = 7;
	su.weight_unit = 1;
	su.mod_bits = sa_mod_bits(4, FZ_N, 1);
	su.dim = D + 1;
	su.graph_seed.data = g_seed;
	su.graph_seed.len = 32;
	su.n_participants = FZ_N;
	su.participants = g_ids;
	su.clip = 1.0f;
	su.n_steps = nt;
	su.steps = steps;
	su.phase_ms = 1000;
	Fedlora__TrainParams tp = FEDLORA__TRAIN_PARAMS__INIT;
	tp.local_steps = 2;
	tp.lr = 0.01f;
	tp.batch_size = 2;
	tp.ctx = 8;
	tp.uplink_format = FEDLORA__QFORMAT__QFORMAT_Q4;
	tp.uplink_block = 32;
	tp.error_feedback = 1;
	tp.seed = 5;
	/* version 0 as an f32 snapshot of the layout's values, with its SHA */
	Fedlora__AdapterPayload ap = FEDLORA__ADAPTER_PAYLOAD__INIT;
	qtensor q[64];
	Fedlora__QTensor qm[64], *pq[64];
	quant_params qp = {.fmt = QT_F32};
	uint8_t sha[32];
	if (tset_fingerprint(g_layout, sha))
		abort();
	for (size_t i = 0; i < nt; i++) {
		const tensor *t = tset_at(g_layout, i);
		qt_init(&q[i]);
		if (quant_encode(&qp, t->name, t->data, t->ndim, t->shape, &q[i]))
			abort();
		qt_to_proto(&q[i], &qm[i]);
		pq[i] = &qm[i];
	}
	ap.kind = FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_SNAPSHOT;
	ap.to_version = 0;
	ap.to_sha256.data = sha;
	ap.to_sha256.len = 32;
	ap.n_tensors = nt;
	ap.tensors = pq;
	Fedlora__RoundStart rs = FEDLORA__ROUND_START__INIT;
	rs.round_id = 1;
	rs.global_version = 0;
	rs.global_sha256.data = sha;
	rs.global_sha256.len = 32;
	rs.params = &tp;
	rs.deadline_ms = 60000;
	rs.secagg = &su;
	rs.adapter = &ap;
	Fedlora__Envelope e = FEDLORA__ENVELOPE__INIT;
	e.body_case = FEDLORA__ENVELOPE__BODY_ROUND_START;
	e.round_start = &rs;
	feed_env(c, &e);
	for (size_t i = 0; i < nt; i++)
		qt_fini(&q[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!g_tr)
		init();
	fz_clean_dir(g_dir);
	uint8_t fp[32];
	nst *st = NULL;
	if (fz_open_state(g_dir, g_layout, fp, &st))
		return 0;
	ncl_config cfg;
	fz_config(&cfg, fp, g_layout);
	cfg.lora.init_seed = 1;
	cfg.sa_key = g_key;
	cfg.sa_cert = g_cert;
	cfg.sa_ca = g_ca;
	ncl *c = NULL;
	if (ncl_new(&cfg, st, &c)) {
		nst_free(st);
		return 0;
	}
	fz_welcome(c, g_tr, 1);
	round_start(c);
	fz_feed_frames(c, g_tr, 1, data, size);
	ncl_free(c);
	nst_free(st);
	return 0;
}

#ifdef FUZZ_CLIENT_SECAGG_MAKE_SEEDS
int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	init();
	const char *d = argv[1];
	size_t D = 0;
	for (size_t i = 0; i < tset_count(g_layout); i++)
		D += tset_at(g_layout, i)->n;
	sa_round r = {.round_id = 1,
	              .n = FZ_N,
	              .k = 2,
	              .t = 2,
	              .mod_bits = sa_mod_bits(4, FZ_N, 1),
	              .dim = D + 1};
	memcpy(r.graph_seed, g_seed, 32);
	/* real keys and signatures of "a" (index 0) and "zz" (index 2) */
	const char *kp[2] = {PEM_A_KEY, PEM_ZZ_KEY}, *cp[2] = {PEM_A_CRT, PEM_ZZ_CRT};
	uint32_t idx[2] = {0, 2};
	sa_client *cl[2];
	sa_keys ks[2];
	Fedlora__SecAggKeys mk[2], *pmk[2];
	for (int i = 0; i < 2; i++) {
		char why[200];
		EVP_PKEY *k = pem_key(kp[i]);
		X509 *x = pem_cert(cp[i]);
		if (sa_client_new(&r, idx[i], g_ids[idx[i]], &cl[i], why, sizeof why) ||
		    sa_client_advertise(cl[i], k, x, &ks[i], why, sizeof why))
			abort();
		fedlora__sec_agg_keys__init(&mk[i]);
		mk[i].round_id = 1;
		mk[i].index = idx[i];
		mk[i].enc_pk.data = ks[i].enc_pk;
		mk[i].enc_pk.len = SA_KEY_LEN;
		mk[i].mask_pk.data = ks[i].mask_pk;
		mk[i].mask_pk.len = SA_KEY_LEN;
		mk[i].signature.data = (uint8_t *)ks[i].sig;
		mk[i].signature.len = ks[i].sig_len;
		mk[i].cert_der.data = (uint8_t *)ks[i].cert_der;
		mk[i].cert_der.len = ks[i].cert_len;
		pmk[i] = &mk[i];
		EVP_PKEY_free(k);
		X509_free(x);
	}
	Fedlora__Envelope e = FEDLORA__ENVELOPE__INIT;
	Fedlora__SecAggRoster ro = FEDLORA__SEC_AGG_ROSTER__INIT;
	ro.round_id = 1;
	ro.n_keys = 2;
	ro.keys = pmk;
	e.body_case = FEDLORA__ENVELOPE__BODY_SECAGG_ROSTER;
	e.secagg_roster = &ro;
	buf all;
	buf_init(&all, 0);
	fz_seed_msg(&all, -1, &e);
	fz_seed_put(d, "roster", &all);
	/* shares from a and zz (ciphertexts that cannot be for this run's keys) */
	uint8_t ct[SA_SHARE_CT_LEN];
	memset(ct, 5, sizeof ct);
	Fedlora__SecAggShare s[2], *ps[2];
	for (int i = 0; i < 2; i++) {
		fedlora__sec_agg_share__init(&s[i]);
		s[i].from = idx[i];
		s[i].to = 1;
		s[i].ct.data = ct;
		s[i].ct.len = sizeof ct;
		ps[i] = &s[i];
	}
	Fedlora__SecAggShares sh = FEDLORA__SEC_AGG_SHARES__INIT;
	sh.round_id = 1;
	sh.n_shares = 2;
	sh.shares = ps;
	e.body_case = FEDLORA__ENVELOPE__BODY_SECAGG_SHARES;
	e.secagg_shares = &sh;
	fz_seed_msg(&all, -1, &e);
	uint32_t sv[2] = {0, 2};
	Fedlora__SecAggUnmask um = FEDLORA__SEC_AGG_UNMASK__INIT;
	um.round_id = 1;
	um.n_survivors = 2;
	um.survivors = sv;
	e.body_case = FEDLORA__ENVELOPE__BODY_SECAGG_UNMASK;
	e.secagg_unmask = &um;
	fz_seed_msg(&all, -1, &e);
	fz_seed_put(d, "all_phases", &all);
	buf one;
	buf_init(&one, 0);
	uint32_t dr[1] = {2};
	um.n_survivors = 1;
	um.n_dropped = 1;
	um.dropped = dr;
	fz_seed_msg(&one, -1, &e);
	fz_seed_put(d, "unmask_dropped", &one);
	buf_fini(&one);
	buf_fini(&all);
	for (int i = 0; i < 2; i++)
		sa_client_free(cl[i]);
	return 0;
}
#endif
