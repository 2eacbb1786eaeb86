/* sawire — see sawire.h. */
#include "sawire.h"

#include "err.h"

#include <stdlib.h>
#include <string.h>

void saw_keys_to_proto(const sa_keys *k, uint64_t round_id, Fedlora__SecAggKeys *out)
{
	fedlora__sec_agg_keys__init(out);
	out->round_id = round_id;
	out->index = k->index;
	out->enc_pk.data = (uint8_t *)k->enc_pk;
	out->enc_pk.len = SA_KEY_LEN;
	out->mask_pk.data = (uint8_t *)k->mask_pk;
	out->mask_pk.len = SA_KEY_LEN;
	out->signature.data = (uint8_t *)k->sig;
	out->signature.len = k->sig_len;
	out->cert_der.data = (uint8_t *)k->cert_der;
	out->cert_der.len = k->cert_len;
}

int saw_keys_from_proto(const Fedlora__SecAggKeys *m, const char *node_id, sa_keys *out)
{
	if (m->enc_pk.len != SA_KEY_LEN || m->mask_pk.len != SA_KEY_LEN)
		return FL_EPROTO;
	memset(out, 0, sizeof *out);
	out->index = m->index;
	out->node_id = node_id;
	memcpy(out->enc_pk, m->enc_pk.data, SA_KEY_LEN);
	memcpy(out->mask_pk, m->mask_pk.data, SA_KEY_LEN);
	out->sig = m->signature.data;
	out->sig_len = m->signature.len;
	out->cert_der = m->cert_der.data;
	out->cert_len = m->cert_der.len;
	return 0;
}

int saw_shares_to_proto(const sa_share *sh, uint32_t n, Fedlora__SecAggShare **items,
                        Fedlora__SecAggShare ***ptrs)
{
	Fedlora__SecAggShare *ms = calloc(n ? n : 1, sizeof *ms);
	Fedlora__SecAggShare **ps = calloc(n ? n : 1, sizeof *ps);
	if (!ms || !ps) {
		free(ms);
		free(ps);
		return FL_ENOMEM;
	}
	for (uint32_t i = 0; i < n; i++) {
		fedlora__sec_agg_share__init(&ms[i]);
		ms[i].from = sh[i].from;
		ms[i].to = sh[i].to;
		ms[i].ct.data = (uint8_t *)sh[i].ct;
		ms[i].ct.len = sh[i].ct_len;
		ps[i] = &ms[i];
	}
	*items = ms;
	*ptrs = ps;
	return 0;
}

int saw_shares_from_proto(Fedlora__SecAggShare *const *ms, size_t n, sa_share **out)
{
	sa_share *sh = calloc(n ? n : 1, sizeof *sh);
	if (!sh)
		return FL_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		sh[i].from = ms[i]->from;
		sh[i].to = ms[i]->to;
		sh[i].ct = ms[i]->ct.data;
		sh[i].ct_len = ms[i]->ct.len;
	}
	*out = sh;
	return 0;
}
