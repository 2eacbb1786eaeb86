/* chan_zap — ZAP handler for the NULL mechanism: admits or refuses a TCP
 * peer by IP address before ZeroMQ buffers anything from it (chan_int.h).
 * Runs on the channel's thread, answering from its event loop. */
#include "chan_int.h"

#include "err.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define ZAP_MAX_NETS 1024

typedef struct zap_net {
	int fam; /* AF_INET or AF_INET6 */
	uint8_t a[16];
	int bits;
} zap_net;

struct chan_zap {
	void *rep;
	zap_net *allow, *deny;
	size_t nallow, ndeny;
	int has_allow;
	chan_ratelog rl;
};

/* IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are treated as IPv4. */
static int parse_addr(const char *s, int *fam, uint8_t a[16])
{
	uint8_t t[16];
	if (inet_pton(AF_INET, s, t) == 1) {
		*fam = AF_INET;
		memcpy(a, t, 4);
		return 0;
	}
	if (inet_pton(AF_INET6, s, t) == 1) {
		static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
		if (memcmp(t, mapped, 12) == 0) {
			*fam = AF_INET;
			memcpy(a, t + 12, 4);
		} else {
			*fam = AF_INET6;
			memcpy(a, t, 16);
		}
		return 0;
	}
	return FL_EINVAL;
}

static int parse_net(const char *s, size_t n, zap_net *out)
{
	char tmp[64], *slash;
	int bits = -1;
	if (n == 0 || n >= sizeof tmp)
		return FL_EINVAL;
	memcpy(tmp, s, n);
	tmp[n] = '\0';
	slash = strchr(tmp, '/');
	if (slash) {
		char *end = NULL;
		*slash = '\0';
		if (!slash[1])
			return FL_EINVAL;
		long v = strtol(slash + 1, &end, 10);
		if (*end || v < 0 || v > 128)
			return FL_EINVAL;
		bits = (int)v;
	}
	if (parse_addr(tmp, &out->fam, out->a))
		return FL_EINVAL;
	int maxb = out->fam == AF_INET ? 32 : 128;
	if (bits > maxb)
		return FL_EINVAL;
	out->bits = bits < 0 ? maxb : bits;
	return 0;
}

static int parse_list(const char *what, const char *s, zap_net **out, size_t *nout)
{
	zap_net *v = NULL;
	size_t n = 0;
	const char *p = s;
	while (*p) {
		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		if (!*p)
			break;
		const char *e = p;
		while (*e && *e != ',' && *e != ' ' && *e != '\t')
			e++;
		if (n == ZAP_MAX_NETS) {
			LOGE(CHAN_MOD, "%s: more than %d entries", what, ZAP_MAX_NETS);
			free(v);
			return FL_ECONFIG;
		}
		zap_net *nv = realloc(v, (n + 1) * sizeof *v);
		if (!nv) {
			free(v);
			return FL_ENOMEM;
		}
		v = nv;
		if (parse_net(p, (size_t)(e - p), &v[n])) {
			LOGE(CHAN_MOD, "%s: '%.*s' is not an IP address or CIDR prefix", what,
			     (int)(e - p > 64 ? 64 : e - p), p);
			free(v);
			return FL_ECONFIG;
		}
		n++;
		p = e;
	}
	*out = v;
	*nout = n;
	return 0;
}

static int net_match(const zap_net *nt, int fam, const uint8_t a[16])
{
	if (nt->fam != fam)
		return 0;
	int full = nt->bits / 8, rest = nt->bits % 8;
	if (memcmp(nt->a, a, (size_t)full) != 0)
		return 0;
	if (rest) {
		uint8_t mask = (uint8_t)(0xff << (8 - rest));
		if ((nt->a[full] & mask) != (a[full] & mask))
			return 0;
	}
	return 1;
}

static int any_match(const zap_net *v, size_t n, int fam, const uint8_t a[16])
{
	for (size_t i = 0; i < n; i++)
		if (net_match(&v[i], fam, a))
			return 1;
	return 0;
}

/* 0 admitted; otherwise why points at the reason. */
static int judge(const chan_zap *z, const char *addr, const char **why)
{
	int fam;
	uint8_t a[16];
	if (parse_addr(addr, &fam, a)) {
		*why = "address not understood";
		return -1;
	}
	if (any_match(z->deny, z->ndeny, fam, a)) {
		*why = "matches ip_deny";
		return -1;
	}
	if (z->has_allow && !any_match(z->allow, z->nallow, fam, a)) {
		*why = "not in ip_allow";
		return -1;
	}
	return 0;
}

int chan_zap_check(const chan_zap *z, const char *addr)
{
	const char *why;
	return judge(z, addr, &why) == 0;
}

int chan_zap_new(void *zctx, const char *allow, const char *deny, chan_zap **out)
{
	int rc;
	chan_zap *z = calloc(1, sizeof *z);
	if (!z)
		return FL_ENOMEM;
	if (allow && *allow) {
		if ((rc = parse_list("ip_allow", allow, &z->allow, &z->nallow)))
			goto out;
		z->has_allow = 1;
		if (z->nallow == 0)
			LOGW(CHAN_MOD, "ip_allow is set but empty: every connection is refused");
	}
	if (deny && *deny && (rc = parse_list("ip_deny", deny, &z->deny, &z->ndeny)))
		goto out;
	if (zctx) {
		z->rep = zmq_socket(zctx, ZMQ_REP);
		if (!z->rep) {
			LOGE(CHAN_MOD, "ZAP socket: %s", zmq_strerror(errno));
			rc = FL_ENET;
			goto out;
		}
		if ((rc = chan_zmq_setint(z->rep, ZMQ_LINGER, 0, "ZMQ_LINGER")))
			goto out;
		if (zmq_bind(z->rep, ZAP_ENDPOINT) != 0) {
			int e = errno;
			LOGE(CHAN_MOD, "ZAP handler: cannot bind %s: %s%s", ZAP_ENDPOINT,
			     zmq_strerror(e),
			     e == EADDRINUSE ? " (the ZeroMQ context already has a ZAP handler)"
			                     : "");
			rc = e == EADDRINUSE ? FL_EBUSY : FL_ENET;
			goto out;
		}
	}
	*out = z;
	return 0;
out:
	chan_zap_free(z);
	return rc;
}

void chan_zap_free(chan_zap *z)
{
	if (!z)
		return;
	if (z->rep)
		zmq_close(z->rep);
	free(z->allow);
	free(z->deny);
	free(z);
}

void *chan_zap_socket(chan_zap *z)
{
	return z->rep;
}

static void reply(void *rep, const zmq_msg_t *reqid, const char *code, const char *text)
{
	zmq_msg_t id;
	zmq_msg_init(&id);
	zmq_msg_copy(&id, (zmq_msg_t *)reqid);
	zmq_send(rep, "1.0", 3, ZMQ_SNDMORE);
	zmq_msg_send(&id, rep, ZMQ_SNDMORE);
	zmq_msg_close(&id);
	zmq_send(rep, code, strlen(code), ZMQ_SNDMORE);
	zmq_send(rep, text, strlen(text), ZMQ_SNDMORE);
	zmq_send(rep, "", 0, ZMQ_SNDMORE);
	zmq_send(rep, "", 0, 0);
}

/* A request: version, request id, domain, address, identity, mechanism,
 * credentials... (ZAP 1.0). */
void chan_zap_process(chan_zap *z, uint64_t *denied)
{
	for (int budget = 0; budget < 64; budget++) {
		zmq_msg_t part[6];
		int n = 0, more = 1, got = 0;
		for (int i = 0; i < 6; i++)
			zmq_msg_init(&part[i]);
		while (more) {
			zmq_msg_t tmp;
			zmq_msg_init(&tmp);
			if (zmq_msg_recv(&tmp, z->rep, got ? 0 : ZMQ_DONTWAIT) < 0) {
				zmq_msg_close(&tmp);
				break;
			}
			got = 1;
			more = zmq_msg_more(&tmp);
			if (n < 6)
				zmq_msg_move(&part[n], &tmp);
			n++;
			zmq_msg_close(&tmp);
		}
		if (!got) {
			for (int i = 0; i < 6; i++)
				zmq_msg_close(&part[i]);
			return;
		}
		if (n < 6 || zmq_msg_size(&part[0]) != 3 ||
		    memcmp(zmq_msg_data(&part[0]), "1.0", 3)) {
			LOGE(CHAN_MOD, "ZAP: malformed request (%d frames)", n);
			/* REP must answer before it can receive again. */
			reply(z->rep, &part[1], "500", "malformed request");
		} else {
			char addr[64];
			size_t al = zmq_msg_size(&part[3]);
			if (al >= sizeof addr)
				al = sizeof addr - 1;
			memcpy(addr, zmq_msg_data(&part[3]), al);
			addr[al] = '\0';
			const char *why = NULL;
			if (judge(z, addr, &why) == 0) {
				reply(z->rep, &part[1], "200", "OK");
			} else {
				(*denied)++;
				if (chan_ratelog_allow(&z->rl))
					LOGW(CHAN_MOD,
					     "connection from %s refused by the ZAP handler: %s",
					     addr, why);
				reply(z->rep, &part[1], "400", why);
			}
		}
		for (int i = 0; i < 6; i++)
			zmq_msg_close(&part[i]);
	}
}
