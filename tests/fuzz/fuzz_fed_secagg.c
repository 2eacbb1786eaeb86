/* Fuzz target: the coordinator's side of a secure round (SecAggKeys,
 * SecAggShares, SecAggReveal and the masked Update). A federation with
 * aggregation.secure = true (tiny adapter, three joined nodes, round 1
 * open in its key phase) receives the input as a sequence of messages,
 * each a peer byte (low 7 bits mod 3: node 1..3; top bit: a phase
 * deadline passes after it) and a u32le length; between messages the clock
 * moves on so phase deadlines pass and the round walks through every
 * phase. Invariants (abort otherwise): every message the coordinator
 * sends decodes, the version moves by at most one, the global adapter
 * stays finite, and the round ends (committed or abandoned) by the final
 * deadline.
 *
 * Seeds: tests/fuzz/corpus/fed_secagg/. To regenerate them, build this
 * file with -DFUZZ_FED_SECAGG_MAKE_SEEDS and run it with the corpus
 * directory as argument. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "fed.h"
#include "log.h"
#include "secagg.h"
#include "sha.h"
#include "wire.h"

#include "fuzz_fedio.h"
#include "fuzz_seed.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fz_opts(fed_opts *o)
{
	fz_opts_tiny(o, 3);
	o->secure.on = 1;
	o->secure.phase_ms = 100;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int once;
	if (!once) {
		log_set_level(LOG_LVL_OFF);
		once = 1;
	}
	fed_opts o;
	fz_opts(&o);
	fed_io io = {.send = fz_send, .close = fz_close};
	fed *f = NULL;
	if (fed_new(&o, NULL, NULL, &io, &f))
		abort();
	char *caps[] = {"q4", "secagg"};
	fz_join(f, &o, 1, "fz1", caps, 2);
	fz_join(f, &o, 2, "fz2", caps, 2);
	fz_join(f, &o, 3, "fz3", caps, 2);
	fed_tick(f, 0);
	if (fed_get_state(f) != FED_COLLECTING)
		abort();
	uint64_t now = 1;
	size_t off = 0;
	while (off + 5 <= size) {
		uint64_t peer = 1 + (uint64_t)(data[off] & 0x7f) % 3;
		uint32_t n = (uint32_t)data[off + 1] | (uint32_t)data[off + 2] << 8 |
		             (uint32_t)data[off + 3] << 16 | (uint32_t)data[off + 4] << 24;
		off += 5;
		if (n > size - off)
			n = (uint32_t)(size - off);
		fed_on_bytes(f, peer, data + off, n, now);
		off += n;
		/* a message whose top peer bit is set also lets a phase expire */
		if (data[off - n - 5] & 0x80)
			now += 150;
		fed_tick(f, now);
	}
	/* past every deadline: round 1 is over */
	for (int i = 0; i < 6 && fed_round_id(f) == 1 && fed_get_state(f) != FED_IDLE; i++) {
		now += 1100;
		fed_tick(f, now);
	}
	if (fed_version(f) > 1 || (fed_round_id(f) == 1 && fed_get_state(f) != FED_IDLE))
		abort();
	if (!tset_all_finite(fed_global(f), NULL))
		abort();
	fed_free(f);
	return 0;
}

#ifdef FUZZ_FED_SECAGG_MAKE_SEEDS
/* Seeds: the messages each phase expects, with the right lengths (random
 * keys and ciphertexts: the crypto fails later, the paths are reached). */
int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	const char *d = argv[1];
	uint8_t key[32], sig[70], cert[300], ct[SA_SHARE_CT_LEN], sh[SA_SHARE_LEN];
	memset(key, 7, sizeof key);
	memset(sig, 0x30, sizeof sig);
	memset(cert, 0x30, sizeof cert);
	memset(ct, 9, sizeof ct);
	memset(sh, 0, sizeof sh);
	buf all;
	buf_init(&all, 0);
	Fedlora__Envelope e = FEDLORA__ENVELOPE__INIT;
	/* keys from the three nodes, then the phase ends */
	for (uint8_t i = 0; i < 3; i++) {
		Fedlora__SecAggKeys k = FEDLORA__SEC_AGG_KEYS__INIT;
		k.round_id = 1;
		k.index = i;
		k.enc_pk.data = key;
		k.enc_pk.len = 32;
		k.mask_pk.data = key;
		k.mask_pk.len = 32;
		k.signature.data = sig;
		k.signature.len = sizeof sig;
		k.cert_der.data = cert;
		k.cert_der.len = sizeof cert;
		e.body_case = FEDLORA__ENVELOPE__BODY_SECAGG_KEYS;
		e.secagg_keys = &k;
		fz_seed_msg(&all, i, &e);
	}
	buf one;
	buf_init(&one, 0);
	buf_append(&one, all.data, all.len);
	fz_seed_put(d, "keys", &one);
	buf_fini(&one);
	/* shares: each node to the other two */
	for (uint8_t i = 0; i < 3; i++) {
		Fedlora__SecAggShare s[2], *ps[2];
		int n = 0;
		for (uint8_t j = 0; j < 3; j++) {
			if (j == i)
				continue;
			fedlora__sec_agg_share__init(&s[n]);
			s[n].from = i;
			s[n].to = j;
			s[n].ct.data = ct;
			s[n].ct.len = sizeof ct;
			ps[n] = &s[n];
			n++;
		}
		Fedlora__SecAggShares m = FEDLORA__SEC_AGG_SHARES__INIT;
		m.round_id = 1;
		m.n_shares = 2;
		m.shares = ps;
		e.body_case = FEDLORA__ENVELOPE__BODY_SECAGG_SHARES;
		e.secagg_shares = &m;
		fz_seed_msg(&all, i, &e);
	}
	/* masked inputs: dim = 2x16 + 8x2 + 1 = 49 elements */
	sa_round r = {
	    .round_id = 1, .n = 3, .k = 2, .t = 2, .mod_bits = sa_mod_bits(4, 3, 1), .dim = 49};
	size_t pl = sa_packed_len(&r);
	uint8_t *mk = calloc(pl, 1);
	for (uint8_t i = 0; i < 3; i++) {
		Fedlora__Update u = FEDLORA__UPDATE__INIT;
		u.round_id = 1;
		u.sample_count = 10;
		u.masked.data = mk;
		u.masked.len = pl;
		e.body_case = FEDLORA__ENVELOPE__BODY_UPDATE;
		e.update = &u;
		fz_seed_msg(&all, i, &e);
	}
	free(mk);
	/* reveals of the others' self-mask seeds */
	for (uint8_t i = 0; i < 3; i++) {
		Fedlora__SecAggRevealShare s[2], *ps[2];
		int n = 0;
		for (uint8_t j = 0; j < 3; j++) {
			if (j == i)
				continue;
			fedlora__sec_agg_reveal_share__init(&s[n]);
			s[n].owner = j;
			s[n].share.data = sh;
			s[n].share.len = sizeof sh;
			ps[n] = &s[n];
			n++;
		}
		Fedlora__SecAggReveal m = FEDLORA__SEC_AGG_REVEAL__INIT;
		m.round_id = 1;
		m.n_shares = 2;
		m.shares = ps;
		e.body_case = FEDLORA__ENVELOPE__BODY_SECAGG_REVEAL;
		e.secagg_reveal = &m;
		fz_seed_msg(&all, i, &e);
	}
	fz_seed_put(d, "all_phases", &all);
	buf_fini(&all);
	return 0;
}
#endif
