/* bench_secagg — cost of one secure-aggregation round (common/secagg.h),
 * every node and the coordinator simulated in one process.
 *
 * For each n (default 10, 100, 1000) and dropout rate d (default 0 and 10 %),
 * one round with dim = 1,000,001 masked elements (a 1 M-parameter update
 * plus the weight), level bits b = 4 (q4 levels), w_max = 1, m =
 * sa_mod_bits(4, n, 1), k and t from sa_params_default. The d % that drop
 * do so after sharing and before masking: the costliest case for the
 * coordinator (it reconstructs their mask keys and expands one PRG stream
 * per surviving neighbour). Every node runs every phase for real, so the
 * sum is checked bit for bit against the plain sum of the survivors'
 * inputs; inputs are uniform q4 levels in [-7, 7] (as m-bit two's
 * complement), generated per node and folded into the plain sum as they go.
 *
 * Reported, as thread CPU time: per node (mean and max over nodes) for
 * advertise, share (certificate + signature checks of k neighbours,
 * Shamir, GCM), receive, mask (k + 1 PRG streams of dim words + packing),
 * reveal; for the coordinator each phase and the total. Bytes per node and
 * round as raw field bytes (the protobuf framing of sa-int adds a few bytes
 * per field): uplink keys + shares + masked vector + reveals, downlink
 * roster + routed shares + unmask request. Bits per parameter: uplink
 * bits / dim against plain q4 (4 + 16/32 = 4.5) and against the goal
 * b + ceil(log2 n) + 2 plus the key and share bytes. The plain round in
 * the same run: a node packing its m-bit vector without masks, the
 * coordinator summing n packed vectors without unmasking. References
 * measured in the same run: memcpy, AES-256-GCM and the PRG (AES-256-CTR)
 * in GB/s.
 *
 * Usage: bench_secagg [--n 10,100,1000] [--drop 0,10] [--dim 1000001] */
#include "clock.h"
#include "err.h"
#include "secagg.h"
#include "../testpki.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LEVEL_BITS 4

static double cpu_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define DIE(...)                                                                                   \
	do {                                                                                       \
		fprintf(stderr, "bench_secagg: " __VA_ARGS__);                                     \
		fputc('\n', stderr);                                                               \
		exit(1);                                                                           \
	} while (0)

/* ---- references ---- */

static double gbps(size_t bytes, double s)
{
	return (double)bytes / s / 1e9;
}

static void references(double *memcpy_gbs, double *gcm_gbs, double *prg_gbs)
{
	size_t len = 64u << 20;
	uint8_t *a = malloc(len), *b = malloc(len + 16);
	uint8_t key[32] = {1}, nonce[12] = {2};
	if (!a || !b)
		DIE("out of memory");
	memset(a, 0x5a, len);
	memcpy(b, a, len); /* warm */
	double best = 1e9;
	for (int r = 0; r < 3; r++) {
		double t0 = clk_seconds();
		memcpy(b, a, len);
		double t = clk_seconds() - t0;
		best = t < best ? t : best;
	}
	*memcpy_gbs = gbps(len, best);
	best = 1e9;
	for (int r = 0; r < 3; r++) {
		double t0 = cpu_now();
		if (sa_gcm_seal(key, nonce, NULL, 0, a, len, b))
			DIE("AES-GCM failed");
		double t = cpu_now() - t0;
		best = t < best ? t : best;
	}
	*gcm_gbs = gbps(len, best);
	best = 1e9;
	for (int r = 0; r < 3; r++) {
		double t0 = cpu_now();
		if (sa_prg(key, (uint32_t *)(void *)b, len / 4))
			DIE("PRG failed");
		double t = cpu_now() - t0;
		best = t < best ? t : best;
	}
	*prg_gbs = gbps(len, best);
	free(a);
	free(b);
}

/* ---- one configuration ---- */

typedef struct stat {
	double sum, max;
	uint32_t n;
} stat;

static void st_add(stat *s, double v)
{
	s->sum += v;
	s->max = v > s->max ? v : s->max;
	s->n++;
}

static double st_mean(const stat *s)
{
	return s->n ? s->sum / s->n : 0;
}

static uint64_t splitmix(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static void run(uint32_t n, uint32_t dpct, uint64_t dim, EVP_PKEY **key, X509 **cert,
                char (*ids)[16], X509_STORE *store, double prg_gbs)
{
	sa_round r = {
	    .round_id = 1000 + n, .n = n, .mod_bits = sa_mod_bits(LEVEL_BITS, n, 1), .dim = dim};
	sa_params_default(n, &r.k, &r.t);
	for (int i = 0; i < 32; i++)
		r.graph_seed[i] = (uint8_t)(i + n);
	uint32_t deg = sa_degree(&r), m = r.mod_bits, mask = (1u << m) - 1;
	char why[300];
	sa_client **c = calloc(n, sizeof *c);
	uint8_t *drop = calloc(n, 1);
	uint32_t *x = malloc(dim * sizeof *x), *plain = calloc(dim, sizeof *plain);
	uint32_t *sum = malloc(dim * sizeof *sum);
	size_t pl = sa_packed_len(&r);
	uint8_t *packed = malloc(pl);
	sa_server *sv;
	if (!c || !drop || !x || !plain || !sum || !packed)
		DIE("out of memory");
	/* exactly round(n * d / 100) droppers, spread by a fixed shuffle */
	uint32_t ndrop = (uint32_t)((n * dpct + 50) / 100);
	uint64_t rs = n * 7919ull + dpct;
	for (uint32_t a = 0; a < ndrop;) {
		uint32_t i = (uint32_t)(splitmix(&rs) % n);
		if (!drop[i]) {
			drop[i] = 1;
			a++;
		}
	}
	stat t_adv = {0}, t_share = {0}, t_recv = {0}, t_mask = {0}, t_reveal = {0}, t_plain = {0};
	double s_keys = 0, s_roster = 0, s_shares = 0, s_route = 0, s_masked = 0, s_req = 0,
	       s_rev = 0, s_finish = 0, s_plain = 0;
	double up_keys = 0, up_shares = 0, up_rev = 0, down_roster = 0, down_sh = 0, down_req = 0;
	double t0;
	if (sa_server_new(&r, &sv, why, sizeof why))
		DIE("%s", why);
	/* 1. advertise */
	for (uint32_t i = 0; i < n; i++) {
		sa_keys k;
		if (sa_client_new(&r, i, ids[i], &c[i], why, sizeof why))
			DIE("%s", why);
		t0 = cpu_now();
		if (sa_client_advertise(c[i], key[i], cert[i], &k, why, sizeof why))
			DIE("%s", why);
		st_add(&t_adv, cpu_now() - t0);
		up_keys += 4 + strlen(k.node_id) + 2 * SA_KEY_LEN + k.sig_len + k.cert_len;
		t0 = cpu_now();
		if (sa_server_add_keys(sv, &k, why, sizeof why))
			DIE("%s", why);
		s_keys += cpu_now() - t0;
	}
	/* 2. share */
	for (uint32_t i = 0; i < n; i++) {
		const sa_keys *ro;
		const sa_share *sh;
		const sa_refusal *ref;
		uint32_t nro, nsh, nref;
		t0 = cpu_now();
		if (sa_server_roster(sv, i, &ro, &nro))
			DIE("roster of %u", i);
		s_roster += cpu_now() - t0;
		for (uint32_t e = 0; e < nro; e++)
			down_roster += 4 + strlen(ro[e].node_id) + 2 * SA_KEY_LEN + ro[e].sig_len +
			               ro[e].cert_len;
		t0 = cpu_now();
		if (sa_client_share(c[i], ro, nro, store, &sh, &nsh, &ref, &nref, why, sizeof why))
			DIE("%s", why);
		st_add(&t_share, cpu_now() - t0);
		up_shares += nsh * (8.0 + SA_SHARE_CT_LEN);
		t0 = cpu_now();
		if (sa_server_add_shares(sv, i, sh, nsh, why, sizeof why))
			DIE("%s", why);
		s_shares += cpu_now() - t0;
	}
	/* 3. route, receive, mask (the droppers vanish here) */
	uint32_t nsurv = 0;
	for (uint32_t i = 0; i < n; i++) {
		const sa_share *sh;
		const sa_refusal *bad;
		uint32_t nsh, nbad;
		t0 = cpu_now();
		if (sa_server_route(sv, i, &sh, &nsh))
			DIE("route of %u", i);
		s_route += cpu_now() - t0;
		if (drop[i])
			continue;
		down_sh += nsh * (8.0 + SA_SHARE_CT_LEN);
		t0 = cpu_now();
		if (sa_client_receive(c[i], sh, nsh, &bad, &nbad, why, sizeof why) || nbad)
			DIE("receive of %u: %s", i, why);
		st_add(&t_recv, cpu_now() - t0);
		uint64_t xs = i * 0x100000001b3ull + 17;
		for (uint64_t e = 0; e < dim; e++) {
			x[e] = (uint32_t)((int32_t)(splitmix(&xs) % 15) - 7) & mask;
			plain[e] = (plain[e] + x[e]) & mask;
		}
		t0 = cpu_now();
		sa_pack(x, dim, m, packed); /* the plain round's node work */
		st_add(&t_plain, cpu_now() - t0);
		t0 = cpu_now();
		if (sa_client_mask_into(c[i], x, packed, pl, why, sizeof why))
			DIE("%s", why);
		st_add(&t_mask, cpu_now() - t0);
		t0 = cpu_now();
		if (sa_server_add_masked(sv, i, packed, pl, why, sizeof why))
			DIE("%s", why);
		s_masked += cpu_now() - t0;
		nsurv++;
	}
	/* the plain round's coordinator work: sum n packed vectors */
	memset(sum, 0, dim * sizeof *sum);
	sa_pack(plain, dim, m, packed);
	for (uint32_t i = 0; i < nsurv; i++) {
		t0 = cpu_now();
		if (sa_unpack(packed, dim, m, x))
			DIE("unpack");
		for (uint64_t e = 0; e < dim; e++)
			sum[e] += x[e];
		s_plain += cpu_now() - t0;
	}
	/* 4. unmask */
	for (uint32_t i = 0; i < n; i++) {
		const uint32_t *su, *dr;
		const sa_reveal *rv;
		uint32_t ns, nd, nrv;
		uint32_t sbuf[4096], dbuf[4096];
		if (drop[i])
			continue;
		t0 = cpu_now();
		if (sa_server_unmask_request(sv, i, &su, &ns, &dr, &nd))
			DIE("request of %u", i);
		s_req += cpu_now() - t0;
		if (ns > 4096 || nd > 4096)
			DIE("request too long");
		memcpy(sbuf, su, ns * sizeof *su);
		memcpy(dbuf, dr, nd * sizeof *dr);
		down_req += 4.0 * (ns + nd);
		t0 = cpu_now();
		if (sa_client_reveal(c[i], sbuf, ns, dbuf, nd, &rv, &nrv, why, sizeof why))
			DIE("%s", why);
		st_add(&t_reveal, cpu_now() - t0);
		up_rev += nrv * (9.0 + SA_SHARE_LEN);
		t0 = cpu_now();
		if (sa_server_add_reveals(sv, i, rv, nrv, why, sizeof why))
			DIE("%s", why);
		s_rev += cpu_now() - t0;
	}
	t0 = cpu_now();
	int rc = sa_server_finish(sv, sum, why, sizeof why);
	s_finish = cpu_now() - t0;
	if (rc)
		DIE("finish: %s", why);
	int exact = memcmp(sum, plain, dim * sizeof *sum) == 0;
	if (!exact)
		DIE("n = %u: the secure sum differs from the plain sum", n);

	double nn = n, ns_ = nsurv;
	double up_node = (up_keys + up_shares) / nn + (double)pl + up_rev / ns_;
	double down_node = (down_roster + down_sh) / nn + down_req / ns_;
	double key_share_node = up_node - (double)pl;
	double s_total =
	    s_keys + s_roster + s_shares + s_route + s_masked + s_req + s_rev + s_finish;
	double node_total = st_mean(&t_adv) + st_mean(&t_share) + st_mean(&t_recv) +
	                    st_mean(&t_mask) + st_mean(&t_reveal);
	uint32_t lg = 0;
	while ((1ull << lg) < n)
		lg++;
	/* PRG streams the coordinator expands: one per survivor, one per
	 * (dropped, surviving partner) pair */
	double streams_node = deg + 1;
	printf("\n== n = %u, dropouts %u %% (%u dropped after sharing), k = %u (degree %u), t = "
	       "%u, m = %u bits, dim = %llu ==\n",
	       n, dpct, ndrop, r.k, deg, r.t, m, (unsigned long long)dim);
	printf("result: exact (bit for bit equal to the plain sum of the %u survivors)\n", nsurv);
	printf("node CPU s   (mean / max): advertise %.4f / %.4f  share %.4f / %.4f  receive "
	       "%.4f / %.4f\n",
	       st_mean(&t_adv), t_adv.max, st_mean(&t_share), t_share.max, st_mean(&t_recv),
	       t_recv.max);
	printf("                           mask %.4f / %.4f  reveal %.5f / %.5f  total %.4f\n",
	       st_mean(&t_mask), t_mask.max, st_mean(&t_reveal), t_reveal.max, node_total);
	printf("  mask = %.0f PRG streams of %.1f MB: %.2f GB/s effective vs PRG reference "
	       "%.2f GB/s\n",
	       streams_node, dim * 4 / 1e6, streams_node * dim * 4 / st_mean(&t_mask) / 1e9,
	       prg_gbs);
	printf("  plain round, node: pack %.4f s -> secure/plain node CPU %.1fx\n",
	       st_mean(&t_plain), node_total / st_mean(&t_plain));
	printf("coordinator CPU s: keys %.4f roster %.4f shares %.4f route %.4f masked %.3f "
	       "requests %.4f reveals %.4f finish %.3f total %.3f\n",
	       s_keys, s_roster, s_shares, s_route, s_masked, s_req, s_rev, s_finish, s_total);
	printf("  plain round, coordinator: sum of %u packed vectors %.3f s -> secure/plain "
	       "%.1fx\n",
	       nsurv, s_plain, s_total / s_plain);
	printf("bytes per node: up %.0f (keys %.0f, shares %.0f, masked %zu, reveals %.0f); "
	       "down %.0f\n",
	       up_node, up_keys / nn, up_shares / nn, pl, up_rev / ns_, down_node);
	double bpp = 8 * up_node / (double)dim;
	printf("bits/param up: %.4f (masked %u + key/share %.4f) | plain q4 4.5 -> %.2fx | goal "
	       "b + ceil(log2 n) + 2 = %u + O(k) bytes -> %s\n",
	       bpp, m, 8 * key_share_node / (double)dim, bpp / 4.5, LEVEL_BITS + lg + 2,
	       m <= LEVEL_BITS + lg + 2 ? "met" : "MISSED");
	printf("RESULT n=%u d=%u k=%u t=%u m=%u node_cpu_s=%.4f mask_s=%.4f coord_cpu_s=%.3f "
	       "finish_s=%.3f up_bytes=%.0f down_bytes=%.0f bits_per_param=%.4f exact=%d\n",
	       n, dpct, r.k, r.t, m, node_total, st_mean(&t_mask), s_total, s_finish, up_node,
	       down_node, bpp, exact);
	fflush(stdout);
	for (uint32_t i = 0; i < n; i++)
		sa_client_free(c[i]);
	sa_server_free(sv);
	free(c);
	free(drop);
	free(x);
	free(plain);
	free(sum);
	free(packed);
}

static int parse_list(const char *s, uint32_t *out, int cap)
{
	int n = 0;
	while (*s && n < cap) {
		char *end;
		unsigned long v = strtoul(s, &end, 10);
		if (end == s)
			return -1;
		out[n++] = (uint32_t)v;
		s = *end == ',' ? end + 1 : end;
	}
	return n;
}

int main(int argc, char **argv)
{
	uint32_t ns[8] = {10, 100, 1000}, ds[8] = {0, 10};
	int nn = 3, nd = 2;
	uint64_t dim = 1000001;
	for (int a = 1; a < argc; a++) {
		if (!strcmp(argv[a], "--n") && a + 1 < argc)
			nn = parse_list(argv[++a], ns, 8);
		else if (!strcmp(argv[a], "--drop") && a + 1 < argc)
			nd = parse_list(argv[++a], ds, 8);
		else if (!strcmp(argv[a], "--dim") && a + 1 < argc)
			dim = strtoull(argv[++a], NULL, 10);
		else
			DIE("usage: bench_secagg [--n 10,100,1000] [--drop 0,10] [--dim 1000001]");
	}
	if (nn <= 0 || nd <= 0 || dim == 0 || dim > SA_MAX_DIM)
		DIE("bad arguments");
	uint32_t nmax = 0;
	for (int a = 0; a < nn; a++)
		nmax = ns[a] > nmax ? ns[a] : nmax;
	double mc, gcm, prg;
	references(&mc, &gcm, &prg);
	printf("references (this run): memcpy %.2f GB/s, AES-256-GCM %.2f GB/s, PRG "
	       "(AES-256-CTR) %.2f GB/s; PRG/GCM %.2f, PRG/memcpy %.2f\n",
	       mc, gcm, prg, prg / gcm, prg / mc);
	/* the federation PKI: one CA, nmax node certificates (EC P-256) */
	double t0 = clk_seconds();
	EVP_PKEY *ca_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	X509 *ca = ca_key ? tp_make_cert(ca_key, "bench-ca", NULL, NULL, 1, NULL, NULL, 1) : NULL;
	X509_STORE *store = X509_STORE_new();
	EVP_PKEY **key = calloc(nmax, sizeof *key);
	X509 **cert = calloc(nmax, sizeof *cert);
	char(*ids)[16] = calloc(nmax, sizeof *ids);
	if (!ca || !store || !key || !cert || !ids || X509_STORE_add_cert(store, ca) != 1)
		DIE("PKI set-up failed");
	for (uint32_t i = 0; i < nmax; i++) {
		snprintf(ids[i], sizeof ids[i], "node-%05u", i);
		key[i] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
		cert[i] =
		    key[i] ? tp_make_cert(key[i], ids[i], ca, ca_key, 0, "clientAuth", NULL, 10 + i)
		           : NULL;
		if (!cert[i])
			DIE("certificate %u", i);
	}
	printf("PKI: %u node certificates in %.1f s (not part of the round)\n", nmax,
	       clk_seconds() - t0);
	for (int a = 0; a < nn; a++)
		for (int b = 0; b < nd; b++)
			run(ns[a], ds[b], dim, key, cert, ids, store, prg);
	for (uint32_t i = 0; i < nmax; i++) {
		EVP_PKEY_free(key[i]);
		X509_free(cert[i]);
	}
	free(key);
	free(cert);
	free(ids);
	X509_STORE_free(store);
	X509_free(ca);
	EVP_PKEY_free(ca_key);
	return 0;
}
