/* chantest — helpers for the channel tests (header-only, static): a test PKI
 * made with deploy/certs.sh, log capture, and a harness that runs a
 * coordinator and nodes on one thread over real ZeroMQ sockets. */
#ifndef FL_CHANTEST_H
#define FL_CHANTEST_H
#include "testutil.h"

#include "chan.h"
#include "clock.h"
#include "err.h"
#include "log.h"

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- test PKI ---- */

/* Directory layout under root:
 *   pki/    the federation: ca.crt, crl.pem, coordinator.{crt,key} (SAN IP
 *           127.0.0.1, DNS localhost), nodes/ID.{crt,key} for node-01..04,
 *           node-exp (expired), node-future (not yet valid), node-rev
 *           (revoked in crl.pem), node-out (not in allow.txt)
 *   other/  another CA with a node-01 and a coordinator of its own
 *   allow.txt  node-01..04, node-exp, node-future, node-rev */
static inline int ct_make_pki(const char *root)
{
	char sh[PATH_MAX];
	snprintf(sh, sizeof sh, "%s", tu_src_path("deploy/certs.sh"));
	int rc = 0;
	rc |= tu_system("bash %s init %s/pki >/dev/null", sh, root);
	rc |= tu_system("bash %s coordinator %s/pki --ip 127.0.0.1 --dns localhost >/dev/null", sh,
	                root);
	rc |= tu_system("bash %s node %s/pki node-01 node-02 node-03 node-04 node-rev node-out "
	                ">/dev/null",
	                sh, root);
	rc |= tu_system("bash %s node %s/pki node-exp --start 20200101000000Z --end "
	                "20210101000000Z >/dev/null",
	                sh, root);
	rc |= tu_system("bash %s node %s/pki node-future --start 20990101000000Z --end "
	                "20991231000000Z >/dev/null",
	                sh, root);
	rc |= tu_system("bash %s revoke %s/pki node-rev >/dev/null", sh, root);
	rc |= tu_system("bash %s init %s/other >/dev/null", sh, root);
	rc |= tu_system("bash %s coordinator %s/other --ip 127.0.0.1 >/dev/null", sh, root);
	rc |= tu_system("bash %s node %s/other node-01 >/dev/null", sh, root);
	rc |= tu_system("printf 'node-01\\nnode-02\\nnode-03\\nnode-04\\nnode-exp\\nnode-future\\n"
	                "node-rev\\n' > %s/allow.txt",
	                root);
	return rc;
}

/* Path helper: static rotating buffers so a few can be used at once (the
 * channel copies option strings; copy a path you keep for longer). */
static inline const char *ct_path(const char *root, const char *rel)
{
	static char b[32][PATH_MAX];
	static int i;
	char *p = b[i++ % 32];
	snprintf(p, PATH_MAX, "%s/%s", root, rel);
	return p;
}

static inline void ct_server_opts(chan_server_opts *o, const char *root)
{
	chan_server_opts_default(o);
	o->endpoint = "tcp://127.0.0.1:*";
	o->cert_path = ct_path(root, "pki/coordinator.crt");
	o->key_path = ct_path(root, "pki/coordinator.key");
	o->ca_path = ct_path(root, "pki/ca.crt");
	o->bind_retry_ms = 5000;
	o->linger_ms = 200;
}

/* Node options for nodes/ID of the given PKI ("pki" or "other"). */
static inline void ct_client_opts(chan_client_opts *o, const char *root, const char *pki,
                                  const char *id, const char *endpoint)
{
	char rel[128];
	chan_client_opts_default(o);
	o->endpoint = endpoint;
	snprintf(rel, sizeof rel, "%s/nodes/%s.crt", pki, id);
	o->cert_path = ct_path(root, rel);
	snprintf(rel, sizeof rel, "%s/nodes/%s.key", pki, id);
	o->key_path = ct_path(root, rel);
	o->ca_path = ct_path(root, "pki/ca.crt");
	o->reconnect_ivl_ms = 50;
	o->reconnect_ivl_max_ms = 500;
	o->linger_ms = 200;
}

/* ---- log capture ---- */

static char ct_logpath[PATH_MAX];

static inline void ct_log_to(const char *root)
{
	snprintf(ct_logpath, sizeof ct_logpath, "%s/test.log", root);
	int fd = open(ct_logpath, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (fd >= 0)
		log_set_fd(fd);
	log_set_level(LOG_LVL_DEBUG);
}

static inline long ct_log_mark(void)
{
	struct stat st;
	return stat(ct_logpath, &st) == 0 ? (long)st.st_size : 0;
}

/* Whether a line containing every one of the (NULL-terminated) needles was
 * logged after mark. */
static inline int ct_log_has(long mark, const char *n1, const char *n2)
{
	FILE *f = fopen(ct_logpath, "r");
	char line[4096];
	int found = 0;
	if (!f)
		return 0;
	fseek(f, mark, SEEK_SET);
	while (!found && fgets(line, sizeof line, f))
		found = strstr(line, n1) && (!n2 || strstr(line, n2));
	fclose(f);
	return found;
}

/* Copies the log since mark to stderr (for failing tests). */
static inline void ct_log_dump(long mark)
{
	FILE *f = fopen(ct_logpath, "r");
	char line[4096];
	if (!f)
		return;
	fseek(f, mark, SEEK_SET);
	while (fgets(line, sizeof line, f))
		fputs(line, stderr);
	fclose(f);
}

/* ---- events ---- */

typedef struct ct_evs {
	chan_event v[256];
	int n;
} ct_evs;

static inline void ct_evs_clear(ct_evs *e)
{
	for (int i = 0; i < e->n; i++)
		chan_event_fini(&e->v[i]);
	e->n = 0;
}

static inline void ct_evs_push(ct_evs *e, chan_event *ev)
{
	if (e->n == (int)(sizeof e->v / sizeof e->v[0])) {
		chan_event_fini(&e->v[0]);
		memmove(&e->v[0], &e->v[1], sizeof e->v - sizeof e->v[0]);
		e->n--;
	}
	e->v[e->n++] = *ev;
}

/* Index of the first event of a type (and peer unless 0, and CN unless
 * NULL) at or after from, or -1. */
static inline int ct_evs_find(const ct_evs *e, int from, int type, uint64_t peer, const char *cn)
{
	for (int i = from; i < e->n; i++)
		if ((int)e->v[i].type == type && (!peer || e->v[i].peer == peer) &&
		    (!cn || strcmp(e->v[i].cn, cn) == 0))
			return i;
	return -1;
}

/* ---- one-thread harness ---- */

#define CT_MAXC    8
#define CT_WELCOME "WELCOME"

typedef struct ct_h {
	chan_server *srv;
	ct_evs sev;
	int welcome; /* server sends WELCOME on PEER_UP */
	chan_client *cli[CT_MAXC];
	ct_evs cev[CT_MAXC];
} ct_h;

/* One zmq_poll round over everything (at most ms), then events: the
 * server answers PEER_UP with WELCOME; a node receiving WELCOME calls
 * chan_client_set_ready. All events are kept. */
static inline void ct_pump(ct_h *h, int ms)
{
	zmq_pollitem_t it[CHAN_POLLITEMS_MAX * (CT_MAXC + 1)];
	int n = 0, ns = 0, nc[CT_MAXC] = {0};
	int t = ms;
	if (h->srv) {
		ns = chan_server_pollitems(h->srv, it, CHAN_POLLITEMS_MAX);
		n += ns;
		int st = chan_server_timeout(h->srv);
		if (st < t)
			t = st;
	}
	for (int i = 0; i < CT_MAXC; i++) {
		if (!h->cli[i])
			continue;
		nc[i] = chan_client_pollitems(h->cli[i], it + n, CHAN_POLLITEMS_MAX);
		n += nc[i];
		int ct = chan_client_timeout(h->cli[i]);
		if (ct < t)
			t = ct;
	}
	zmq_poll(it, n, t);
	int off = 0;
	if (h->srv) {
		chan_server_process(h->srv, it, ns);
		off += ns;
	}
	for (int i = 0; i < CT_MAXC; i++) {
		if (!h->cli[i])
			continue;
		chan_client_process(h->cli[i], it + off, nc[i]);
		off += nc[i];
	}
	chan_event ev;
	while (h->srv && chan_server_next(h->srv, &ev) == 0) {
		if (ev.type == CHAN_EV_PEER_UP && h->welcome)
			chan_server_send(h->srv, ev.peer, CT_WELCOME, strlen(CT_WELCOME));
		ct_evs_push(&h->sev, &ev);
	}
	for (int i = 0; i < CT_MAXC; i++) {
		while (h->cli[i] && chan_client_next(h->cli[i], &ev) == 0) {
			if (ev.type == CHAN_EV_MESSAGE && ev.len == strlen(CT_WELCOME) &&
			    memcmp(ev.data, CT_WELCOME, ev.len) == 0)
				chan_client_set_ready(h->cli[i]);
			ct_evs_push(&h->cev[i], &ev);
		}
	}
}

/* Pumps until cond holds or ms pass; evaluates to cond. */
#define CT_WAIT(h, ms, cond)                                                                       \
	({                                                                                         \
		uint64_t ct_dl_ = clk_mono_ms() + (uint64_t)(ms);                                  \
		while (!(cond) && clk_mono_ms() < ct_dl_)                                          \
			ct_pump((h), 20);                                                          \
		(cond);                                                                            \
	})

static inline void ct_h_fini(ct_h *h)
{
	for (int i = 0; i < CT_MAXC; i++) {
		chan_client_free(h->cli[i]);
		h->cli[i] = NULL;
		ct_evs_clear(&h->cev[i]);
	}
	chan_server_free(h->srv);
	h->srv = NULL;
	ct_evs_clear(&h->sev);
}

/* A deterministic pattern for byte-exact checks. */
static inline uint8_t *ct_pattern(size_t n, uint64_t seed)
{
	uint8_t *p = malloc(n ? n : 1);
	uint64_t s = seed;
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		uint64_t r = tu_rand(&s);
		memcpy(p + i, &r, 8);
	}
	for (; i < n; i++)
		p[i] = (uint8_t)tu_rand(&s);
	return p;
}

#endif
