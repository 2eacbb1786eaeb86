/* wire — see wire.h. */
#include "wire.h"

#include "err.h"

#include <stdlib.h>
#include <string.h>

/* Every block carries a small header with its size so free() can give the
 * budget back; the budget itself is per message. */
typedef struct budget {
	size_t limit;
	size_t used;
	size_t peak;
	int exceeded;
} budget;

struct wire_msg {
	ProtobufCAllocator alloc;
	budget b;
	Fedlora__Envelope *env;
};

typedef union blk_hdr {
	size_t n;
	max_align_t align;
} blk_hdr;

static void *budget_alloc(void *ud, size_t n)
{
	budget *b = ud;
	if (n > b->limit - b->used || n > SIZE_MAX - sizeof(blk_hdr)) {
		b->exceeded = 1;
		return NULL;
	}
	blk_hdr *h = malloc(sizeof *h + n);
	if (!h)
		return NULL;
	h->n = n;
	b->used += n;
	if (b->used > b->peak)
		b->peak = b->used;
	return h + 1;
}

static void budget_free(void *ud, void *p)
{
	budget *b = ud;
	if (!p)
		return;
	blk_hdr *h = (blk_hdr *)p - 1;
	b->used -= h->n;
	free(h);
}

/* protobuf-c keeps fields it does not know (to re-emit them) and accepts
 * field number 0, which is invalid protobuf and would not decode again.
 * Refuse it anywhere in the tree; other unknown fields are tolerated for
 * forward compatibility. Depth is bounded by the schema (no recursion in
 * fedlora.proto), so the recursion here is bounded too. */
static int check_unknown(const ProtobufCMessage *msg)
{
	for (unsigned i = 0; i < msg->n_unknown_fields; i++)
		if (msg->unknown_fields[i].tag == 0)
			return FL_EPROTO;
	const ProtobufCMessageDescriptor *d = msg->descriptor;
	for (unsigned f = 0; f < d->n_fields; f++) {
		const ProtobufCFieldDescriptor *fd = &d->fields[f];
		if (fd->type != PROTOBUF_C_TYPE_MESSAGE)
			continue;
		const char *base = (const char *)msg + fd->offset;
		if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
			size_t n = *(const size_t *)((const char *)msg + fd->quantifier_offset);
			ProtobufCMessage *const *arr = *(ProtobufCMessage *const *const *)base;
			for (size_t k = 0; k < n; k++)
				if (arr[k] && check_unknown(arr[k]))
					return FL_EPROTO;
		} else {
			if (fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
				uint32_t cs =
				    *(const uint32_t *)((const char *)msg + fd->quantifier_offset);
				if (cs != fd->id)
					continue;
			}
			const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)base;
			if (sub && check_unknown(sub))
				return FL_EPROTO;
		}
	}
	return 0;
}

int wire_decode(const uint8_t *data, size_t len, size_t max_len, size_t budget_bytes,
                wire_msg **out)
{
	if (len > max_len)
		return FL_ETOOBIG;
	wire_msg *m = calloc(1, sizeof *m);
	if (!m)
		return FL_ENOMEM;
	if (budget_bytes == 0) {
		budget_bytes = 64 * 1024;
		size_t extra;
		if (sz_mul(len, 64, &extra) || sz_add(budget_bytes, extra, &budget_bytes))
			budget_bytes = SIZE_MAX;
	}
	m->b.limit = budget_bytes;
	m->alloc.alloc = budget_alloc;
	m->alloc.free = budget_free;
	m->alloc.allocator_data = &m->b;
	m->env = fedlora__envelope__unpack(&m->alloc, len, data);
	int rc = 0;
	if (!m->env)
		rc = m->b.exceeded ? FL_ETOOBIG : FL_EPROTO;
	else if (check_unknown(&m->env->base))
		rc = FL_EPROTO;
	else if (m->env->protocol_version == 0)
		rc = FL_EPROTO; /* not an envelope of ours at all */
	else if (m->env->protocol_version != WIRE_PROTOCOL_VERSION)
		rc = FL_EUNSUPPORTED;
	else if (m->env->body_case == FEDLORA__ENVELOPE__BODY__NOT_SET)
		rc = FL_EPROTO;
	if (rc) {
		wire_free(m);
		return rc;
	}
	*out = m;
	return 0;
}

const Fedlora__Envelope *wire_env(const wire_msg *m)
{
	return m->env;
}

size_t wire_allocated(const wire_msg *m)
{
	return m->b.peak;
}

void wire_free(wire_msg *m)
{
	if (!m)
		return;
	if (m->env)
		fedlora__envelope__free_unpacked(m->env, &m->alloc);
	free(m);
}

size_t wire_size(const Fedlora__Envelope *env)
{
	Fedlora__Envelope copy = *env;
	copy.protocol_version = WIRE_PROTOCOL_VERSION;
	return fedlora__envelope__get_packed_size(&copy);
}

int wire_encode(const Fedlora__Envelope *env, size_t max_len, buf *out)
{
	Fedlora__Envelope copy = *env;
	copy.protocol_version = WIRE_PROTOCOL_VERSION;
	size_t n = fedlora__envelope__get_packed_size(&copy);
	if (max_len && n > max_len)
		return FL_ETOOBIG;
	int rc = buf_reserve(out, n);
	if (rc)
		return rc;
	size_t w = fedlora__envelope__pack(&copy, out->data + out->len);
	if (w != n)
		return FL_EPROTO;
	out->len += n;
	return 0;
}

const char *wire_body_name(const Fedlora__Envelope *env)
{
	switch (env->body_case) {
	case FEDLORA__ENVELOPE__BODY_JOIN:
		return "join";
	case FEDLORA__ENVELOPE__BODY_WELCOME:
		return "welcome";
	case FEDLORA__ENVELOPE__BODY_REJECT:
		return "reject";
	case FEDLORA__ENVELOPE__BODY_ROUND_START:
		return "round_start";
	case FEDLORA__ENVELOPE__BODY_UPDATE:
		return "update";
	case FEDLORA__ENVELOPE__BODY_UPDATE_ACK:
		return "update_ack";
	case FEDLORA__ENVELOPE__BODY_ROUND_END:
		return "round_end";
	case FEDLORA__ENVELOPE__BODY_HEARTBEAT:
		return "heartbeat";
	case FEDLORA__ENVELOPE__BODY_BYE:
		return "bye";
	case FEDLORA__ENVELOPE__BODY_ERROR:
		return "error";
	case FEDLORA__ENVELOPE__BODY_SNAPSHOT_REQUEST:
		return "snapshot_request";
	case FEDLORA__ENVELOPE__BODY_SECAGG_KEYS:
		return "secagg_keys";
	case FEDLORA__ENVELOPE__BODY_SECAGG_ROSTER:
		return "secagg_roster";
	case FEDLORA__ENVELOPE__BODY_SECAGG_SHARES:
		return "secagg_shares";
	case FEDLORA__ENVELOPE__BODY_SECAGG_UNMASK:
		return "secagg_unmask";
	case FEDLORA__ENVELOPE__BODY_SECAGG_REVEAL:
		return "secagg_reveal";
	case FEDLORA__ENVELOPE__BODY_XFER_OFFER:
		return "xfer_offer";
	case FEDLORA__ENVELOPE__BODY_XFER_ACCEPT:
		return "xfer_accept";
	case FEDLORA__ENVELOPE__BODY_XFER_CHUNK:
		return "xfer_chunk";
	case FEDLORA__ENVELOPE__BODY_XFER_ACK:
		return "xfer_ack";
	case FEDLORA__ENVELOPE__BODY_DOWN_FINAL:
		return "down_final";
	case FEDLORA__ENVELOPE__BODY_DOWN_FINAL_EVAL:
		return "down_final_eval";
	default:
		return "none";
	}
}
