/* fuzz_secagg_server — libFuzzer target for the secagg coordinator side:
 * every sa_server_* function that takes bytes from nodes (keys, shares,
 * masked vectors, reveals), in any order, mixed with the honest messages of
 * a real round (computed once per process), then sa_server_finish.
 *
 * Records (fuzz_secagg_common.h) — op, arg, payload:
 *   0 keys of node arg:   enc_pk[32] mask_pk[32] idlen u8 id sig_len u8 sig cert(rest)
 *   1 shares from arg:    {from u8, to u8, ct_len u8, ct}*
 *   2 masked of node arg: packed bytes
 *   3 reveals from arg:   {from u8, owner u8, kind u8, share[64]}*
 *   4 honest message:     arg = what << 4 | node (what: 0 keys, 1 shares,
 *                         2 masked, 3 reveals)
 *   5/6/7 roster / route / unmask request for node arg
 * Invariants (abort otherwise): pointers handed out are consistent (lengths,
 * indices); and when only honest messages were accepted, all five nodes'
 * keys, shares and masked vectors among them, a successful finish returns
 * exactly the plain sum of the inputs. */
#include "fuzz_secagg_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct honest {
	int ready;
	sa_keys keys[FZ_N];
	uint8_t sig[FZ_N][SA_MAX_SIG], cert[FZ_N][2048];
	sa_share sh[FZ_N][FZ_N];
	uint8_t ct[FZ_N][FZ_N][SA_SHARE_CT_LEN];
	uint32_t nsh[FZ_N];
	uint8_t masked[FZ_N][(FZ_DIM * 10 + 7) / 8];
	sa_reveal rv[FZ_N][FZ_N];
	uint32_t nrv[FZ_N];
	uint32_t sum[FZ_DIM];
} hm;

/* One full round with everybody surviving; keeps copies of every message. */
#define FZ_DIE()                                                                                   \
	do {                                                                                       \
		fprintf(stderr, "fuzz_secagg_server line %d: %s\n", __LINE__, why);                \
		abort();                                                                           \
	} while (0)

static void honest_setup(void)
{
	if (hm.ready)
		return;
	fz_pki_setup();
	sa_client *c[FZ_N];
	sa_server *s;
	char why[256];
	if (sa_server_new(&fz_round, &s, why, sizeof why))
		FZ_DIE();
	for (uint32_t i = 0; i < FZ_N; i++) {
		sa_keys k;
		if (sa_client_new(&fz_round, i, fz.id[i], &c[i], why, sizeof why) ||
		    sa_client_advertise(c[i], fz.key[i], fz.cert[i], &k, why, sizeof why) ||
		    k.sig_len > SA_MAX_SIG || k.cert_len > sizeof hm.cert[i] ||
		    sa_server_add_keys(s, &k, why, sizeof why))
			FZ_DIE();
		hm.keys[i] = k;
		memcpy(hm.sig[i], k.sig, k.sig_len);
		memcpy(hm.cert[i], k.cert_der, k.cert_len);
		hm.keys[i].sig = hm.sig[i];
		hm.keys[i].cert_der = hm.cert[i];
		hm.keys[i].node_id = fz.id[i];
	}
	for (uint32_t i = 0; i < FZ_N; i++) {
		const sa_keys *ro;
		const sa_share *sh;
		const sa_refusal *ref;
		uint32_t nro, nref;
		if (sa_server_roster(s, i, &ro, &nro) ||
		    sa_client_share(c[i], ro, nro, fz.store, &sh, &hm.nsh[i], &ref, &nref, why,
		                    sizeof why) ||
		    sa_server_add_shares(s, i, sh, hm.nsh[i], why, sizeof why))
			FZ_DIE();
		for (uint32_t e = 0; e < hm.nsh[i]; e++) {
			hm.sh[i][e] = sh[e];
			memcpy(hm.ct[i][e], sh[e].ct, SA_SHARE_CT_LEN);
			hm.sh[i][e].ct = hm.ct[i][e];
		}
	}
	uint32_t x[FZ_DIM];
	for (uint32_t i = 0; i < FZ_N; i++) {
		const sa_share *sh;
		const sa_refusal *bad;
		const uint8_t *p;
		uint32_t n, nbad;
		size_t len;
		for (uint32_t e = 0; e < FZ_DIM; e++) {
			x[e] = (i * 131 + e * 7) & 1023;
			hm.sum[e] = (hm.sum[e] + x[e]) & 1023;
		}
		if (sa_server_route(s, i, &sh, &n) ||
		    sa_client_receive(c[i], sh, n, &bad, &nbad, why, sizeof why) ||
		    sa_client_mask(c[i], x, &p, &len, why, sizeof why) ||
		    len != sizeof hm.masked[i] ||
		    sa_server_add_masked(s, i, p, len, why, sizeof why))
			FZ_DIE();
		memcpy(hm.masked[i], p, len);
	}
	for (uint32_t i = 0; i < FZ_N; i++) {
		const uint32_t *su, *dr;
		const sa_reveal *rv;
		uint32_t ns, nd;
		uint32_t sv[FZ_N], dv[FZ_N];
		if (sa_server_unmask_request(s, i, &su, &ns, &dr, &nd))
			FZ_DIE();
		memcpy(sv, su, ns * sizeof *su);
		memcpy(dv, dr, nd * sizeof *dr);
		if (sa_client_reveal(c[i], sv, ns, dv, nd, &rv, &hm.nrv[i], why, sizeof why))
			FZ_DIE();
		memcpy(hm.rv[i], rv, hm.nrv[i] * sizeof *rv);
	}
	for (uint32_t i = 0; i < FZ_N; i++)
		sa_client_free(c[i]);
	sa_server_free(s);
	hm.ready = 1;
}

static int fz_keys(sa_server *s, const fz_rec *r, char *why, size_t whylen)
{
	fz_rd d = {r->p, r->len};
	const uint8_t *enc = fz_take(&d, 32), *mask = fz_take(&d, 32), *il = fz_take(&d, 1);
	const uint8_t *id = il ? fz_take(&d, *il) : NULL, *sl = fz_take(&d, 1);
	const uint8_t *sig = sl ? fz_take(&d, *sl) : NULL;
	if (!enc || !mask || !id || !sig)
		return FL_EINVAL;
	char idz[256];
	memcpy(idz, id, *il);
	idz[*il] = '\0';
	sa_keys k = {.index = r->arg,
	             .node_id = idz,
	             .sig = sig,
	             .sig_len = *sl,
	             .cert_der = d.p,
	             .cert_len = d.left};
	memcpy(k.enc_pk, enc, 32);
	memcpy(k.mask_pk, mask, 32);
	return sa_server_add_keys(s, &k, why, whylen);
}

static int fz_reveals(sa_server *s, const fz_rec *r, char *why, size_t whylen)
{
	fz_rd d = {r->p, r->len};
	sa_reveal rv[2 * FZ_N];
	uint32_t n = 0;
	const uint8_t *h;
	while (n < 2 * FZ_N && (h = fz_take(&d, 3 + SA_SHARE_LEN)) != NULL) {
		rv[n] = (sa_reveal){.from = h[0], .owner = h[1], .is_mask_key = h[2]};
		memcpy(rv[n].share, h + 3, SA_SHARE_LEN);
		n++;
	}
	return sa_server_add_reveals(s, r->arg, rv, n, why, whylen);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > (1u << 16))
		return 0;
	honest_setup();
	sa_server *s;
	char why[256];
	if (sa_server_new(&fz_round, &s, why, sizeof why))
		abort();
	int fuzz_ok = 0, hk = 0, hs = 0, hmk = 0;
	size_t off = 0;
	fz_rec r;
	while (fz_next(data, size, &off, &r)) {
		sa_share sh[2 * FZ_N];
		uint32_t node = r.arg & 15, n;
		int rc;
		switch (r.op % 8) {
		case 0:
			fuzz_ok |= fz_keys(s, &r, why, sizeof why) == 0;
			break;
		case 1:
			n = fz_parse_shares(&r, sh, 2 * FZ_N);
			fuzz_ok |= sa_server_add_shares(s, r.arg, sh, n, why, sizeof why) == 0;
			break;
		case 2:
			fuzz_ok |= sa_server_add_masked(s, r.arg, r.p, r.len, why, sizeof why) == 0;
			break;
		case 3:
			fuzz_ok |= fz_reveals(s, &r, why, sizeof why) == 0;
			break;
		case 4:
			if (node >= FZ_N)
				break;
			switch (r.arg >> 4) {
			case 0:
				hk += sa_server_add_keys(s, &hm.keys[node], why, sizeof why) == 0;
				break;
			case 1:
				hs += sa_server_add_shares(s, node, hm.sh[node], hm.nsh[node], why,
				                           sizeof why) == 0;
				break;
			case 2:
				hmk += sa_server_add_masked(s, node, hm.masked[node],
				                            sizeof hm.masked[node], why,
				                            sizeof why) == 0;
				break;
			case 3:
				sa_server_add_reveals(s, node, hm.rv[node], hm.nrv[node], why,
				                      sizeof why);
				break;
			}
			break;
		case 5: {
			const sa_keys *ro;
			if (sa_server_roster(s, r.arg, &ro, &n) == 0)
				for (uint32_t e = 0; e < n; e++)
					if (ro[e].index >= FZ_N || ro[e].index == r.arg ||
					    ro[e].sig_len > SA_MAX_SIG ||
					    ro[e].cert_len > SA_MAX_CERT)
						abort();
			break;
		}
		case 6: {
			const sa_share *rt;
			if (sa_server_route(s, r.arg, &rt, &n) == 0)
				for (uint32_t e = 0; e < n; e++)
					if (rt[e].to != r.arg || rt[e].from >= FZ_N ||
					    rt[e].ct_len != SA_SHARE_CT_LEN)
						abort();
			break;
		}
		case 7: {
			const uint32_t *su, *dr;
			uint32_t ns, nd;
			rc = sa_server_unmask_request(s, r.arg, &su, &ns, &dr, &nd);
			if (rc == 0 && ns + nd > FZ_N - 1)
				abort();
			break;
		}
		}
	}
	uint32_t sum[FZ_DIM];
	int rc = sa_server_finish(s, sum, why, sizeof why);
	if (rc == 0 && !fuzz_ok && hk == FZ_N && hs == FZ_N && hmk == FZ_N &&
	    memcmp(sum, hm.sum, sizeof sum) != 0)
		abort();
	const uint32_t *li;
	uint32_t nl;
	sa_server_liars(s, &li, &nl);
	if (nl > FZ_N)
		abort();
	sa_server_free(s);
	return 0;
}
