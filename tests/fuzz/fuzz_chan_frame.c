/* Fuzz target: the coordinator side of the channel — ZeroMQ frames and the
 * TLS records and plaintext inside them — through a detached chan_server.
 *
 * The input is a list of operations on one detached server and one
 * detached node (test certificates are made in-process at start-up):
 *   0 rid n {len16 bytes}*n  raw frames from routing id rid (n = 0..3)
 *   1                        the node connects: a real TLS 1.3 handshake
 *   2 len16 bytes            raw plaintext written into the node's TLS
 *                            stream (length prefixes, keepalives, caps)
 *   3 len16 bytes            an application message from the node
 *   4 ms16                   the test clock advances; timers run
 *   5 off16 xor8             the node's next frame is corrupted in flight
 *   6 len16                  an application message from the coordinator
 *   7 kind8                  RESET/close from either side
 * Invariants checked: no crash, no leak, no inbound buffer over max_msg,
 * events refer to sessions that exist. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "buf.h"
#include "chan_int.h"
#include "err.h"
#include "log.h"

#include "../testpki.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_MSG 4096
#define QMAX    256

static char g_dir[64];
static char g_ca[96], g_scrt[96], g_skey[96], g_ccrt[96], g_ckey[96];
static uint64_t g_now;

static uint64_t fake_now(void)
{
	return g_now;
}

static void cleanup(void)
{
	const char *files[] = {g_ca, g_scrt, g_skey, g_ccrt, g_ckey};
	for (int i = 0; i < 5; i++)
		unlink(files[i]);
	rmdir(g_dir);
}

static int init_pki(void)
{
	snprintf(g_dir, sizeof g_dir, "/tmp/fuzzchan.XXXXXX");
	if (!mkdtemp(g_dir))
		return -1;
	snprintf(g_ca, sizeof g_ca, "%s/ca.crt", g_dir);
	snprintf(g_scrt, sizeof g_scrt, "%s/coord.crt", g_dir);
	snprintf(g_skey, sizeof g_skey, "%s/coord.key", g_dir);
	snprintf(g_ccrt, sizeof g_ccrt, "%s/node.crt", g_dir);
	snprintf(g_ckey, sizeof g_ckey, "%s/node.key", g_dir);
	atexit(cleanup);
	EVP_PKEY *ck = EVP_EC_gen("P-256"), *sk = EVP_EC_gen("P-256"), *nk = EVP_EC_gen("P-256");
	X509 *ca = ck ? tp_make_cert(ck, "fuzz CA", NULL, NULL, 1, NULL, NULL, 1) : NULL;
	X509 *sc = ca && sk ? tp_make_cert(sk, "fuzz-coordinator", ca, ck, 0, "serverAuth",
	                                   "DNS:localhost", 2)
	                    : NULL;
	X509 *nc = ca && nk ? tp_make_cert(nk, "node-01", ca, ck, 0, "clientAuth", NULL, 3) : NULL;
	int rc = -1;
	if (nc && !tp_write_pem(g_ca, ca, NULL) && !tp_write_pem(g_scrt, sc, NULL) &&
	    !tp_write_pem(g_skey, NULL, sk) && !tp_write_pem(g_ccrt, nc, NULL) &&
	    !tp_write_pem(g_ckey, NULL, nk))
		rc = 0;
	X509_free(ca);
	X509_free(sc);
	X509_free(nc);
	EVP_PKEY_free(ck);
	EVP_PKEY_free(sk);
	EVP_PKEY_free(nk);
	return rc;
}

/* ---- in-memory wire ---- */

typedef struct fr {
	uint8_t hdr[CHAN_HDR_LEN];
	uint8_t *body;
	size_t n;
} fr;

typedef struct q {
	fr v[QMAX];
	int n;
} q;

typedef struct world {
	chan_server *srv;
	chan_client *cli;
	q up, down;
	int corrupt_next;
	size_t corrupt_off;
	uint8_t corrupt_xor;
	uint64_t peers[64];
	int npeers;
} world;

static int qpush(q *qq, const uint8_t *hdr, size_t hn, const uint8_t *body, size_t bn)
{
	if (qq->n == QMAX || hn != CHAN_HDR_LEN)
		return FL_EAGAIN;
	uint8_t *b = malloc(bn ? bn : 1);
	if (!b)
		return FL_EAGAIN;
	if (bn)
		memcpy(b, body, bn);
	memcpy(qq->v[qq->n].hdr, hdr, hn);
	qq->v[qq->n].body = b;
	qq->v[qq->n].n = bn;
	qq->n++;
	return 0;
}

static void qclear(q *qq)
{
	for (int i = 0; i < qq->n; i++)
		free(qq->v[i].body);
	qq->n = 0;
}

static int srv_out(void *arg, const uint8_t *rid, size_t rid_len, const uint8_t *hdr, size_t hn,
                   const uint8_t *body, size_t bn)
{
	world *w = arg;
	if (rid_len != 1 || rid[0] != 0) /* only the real node is connected */
		return FL_ECLOSED;
	return qpush(&w->down, hdr, hn, body, bn);
}

static int cli_out(void *arg, const uint8_t *rid, size_t rid_len, const uint8_t *hdr, size_t hn,
                   const uint8_t *body, size_t bn)
{
	world *w = arg;
	(void)rid;
	(void)rid_len;
	return qpush(&w->up, hdr, hn, body, bn);
}

static void check_event(world *w, const chan_event *ev)
{
	if (ev->type == CHAN_EV_MESSAGE && ev->len > MAX_MSG)
		abort(); /* a message over the cap was delivered */
	if (ev->type == CHAN_EV_PEER_UP && w->npeers < 64)
		w->peers[w->npeers++] = ev->peer;
}

static void drain_events(world *w)
{
	chan_event ev;
	while (chan_server_next(w->srv, &ev) == 0) {
		check_event(w, &ev);
		chan_event_fini(&ev);
	}
	while (w->cli && chan_client_next(w->cli, &ev) == 0) {
		if (ev.type == CHAN_EV_MESSAGE && ev.len == 7 && memcmp(ev.data, "WELCOME", 7) == 0)
			chan_client_set_ready(w->cli);
		chan_event_fini(&ev);
	}
}

static void pump(world *w)
{
	for (int round = 0; round < 64; round++) {
		chan_server_process(w->srv, NULL, 0);
		if (w->cli)
			chan_client_process(w->cli, NULL, 0);
		int moved = w->up.n + w->down.n;
		for (int i = 0; i < w->up.n; i++) {
			fr *f = &w->up.v[i];
			if (w->corrupt_next && f->n) {
				f->body[w->corrupt_off % f->n] ^=
				    w->corrupt_xor ? w->corrupt_xor : 1;
				w->corrupt_next = 0;
			}
			uint8_t rid = 0;
			chan_frame frames[2] = {{f->hdr, CHAN_HDR_LEN}, {f->body, f->n}};
			chan_server_feed(w->srv, &rid, 1, frames, 2);
		}
		qclear(&w->up);
		for (int i = 0; i < w->down.n && w->cli; i++) {
			fr *f = &w->down.v[i];
			chan_frame frames[2] = {{f->hdr, CHAN_HDR_LEN}, {f->body, f->n}};
			chan_client_feed(w->cli, frames, 2);
		}
		qclear(&w->down);
		/* The coordinator side answers every PEER_UP with WELCOME. */
		chan_event ev;
		while (chan_server_next(w->srv, &ev) == 0) {
			check_event(w, &ev);
			if (ev.type == CHAN_EV_PEER_UP)
				chan_server_send(w->srv, ev.peer, "WELCOME", 7);
			chan_event_fini(&ev);
		}
		drain_events(w);
		if (!moved)
			return;
	}
}

static int rd16(rd *r, size_t *v)
{
	uint16_t x;
	if (rd_u16le(r, &x))
		return -1;
	*v = x;
	return 0;
}

static void run(world *w, rd *r)
{
	uint8_t op;
	int steps = 0;
	while (steps++ < 64 && rd_u8(r, &op) == 0) {
		size_t len;
		const uint8_t *p;
		switch (op & 7) {
		case 0: {
			uint8_t rid, n;
			chan_frame frames[3];
			if (rd_u8(r, &rid) || rd_u8(r, &n))
				return;
			n %= 4;
			for (int i = 0; i < n; i++) {
				if (rd16(r, &len))
					return;
				if (len > r->n)
					len = r->n;
				if (rd_bytes(r, len, &p))
					return;
				frames[i].p = p;
				frames[i].n = len;
			}
			/* rid 0 is the real node's connection, others are strangers */
			uint8_t rb[2] = {rid, (uint8_t)(rid >> 4)};
			chan_server_feed(w->srv, rb, rid & 1 ? 2 : 1, frames, n);
			pump(w);
			break;
		}
		case 1:
			chan_client_link_event(w->cli, 1);
			pump(w);
			break;
		case 2: {
			if (rd16(r, &len) || len > r->n || rd_bytes(r, len, &p))
				return;
			chan_sess *cs = chan_client_test_sess(w->cli);
			if (cs && cs->hs_done && len)
				chan_sess_write_raw(cs, p, len);
			pump(w);
			break;
		}
		case 3:
			if (rd16(r, &len) || len > r->n || rd_bytes(r, len, &p))
				return;
			chan_client_send(w->cli, p, len);
			pump(w);
			break;
		case 4:
			if (rd16(r, &len))
				return;
			for (size_t t = 0; t < len; t += 250) {
				g_now += 250;
				pump(w);
			}
			break;
		case 5: {
			uint8_t x;
			if (rd16(r, &len) || rd_u8(r, &x))
				return;
			w->corrupt_next = 1;
			w->corrupt_off = len;
			w->corrupt_xor = x;
			break;
		}
		case 6: {
			if (rd16(r, &len))
				return;
			uint8_t *m = calloc(1, len ? len : 1);
			for (int i = 0; i < w->npeers && m; i++)
				chan_server_send(w->srv, w->peers[i], m, len);
			free(m);
			pump(w);
			break;
		}
		case 7: {
			uint8_t k;
			if (rd_u8(r, &k))
				return;
			if (k & 1)
				chan_client_reset(w->cli, "fuzz");
			else
				for (int i = 0; i < w->npeers; i++)
					chan_server_close_peer(w->srv, w->peers[i], "fuzz");
			pump(w);
			break;
		}
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int inited, ok;
	if (!inited) {
		inited = 1;
		log_set_level(getenv("FUZZ_CHAN_LOG") ? LOG_LVL_DEBUG : LOG_LVL_OFF);
		ok = init_pki() == 0;
		if (!ok)
			fprintf(stderr, "fuzz_chan_frame: cannot make test certificates\n");
		chan_test_set_clock(fake_now);
	}
	if (!ok)
		return 0;
	g_now = 1000000;
	world *w = calloc(1, sizeof *w);
	if (!w)
		return 0;
	chan_server_opts so;
	chan_server_opts_default(&so);
	so.cert_path = g_scrt;
	so.key_path = g_skey;
	so.ca_path = g_ca;
	so.max_msg = MAX_MSG;
	so.out_queue_max = 64 * 1024;
	so.max_pending = 4;
	so.max_sessions = 8;
	so.handshake_timeout_ms = 2000;
	so.idle_timeout_ms = 5000;
	so.heartbeat_ivl_ms = 1000;
	chan_client_opts co;
	chan_client_opts_default(&co);
	co.cert_path = g_ccrt;
	co.key_path = g_ckey;
	co.ca_path = g_ca;
	co.server_name = "localhost";
	co.handshake_timeout_ms = 2000;
	co.idle_timeout_ms = 5000;
	co.heartbeat_ivl_ms = 1000;
	if (chan_server_new_detached(&so, srv_out, w, &w->srv) == 0 &&
	    chan_client_new_detached(&co, cli_out, w, &w->cli) == 0) {
		rd r = rd_of(data, size);
		run(w, &r);
		chan_server_stats st;
		chan_server_get_stats(w->srv, &st);
		if (st.max_inbound_alloc > MAX_MSG || st.pending > st.conns ||
		    st.sessions > st.conns || st.conns > (uint64_t)so.max_sessions)
			abort();
	}
	chan_client_free(w->cli);
	chan_server_free(w->srv);
	qclear(&w->up);
	qclear(&w->down);
	free(w);
	return 0;
}
