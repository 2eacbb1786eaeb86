/* fuzz_fedio — shared by the coordinator-side fuzz targets (fuzz_update,
 * fuzz_fed_secagg): fed_io callbacks that check every message the
 * coordinator sends, and a Join for a test federation. Header-only. */
#ifndef FL_FUZZ_FEDIO_H
#define FL_FUZZ_FEDIO_H
#include <stdlib.h>

#include "fed.h"
#include "sha.h"
#include "wire.h"

static inline void fz_send(void *ud, const uint64_t *peers, size_t n, const uint8_t *d, size_t len)
{
	(void)ud;
	(void)peers;
	(void)n;
	wire_msg *m = NULL;
	if (wire_decode(d, len, 1u << 30, 0, &m) != 0)
		abort(); /* the coordinator must only send valid envelopes */
	wire_free(m);
}

static inline void fz_close(void *ud, uint64_t peer, const char *why)
{
	(void)ud;
	(void)peer;
	(void)why;
}

/* A tiny federation: one layer, attn_q rank 2 (16 -> 8), rounds that
 * start at once with a 1 s deadline; min_nodes nodes. */
static inline void fz_opts_tiny(fed_opts *o, uint32_t min_nodes)
{
	fed_opts_default(o);
	o->spec.rank = 2;
	o->spec.alpha = 4;
	o->spec.targets = 1u << LORA_ATTN_Q;
	o->spec.init_seed = 3;
	o->arch.n_layers = 1;
	o->arch.in[LORA_ATTN_Q] = 16;
	o->arch.out[LORA_ATTN_Q] = 8;
	sha256("fuzz base", 9, o->base_sha);
	o->min_nodes = min_nodes;
	o->min_updates = 1;
	o->start_delay_ms = 0;
	o->round_timeout_ms = 1000;
}

/* Session `peer` with CN cn comes up and joins with the federation's base
 * and adapter fingerprints and the given capabilities. */
/* Join.max_rank of the next fz_join (per-node rank; 0: every slot). */
static uint32_t fz_join_max_rank;

static inline void fz_join(fed *f, const fed_opts *o, uint64_t peer, const char *cn, char **caps,
                           size_t ncaps)
{
	fed_peer_up(f, peer, cn, 0);
	tset *lay;
	uint8_t lsha[32];
	if (lora_layout(&o->spec, &o->arch, &lay) || tset_shape_fingerprint(lay, lsha))
		abort();
	tset_free(lay);
	Fedlora__Envelope e = FEDLORA__ENVELOPE__INIT;
	Fedlora__Join j = FEDLORA__JOIN__INIT;
	j.sample_count = 10;
	j.max_rank = fz_join_max_rank;
	j.capabilities = caps;
	j.n_capabilities = ncaps;
	j.base_fingerprint.data = (uint8_t *)o->base_sha;
	j.base_fingerprint.len = 32;
	j.adapter_fingerprint.data = lsha;
	j.adapter_fingerprint.len = 32;
	e.body_case = FEDLORA__ENVELOPE__BODY_JOIN;
	e.join = &j;
	buf b;
	buf_init(&b, 0);
	if (wire_encode(&e, 0, &b))
		abort();
	fed_on_bytes(f, peer, b.data, b.len, 0);
	buf_fini(&b);
}

#endif
