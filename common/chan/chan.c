/* chan — pieces shared by both ends of the channel: events, the clock
 * hook, randomness, keyed hashing, the wire header, shared messages and a
 * small hash map. See chan.h for the API and chan_int.h for the internals. */
#include "chan_int.h"

#include "buf.h"
#include "clock.h"
#include "err.h"
#include "log.h"

#include <openssl/rand.h>

#include <errno.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- clock ---- */

static uint64_t (*g_clock)(void);

void chan_test_set_clock(uint64_t (*now_ms)(void))
{
	g_clock = now_ms;
}

uint64_t chan_now_ms(void)
{
	return g_clock ? g_clock() : clk_mono_ms();
}

int chan_random(void *p, size_t n)
{
	if (n > (size_t)INT32_MAX || RAND_bytes(p, (int)n) != 1) {
		LOGE(CHAN_MOD, "random generator failed");
		return FL_ECRYPTO;
	}
	return 0;
}

/* ---- header ---- */

void chan_hdr_put(uint8_t hdr[CHAN_HDR_LEN], enum chan_kind k, uint64_t sid)
{
	hdr[0] = (uint8_t)k;
	st_u64le(hdr + 1, sid);
}

const char *chan_kind_name(int k)
{
	switch (k) {
	case CHAN_KIND_HELLO:
		return "HELLO";
	case CHAN_KIND_TLS:
		return "TLS";
	case CHAN_KIND_RESET:
		return "RESET";
	default:
		return "?";
	}
}

int chan_hdr_get(const void *p, size_t n, enum chan_kind *k, uint64_t *sid, char *why,
                 size_t why_len)
{
	const uint8_t *h = p;
	if (n != CHAN_HDR_LEN) {
		snprintf(why, why_len, "header frame of %zu bytes (want %d)", n, CHAN_HDR_LEN);
		return FL_EPROTO;
	}
	if (h[0] != CHAN_KIND_HELLO && h[0] != CHAN_KIND_TLS && h[0] != CHAN_KIND_RESET) {
		snprintf(why, why_len, "unknown frame kind %u", h[0]);
		return FL_EPROTO;
	}
	*k = (enum chan_kind)h[0];
	*sid = ld_u64le(h + 1);
	return 0;
}

/* ---- events ---- */

void chan_event_fini(chan_event *ev)
{
	if (!ev)
		return;
	free(ev->data);
	ev->data = NULL;
	ev->len = 0;
}

int chan_evq_push(chan_evq *q, chan_event *ev)
{
	if (q->n == q->cap) {
		size_t ncap = q->cap ? q->cap * 2 : 16;
		chan_event *nv = malloc(ncap * sizeof *nv);
		if (!nv) {
			LOGE(CHAN_MOD, "out of memory: event of type %d lost", (int)ev->type);
			chan_event_fini(ev);
			return FL_ENOMEM;
		}
		for (size_t i = 0; i < q->n; i++)
			nv[i] = q->v[(q->head + i) % q->cap];
		free(q->v);
		q->v = nv;
		q->cap = ncap;
		q->head = 0;
	}
	q->v[(q->head + q->n) % q->cap] = *ev;
	q->n++;
	ev->data = NULL;
	return 0;
}

int chan_evq_pop(chan_evq *q, chan_event *ev)
{
	if (q->n == 0)
		return FL_EAGAIN;
	*ev = q->v[q->head];
	q->head = (q->head + 1) % q->cap;
	q->n--;
	if (q->n == 0)
		q->head = 0;
	return 0;
}

void chan_evq_fini(chan_evq *q)
{
	chan_event ev;
	while (chan_evq_pop(q, &ev) == 0)
		chan_event_fini(&ev);
	free(q->v);
	memset(q, 0, sizeof *q);
}

void chan_ev_gone(chan_event *ev, uint64_t peer, const char *cn, const char *addr, int reason,
                  const char *why, int was_up)
{
	memset(ev, 0, sizeof *ev);
	ev->type = CHAN_EV_PEER_GONE;
	ev->peer = peer;
	snprintf(ev->cn, sizeof ev->cn, "%s", cn ? cn : "");
	snprintf(ev->addr, sizeof ev->addr, "%s", addr ? addr : "");
	ev->reason = reason;
	snprintf(ev->why, sizeof ev->why, "%s", why ? why : "");
	ev->was_up = was_up;
}

/* ---- rate limit ---- */

int chan_ratelog_allow(chan_ratelog *r)
{
	uint64_t now = chan_now_ms();
	/* the oldest of the last CHAN_RATELOG_MAX lines must be a second old */
	if (r->n == CHAN_RATELOG_MAX && now - r->at[r->next] < 1000) {
		r->dropped++;
		return 0;
	}
	if (r->dropped && (r->last_note == 0 || now - r->last_note >= 1000)) {
		LOGW(CHAN_MOD, "%u similar lines about unauthenticated peers suppressed",
		     r->dropped);
		r->dropped = 0;
		r->last_note = now ? now : 1;
	}
	r->at[r->next] = now;
	r->next = (r->next + 1) % CHAN_RATELOG_MAX;
	if (r->n < CHAN_RATELOG_MAX)
		r->n++;
	return 1;
}

/* ---- shared messages ---- */

int chan_shared_new(const void *data, size_t len, chan_shared **out)
{
	if (len && !data)
		return FL_EINVAL;
	int rc = chan_shared_alloc(len, out);
	if (rc == 0 && len)
		memcpy((*out)->data, data, len);
	return rc;
}

int chan_shared_alloc(size_t len, chan_shared **out)
{
	size_t sz;
	if (!out)
		return FL_EINVAL;
	if (len > CHAN_MAX_SEND_LEN)
		return FL_ETOOBIG;
	if (sz_add(sizeof(chan_shared), len, &sz))
		return FL_EOVERFLOW;
	chan_shared *m = malloc(sz);
	if (!m)
		return FL_ENOMEM;
	m->refs = 1;
	m->len = len;
	*out = m;
	return 0;
}

uint8_t *chan_shared_data(chan_shared *m)
{
	return m->data;
}

size_t chan_shared_len(const chan_shared *m)
{
	return m->len;
}

chan_shared *chan_shared_ref(chan_shared *m)
{
	m->refs++;
	return m;
}

void chan_shared_release(chan_shared *m)
{
	if (m && --m->refs == 0)
		free(m);
}

/* ---- ZeroMQ helpers ---- */

int chan_zmq_setint(void *sock, int opt, int v, const char *name)
{
	if (zmq_setsockopt(sock, opt, &v, sizeof v) != 0) {
		LOGE(CHAN_MOD, "zmq_setsockopt(%s=%d): %s", name, v, zmq_strerror(errno));
		return FL_ENET;
	}
	return 0;
}

int chan_zmq_recv_parts(void *sock, zmq_msg_t *part, int max)
{
	int n = 0, more = 1;
	for (int i = 0; i < max; i++)
		zmq_msg_init(&part[i]);
	while (more) {
		zmq_msg_t tmp;
		zmq_msg_init(&tmp);
		if (zmq_msg_recv(&tmp, sock, n ? 0 : ZMQ_DONTWAIT) < 0) {
			zmq_msg_close(&tmp);
			if (n == 0 && errno != EAGAIN && errno != EINTR)
				LOGW(CHAN_MOD, "zmq_msg_recv: %s", zmq_strerror(errno));
			break;
		}
		more = zmq_msg_more(&tmp);
		if (n < max)
			zmq_msg_move(&part[n], &tmp);
		n++;
		zmq_msg_close(&tmp);
	}
	return n;
}

int chan_zmq_poll(zmq_pollitem_t *it, int n, int timeout_ms)
{
	if (n > 0 && zmq_poll(it, n, timeout_ms) < 0) {
		if (errno == EINTR)
			return FL_EINTR;
		LOGE(CHAN_MOD, "zmq_poll: %s", zmq_strerror(errno));
		return FL_ENET;
	}
	return 0;
}

#define POOL_MAX     32
#define POOL_IDLE_MS 2000
static uint8_t *g_pool[POOL_MAX];
static int g_npool;
static uint64_t g_pool_used_ms; /* last time a buffer was taken */
static pthread_mutex_t g_pool_mu = PTHREAD_MUTEX_INITIALIZER;

uint8_t *chan_frame_get(void)
{
	uint8_t *p = NULL;
	uint64_t now = clk_mono_ms();
	pthread_mutex_lock(&g_pool_mu);
	if (g_npool)
		p = g_pool[--g_npool];
	g_pool_used_ms = now;
	pthread_mutex_unlock(&g_pool_mu);
	return p ? p : malloc(CHAN_FRAME_MAX);
}

void chan_frame_put(uint8_t *p, size_t cap)
{
	if (!p)
		return;
	if (cap == CHAN_FRAME_MAX) {
		pthread_mutex_lock(&g_pool_mu);
		if (g_npool < POOL_MAX) {
			g_pool[g_npool++] = p;
			p = NULL;
		}
		pthread_mutex_unlock(&g_pool_mu);
	}
	free(p);
}

void chan_frame_pool_trim(int force)
{
	uint8_t *v[POOL_MAX];
	int n = 0;
	uint64_t now = clk_mono_ms();
	pthread_mutex_lock(&g_pool_mu);
	if (force || now - g_pool_used_ms >= POOL_IDLE_MS) {
		n = g_npool;
		memcpy(v, g_pool, (size_t)n * sizeof *v);
		g_npool = 0;
	}
	pthread_mutex_unlock(&g_pool_mu);
	for (int i = 0; i < n; i++)
		free(v[i]);
}

void chan_zmq_free_body(void *data, void *hint)
{
	chan_frame_put(data, (size_t)(uintptr_t)hint);
}

void chan_heap_trim(void)
{
#if defined(__GLIBC__)
	malloc_trim(0);
#endif
}
