/* bench_transport — the secure channel against its references, measured in
 * one run on this machine:
 *   - one core's AES-256-GCM rate through EVP (16 KiB records, as TLS);
 *   - throughput of 1, 16 and 64 MiB messages, node -> coordinator ("up")
 *     and back ("down"), over plaintext ZeroMQ (same ROUTER/DEALER pair,
 *     same 256 KiB frames, zero-copy sends) and over the TLS channel;
 *     the crypto-bound ceiling 1 / (1/plaintext + 1/aesgcm) and the ratios;
 *   - the channel alone: CPU per GiB for encrypting and decrypting with
 *     both ends in one thread and no ZeroMQ, in AES-GCM passes;
 *   - handshakes per second (in memory, and over TCP);
 *   - coordinator memory per idle session (N nodes in another process)
 *     and per session after a 16 MiB transfer each way.
 * Every figure is the median of several runs. Never run by ctest.
 *
 * usage: bench_transport [--reps N] [--sessions N] [--xfer-sessions K]
 *                        [--skip-throughput] [--skip-memory]
 *                        [--tls-only] [--size 1|16|64] [--skip-handshakes]
 *                        [--default-malloc] [--inmem-only] */
#include "chan.h"
#include "chan_int.h"
#include "clock.h"
#include "err.h"
#include "log.h"

#include "../testpki.h"
#include "bench_util.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/wait.h>
#include <unistd.h>

#define MIB   (1024.0 * 1024.0)
#define FRAME CHAN_FRAME_MAX

static char g_dir[64];
static int g_nodes;

/* Paths in the test PKI: pki("ca.crt"), node(i, "crt"). Rotating static
 * buffers, copied by the channel. */
static const char *pki(const char *name)
{
	static char b[4][256];
	static int k;
	char *p = b[k++ % 4];
	snprintf(p, 256, "%s/%s", g_dir, name);
	return p;
}

static const char *node(int i, const char *ext)
{
	static char b[4][256];
	static int k;
	char *p = b[k++ % 4];
	snprintf(p, 256, "%s/n%d.%s", g_dir, i, ext);
	return p;
}

static void rm_pki(void)
{
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", g_dir);
}

/* CA, coordinator (SAN IP 127.0.0.1), nodes bench-0000 ... */
static int make_pki(int nodes)
{
	snprintf(g_dir, sizeof g_dir, "/tmp/benchchan.XXXXXX");
	if (!mkdtemp(g_dir))
		return -1;
	atexit(rm_pki);
	EVP_PKEY *ck = EVP_EC_gen("P-256"), *sk = EVP_EC_gen("P-256");
	X509 *ca = tp_make_cert(ck, "bench CA", NULL, NULL, 1, NULL, NULL, 1);
	X509 *sc =
	    tp_make_cert(sk, "bench-coordinator", ca, ck, 0, "serverAuth", "IP:127.0.0.1", 2);
	int rc = ca && sc && !tp_write_pem(pki("ca.crt"), ca, NULL) &&
	                 !tp_write_pem(pki("coord.crt"), sc, NULL) &&
	                 !tp_write_pem(pki("coord.key"), NULL, sk)
	             ? 0
	             : -1;
	for (int i = 0; i < nodes && rc == 0; i++) {
		char cn[32];
		snprintf(cn, sizeof cn, "bench-%04d", i);
		EVP_PKEY *nk = EVP_EC_gen("P-256");
		X509 *nc = nk ? tp_make_cert(nk, cn, ca, ck, 0, "clientAuth", NULL, 100 + i) : NULL;
		if (!nc || tp_write_pem(node(i, "crt"), nc, NULL) ||
		    tp_write_pem(node(i, "key"), NULL, nk))
			rc = -1;
		X509_free(nc);
		EVP_PKEY_free(nk);
	}
	X509_free(ca);
	X509_free(sc);
	EVP_PKEY_free(ck);
	EVP_PKEY_free(sk);
	g_nodes = nodes;
	return rc;
}

/* CPU seconds of the whole process (all threads, user + system). */
static double cpu_s(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 +
	       (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

static void server_opts(chan_server_opts *o)
{
	chan_server_opts_default(o);
	o->endpoint = "tcp://127.0.0.1:*";
	o->cert_path = pki("coord.crt");
	o->key_path = pki("coord.key");
	o->ca_path = pki("ca.crt");
}

static void client_opts(chan_client_opts *o, const char *ep, int i)
{
	chan_client_opts_default(o);
	o->endpoint = ep;
	o->cert_path = node(i, "crt");
	o->key_path = node(i, "key");
	o->ca_path = pki("ca.crt");
}

/* ---- plaintext ZeroMQ: same sockets and framing, no TLS ---- */

typedef struct pt_peer {
	void *sock;
	int router;
	uint8_t rid[256];
	size_t rid_len;
} pt_peer;

static void pt_sendmore(pt_peer *p)
{
	if (p->router)
		zmq_send(p->sock, p->rid, p->rid_len, ZMQ_SNDMORE);
}

/* Sends count messages of len bytes in FRAME-sized frames, zero-copy. */
static void pt_send(pt_peer *p, const uint8_t *data, size_t len, int count)
{
	uint8_t hdr[CHAN_HDR_LEN] = {CHAN_KIND_TLS};
	for (int k = 0; k < count; k++)
		for (size_t off = 0; off < len; off += FRAME) {
			size_t n = len - off < FRAME ? len - off : FRAME;
			zmq_msg_t m;
			zmq_msg_init_data(&m, (void *)(data + off), n, NULL, NULL);
			pt_sendmore(p);
			zmq_send(p->sock, hdr, sizeof hdr, ZMQ_SNDMORE);
			zmq_msg_send(&m, p->sock, 0);
		}
}

/* Receives one ZeroMQ message: header and body (routing id dropped);
 * returns the body size, body copied to dst when given. */
static size_t pt_recv1(pt_peer *p, uint8_t *dst)
{
	zmq_msg_t m;
	size_t n = 0;
	int part = 0, more = 1;
	while (more) {
		zmq_msg_init(&m);
		zmq_msg_recv(&m, p->sock, 0);
		more = zmq_msg_more(&m);
		if (p->router && part == 0) {
			p->rid_len = zmq_msg_size(&m);
			memcpy(p->rid, zmq_msg_data(&m), p->rid_len);
		} else if (!more) {
			n = zmq_msg_size(&m);
			if (dst)
				memcpy(dst, zmq_msg_data(&m), n);
		}
		part++;
		zmq_msg_close(&m);
	}
	return n;
}

/* Receives count messages of len bytes, each into a fresh buffer as the
 * channel delivers them. */
static void pt_recv(pt_peer *p, size_t len, int count)
{
	for (int k = 0; k < count; k++) {
		uint8_t *msg = malloc(len);
		for (size_t got = 0; got < len;)
			got += pt_recv1(p, msg + got);
		free(msg);
	}
}

static void pt_small(pt_peer *p, const char *s)
{
	uint8_t hdr[CHAN_HDR_LEN] = {CHAN_KIND_TLS};
	pt_sendmore(p);
	zmq_send(p->sock, hdr, sizeof hdr, ZMQ_SNDMORE);
	zmq_send(p->sock, s, strlen(s), 0);
}

typedef struct pt_job {
	pt_peer *p;
	const uint8_t *data;
	size_t len;
	int count, up, reps;
	double *secs; /* filled by the side that measures */
} pt_job;

/* Coordinator side (ROUTER) of the plaintext runs. */
static void *pt_coord(void *arg)
{
	pt_job *j = arg;
	pt_recv1(j->p, NULL); /* the node's hello: learn its routing id */
	for (int r = 0; r < j->reps; r++) {
		if (j->up) {
			pt_recv(j->p, j->len, j->count);
			pt_small(j->p, "A");
		} else {
			pt_recv1(j->p, NULL); /* go */
			double t0 = clk_seconds();
			pt_send(j->p, j->data, j->len, j->count);
			pt_recv1(j->p, NULL); /* ack */
			j->secs[r] = clk_seconds() - t0;
		}
	}
	return NULL;
}

static double plaintext_rate(const uint8_t *data, size_t len, int count, int up, int reps,
                             double *cpu_gib)
{
	double cpu[32];
	void *c1 = zmq_ctx_new(), *c2 = zmq_ctx_new();
	pt_peer a = {zmq_socket(c1, ZMQ_ROUTER), 1, {0}, 0},
	        b = {zmq_socket(c2, ZMQ_DEALER), 0, {0}, 0};
	int shwm = CHAN_SNDHWM, rhwm = CHAN_RCVHWM; /* as the channel */
	int64_t maxmsg = FRAME;
	char ep[128];
	size_t epl = sizeof ep;
	double secs[32];
	for (int i = 0; i < 2; i++) {
		void *s = i ? b.sock : a.sock;
		zmq_setsockopt(s, ZMQ_SNDHWM, &shwm, sizeof shwm);
		zmq_setsockopt(s, ZMQ_RCVHWM, &rhwm, sizeof rhwm);
		zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
	}
	/* As the channel: a full pipe blocks (here) instead of dropping. */
	int one = 1;
	zmq_setsockopt(a.sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
	zmq_bind(a.sock, "tcp://127.0.0.1:*");
	zmq_getsockopt(a.sock, ZMQ_LAST_ENDPOINT, ep, &epl);
	zmq_connect(b.sock, ep);
	pt_job j = {&a, data, len, count, up, reps, secs};
	pthread_t th;
	pthread_create(&th, NULL, pt_coord, &j);
	pt_small(&b, "hello");
	for (int r = 0; r < reps; r++) {
		double c0 = cpu_s();
		if (up) {
			double t0 = clk_seconds();
			pt_send(&b, data, len, count);
			pt_recv1(&b, NULL);
			secs[r] = clk_seconds() - t0;
		} else {
			pt_small(&b, "go");
			pt_recv(&b, len, count);
			pt_small(&b, "A");
		}
		cpu[r] = (cpu_s() - c0) / ((double)len * count / (MIB * 1024));
	}
	*cpu_gib = bench_median(cpu, reps);
	pthread_join(th, NULL);
	int zero = 0;
	zmq_setsockopt(a.sock, ZMQ_LINGER, &zero, sizeof zero);
	zmq_setsockopt(b.sock, ZMQ_LINGER, &zero, sizeof zero);
	zmq_close(a.sock);
	zmq_close(b.sock);
	zmq_ctx_term(c1);
	zmq_ctx_term(c2);
	double rates[32];
	for (int r = 0; r < reps; r++)
		rates[r] = (double)len * count / secs[r];
	return bench_median(rates, reps);
}

/* ---- the TLS channel ---- */

typedef struct tls_srv {
	chan_server *s;
	const uint8_t *data;
	size_t len;
	volatile int quit;
} tls_srv;

/* Coordinator thread: WELCOME on PEER_UP; "U len count": receive and
 * answer "A"; "D len count": send, wait for "A", answer "T seconds";
 * "Q": stop. */
static void *tls_coord(void *arg)
{
	tls_srv *t = arg;
	uint64_t peer = 0;
	size_t want_len = 0;
	int want = 0, got = 0, to_send = 0;
	double t0 = 0;
	chan_shared *sh = NULL;
	chan_shared_new(t->data, t->len, &sh);
	while (!t->quit) {
		chan_event ev;
		chan_server_poll(t->s, to_send ? 1 : 50);
		while (to_send && chan_server_send_shared(t->s, peer, sh) == 0)
			to_send--;
		while (chan_server_next(t->s, &ev) == 0) {
			if (ev.type == CHAN_EV_PEER_UP) {
				peer = ev.peer;
				chan_server_send(t->s, peer, "WELCOME", 7);
			} else if (ev.type == CHAN_EV_MESSAGE) {
				if (want && ev.len == want_len) {
					if (++got == want) {
						want = 0;
						chan_server_send(t->s, ev.peer, "A", 1);
					}
				} else if (ev.len > 2 && ev.len < 64) {
					char cmd[64];
					size_t l;
					int n;
					memcpy(cmd, ev.data, ev.len);
					cmd[ev.len] = '\0';
					if (sscanf(cmd, "U %zu %d", &l, &n) == 2) {
						want_len = l;
						want = n;
						got = 0;
					} else if (sscanf(cmd, "D %zu %d", &l, &n) == 2) {
						t0 = clk_seconds();
						to_send = n;
						while (to_send &&
						       chan_server_send_shared(t->s, peer, sh) == 0)
							to_send--;
					}
				} else if (ev.len == 1 && ev.data[0] == 'A') {
					char m[64];
					int k = snprintf(m, sizeof m, "T %.9f", clk_seconds() - t0);
					chan_server_send(t->s, ev.peer, m, (size_t)k);
				} else if (ev.len == 1 && ev.data[0] == 'Q') {
					t->quit = 1;
				}
			}
			chan_event_fini(&ev);
		}
	}
	chan_shared_release(sh);
	return NULL;
}

/* Waits for one message on the node; returns it (caller frees) or NULL. */
static chan_event wait_msg(chan_client *c)
{
	chan_event ev;
	memset(&ev, 0, sizeof ev);
	for (;;) {
		chan_client_poll(c, 50);
		while (chan_client_next(c, &ev) == 0) {
			if (ev.type == CHAN_EV_MESSAGE)
				return ev;
			chan_event_fini(&ev);
		}
	}
}

static int tls_rates(const uint8_t *data, size_t len, int count, int reps, double *up, double *down,
                     double *cpu_up, double *cpu_down)
{
	double cu[32], cd[32];
	const double gib = (double)len * count / (MIB * 1024);
	chan_server_opts so;
	chan_client_opts co;
	tls_srv t = {NULL, data, len, 0};
	chan_client *c = NULL;
	double ru[32], rd[32];
	server_opts(&so);
	if (chan_server_new(&so, &t.s))
		return -1;
	client_opts(&co, chan_server_endpoint(t.s), 0);
	if (chan_client_new(&co, &c)) {
		chan_server_free(t.s);
		return -1;
	}
	/* Both ends send without copying (chan_*_send_shared), as the
	 * plaintext reference sends zero-copy. */
	chan_shared *sh = NULL;
	chan_shared_new(data, len, &sh);
	pthread_t th;
	pthread_create(&th, NULL, tls_coord, &t);
	chan_event ev = wait_msg(c); /* WELCOME */
	chan_event_fini(&ev);
	chan_client_set_ready(c);
	char cmd[64];
	for (int r = 0; r < reps; r++) {
		/* up */
		double c0 = cpu_s();
		double t0 = clk_seconds();
		int k = snprintf(cmd, sizeof cmd, "U %zu %d", len, count);
		chan_client_send(c, cmd, (size_t)k);
		for (int i = 0; i < count; i++)
			while (chan_client_send_shared(c, sh) == FL_EAGAIN)
				chan_client_poll(c, 1);
		ev = wait_msg(c);
		ru[r] = (double)len * count / (clk_seconds() - t0);
		cu[r] = (cpu_s() - c0) / gib;
		chan_event_fini(&ev);
		c0 = cpu_s();
		/* down */
		k = snprintf(cmd, sizeof cmd, "D %zu %d", len, count);
		chan_client_send(c, cmd, (size_t)k);
		for (int i = 0; i < count; i++) {
			ev = wait_msg(c);
			if (ev.len != len) {
				fprintf(stderr, "bench: got %zu bytes, want %zu\n", ev.len, len);
				exit(1);
			}
			chan_event_fini(&ev);
		}
		chan_client_send(c, "A", 1);
		ev = wait_msg(c);
		double s = 0;
		char tbuf[64];
		size_t tl = ev.len < sizeof tbuf - 1 ? ev.len : sizeof tbuf - 1;
		memcpy(tbuf, ev.data, tl);
		tbuf[tl] = '\0';
		if (sscanf(tbuf, "T %lf", &s) != 1 || s <= 0)
			s = 1e9;
		rd[r] = (double)len * count / s;
		cd[r] = (cpu_s() - c0) / gib;
		chan_event_fini(&ev);
	}
	chan_client_send(c, "Q", 1);
	for (int i = 0; i < 20; i++)
		chan_client_poll(c, 5);
	pthread_join(th, NULL);
	chan_shared_release(sh);
	chan_client_free(c);
	chan_server_free(t.s);
	*up = bench_median(ru, reps);
	*down = bench_median(rd, reps);
	*cpu_up = bench_median(cu, reps);
	*cpu_down = bench_median(cd, reps);
	return 0;
}

/* ---- handshakes ---- */

typedef struct mem_wire {
	uint8_t *up[64], *down[64];
	size_t upn[64], downn[64];
	uint8_t uph[64][CHAN_HDR_LEN], downh[64][CHAN_HDR_LEN];
	int nu, nd;
	chan_server *direct; /* set: the client's frames go straight into it */
} mem_wire;

static int mw_srv_out(void *arg, const uint8_t *rid, size_t rid_len, const uint8_t *hdr, size_t hn,
                      const uint8_t *body, size_t bn)
{
	mem_wire *w = arg;
	(void)rid;
	(void)rid_len;
	if (w->nd == 64 || hn != CHAN_HDR_LEN)
		return FL_EAGAIN;
	w->down[w->nd] = malloc(bn ? bn : 1);
	memcpy(w->down[w->nd], body, bn);
	memcpy(w->downh[w->nd], hdr, hn);
	w->downn[w->nd++] = bn;
	return 0;
}

static int mw_cli_out(void *arg, const uint8_t *rid, size_t rid_len, const uint8_t *hdr, size_t hn,
                      const uint8_t *body, size_t bn)
{
	mem_wire *w = arg;
	(void)rid;
	(void)rid_len;
	if (w->direct) {
		uint8_t id = 1;
		chan_frame fr[2] = {{hdr, hn}, {body, bn}};
		return chan_server_feed(w->direct, &id, 1, fr, 2);
	}
	if (w->nu == 64 || hn != CHAN_HDR_LEN)
		return FL_EAGAIN;
	w->up[w->nu] = malloc(bn ? bn : 1);
	memcpy(w->up[w->nu], body, bn);
	memcpy(w->uph[w->nu], hdr, hn);
	w->upn[w->nu++] = bn;
	return 0;
}

/* Brings a detached node up against a detached coordinator through w
 * (frames passed in memory, Welcome included). Returns the number of
 * PEER_UP events; *srv_t (may be NULL) gets the coordinator side's time
 * added. */
static int mem_handshake(chan_server *s, chan_client *c, mem_wire *w, double *srv_t)
{
	int ups = 0;
	chan_client_link_event(c, 1);
	for (int round = 0; round < 20 && !chan_client_is_ready(c); round++) {
		chan_client_process(c, NULL, 0);
		uint8_t rid = 1;
		double a = clk_seconds();
		for (int k = 0; k < w->nu; k++) {
			chan_frame fr[2] = {{w->uph[k], CHAN_HDR_LEN}, {w->up[k], w->upn[k]}};
			chan_server_feed(s, &rid, 1, fr, 2);
			free(w->up[k]);
		}
		w->nu = 0;
		chan_server_process(s, NULL, 0);
		chan_event ev;
		while (chan_server_next(s, &ev) == 0) {
			if (ev.type == CHAN_EV_PEER_UP) {
				ups++;
				chan_server_send(s, ev.peer, "WELCOME", 7);
				chan_server_process(s, NULL, 0);
			}
			chan_event_fini(&ev);
		}
		if (srv_t)
			*srv_t += clk_seconds() - a;
		for (int k = 0; k < w->nd; k++) {
			chan_frame fr[2] = {{w->downh[k], CHAN_HDR_LEN}, {w->down[k], w->downn[k]}};
			chan_client_feed(c, fr, 2);
			free(w->down[k]);
		}
		w->nd = 0;
		while (chan_client_next(c, &ev) == 0) {
			if (ev.type == CHAN_EV_MESSAGE)
				chan_client_set_ready(c);
			chan_event_fini(&ev);
		}
	}
	return ups;
}

/* Handshakes with both ends in this thread, frames passed in memory:
 * returns handshakes/s and the coordinator's CPU time per handshake. */
static double hs_memory(int n, double *srv_us)
{
	chan_server_opts so;
	chan_client_opts co;
	chan_server *s = NULL;
	mem_wire w;
	double srv_t = 0;
	int ups = 0;
	memset(&w, 0, sizeof w);
	server_opts(&so);
	so.endpoint = NULL;
	client_opts(&co, NULL, 0);
	co.server_name = "127.0.0.1";
	if (chan_server_new_detached(&so, mw_srv_out, &w, &s))
		return 0;
	double t0 = clk_seconds();
	for (int i = 0; i < n; i++) {
		chan_client *c = NULL;
		if (chan_client_new_detached(&co, mw_cli_out, &w, &c))
			break;
		ups += mem_handshake(s, c, &w, &srv_t);
		chan_client_free(c);
		for (int k = 0; k < w.nu; k++)
			free(w.up[k]);
		w.nu = 0;
	}
	double dt = clk_seconds() - t0;
	chan_server_free(s);
	for (int k = 0; k < w.nd; k++)
		free(w.down[k]);
	*srv_us = ups ? srv_t / ups * 1e6 : 0;
	return ups / dt;
}

/* The channel's own cost per byte, without ZeroMQ, threads or a second
 * core: one node session and one coordinator session in this thread, each
 * frame the node produces fed straight into the coordinator, count
 * messages of len bytes sent with chan_client_send_shared. Returns CPU
 * seconds per GiB for encrypting and decrypting (both ends). */
static double inmem_cpu(const uint8_t *data, size_t len, int count)
{
	chan_server_opts so;
	chan_client_opts co;
	chan_server *s = NULL;
	chan_client *c = NULL;
	chan_shared *sh = NULL;
	mem_wire w;
	double res = -1;
	memset(&w, 0, sizeof w);
	server_opts(&so);
	so.endpoint = NULL;
	client_opts(&co, NULL, 0);
	co.server_name = "127.0.0.1";
	if (chan_server_new_detached(&so, mw_srv_out, &w, &s))
		return -1;
	if (chan_client_new_detached(&co, mw_cli_out, &w, &c))
		goto out;
	mem_handshake(s, c, &w, NULL);
	if (!chan_client_is_ready(c) || chan_shared_new(data, len, &sh))
		goto out;
	w.direct = s;
	int got = 0, sent = 0;
	double c0 = cpu_s();
	while (got < count) {
		chan_event ev;
		while (sent < count && chan_client_send_shared(c, sh) == 0)
			sent++;
		chan_client_process(c, NULL, 0);
		while (chan_server_next(s, &ev) == 0) {
			if (ev.type == CHAN_EV_MESSAGE) {
				if (ev.len != len) {
					fprintf(stderr, "bench: got %zu bytes, want %zu\n", ev.len,
					        len);
					exit(1);
				}
				got++;
			}
			chan_event_fini(&ev);
		}
	}
	res = (cpu_s() - c0) / ((double)len * count / (MIB * 1024));
out:
	chan_shared_release(sh);
	chan_client_free(c);
	chan_server_free(s);
	for (int k = 0; k < w.nu; k++)
		free(w.up[k]);
	for (int k = 0; k < w.nd; k++)
		free(w.down[k]);
	return res;
}

/* Sequential connects over TCP: new node, handshake, WELCOME, free. */
static double hs_tcp(int n)
{
	chan_server_opts so;
	tls_srv t = {NULL, NULL, 0, 0};
	server_opts(&so);
	if (chan_server_new(&so, &t.s))
		return 0;
	uint8_t one = 0;
	t.data = &one;
	t.len = 1;
	pthread_t th;
	pthread_create(&th, NULL, tls_coord, &t);
	void *ctx = zmq_ctx_new();
	int done = 0;
	double t0 = clk_seconds();
	for (int i = 0; i < n; i++) {
		chan_client_opts co;
		chan_client *c = NULL;
		client_opts(&co, chan_server_endpoint(t.s), i % g_nodes);
		co.zmq_ctx = ctx;
		co.linger_ms = 0;
		if (chan_client_new(&co, &c))
			break;
		chan_event ev = wait_msg(c);
		chan_event_fini(&ev);
		done++;
		if (i == n - 1)
			chan_client_send(c, "Q", 1), chan_client_poll(c, 20);
		chan_client_free(c);
	}
	double dt = clk_seconds() - t0;
	t.quit = 1;
	pthread_join(th, NULL);
	chan_server_free(t.s);
	zmq_ctx_term(ctx);
	return done / dt;
}

/* ---- memory per session (coordinator in its own process) ---- */

static void measure(long *rss_kb, long *heap)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	*rss_kb = 0;
	while (f && fgets(line, sizeof line, f))
		if (strncmp(line, "VmRSS:", 6) == 0)
			*rss_kb = strtol(line + 6, NULL, 10);
	if (f)
		fclose(f);
	struct mallinfo2 mi = mallinfo2();
	*heap = (long)(mi.uordblks + mi.hblkhd);
}

/* Coordinator child: reports "M0", "M1" (all n nodes up, idle) and "M2"
 * (after k nodes sent and got back 16 MiB each, idle again) on fd. */
static int mem_coord(int fd, int n, int k)
{
	chan_server_opts so;
	chan_server *s = NULL;
	long rss, heap;
	server_opts(&so);
	so.max_sessions = n + 16;
	if (chan_server_new(&so, &s))
		return 1;
	measure(&rss, &heap);
	dprintf(fd, "E %s\nM0 %ld %ld\n", chan_server_endpoint(s), rss, heap);
	int ups = 0, echoed = 0, phase = 1;
	uint64_t *peers = calloc((size_t)n + 16, sizeof *peers);
	double quiet_since = clk_seconds();
	for (;;) {
		chan_event ev;
		chan_server_poll(s, 50);
		while (chan_server_next(s, &ev) == 0) {
			quiet_since = clk_seconds();
			if (ev.type == CHAN_EV_PEER_UP) {
				ups++;
				chan_server_send(s, ev.peer, "WELCOME", 7);
			} else if (ev.type == CHAN_EV_MESSAGE && ev.len == (16u << 20)) {
				while (chan_server_send(s, ev.peer, ev.data, ev.len) == FL_EAGAIN)
					chan_server_poll(s, 5);
				peers[echoed++] = ev.peer;
			}
			chan_event_fini(&ev);
		}
		long long q = 0;
		for (int i = 0; i < echoed; i++)
			q += chan_server_queued(s, peers[i]);
		if (q > 0)
			quiet_since = clk_seconds();
		/* Idle for 3 s: sweeps have run, idle sessions and the frame
		 * pool (freed after 2 s unused) have given their buffers back. */
		if (clk_seconds() - quiet_since < 3.0)
			continue;
		if (phase == 1 && ups >= n) {
			malloc_trim(0);
			measure(&rss, &heap);
			chan_server_stats st;
			chan_server_get_stats(s, &st);
			dprintf(fd, "M1 %ld %ld %llu\n", rss, heap,
			        (unsigned long long)st.sessions);
			phase = 2;
		} else if (phase == 2 && echoed >= k) {
			malloc_trim(0);
			measure(&rss, &heap);
			dprintf(fd, "M2 %ld %ld\n", rss, heap);
			phase = 3;
		}
		if (phase == 3)
			break;
	}
	pause(); /* the parent ends us */
	free(peers);
	chan_server_free(s);
	return 0;
}

/* Nodes child: n nodes in one process; after "go" on stdin, the first k
 * send 16 MiB each and wait for the echo. */
static int mem_nodes(const char *ep, int n, int k, int go_fd, int out_fd)
{
	void *ctx = zmq_ctx_new();
	zmq_ctx_set(ctx, ZMQ_MAX_SOCKETS, 4 * n + 64);
	chan_client **c = calloc((size_t)n, sizeof *c);
	zmq_pollitem_t *it = calloc((size_t)n * CHAN_POLLITEMS_MAX, sizeof *it);
	int *got = calloc((size_t)n, sizeof *got);
	for (int i = 0; i < n; i++) {
		chan_client_opts co;
		client_opts(&co, ep, i);
		co.zmq_ctx = ctx;
		co.reconnect_ivl_max_ms = 1000;
		if (chan_client_new(&co, &c[i]))
			return 1;
	}
	uint8_t *big = malloc(16u << 20);
	memset(big, 0x33, 16u << 20);
	int ready = 0, sent = 0, echoes = 0, announced = 0;
	for (;;) {
		int m = 0, t = 100;
		for (int i = 0; i < n; i++) {
			m += chan_client_pollitems(c[i], it + m, CHAN_POLLITEMS_MAX);
			int ct = chan_client_timeout(c[i]);
			if (ct < t)
				t = ct;
		}
		zmq_poll(it, m, t);
		m = 0;
		ready = 0;
		for (int i = 0; i < n; i++) {
			chan_client_process(c[i], it + m, CHAN_POLLITEMS_MAX);
			m += CHAN_POLLITEMS_MAX;
			chan_event ev;
			while (chan_client_next(c[i], &ev) == 0) {
				if (ev.type == CHAN_EV_MESSAGE && ev.len == 7)
					chan_client_set_ready(c[i]);
				else if (ev.type == CHAN_EV_MESSAGE && ev.len == (16u << 20))
					got[i] = 1, echoes++;
				chan_event_fini(&ev);
			}
			ready += chan_client_is_ready(c[i]);
		}
		if (ready == n && !announced) {
			dprintf(out_fd, "READY\n");
			announced = 1;
		}
		if (announced && !sent) {
			struct timeval tv = {0, 0};
			fd_set fs;
			FD_ZERO(&fs);
			FD_SET(go_fd, &fs);
			if (select(go_fd + 1, &fs, NULL, NULL, &tv) == 1) {
				for (int i = 0; i < k && i < n; i++)
					chan_client_send(c[i], big, 16u << 20);
				sent = 1;
			}
		}
		if (sent && echoes >= k && announced != 2) {
			dprintf(out_fd, "ECHOED\n");
			announced = 2;
		}
	}
	return 0;
}

static int read_line(FILE *f, char *buf, size_t n, const char *prefix)
{
	while (fgets(buf, (int)n, f))
		if (strncmp(buf, prefix, strlen(prefix)) == 0)
			return 0;
	return -1;
}

/* The same number of plain ZeroMQ connections (ROUTER with the channel's
 * socket options, one DEALER per node sending one message): what ZeroMQ
 * itself costs per connection, to tell the channel's own share. */
static int plain_coord(int fd, int n)
{
	void *ctx = zmq_ctx_new(), *r = zmq_socket(ctx, ZMQ_ROUTER);
	int one = 1, shwm = CHAN_SNDHWM, rhwm = CHAN_RCVHWM, hb = 2000, hbt = 6000;
	int64_t maxmsg = FRAME;
	long rss, heap;
	char ep[256];
	size_t epl = sizeof ep;
	zmq_setsockopt(r, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
	zmq_setsockopt(r, ZMQ_SNDHWM, &shwm, sizeof shwm);
	zmq_setsockopt(r, ZMQ_RCVHWM, &rhwm, sizeof rhwm);
	zmq_setsockopt(r, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
	zmq_setsockopt(r, ZMQ_HEARTBEAT_IVL, &hb, sizeof hb);
	zmq_setsockopt(r, ZMQ_HEARTBEAT_TIMEOUT, &hbt, sizeof hbt);
	zmq_bind(r, "tcp://127.0.0.1:*");
	zmq_getsockopt(r, ZMQ_LAST_ENDPOINT, ep, &epl);
	measure(&rss, &heap);
	dprintf(fd, "E %s\nM0 %ld %ld\n", ep, rss, heap);
	pt_peer p = {r, 1, {0}, 0};
	for (int i = 0; i < n; i++)
		pt_recv1(&p, NULL);
	clk_sleep_ms(2000);
	malloc_trim(0);
	measure(&rss, &heap);
	dprintf(fd, "M1 %ld %ld\n", rss, heap);
	pause();
	return 0;
}

static int plain_nodes(const char *ep, int n)
{
	void *ctx = zmq_ctx_new();
	zmq_ctx_set(ctx, ZMQ_MAX_SOCKETS, 2 * n + 64);
	for (int i = 0; i < n; i++) {
		void *d = zmq_socket(ctx, ZMQ_DEALER);
		pt_peer p = {d, 0, {0}, 0};
		zmq_connect(d, ep);
		pt_small(&p, "hello");
	}
	pause();
	return 0;
}

/* Reads a coordinator child's first two lines: its endpoint ("E", into
 * ep[256]) and its memory before any node ("M0"). */
static FILE *coord_start_lines(int fd, char ep[256], long *rss0, long *heap0)
{
	char line[512];
	FILE *cf = fdopen(fd, "r");
	if (read_line(cf, line, sizeof line, "E ") == 0)
		sscanf(line, "E %255s", ep);
	read_line(cf, line, sizeof line, "M0 ");
	sscanf(line, "M0 %ld %ld", rss0, heap0);
	return cf;
}

static void kill_children(pid_t nodes, pid_t coord)
{
	kill(nodes, SIGKILL);
	kill(coord, SIGKILL);
	waitpid(nodes, NULL, 0);
	waitpid(coord, NULL, 0);
}

/* Per-connection RSS and heap of n plain ZeroMQ connections. */
static void memory_plain(int n, double *rss_per, double *heap_per)
{
	int cp[2];
	char line[512], ep[256] = "";
	long rss0 = 0, heap0 = 0, rss1 = 0, heap1 = 0;
	*rss_per = *heap_per = 0;
	if (pipe(cp))
		return;
	fflush(stdout);
	pid_t coord = fork();
	if (coord == 0) {
		close(cp[0]);
		_exit(plain_coord(cp[1], n));
	}
	close(cp[1]);
	FILE *cf = coord_start_lines(cp[0], ep, &rss0, &heap0);
	pid_t nodes = fork();
	if (nodes == 0) {
		fclose(cf);
		_exit(plain_nodes(ep, n));
	}
	if (read_line(cf, line, sizeof line, "M1 ") == 0)
		sscanf(line, "M1 %ld %ld", &rss1, &heap1);
	kill_children(nodes, coord);
	fclose(cf);
	*rss_per = (rss1 - rss0) * 1024.0 / n;
	*heap_per = (double)(heap1 - heap0) / n;
}

static void memory_bench(int n, int k)
{
	int cp[2], np[2], gp[2];
	char line[512], ep[256] = "";
	long rss0, heap0, rss1, heap1, rss2, heap2;
	unsigned long long sess = 0;
	if (pipe(cp) || pipe(np) || pipe(gp))
		return;
	fflush(stdout);
	pid_t coord = fork();
	if (coord == 0) {
		close(cp[0]);
		_exit(mem_coord(cp[1], n, k));
	}
	close(cp[1]);
	FILE *cf = coord_start_lines(cp[0], ep, &rss0, &heap0);
	pid_t nodes = fork();
	if (nodes == 0) {
		close(np[0]);
		close(gp[1]);
		_exit(mem_nodes(ep, n, k, gp[0], np[1]));
	}
	close(np[1]);
	close(gp[0]);
	FILE *nf = fdopen(np[0], "r");
	double t0 = clk_seconds();
	read_line(nf, line, sizeof line, "READY");
	double t_up = clk_seconds() - t0;
	read_line(cf, line, sizeof line, "M1 ");
	sscanf(line, "M1 %ld %ld %llu", &rss1, &heap1, &sess);
	if (write(gp[1], "go\n", 3) != 3)
		perror("write");
	read_line(nf, line, sizeof line, "ECHOED");
	read_line(cf, line, sizeof line, "M2 ");
	sscanf(line, "M2 %ld %ld", &rss2, &heap2);
	kill_children(nodes, coord);
	fclose(cf);
	fclose(nf);
	close(gp[1]);
	double zrss, zheap;
	memory_plain(n, &zrss, &zheap);
	double idle_rss = (rss1 - rss0) * 1024.0 / n, idle_heap = (double)(heap1 - heap0) / n;
	double xfer_rss = (rss2 - rss1) * 1024.0 / k, xfer_heap = (double)(heap2 - heap1) / k;
	printf("\nmemory (coordinator process, %d nodes in another process, all up after %.1f s, "
	       "%llu sessions):\n",
	       n, t_up, sess);
	printf("  per idle session:            RSS %6.1f KiB   heap in use %6.1f KiB\n",
	       idle_rss / 1024, idle_heap / 1024);
	printf("  of which ZeroMQ (the same number of plain ZeroMQ connections): RSS %6.1f KiB   "
	       "heap %6.1f KiB\n",
	       zrss / 1024, zheap / 1024);
	printf(
	    "  channel's own share (TLS session, SSL*, queues): RSS %6.1f KiB   heap %6.1f KiB\n",
	    (idle_rss - zrss) / 1024, (idle_heap - zheap) / 1024);
	printf("  target <= 64 KB per idle session: %s (RSS, all included); heap in use %s\n",
	       idle_rss <= 64000 ? "met" : "NOT met", idle_heap <= 64000 ? "met" : "NOT met");
	printf("  after 16 MiB up + 16 MiB down (%d sessions), extra per session: RSS %6.1f KiB  "
	       "heap %6.1f KiB\n",
	       k, xfer_rss / 1024, xfer_heap / 1024);
	printf("  per session after a 16 MiB transfer each way: RSS %6.1f KiB   heap in use %6.1f "
	       "KiB\n"
	       "  (RSS above the idle figure is freed memory glibc keeps in its arenas, not\n"
	       "  per-session state: heap in use shows what sessions still hold)\n",
	       (idle_rss + xfer_rss) / 1024, (idle_heap + xfer_heap) / 1024);
}

int main(int argc, char **argv)
{
	int reps = 5, sessions = 1000, xfer = 50, skip_tp = 0, skip_mem = 0, tls_only = 0;
	int only_size = 0, skip_hs = 0, malloc_tuning = 1, inmem_only = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--reps") && i + 1 < argc)
			reps = (int)strtol(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--sessions") && i + 1 < argc)
			sessions = (int)strtol(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--xfer-sessions") && i + 1 < argc)
			xfer = (int)strtol(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--skip-throughput"))
			skip_tp = 1;
		else if (!strcmp(argv[i], "--skip-memory"))
			skip_mem = 1;
		else if (!strcmp(argv[i], "--tls-only")) /* for profiling */
			tls_only = 1;
		else if (!strcmp(argv[i], "--inmem-only")) /* for profiling */
			inmem_only = 1;
		else if (!strcmp(argv[i], "--skip-handshakes"))
			skip_hs = 1;
		else if (!strcmp(argv[i], "--default-malloc"))
			malloc_tuning = 0;
		else if (!strcmp(argv[i], "--size") && i + 1 < argc)
			only_size = (int)strtol(argv[++i], NULL, 10);
		else {
			fprintf(stderr,
			        "usage: %s [--reps N] [--sessions N] [--xfer-sessions K] "
			        "[--skip-throughput] [--skip-memory]\n",
			        argv[0]);
			return 2;
		}
	}
	if (reps < 1 || reps > 31 || sessions < 1 || xfer < 1 || xfer > sessions) {
		fprintf(stderr, "bad arguments\n");
		return 2;
	}
	log_set_level(LOG_LVL_ERROR);
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (make_pki(skip_mem ? 1 : sessions)) {
		fprintf(stderr, "cannot make the test certificates\n");
		return 1;
	}
	printf("bench_transport: medians of %d runs; MiB/s = 2^20 bytes per second\n", reps);
	/* Memory first: it forks, and wants no threads around; glibc's
	 * default malloc settings, as a coordinator would run. */
	if (!skip_mem)
		memory_bench(sessions, xfer);

	if (malloc_tuning) {
		/* Receivers keep a message or two of up to 16 MiB alive; with
		 * glibc's defaults the heap is trimmed and refaulted between
		 * them, which costs more than the crypto. Same settings for
		 * the plaintext and the TLS runs; 64 MiB buffers are mmap'd
		 * either way. --default-malloc to compare. */
		mallopt(M_MMAP_THRESHOLD, 32 << 20);
		mallopt(M_TRIM_THRESHOLD, 512 << 20);
		printf("malloc: M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 512 MiB (both paths)\n");
	}
	double aes = bench_aesgcm_rate(reps);
	printf("\nAES-256-GCM, one core, EVP, 16 KiB records: %.0f MiB/s\n", aes / MIB);
	if (!skip_tp) {
		/* Every repetition measures AES-GCM, plaintext and TLS back to
		 * back, and the ratios are taken per repetition: the machine's
		 * load changes between repetitions, not within one. */
		static const size_t sizes[3] = {1u << 20, 16u << 20, 64u << 20};
		/* 256 MiB per direction and size: ZeroMQ's high-water marks and
		 * TCP hold ~20 MiB in flight, and filling and draining that
		 * pipeline must be a small part of the measured time. */
		static const int counts[3] = {256, 16, 4};
		uint8_t *data = malloc(64u << 20);
		RAND_bytes(data, 64 << 20);
		printf("\n%-7s %-5s %12s %12s %12s %10s %11s\n", "size", "dir", "plain MiB/s",
		       "TLS MiB/s", "ceiling", "TLS/plain", "TLS/ceiling");
		int below = 0;
		long ncores = sysconf(_SC_NPROCESSORS_ONLN);
		for (int i = 0; i < 3; i++) {
			double aesr[32];
			if (inmem_only || (only_size && (size_t)only_size << 20 != sizes[i]))
				continue;
			double pl[2][32], tl[2][32], ce[2][32], rp[2][32], rc[2][32];
			double cpl[2][32], ctl[2][32], cex[2][32], need[2][32];
			for (int r = 0; r < reps; r++) {
				double a = bench_aesgcm_rate(1), pu = 1, pd = 1, tu, td;
				double cpu_pu = 0, cpu_pd = 0, cpu_tu, cpu_td;
				if (!tls_only) {
					pu = plaintext_rate(data, sizes[i], counts[i], 1, 1,
					                    &cpu_pu);
					pd = plaintext_rate(data, sizes[i], counts[i], 0, 1,
					                    &cpu_pd);
				}
				if (tls_rates(data, sizes[i], counts[i], 1, &tu, &td, &cpu_tu,
				              &cpu_td)) {
					fprintf(stderr, "TLS run failed\n");
					return 1;
				}
				double p2[2] = {pu, pd}, t2[2] = {tu, td};
				double cp2[2] = {cpu_pu, cpu_pd}, ct2[2] = {cpu_tu, cpu_td};
				for (int d = 0; d < 2; d++) {
					cpl[d][r] = cp2[d];
					ctl[d][r] = ct2[d];
					/* extra CPU of TLS in units of one AES-GCM pass */
					cex[d][r] = (ct2[d] - cp2[d]) / (MIB * 1024 / a);
					pl[d][r] = p2[d];
					tl[d][r] = t2[d];
					ce[d][r] = 1.0 / (1.0 / p2[d] + 1.0 / a);
					rp[d][r] = t2[d] / p2[d];
					rc[d][r] = t2[d] / ce[d][r];
					/* cores busy at 0.8 x ceiling, at this CPU per GiB */
					need[d][r] = 0.8 * ce[d][r] / (MIB * 1024) * ct2[d];
				}
				aesr[r] = a;
			}
			for (int d = 0; d < 2 && tls_only; d++)
				printf("%3zu MiB %-5s %12s %12.0f %12s %10s %11s\n", sizes[i] >> 20,
				       d ? "down" : "up", "-", bench_median(tl[d], reps) / MIB, "-",
				       "-", "-");
			for (int d = 0; d < 2 && !tls_only; d++) {
				double mrc = bench_median(rc[d], reps);
				below += mrc < 0.8;
				printf("%3zu MiB %-5s %12.0f %12.0f %12.0f %10.2f %11.2f\n",
				       sizes[i] >> 20, d ? "down" : "up",
				       bench_median(pl[d], reps) / MIB,
				       bench_median(tl[d], reps) / MIB,
				       bench_median(ce[d], reps) / MIB, bench_median(rp[d], reps),
				       mrc);
			}
			printf("        (AES-256-GCM during these runs: %.0f MiB/s)\n",
			       bench_median(aesr, reps) / MIB);
			for (int d = 0; d < 2 && tls_only; d++)
				printf(
				    "        CPU, all threads, %-4s: TLS %.2f s/GiB (no plaintext "
				    "reference with --tls-only)\n",
				    d ? "down" : "up", bench_median(ctl[d], reps));
			for (int d = 0; d < 2 && !tls_only; d++)
				printf("        CPU, all threads, %-4s: plain %.2f s/GiB, TLS %.2f "
				       "s/GiB: "
				       "TLS adds %.1f AES-GCM passes' worth (2 = encrypt + "
				       "decrypt); 0.8 x ceiling needs %.2f of %ld cores busy\n",
				       d ? "down" : "up", bench_median(cpl[d], reps),
				       bench_median(ctl[d], reps), bench_median(cex[d], reps),
				       bench_median(need[d], reps), ncores);
		}
		if (tls_only)
			printf("target TLS >= 0.8 x ceiling: not evaluated (--tls-only measures no "
			       "plaintext reference)\n");
		else
			printf("target TLS >= 0.8 x ceiling: %s\n",
			       below ? "NOT met on some rows" : "met on every row");
		/* The channel's own CPU per byte, apart from ZeroMQ and threads. */
		printf("\nchannel alone (one thread, both ends, frames fed in memory, no "
		       "ZeroMQ):\n");
		for (int i = 0; i < 2; i++) {
			double cv[32], av[32];
			for (int r = 0; r < reps; r++) {
				av[r] = bench_aesgcm_rate(1);
				cv[r] = inmem_cpu(data, sizes[i], i ? 16 : 256);
			}
			double cpu = bench_median(cv, reps),
			       aes1 = MIB * 1024 / bench_median(av, reps);
			printf("  %2zu MiB messages: %.3f s/GiB = %.2f AES-GCM passes (2.00 = "
			       "encrypt + decrypt and nothing else)\n",
			       sizes[i] >> 20, cpu, cpu / aes1);
		}
		free(data);
	}
	if (skip_hs)
		return 0;
	double srv_us = 0;
	double hm = hs_memory(200, &srv_us);
	printf("\nhandshakes, both ends in one thread, frames in memory: %.0f/s "
	       "(coordinator side %.0f us each: %.0f/s per core)\n",
	       hm, srv_us, srv_us > 0 ? 1e6 / srv_us : 0);
	double ht = hs_tcp(100);
	printf("handshakes over TCP, sequential (connect, TLS, Welcome, close): %.0f/s\n", ht);
	return 0;
}
