/* fuzz_secagg_client — libFuzzer target for the secagg node side: the
 * functions that take what the coordinator relays (roster, shares, unmask
 * request), in any order. Node 0 is fuzzed; nodes 1..4 are honest and made
 * afresh per input (their keys are fresh, as in a real round), so the
 * honest roster and shares are valid ones that records can patch (they are
 * made only for inputs that use them).
 *
 * Records (fuzz_secagg_common.h) — op, arg, payload:
 *   0 roster:          {index u8, idlen u8, id, enc[32], mask[32], siglen u8,
 *                      sig, certlen u16 LE, cert}*
 *   1 honest roster:   {entry u8, offset u16 LE, xor u8}* patches, then share
 *   2 shares:          {from u8, to u8, ct_len u8, ct}*
 *   3 honest shares:   {entry u8, offset u8, xor u8}* patches, then receive
 *   4 mask:            x[e] = payload byte e (0 past the end), low arg bits
 *                      make x = 1024 + payload (out of range) when odd
 *   5 unmask request:  ns u8, survivors[ns], nd u8, dropped[nd]
 * Invariants (abort otherwise): whatever succeeds returns outputs within
 * the contracts of secagg.h (counts, lengths, indices, a reveal never of
 * both secrets of one node, never about a node not asked about). */
#include "fuzz_secagg_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct world {
	sa_client *c[FZ_N];
	sa_keys keys[FZ_N];
	int shared;         /* honest nodes 1..4 made their shares */
	sa_share sh0[FZ_N]; /* their shares to node 0 */
	uint8_t ct0[FZ_N][SA_SHARE_CT_LEN];
	uint32_t nsh0;
} world;

static void world_free(world *w)
{
	for (int i = 0; i < FZ_N; i++)
		sa_client_free(w->c[i]);
}

/* Node 0 always; nodes 1..4 (honest) when a record first needs them. */
static void world_make(world *w, uint32_t from, uint32_t to)
{
	char why[256];
	for (uint32_t i = from; i < to; i++)
		if (sa_client_new(&fz_round, i, fz.id[i], &w->c[i], why, sizeof why) ||
		    sa_client_advertise(w->c[i], fz.key[i], fz.cert[i], &w->keys[i], why,
		                        sizeof why))
			abort();
}

static void world_new(world *w)
{
	memset(w, 0, sizeof *w);
	world_make(w, 0, 1);
}

static void world_others(world *w)
{
	if (!w->c[1])
		world_make(w, 1, FZ_N);
}

/* Nodes 1..4 share with the honest roster; keeps their shares to node 0. */
static void world_share(world *w)
{
	char why[256];
	if (w->shared)
		return;
	w->shared = 1;
	world_others(w);
	for (uint32_t i = 1; i < FZ_N; i++) {
		sa_keys ro[FZ_N - 1];
		uint32_t n = 0, nsh, nref;
		for (uint32_t j = 0; j < FZ_N; j++)
			if (j != i)
				ro[n++] = w->keys[j];
		const sa_share *sh;
		const sa_refusal *ref;
		if (sa_client_share(w->c[i], ro, n, fz.store, &sh, &nsh, &ref, &nref, why,
		                    sizeof why))
			abort();
		for (uint32_t e = 0; e < nsh; e++)
			if (sh[e].to == 0) {
				w->sh0[w->nsh0] = sh[e];
				memcpy(w->ct0[w->nsh0], sh[e].ct, SA_SHARE_CT_LEN);
				w->sh0[w->nsh0].ct = w->ct0[w->nsh0];
				w->nsh0++;
			}
	}
}

static void check_shares(const sa_share *sh, uint32_t n)
{
	if (n > FZ_N - 1)
		abort();
	for (uint32_t e = 0; e < n; e++)
		if (sh[e].from != 0 || sh[e].to == 0 || sh[e].to >= FZ_N ||
		    sh[e].ct_len != SA_SHARE_CT_LEN || (e && sh[e].to <= sh[e - 1].to))
			abort();
}

static void op_roster(world *w, const fz_rec *r)
{
	sa_keys ro[8];
	char ids[8][256];
	uint32_t n = 0;
	fz_rd d = {r->p, r->len};
	while (n < 8) {
		const uint8_t *h = fz_take(&d, 2);
		const uint8_t *id = h ? fz_take(&d, h[1]) : NULL;
		const uint8_t *enc = fz_take(&d, 32), *mask = fz_take(&d, 32), *sl = fz_take(&d, 1);
		const uint8_t *sig = sl ? fz_take(&d, *sl) : NULL, *cl = fz_take(&d, 2);
		size_t certlen = cl ? (size_t)cl[0] | (size_t)cl[1] << 8 : 0;
		const uint8_t *cert = cl ? fz_take(&d, certlen) : NULL;
		if (!id || !enc || !mask || !sig || !cert)
			break;
		memcpy(ids[n], id, h[1]);
		ids[n][h[1]] = '\0';
		ro[n] = (sa_keys){.index = h[0],
		                  .node_id = ids[n],
		                  .sig = sig,
		                  .sig_len = *sl,
		                  .cert_der = cert,
		                  .cert_len = certlen};
		memcpy(ro[n].enc_pk, enc, 32);
		memcpy(ro[n].mask_pk, mask, 32);
		n++;
	}
	const sa_share *sh;
	const sa_refusal *ref;
	uint32_t nsh, nref;
	char why[256];
	if (sa_client_share(w->c[0], ro, n, fz.store, &sh, &nsh, &ref, &nref, why, sizeof why) == 0)
		check_shares(sh, nsh);
}

static void op_honest_roster(world *w, const fz_rec *r)
{
	/* patchable copies of the honest entries of nodes 1..4 */
	sa_keys ro[FZ_N - 1];
	world_others(w);
	uint8_t sig[FZ_N - 1][SA_MAX_SIG], cert[FZ_N - 1][2048];
	for (uint32_t e = 0; e < FZ_N - 1; e++) {
		ro[e] = w->keys[e + 1];
		if (ro[e].sig_len > sizeof sig[e] || ro[e].cert_len > sizeof cert[e])
			abort();
		memcpy(sig[e], ro[e].sig, ro[e].sig_len);
		memcpy(cert[e], ro[e].cert_der, ro[e].cert_len);
		ro[e].sig = sig[e];
		ro[e].cert_der = cert[e];
	}
	fz_rd d = {r->p, r->len};
	const uint8_t *pt;
	while ((pt = fz_take(&d, 4)) != NULL) {
		sa_keys *k = &ro[pt[0] % (FZ_N - 1)];
		size_t o = (size_t)pt[1] | (size_t)pt[2] << 8;
		/* offsets walk the fields: keys, signature, certificate, index */
		if (o < 32)
			k->enc_pk[o] ^= pt[3];
		else if (o < 64)
			k->mask_pk[o - 32] ^= pt[3];
		else if (o - 64 < k->sig_len)
			sig[pt[0] % (FZ_N - 1)][o - 64] ^= pt[3];
		else if (o - 64 - k->sig_len < k->cert_len)
			cert[pt[0] % (FZ_N - 1)][o - 64 - k->sig_len] ^= pt[3];
		else
			k->index ^= pt[3];
	}
	const sa_share *sh;
	const sa_refusal *ref;
	uint32_t nsh, nref;
	char why[256];
	if (sa_client_share(w->c[0], ro, FZ_N - 1, fz.store, &sh, &nsh, &ref, &nref, why,
	                    sizeof why) == 0)
		check_shares(sh, nsh);
}

static void op_receive(world *w, sa_share *sh, uint32_t n)
{
	const sa_refusal *bad;
	uint32_t nbad;
	char why[256];
	if (sa_client_receive(w->c[0], sh, n, &bad, &nbad, why, sizeof why) == 0 && nbad > n)
		abort();
}

static void op_honest_shares(world *w, const fz_rec *r)
{
	world_share(w);
	sa_share sh[FZ_N];
	uint8_t ct[FZ_N][SA_SHARE_CT_LEN];
	memcpy(sh, w->sh0, sizeof sh);
	memcpy(ct, w->ct0, sizeof ct);
	for (uint32_t e = 0; e < w->nsh0; e++)
		sh[e].ct = ct[e];
	fz_rd d = {r->p, r->len};
	const uint8_t *pt;
	while (w->nsh0 && (pt = fz_take(&d, 3)) != NULL) {
		uint32_t e = pt[0] % w->nsh0;
		if (pt[1] < SA_SHARE_CT_LEN)
			ct[e][pt[1]] ^= pt[2];
		else if (pt[1] < SA_SHARE_CT_LEN + 64)
			sh[e].from ^= pt[2];
		else
			sh[e].to ^= pt[2];
	}
	op_receive(w, sh, w->nsh0);
}

static void op_mask(world *w, const fz_rec *r)
{
	uint32_t x[FZ_DIM];
	for (uint32_t e = 0; e < FZ_DIM; e++)
		x[e] = (e < r->len ? r->p[e] : 0) + ((r->arg & 1) ? 1024u : 0u);
	const uint8_t *p;
	size_t len;
	char why[256];
	if (sa_client_mask(w->c[0], x, &p, &len, why, sizeof why) == 0) {
		if (len != sa_packed_len(&fz_round) || (r->arg & 1))
			abort();
	}
}

static void op_reveal(world *w, const fz_rec *r)
{
	fz_rd d = {r->p, r->len};
	const uint8_t *ns = fz_take(&d, 1);
	const uint8_t *sv = ns ? fz_take(&d, *ns) : NULL;
	const uint8_t *nd = sv ? fz_take(&d, 1) : NULL;
	const uint8_t *dv = nd ? fz_take(&d, *nd) : NULL;
	if (!dv)
		return;
	uint32_t su[256], dr[256];
	for (uint32_t a = 0; a < *ns; a++)
		su[a] = sv[a];
	for (uint32_t a = 0; a < *nd; a++)
		dr[a] = dv[a];
	const sa_reveal *rv;
	uint32_t nrv;
	char why[256];
	if (sa_client_reveal(w->c[0], su, *ns, dr, *nd, &rv, &nrv, why, sizeof why) != 0)
		return;
	if (nrv > FZ_N - 1)
		abort();
	for (uint32_t e = 0; e < nrv; e++) {
		int in_s = 0, in_d = 0;
		for (uint32_t a = 0; a < *ns; a++)
			in_s |= su[a] == rv[e].owner;
		for (uint32_t a = 0; a < *nd; a++)
			in_d |= dr[a] == rv[e].owner;
		if (rv[e].from != 0 || in_s == in_d || rv[e].is_mask_key != (uint32_t)in_d)
			abort();
		for (uint32_t f = 0; f < e; f++)
			if (rv[f].owner == rv[e].owner)
				abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > (1u << 16))
		return 0;
	fz_pki_setup();
	world w;
	world_new(&w);
	size_t off = 0;
	fz_rec r;
	while (fz_next(data, size, &off, &r)) {
		sa_share sh[8];
		uint32_t n;
		switch (r.op % 6) {
		case 0:
			op_roster(&w, &r);
			break;
		case 1:
			op_honest_roster(&w, &r);
			break;
		case 2:
			n = fz_parse_shares(&r, sh, 8);
			op_receive(&w, sh, n);
			break;
		case 3:
			op_honest_shares(&w, &r);
			break;
		case 4:
			op_mask(&w, &r);
			break;
		case 5:
			op_reveal(&w, &r);
			break;
		}
	}
	world_free(&w);
	return 0;
}
