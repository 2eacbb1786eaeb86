/* wire: every Envelope body round-trips; hostile input is refused cleanly. */
#include "testutil.h"

#include "err.h"
#include "wire.h"

#include <stdlib.h>
#include <string.h>

/* Builds an envelope of the given body case with recognisable field values.
 * Storage is static per call; the caller encodes it immediately. */
static Fedlora__Envelope *make(Fedlora__Envelope__BodyCase bc)
{
	static Fedlora__Envelope env;
	static Fedlora__Join join;
	static Fedlora__Welcome welcome;
	static Fedlora__Reject reject;
	static Fedlora__RoundStart rs;
	static Fedlora__TrainParams tp;
	static Fedlora__AdapterPayload ap;
	static Fedlora__QTensor qt, *qts[1];
	static Fedlora__Update up;
	static Fedlora__UpdateAck ack;
	static Fedlora__RoundEnd re;
	static Fedlora__Heartbeat hb;
	static Fedlora__Bye bye;
	static Fedlora__Error er;
	static Fedlora__SnapshotRequest sr;
	static Fedlora__LoraSpec lora;
	static Fedlora__Metric m1, *ms[1];
	static uint8_t fp[32], data[1000], scales[64];
	static uint64_t shape[2] = {8, 125};
	static char *caps[2] = {"q4", "ffa"}, *targets[2] = {"attn_q", "attn_v"};

	fedlora__envelope__init(&env);
	env.seq = 77;
	env.body_case = bc;
	for (int i = 0; i < 32; i++)
		fp[i] = (uint8_t)(i * 7 + 1);
	for (int i = 0; i < 1000; i++)
		data[i] = (uint8_t)(i * 13);
	fedlora__lora_spec__init(&lora);
	lora.rank = 8;
	lora.alpha = 16.0f;
	lora.n_targets = 2;
	lora.targets = targets;
	lora.ffa = 1;
	lora.init_seed = 1234;
	fedlora__qtensor__init(&qt);
	qt.name = "blk.0.attn_q.lora_a";
	qt.n_shape = 2;
	qt.shape = shape;
	qt.format = FEDLORA__QFORMAT__QFORMAT_Q4;
	qt.block_size = 32;
	qt.scales.data = scales;
	qt.scales.len = sizeof scales;
	qt.data.data = data;
	qt.data.len = sizeof data;
	qts[0] = &qt;
	fedlora__adapter_payload__init(&ap);
	ap.kind = FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA;
	ap.from_version = 3;
	ap.to_version = 4;
	ap.to_sha256.data = fp;
	ap.to_sha256.len = 32;
	ap.n_tensors = 1;
	ap.tensors = qts;
	fedlora__metric__init(&m1);
	m1.name = "eval_loss";
	m1.value = 2.25;
	ms[0] = &m1;

	switch (bc) {
	case FEDLORA__ENVELOPE__BODY_JOIN:
		fedlora__join__init(&join);
		join.software_version = "0.1.0";
		join.n_capabilities = 2;
		join.capabilities = caps;
		join.sample_count = 5000;
		join.base_fingerprint.data = fp;
		join.base_fingerprint.len = 32;
		join.have_version = 9;
		join.lora = &lora;
		env.join = &join;
		break;
	case FEDLORA__ENVELOPE__BODY_WELCOME:
		fedlora__welcome__init(&welcome);
		welcome.node_id = "node-07";
		welcome.heartbeat_ms = 2000;
		welcome.global_version = 12;
		welcome.lora = &lora;
		env.welcome = &welcome;
		break;
	case FEDLORA__ENVELOPE__BODY_REJECT:
		fedlora__reject__init(&reject);
		reject.reason = FEDLORA__REJECT__REASON__REASON_BASE_MISMATCH;
		reject.detail = "base model fingerprint differs";
		env.reject = &reject;
		break;
	case FEDLORA__ENVELOPE__BODY_ROUND_START:
		fedlora__round_start__init(&rs);
		fedlora__train_params__init(&tp);
		tp.local_steps = 20;
		tp.lr = 1e-3f;
		tp.uplink_format = FEDLORA__QFORMAT__QFORMAT_Q4;
		tp.uplink_block = 32;
		tp.error_feedback = 1;
		rs.round_id = 41;
		rs.global_version = 4;
		rs.global_sha256.data = fp;
		rs.global_sha256.len = 32;
		rs.params = &tp;
		rs.deadline_ms = 30000;
		rs.adapter = &ap;
		env.round_start = &rs;
		break;
	case FEDLORA__ENVELOPE__BODY_UPDATE:
		fedlora__update__init(&up);
		up.round_id = 41;
		up.base_version = 3;
		up.sample_count = 5000;
		up.tokens = 123456;
		up.n_metrics = 1;
		up.metrics = ms;
		up.delta = &ap;
		env.update = &up;
		break;
	case FEDLORA__ENVELOPE__BODY_UPDATE_ACK:
		fedlora__update_ack__init(&ack);
		ack.round_id = 41;
		ack.reason = FEDLORA__UPDATE_ACK__REASON__REASON_LATE;
		ack.detail = "deadline passed";
		env.update_ack = &ack;
		break;
	case FEDLORA__ENVELOPE__BODY_ROUND_END:
		fedlora__round_end__init(&re);
		re.round_id = 41;
		re.committed = 1;
		re.version = 5;
		re.participants = 3;
		re.n_metrics = 1;
		re.metrics = ms;
		env.round_end = &re;
		break;
	case FEDLORA__ENVELOPE__BODY_HEARTBEAT:
		fedlora__heartbeat__init(&hb);
		hb.seq = 99;
		hb.state = FEDLORA__HEARTBEAT__STATE__STATE_TRAINING;
		env.heartbeat = &hb;
		break;
	case FEDLORA__ENVELOPE__BODY_BYE:
		fedlora__bye__init(&bye);
		bye.reason = "shutting down";
		env.bye = &bye;
		break;
	case FEDLORA__ENVELOPE__BODY_ERROR:
		fedlora__error__init(&er);
		er.code = FEDLORA__ERROR__CODE__CODE_MALFORMED;
		er.detail = "bad";
		env.error = &er;
		break;
	case FEDLORA__ENVELOPE__BODY_SNAPSHOT_REQUEST:
		fedlora__snapshot_request__init(&sr);
		sr.have_version = 2;
		sr.round_id = 41;
		env.snapshot_request = &sr;
		break;
	default:
		break;
	}
	return &env;
}

static const Fedlora__Envelope__BodyCase all_cases[] = {
    FEDLORA__ENVELOPE__BODY_JOIN,
    FEDLORA__ENVELOPE__BODY_WELCOME,
    FEDLORA__ENVELOPE__BODY_REJECT,
    FEDLORA__ENVELOPE__BODY_ROUND_START,
    FEDLORA__ENVELOPE__BODY_UPDATE,
    FEDLORA__ENVELOPE__BODY_UPDATE_ACK,
    FEDLORA__ENVELOPE__BODY_ROUND_END,
    FEDLORA__ENVELOPE__BODY_HEARTBEAT,
    FEDLORA__ENVELOPE__BODY_BYE,
    FEDLORA__ENVELOPE__BODY_ERROR,
    FEDLORA__ENVELOPE__BODY_SNAPSHOT_REQUEST,
};
#define NCASES (sizeof all_cases / sizeof all_cases[0])

static void check_payload(const Fedlora__AdapterPayload *ap)
{
	assert_non_null(ap);
	assert_int_equal(ap->kind, FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA);
	assert_int_equal(ap->to_version, 4);
	assert_int_equal(ap->n_tensors, 1);
	const Fedlora__QTensor *q = ap->tensors[0];
	assert_string_equal(q->name, "blk.0.attn_q.lora_a");
	assert_int_equal(q->n_shape, 2);
	assert_int_equal(q->shape[1], 125);
	assert_int_equal(q->data.len, 1000);
	for (int i = 0; i < 1000; i++)
		assert_int_equal(q->data.data[i], (uint8_t)(i * 13));
}

static void test_roundtrip_every_body(void **s)
{
	(void)s;
	for (size_t k = 0; k < NCASES; k++) {
		Fedlora__Envelope *env = make(all_cases[k]);
		buf b;
		buf_init(&b, 1 << 20);
		assert_int_equal(wire_encode(env, 1 << 20, &b), 0);
		assert_int_equal(b.len, wire_size(env));
		wire_msg *m = NULL;
		assert_int_equal(wire_decode(b.data, b.len, 1 << 20, 0, &m), 0);
		const Fedlora__Envelope *d = wire_env(m);
		assert_int_equal(d->protocol_version, WIRE_PROTOCOL_VERSION);
		assert_int_equal(d->seq, 77);
		assert_int_equal(d->body_case, all_cases[k]);
		assert_string_equal(wire_body_name(d), wire_body_name(env));
		switch (d->body_case) {
		case FEDLORA__ENVELOPE__BODY_JOIN:
			assert_string_equal(d->join->software_version, "0.1.0");
			assert_int_equal(d->join->n_capabilities, 2);
			assert_string_equal(d->join->capabilities[1], "ffa");
			assert_int_equal(d->join->sample_count, 5000);
			assert_int_equal(d->join->base_fingerprint.len, 32);
			assert_int_equal(d->join->lora->rank, 8);
			assert_string_equal(d->join->lora->targets[1], "attn_v");
			assert_true(d->join->lora->ffa);
			break;
		case FEDLORA__ENVELOPE__BODY_WELCOME:
			assert_string_equal(d->welcome->node_id, "node-07");
			assert_int_equal(d->welcome->global_version, 12);
			assert_true(d->welcome->lora->alpha == 16.0f);
			break;
		case FEDLORA__ENVELOPE__BODY_REJECT:
			assert_int_equal(d->reject->reason,
			                 FEDLORA__REJECT__REASON__REASON_BASE_MISMATCH);
			assert_string_equal(d->reject->detail, "base model fingerprint differs");
			break;
		case FEDLORA__ENVELOPE__BODY_ROUND_START:
			assert_int_equal(d->round_start->round_id, 41);
			assert_int_equal(d->round_start->params->local_steps, 20);
			assert_int_equal(d->round_start->params->uplink_format,
			                 FEDLORA__QFORMAT__QFORMAT_Q4);
			assert_true(d->round_start->params->error_feedback);
			check_payload(d->round_start->adapter);
			break;
		case FEDLORA__ENVELOPE__BODY_UPDATE:
			assert_int_equal(d->update->tokens, 123456);
			assert_string_equal(d->update->metrics[0]->name, "eval_loss");
			assert_true(d->update->metrics[0]->value == 2.25);
			check_payload(d->update->delta);
			break;
		case FEDLORA__ENVELOPE__BODY_UPDATE_ACK:
			assert_false(d->update_ack->accepted);
			assert_int_equal(d->update_ack->reason,
			                 FEDLORA__UPDATE_ACK__REASON__REASON_LATE);
			break;
		case FEDLORA__ENVELOPE__BODY_ROUND_END:
			assert_true(d->round_end->committed);
			assert_int_equal(d->round_end->version, 5);
			break;
		case FEDLORA__ENVELOPE__BODY_HEARTBEAT:
			assert_int_equal(d->heartbeat->seq, 99);
			break;
		case FEDLORA__ENVELOPE__BODY_BYE:
			assert_string_equal(d->bye->reason, "shutting down");
			break;
		case FEDLORA__ENVELOPE__BODY_ERROR:
			assert_int_equal(d->error->code, FEDLORA__ERROR__CODE__CODE_MALFORMED);
			break;
		case FEDLORA__ENVELOPE__BODY_SNAPSHOT_REQUEST:
			assert_int_equal(d->snapshot_request->have_version, 2);
			break;
		default:
			fail_msg("unexpected body %d", d->body_case);
		}
		wire_free(m);
		buf_fini(&b);
	}
}

static void test_bulk_goes_last(void **s)
{
	(void)s;
	/* The QTensor data bytes must be the final bytes of an Update. */
	buf b;
	buf_init(&b, 0);
	assert_int_equal(wire_encode(make(FEDLORA__ENVELOPE__BODY_UPDATE), 0, &b), 0);
	assert_true(b.len > 1000);
	for (int i = 0; i < 1000; i++)
		assert_int_equal(b.data[b.len - 1000 + (size_t)i], (uint8_t)(i * 13));
	buf_fini(&b);
}

static void test_truncated_oversized_garbage(void **s)
{
	(void)s;
	buf b;
	buf_init(&b, 0);
	assert_int_equal(wire_encode(make(FEDLORA__ENVELOPE__BODY_ROUND_START), 0, &b), 0);
	wire_msg *m = NULL;
	/* Oversized: refused before parsing. */
	assert_int_equal(wire_decode(b.data, b.len, b.len - 1, 0, &m), FL_ETOOBIG);
	assert_null(m);
	/* Truncated inside the bulk bytes: always an error. */
	for (size_t cut = b.len - 999; cut < b.len; cut += 37)
		assert_int_equal(wire_decode(b.data, cut, 1 << 20, 0, &m), FL_EPROTO);
	/* Every prefix: an error or a message with a body; never a crash/leak. */
	for (size_t cut = 0; cut < b.len; cut++) {
		int rc = wire_decode(b.data, cut, 1 << 20, 0, &m);
		if (rc == 0) {
			assert_int_not_equal(wire_env(m)->body_case,
			                     FEDLORA__ENVELOPE__BODY__NOT_SET);
			wire_free(m);
			m = NULL;
		} else {
			assert_true(rc == FL_EPROTO || rc == FL_EUNSUPPORTED);
		}
	}
	/* Empty input: no body. */
	assert_int_equal(wire_decode(b.data, 0, 1 << 20, 0, &m), FL_EPROTO);
	/* Garbage. */
	uint64_t rs = 7;
	uint8_t g[512];
	int refused = 0;
	for (int it = 0; it < 2000; it++) {
		size_t n = 1 + tu_rand(&rs) % sizeof g;
		for (size_t i = 0; i < n; i++)
			g[i] = (uint8_t)tu_rand(&rs);
		int rc = wire_decode(g, n, sizeof g, 0, &m);
		if (rc == 0) {
			wire_free(m);
			m = NULL;
		} else {
			refused++;
		}
	}
	assert_true(refused > 1900);
	buf_fini(&b);
}

static void test_version_and_budget(void **s)
{
	(void)s;
	/* Protocol version 2 is refused. */
	Fedlora__Envelope *env = make(FEDLORA__ENVELOPE__BODY_HEARTBEAT);
	env->protocol_version = 2;
	uint8_t tmp[256];
	size_t n = fedlora__envelope__pack(env, tmp);
	wire_msg *m = NULL;
	assert_int_equal(wire_decode(tmp, n, sizeof tmp, 0, &m), FL_EUNSUPPORTED);

	/* 20,000 empty Metric entries: 40 KB on the wire that would unpack into
	 * ~1 MB of structs. A 256 KiB budget refuses it; the default budget
	 * (64 KiB + 64 x len) admits it, bounded. */
	size_t cnt = 20000;
	uint8_t *big = malloc(cnt * 2 + 16);
	size_t k = 0;
	big[k++] = 0x08; /* protocol_version = 1 */
	big[k++] = 0x01;
	big[k++] = 0x8a; /* field 17 (heartbeat), wire type 2 */
	big[k++] = 0x01;
	size_t inner = cnt * 2;
	big[k++] = (uint8_t)(0x80 | (inner & 0x7f)); /* varint length */
	big[k++] = (uint8_t)(0x80 | ((inner >> 7) & 0x7f));
	big[k++] = (uint8_t)(inner >> 14);
	for (size_t i = 0; i < cnt; i++) {
		big[k++] = 0x22; /* field 4 (metrics), wire type 2 */
		big[k++] = 0x00; /* empty Metric */
	}
	assert_int_equal(wire_decode(big, k, 1 << 20, 256 * 1024, &m), FL_ETOOBIG);
	assert_null(m);
	assert_int_equal(wire_decode(big, k, 1 << 20, 0, &m), 0);
	assert_int_equal(wire_env(m)->heartbeat->n_metrics, cnt);
	assert_true(wire_allocated(m) <= 64 * 1024 + 64 * k);
	wire_free(m);
	free(big);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_roundtrip_every_body),
	    cmocka_unit_test(test_bulk_goes_last),
	    cmocka_unit_test(test_truncated_oversized_garbage),
	    cmocka_unit_test(test_version_and_budget),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
