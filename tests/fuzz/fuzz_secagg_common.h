/* fuzz_secagg_common — what the two secagg fuzz targets share: a tiny
 * federation PKI (made once per process), the round they fuzz (n = 5,
 * complete graph, t = 3, m = 10, dim = 37), and a reader for the targets'
 * record format:
 *
 *   record = op u8 || arg u8 || len u16 LE || payload[len]
 *
 * (a truncated record ends the input). Header-only; each target includes it
 * once. */
#ifndef FL_FUZZ_SECAGG_COMMON_H
#define FL_FUZZ_SECAGG_COMMON_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "secagg.h"
#include "../testpki.h"

#define FZ_N   5
#define FZ_DIM 37

static struct fz_pki {
	int ready;
	EVP_PKEY *key[FZ_N], *ca_key;
	X509 *cert[FZ_N], *ca;
	X509_STORE *store;
	char id[FZ_N][16];
} fz;

static void fz_pki_setup(void)
{
	if (fz.ready)
		return;
	fz.ca_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	fz.ca = fz.ca_key ? tp_make_cert(fz.ca_key, "fz-ca", NULL, NULL, 1, NULL, NULL, 1) : NULL;
	fz.store = X509_STORE_new();
	if (!fz.ca || !fz.store || X509_STORE_add_cert(fz.store, fz.ca) != 1)
		abort();
	for (int i = 0; i < FZ_N; i++) {
		snprintf(fz.id[i], sizeof fz.id[i], "fz-node-%d", i);
		fz.key[i] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
		fz.cert[i] = fz.key[i] ? tp_make_cert(fz.key[i], fz.id[i], fz.ca, fz.ca_key, 0,
		                                      "clientAuth", NULL, 10 + i)
		                       : NULL;
		if (!fz.cert[i])
			abort();
	}
	fz.ready = 1;
	/* the PKI lives for the whole process (libFuzzer never returns) */
}

static const sa_round fz_round = {.round_id = 77,
                                  .n = FZ_N,
                                  .k = FZ_N - 1,
                                  .t = 3,
                                  .mod_bits = 10,
                                  .dim = FZ_DIM,
                                  .graph_seed = {1, 2, 3}};

typedef struct fz_rec {
	uint8_t op, arg;
	const uint8_t *p;
	size_t len;
} fz_rec;

/* Next record of data[*off..size); 0 at the end. */
static int fz_next(const uint8_t *data, size_t size, size_t *off, fz_rec *r)
{
	if (size - *off < 4)
		return 0;
	const uint8_t *h = data + *off;
	size_t len = (size_t)h[2] | (size_t)h[3] << 8;
	if (size - *off - 4 < len)
		return 0;
	r->op = h[0];
	r->arg = h[1];
	r->p = h + 4;
	r->len = len;
	*off += 4 + len;
	return 1;
}

/* A byte reader over one payload: take() fails (returns NULL) past the end. */
typedef struct fz_rd {
	const uint8_t *p;
	size_t left;
} fz_rd;

static const uint8_t *fz_take(fz_rd *d, size_t n)
{
	if (d->left < n)
		return NULL;
	const uint8_t *q = d->p;
	d->p += n;
	d->left -= n;
	return q;
}

/* Shares: {from u8, to u8, ct_len u8, ct[ct_len]}* into sh (room for cap). */
static uint32_t fz_parse_shares(const fz_rec *r, sa_share *sh, uint32_t cap)
{
	fz_rd d = {r->p, r->len};
	uint32_t n = 0;
	const uint8_t *h;
	while (n < cap && (h = fz_take(&d, 3)) != NULL) {
		const uint8_t *ct = fz_take(&d, h[2]);
		if (!ct)
			break;
		sh[n++] = (sa_share){.from = h[0], .to = h[1], .ct = ct, .ct_len = h[2]};
	}
	return n;
}

#endif
