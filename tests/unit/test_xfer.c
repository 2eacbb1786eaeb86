/* xfer: chunking, reassembly, refusals naming the problem, resume after a
 * cut, bounded memory. Two xfer instances are wired through in-memory
 * queues; the "link" can lose what is in flight, reorder, duplicate or
 * corrupt messages. */
#include "testutil.h"

#include "err.h"
#include "log.h"
#include "sha.h"
#include "wire.h"
#include "xfer.h"

#include <dirent.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__)
#define HAVE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HAVE_ASAN 1
#endif
#endif
#ifdef HAVE_ASAN
/* from the ASan runtime (its header is not installed everywhere) */
size_t __sanitizer_get_current_allocated_bytes(void);
static size_t heap_in_use(void)
{
	return __sanitizer_get_current_allocated_bytes();
}
#else
static size_t heap_in_use(void)
{
	struct mallinfo2 mi = mallinfo2();
	return mi.uordblks;
}
#endif

#define QMAX 4096
#define CS   (16u << 10)
#define WIN  4u

typedef struct msg {
	uint8_t *d;
	size_t l;
} msg;

typedef struct end {
	xfer *x;
	char dir[512];
	msg q[QMAX]; /* sent by this end, not yet taken by the other */
	int nq;
	int drop;      /* link down: sends vanish */
	uint64_t peer; /* how this end names the other */
	msg app[8];    /* delivered messages (chunked or plain), in order */
	int napp;
	char why[300];
	int fails;
	uint64_t chunk_bytes; /* chunk payload bytes this end sent */
	int chunks_inflight, max_inflight;
} end;

static int e_send(void *ud, uint64_t peer, const uint8_t *data, size_t len)
{
	end *e = ud;
	(void)peer;
	if (xfer_is_mine(data, len)) {
		wire_msg *m = NULL;
		assert_int_equal(wire_decode(data, len, 64u << 20, 0, &m), 0);
		if (wire_env(m)->body_case == FEDLORA__ENVELOPE__BODY_XFER_CHUNK) {
			e->chunk_bytes += wire_env(m)->xfer_chunk->data.len;
			e->chunks_inflight++;
			if (e->chunks_inflight > e->max_inflight)
				e->max_inflight = e->chunks_inflight;
		}
		wire_free(m);
	}
	if (e->drop)
		return 0;
	assert_true(e->nq < QMAX);
	e->q[e->nq].d = malloc(len);
	memcpy(e->q[e->nq].d, data, len);
	e->q[e->nq].l = len;
	e->nq++;
	return 0;
}

static void e_deliver(void *ud, uint64_t peer, const uint8_t *data, size_t len)
{
	end *e = ud;
	(void)peer;
	assert_true(e->napp < 8);
	e->app[e->napp].d = malloc(len);
	memcpy(e->app[e->napp].d, data, len);
	e->app[e->napp].l = len;
	e->napp++;
}

static void e_fail(void *ud, uint64_t peer, const char *why)
{
	end *e = ud;
	(void)peer;
	snprintf(e->why, sizeof e->why, "%s", why);
	e->fails++;
}

static void end_init(end *e, const char *name, size_t threshold, size_t max_msg)
{
	memset(e, 0, sizeof *e);
	char *d = tu_mkdtemp();
	snprintf(e->dir, sizeof e->dir, "%s/%s", d, name);
	free(d);
	xfer_opts o;
	xfer_opts_default(&o);
	o.threshold = threshold;
	o.chunk_size = CS;
	o.window = WIN;
	o.max_msg = max_msg;
	o.queue_max = max_msg + (1u << 20);
	o.dir = e->dir;
	o.keep_ms = 1000;
	o.max_partials = 2;
	xfer_io io = {.ud = e, .send = e_send, .deliver = e_deliver, .fail = e_fail};
	assert_int_equal(xfer_new(&o, &io, &e->x), 0);
}

static void clear_q(end *e)
{
	for (int i = 0; i < e->nq; i++)
		free(e->q[i].d);
	e->nq = 0;
}

static void end_fini(end *e)
{
	xfer_free(e->x);
	clear_q(e);
	for (int i = 0; i < e->napp; i++)
		free(e->app[i].d);
	char *slash = strrchr(e->dir, '/');
	*slash = 0;
	tu_rmtree(e->dir);
}

/* Session up on both ends: a names b by pa, b names a by pb. */
static void link_up(end *a, end *b, uint64_t pa, uint64_t pb)
{
	a->peer = pa;
	b->peer = pb;
	a->drop = b->drop = 0;
	a->chunks_inflight = b->chunks_inflight = 0;
	assert_int_equal(xfer_peer_up(a->x, pa, "B", 0), 0);
	assert_int_equal(xfer_peer_up(b->x, pb, "A", 0), 0);
}

static void link_down(end *a, end *b, uint64_t now)
{
	clear_q(a);
	clear_q(b);
	xfer_peer_gone(a->x, a->peer, now);
	xfer_peer_gone(b->x, b->peer, now);
}

/* Moves the first message of from's queue to to. */
static void step(end *from, end *to)
{
	msg m = from->q[0];
	memmove(from->q, from->q + 1, (size_t)(from->nq - 1) * sizeof m);
	from->nq--;
	if (xfer_is_mine(m.d, m.l)) {
		wire_msg *w = NULL;
		assert_int_equal(wire_decode(m.d, m.l, 64u << 20, 0, &w), 0);
		if (wire_env(w)->body_case == FEDLORA__ENVELOPE__BODY_XFER_ACK)
			to->chunks_inflight--;
		wire_free(w);
		xfer_on_message(to->x, to->peer, m.d, m.l, 0);
	} else {
		e_deliver(to, to->peer, m.d, m.l);
	}
	free(m.d);
}

/* Runs the link until quiet, or until `limit` messages moved a -> b. */
static void run(end *a, end *b, int limit)
{
	int moved = 0;
	while (a->nq || b->nq) {
		if (a->nq) {
			if (limit >= 0 && moved >= limit)
				return;
			step(a, b);
			moved++;
		}
		if (b->nq)
			step(b, a);
	}
}

static uint8_t *pattern(size_t n, uint64_t seed)
{
	uint8_t *p = malloc(n);
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(tu_rand(&seed) >> 56);
	return p;
}

static void send_copy(end *e, const uint8_t *d, size_t n)
{
	xfer_blob *b = NULL;
	assert_int_equal(xfer_blob_new(d, n, &b), 0);
	assert_int_equal(xfer_send(e->x, e->peer, b), 0);
	xfer_blob_release(b);
}

static int count_parts(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return -1;
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL)
		if (strstr(de->d_name, ".part"))
			n++;
	closedir(d);
	return n;
}

static void test_geometry(void **state)
{
	(void)state;
	size_t lens[] = {1,
	                 1000,
	                 XFER_HEAD_MIN,
	                 XFER_HEAD_MIN + 1,
	                 XFER_HEAD_MIN + CS - 1,
	                 XFER_HEAD_MIN + CS,
	                 XFER_HEAD_MIN + 5 * CS + 7,
	                 100u << 20};
	for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
		uint32_t n;
		size_t head;
		xfer_geometry(lens[k], CS, &n, &head);
		assert_int_equal(head + (size_t)(n - 1) * CS, lens[k]);
		if (lens[k] >= XFER_HEAD_MIN) {
			assert_true(head >= XFER_HEAD_MIN);
			assert_true(head < XFER_HEAD_MIN + CS);
		} else {
			assert_int_equal(n, 1);
		}
	}
	uint32_t n;
	size_t head;
	xfer_geometry(XFER_HEAD_MIN + CS, CS, &n, &head);
	assert_int_equal(n, 2);
	assert_int_equal(head, XFER_HEAD_MIN);
}

static void test_is_mine(void **state)
{
	(void)state;
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__Heartbeat hb = FEDLORA__HEARTBEAT__INIT;
	env.seq = 1234567;
	env.body_case = FEDLORA__ENVELOPE__BODY_HEARTBEAT;
	env.heartbeat = &hb;
	buf b;
	buf_init(&b, 0);
	assert_int_equal(wire_encode(&env, 0, &b), 0);
	assert_false(xfer_is_mine(b.data, b.len));
	Fedlora__XferAck ack = FEDLORA__XFER_ACK__INIT;
	ack.id = 3;
	env.body_case = FEDLORA__ENVELOPE__BODY_XFER_ACK;
	env.xfer_ack = &ack;
	buf_clear(&b);
	assert_int_equal(wire_encode(&env, 0, &b), 0);
	assert_true(xfer_is_mine(b.data, b.len));
	/* truncated and garbage */
	assert_false(xfer_is_mine(b.data, 1));
	const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
	assert_false(xfer_is_mine(junk, sizeof junk));
	assert_false(xfer_is_mine(NULL, 0));
	buf_fini(&b);
}

/* A large message then a small one: both arrive, in order, byte-exact;
 * never more than WIN chunks unacknowledged; chunk bytes sent = size. */
static void test_roundtrip_order_window(void **state)
{
	(void)state;
	end a, b;
	end_init(&a, "a", 64u << 10, 64u << 20);
	end_init(&b, "b", 64u << 10, 64u << 20);
	link_up(&a, &b, 10, 20);
	size_t n = (1u << 20) + 12345;
	uint8_t *big = pattern(n, 1), small[100];
	memset(small, 7, sizeof small);
	assert_true(xfer_wants(a.x, a.peer, n));
	assert_false(xfer_wants(a.x, a.peer, sizeof small));
	send_copy(&a, big, n);
	/* queued behind the large one: must go through xfer too */
	assert_true(xfer_wants(a.x, a.peer, sizeof small));
	send_copy(&a, small, sizeof small);
	run(&a, &b, -1);
	assert_int_equal(b.fails, 0);
	assert_int_equal(a.fails, 0);
	assert_int_equal(b.napp, 2);
	assert_int_equal(b.app[0].l, n);
	assert_memory_equal(b.app[0].d, big, n);
	assert_int_equal(b.app[1].l, sizeof small);
	assert_memory_equal(b.app[1].d, small, sizeof small);
	assert_int_equal(a.chunk_bytes, n);
	assert_true(a.max_inflight >= 1);
	assert_true(a.max_inflight <= (int)WIN);
	assert_false(xfer_wants(a.x, a.peer, sizeof small));
	xfer_stats st;
	xfer_get_stats(b.x, &st);
	assert_int_equal(st.in_msgs, 1);
	assert_int_equal(st.partials, 0);
	assert_int_equal(count_parts(b.dir), 0);
	free(big);
	end_fini(&a);
	end_fini(&b);
}

/* Cut the link after k chunk messages at several points; the same bytes
 * offered again resume: total chunk bytes sent - size <= one window. */
static void test_resume_same_bytes(void **state)
{
	(void)state;
	size_t n = (2u << 20) + 999;
	uint8_t *big = pattern(n, 2);
	int cuts[] = {1, 2, 5, 40, 100, 125}; /* 125 chunks: the last cut leaves one */
	for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++) {
		end a, b;
		end_init(&a, "a", 64u << 10, 64u << 20);
		end_init(&b, "b", 64u << 10, 64u << 20);
		link_up(&a, &b, 1, 1);
		send_copy(&a, big, n);
		run(&a, &b, cuts[c]); /* offer + chunks, then the link dies */
		link_down(&a, &b, 100);
		assert_int_equal(b.napp, 0);
		uint64_t first = a.chunk_bytes;
		link_up(&a, &b, 2, 2);
		send_copy(&a, big, n);
		run(&a, &b, -1);
		assert_int_equal(b.fails, 0);
		assert_int_equal(b.napp, 1);
		assert_int_equal(b.app[0].l, n);
		assert_memory_equal(b.app[0].d, big, n);
		uint64_t resent = a.chunk_bytes - n;
		print_message(
		    "cut after %d messages: %llu chunk bytes before the cut, %llu re-sent "
		    "(window %u x %u = %u)\n",
		    cuts[c], (unsigned long long)first, (unsigned long long)resent, WIN, CS,
		    WIN * CS);
		/* one window of chunks: WIN body chunks, or WIN - 1 and the head
		 * (the last chunk sent, up to XFER_HEAD_MIN + CS bytes) */
		uint32_t nc;
		size_t head;
		xfer_geometry(n, CS, &nc, &head);
		assert_true(resent <= (uint64_t)(WIN - 1) * CS + (head > CS ? head : CS));
		xfer_stats st;
		xfer_get_stats(b.x, &st);
		if (first > (uint64_t)WIN * CS)
			assert_true(st.in_reused_bytes > 0);
		end_fini(&a);
		end_fini(&b);
	}
	free(big);
}

/* The resend has another header (longer by 3 bytes, different first
 * bytes) and the same payload: only the head and the lost window travel
 * again. */
static void test_resume_other_header(void **state)
{
	(void)state;
	size_t n = (2u << 20) + 4321;
	uint8_t *m1 = pattern(n, 3);
	uint8_t *m2 = malloc(n + 3);
	memcpy(m2 + 3, m1, n);
	memset(m2, 0xAB, 40);
	end a, b;
	end_init(&a, "a", 64u << 10, 64u << 20);
	end_init(&b, "b", 64u << 10, 64u << 20);
	link_up(&a, &b, 1, 1);
	send_copy(&a, m1, n);
	run(&a, &b, 60);
	link_down(&a, &b, 100);
	link_up(&a, &b, 2, 2);
	a.chunk_bytes = 0;
	send_copy(&a, m2, n + 3);
	run(&a, &b, -1);
	assert_int_equal(b.fails, 0);
	assert_int_equal(b.napp, 1);
	assert_int_equal(b.app[0].l, n + 3);
	assert_memory_equal(b.app[0].d, m2, n + 3);
	xfer_stats st;
	xfer_get_stats(b.x, &st);
	uint32_t nc;
	size_t head;
	xfer_geometry(n + 3, CS, &nc, &head);
	print_message("other header: %llu bytes reused, %llu sent of %zu\n",
	              (unsigned long long)st.in_reused_bytes, (unsigned long long)a.chunk_bytes,
	              n + 3);
	/* 59 chunk messages went out before the cut, at most WIN were lost */
	assert_true(st.in_reused_bytes >= (uint64_t)(59 - WIN) * CS);
	assert_int_equal(a.chunk_bytes + st.in_reused_bytes, n + 3);
	free(m1);
	free(m2);
	end_fini(&a);
	end_fini(&b);
}

/* Rewrites the message at q[i] after decoding it (tests of refusals). */
static Fedlora__XferChunk *chunk_at(end *e, int i, wire_msg **w)
{
	assert_int_equal(wire_decode(e->q[i].d, e->q[i].l, 64u << 20, 0, w), 0);
	const Fedlora__Envelope *env = wire_env(*w);
	assert_int_equal(env->body_case, FEDLORA__ENVELOPE__BODY_XFER_CHUNK);
	return env->xfer_chunk;
}

static void reencode(end *e, int i, wire_msg *w)
{
	buf b;
	buf_init(&b, 0);
	assert_int_equal(wire_encode(wire_env(w), 0, &b), 0);
	free(e->q[i].d);
	e->q[i].d = b.data;
	e->q[i].l = b.len;
}

enum { T_CORRUPT, T_REORDER, T_DUP, T_SHORT, T_UNKNOWN };

static void refusal(int kind, const char *expect)
{
	end a, b;
	end_init(&a, "a", 64u << 10, 64u << 20);
	end_init(&b, "b", 64u << 10, 64u << 20);
	link_up(&a, &b, 1, 1);
	size_t n = (1u << 20);
	uint8_t *big = pattern(n, 4);
	send_copy(&a, big, n);
	step(&a, &b); /* offer */
	step(&b, &a); /* accept: WIN chunks queued on a */
	assert_int_equal(a.nq, (int)WIN);
	wire_msg *w = NULL;
	Fedlora__XferChunk *ch;
	switch (kind) {
	case T_CORRUPT:
		ch = chunk_at(&a, 0, &w);
		ch->data.data[100] ^= 1;
		reencode(&a, 0, w);
		break;
	case T_REORDER: {
		msg t = a.q[0];
		a.q[0] = a.q[1];
		a.q[1] = t;
		break;
	}
	case T_DUP:
		step(&a, &b);
		step(&b, &a); /* ack: one more chunk queued */
		ch = chunk_at(&a, 0, &w);
		ch->index = 1; /* chunk 1 again */
		reencode(&a, 0, w);
		break;
	case T_SHORT:
		ch = chunk_at(&a, 0, &w);
		ch->data.len -= 1;
		reencode(&a, 0, w);
		break;
	case T_UNKNOWN:
		ch = chunk_at(&a, 0, &w);
		ch->id += 77;
		reencode(&a, 0, w);
		break;
	}
	wire_free(w);
	step(&a, &b);
	assert_int_equal(b.fails, 1);
	print_message("refused: %s\n", b.why);
	assert_non_null(strstr(b.why, expect));
	assert_int_equal(b.napp, 0);
	/* the receiver keeps serving: after the session ends, a new one
	 * completes the transfer */
	link_down(&a, &b, 10);
	link_up(&a, &b, 2, 2);
	b.fails = 0;
	send_copy(&a, big, n);
	run(&a, &b, -1);
	assert_int_equal(b.fails, 0);
	assert_int_equal(b.napp, 1);
	assert_memory_equal(b.app[0].d, big, n);
	free(big);
	end_fini(&a);
	end_fini(&b);
}

static void test_refusals(void **state)
{
	(void)state;
	refusal(T_CORRUPT, "chunk 1 does not match its SHA-256");
	refusal(T_REORDER, "chunk 2 out of order (expected 1)");
	refusal(T_DUP, "duplicate chunk 1");
	refusal(T_SHORT, "chunk 1 is 16383 bytes, expected 16384");
	refusal(T_UNKNOWN, "of unknown transfer");
}

/* Offers and acknowledgements out of line. */
static void test_bad_offers_acks(void **state)
{
	(void)state;
	end a, b;
	end_init(&a, "a", 64u << 10, 64u << 20);
	end_init(&b, "b", 64u << 10, 1u << 20); /* b accepts at most 1 MiB */
	link_up(&a, &b, 1, 1);
	size_t n = (2u << 20);
	uint8_t *big = pattern(n, 5);
	send_copy(&a, big, n);
	step(&a, &b);
	assert_int_equal(b.fails, 1);
	print_message("refused: %s\n", b.why);
	assert_non_null(strstr(b.why, "size must be 1..1048576"));
	link_down(&a, &b, 0);

	/* an offer whose hash list does not fit its size */
	link_up(&a, &b, 2, 2);
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__XferOffer of = FEDLORA__XFER_OFFER__INIT;
	uint8_t sha[32] = {0}, hashes[64] = {0};
	of.id = 1;
	of.size = 200000;
	of.chunk_size = CS;
	of.sha256.data = sha;
	of.sha256.len = 32;
	of.chunk_sha256.data = hashes;
	of.chunk_sha256.len = 64;
	env.body_case = FEDLORA__ENVELOPE__BODY_XFER_OFFER;
	env.xfer_offer = &of;
	buf e;
	buf_init(&e, 0);
	assert_int_equal(wire_encode(&env, 0, &e), 0);
	b.fails = 0;
	assert_int_equal(xfer_on_message(b.x, b.peer, e.data, e.len, 0), FL_EPROTO);
	print_message("refused: %s\n", b.why);
	assert_non_null(strstr(b.why, "expected 32 and 288 for 9 chunks"));
	/* an acknowledgement of nothing, to the sender */
	Fedlora__XferAck ack = FEDLORA__XFER_ACK__INIT;
	ack.id = 9;
	env.body_case = FEDLORA__ENVELOPE__BODY_XFER_ACK;
	env.xfer_ack = &ack;
	buf_clear(&e);
	assert_int_equal(wire_encode(&env, 0, &e), 0);
	assert_int_equal(xfer_on_message(a.x, a.peer, e.data, e.len, 0), FL_EPROTO);
	assert_non_null(strstr(a.why, "not running"));
	/* a non-transfer message handed to xfer */
	Fedlora__Heartbeat hb = FEDLORA__HEARTBEAT__INIT;
	env.body_case = FEDLORA__ENVELOPE__BODY_HEARTBEAT;
	env.heartbeat = &hb;
	buf_clear(&e);
	assert_int_equal(wire_encode(&env, 0, &e), 0);
	assert_int_equal(xfer_on_message(a.x, a.peer, e.data, e.len, 0), FL_EPROTO);
	assert_non_null(strstr(a.why, "heartbeat is not a transfer message"));
	/* garbage */
	assert_int_not_equal(xfer_on_message(a.x, a.peer, (const uint8_t *)"\xff\xff", 2, 0), 0);
	buf_fini(&e);
	free(big);
	end_fini(&a);
	end_fini(&b);
}

/* The receiver's heap does not grow with the message: mid-transfer of
 * 8 MiB it holds hashes, a bitmap and at most a window of chunks. */
static void test_bounded_memory(void **state)
{
	(void)state;
	end a, b;
	end_init(&a, "a", 64u << 10, 64u << 20);
	end_init(&b, "b", 64u << 10, 64u << 20);
	link_up(&a, &b, 1, 1);
	size_t n = 8u << 20;
	uint8_t *big = pattern(n, 6);
	xfer_blob *blob = NULL;
	assert_int_equal(xfer_blob_new(big, n, &blob), 0);
	free(big);
	size_t before = heap_in_use();
	assert_int_equal(xfer_send(a.x, a.peer, blob), 0);
	size_t peak = 0;
	int moved = 0;
	while (a.nq || b.nq) {
		if (a.nq) {
			step(&a, &b);
			moved++;
		}
		if (b.nq)
			step(&b, &a);
		size_t now = heap_in_use();
		if (b.napp == 0 && now > peak)
			peak = now;
	}
	assert_int_equal(b.napp, 1);
	assert_int_equal(b.app[0].l, n);
	size_t grew = peak > before ? peak - before : 0;
	print_message("heap growth during an 8 MiB transfer: %zu bytes (%d messages)\n", grew,
	              moved);
	/* hashes (n/cs x 32 at both ends), bitmaps, the offer in flight, a
	 * window of chunks in the test's queue, decode buffers */
	assert_true(grew < 512u << 10);
	xfer_blob_release(blob);
	end_fini(&a);
	end_fini(&b);
}

/* A partial of a gone peer is kept keep_ms, then removed with its file. */
static void test_partials_expire(void **state)
{
	(void)state;
	end a, b;
	end_init(&a, "a", 64u << 10, 64u << 20);
	end_init(&b, "b", 64u << 10, 64u << 20);
	link_up(&a, &b, 1, 1);
	size_t n = 1u << 20;
	uint8_t *big = pattern(n, 7);
	send_copy(&a, big, n);
	run(&a, &b, 10);
	link_down(&a, &b, 5000);
	assert_int_equal(count_parts(b.dir), 1);
	xfer_stats st;
	xfer_get_stats(b.x, &st);
	assert_int_equal(st.partials, 1);
	assert_int_equal(xfer_timeout(b.x, 5000), 1000);
	xfer_tick(b.x, 5999);
	assert_int_equal(count_parts(b.dir), 1);
	xfer_tick(b.x, 6000);
	assert_int_equal(count_parts(b.dir), 0);
	xfer_get_stats(b.x, &st);
	assert_int_equal(st.partials, 0);
	assert_int_equal(xfer_timeout(b.x, 6000), -1);
	free(big);
	end_fini(&a);
	end_fini(&b);
}

static void test_bad_opts(void **state)
{
	(void)state;
	xfer_opts o;
	xfer_opts_default(&o);
	xfer_io io = {.ud = NULL, .send = e_send, .deliver = e_deliver, .fail = e_fail};
	xfer *x = NULL;
	o.dir = "/nonexistent-dir-for-xfer-test/sub";
	o.chunk_size = 100;
	assert_int_equal(xfer_new(&o, &io, &x), FL_EINVAL);
	o.chunk_size = CS;
	o.window = 0;
	assert_int_equal(xfer_new(&o, &io, &x), FL_EINVAL);
	assert_null(x);
	xfer_free(NULL);
	xfer_blob_release(NULL);
}

int main(void)
{
	log_set_level(LOG_LVL_WARN);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_geometry),
	    cmocka_unit_test(test_is_mine),
	    cmocka_unit_test(test_roundtrip_order_window),
	    cmocka_unit_test(test_resume_same_bytes),
	    cmocka_unit_test(test_resume_other_header),
	    cmocka_unit_test(test_refusals),
	    cmocka_unit_test(test_bad_offers_acks),
	    cmocka_unit_test(test_bounded_memory),
	    cmocka_unit_test(test_partials_expire),
	    cmocka_unit_test(test_bad_opts),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
