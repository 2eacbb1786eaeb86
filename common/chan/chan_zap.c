/* chan_zap — the address filter (ip_allow / ip_deny): admits or refuses a TCP
 * connection by IP address when it opens, before anything of it is read
 * (chan_int.h). The coordinator's channel calls it from its own thread. */
#include "chan_int.h"

#include "err.h"
#include "log.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ZAP_MAX_NETS 1024

typedef struct zap_net {
	int fam; /* AF_INET or AF_INET6 */
	uint8_t a[16];
	int bits;
} zap_net;

struct chan_zap {
	zap_net *allow, *deny;
	size_t nallow, ndeny;
	int has_allow;
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

int chan_zap_check(const chan_zap *z, const char *addr, const char **why)
{
	const char *w = NULL;
	int ok = judge(z, addr, &w) == 0;
	if (why)
		*why = w;
	return ok;
}

int chan_zap_new(const char *allow, const char *deny, chan_zap **out)
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
	free(z->allow);
	free(z->deny);
	free(z);
}
