/* chan_zmtp — the coordinator's own ZMTP 3.x codec (NULL mechanism) for the
 * raw TCP bytes of a ZMQ_STREAM socket (chan_int.h). It buffers at most one
 * greeting, one frame header or one command body (CHAN_ZMTP_CMD_MAX bytes);
 * message frames are streamed to the caller as they arrive, with their
 * announced size and "more" flag known before their first byte, so the
 * caller decides what to keep before anything is stored. No allocation.
 *
 * Wire format (ZMTP 3.1, rfc.zeromq.org/spec/37): a 64-byte greeting
 * (0xFF, 8 bytes padding, 0x7F, version major.minor, 20-byte mechanism
 * name, as-server, 31 bytes filler), then frames: a flags byte (bit 0 MORE,
 * bit 1 LONG, bit 2 COMMAND), a size (one byte, or eight big-endian bytes
 * when LONG) and the body. Commands are a name (length byte + name) and
 * data; READY carries properties (name length byte, name, value length as
 * four big-endian bytes, value). */
#include "chan_int.h"

#include "err.h"

#include <stdio.h>
#include <string.h>

enum { Z_GREETING, Z_FHDR, Z_FSIZE, Z_BODY, Z_CMD, Z_SKIP_NONE };

#define F_MORE    1u
#define F_LONG    2u
#define F_COMMAND 4u

void chan_zmtp_init(chan_zmtp *z)
{
	memset(z, 0, sizeof *z);
	z->st = Z_GREETING;
	z->need = CHAN_ZMTP_GREETING_LEN;
}

static int fail(chan_zmtp *z, const char *why, const char *arg)
{
	snprintf(z->why, sizeof z->why, "%s%s%s", why, arg ? " " : "", arg ? arg : "");
	return FL_EPROTO;
}

static int check_greeting(chan_zmtp *z)
{
	const uint8_t *g = z->buf;
	static const char mech[20] = "NULL";
	if (g[0] != 0xFF || !(g[9] & 1))
		return fail(z, "not a ZMTP 3 greeting", NULL);
	if (g[10] < 3)
		return fail(z, "ZMTP version before 3.0 (not supported)", NULL);
	if (memcmp(g + 12, mech, sizeof mech) != 0)
		return fail(z, "security mechanism other than NULL", NULL);
	return 0;
}

/* READY: name/value properties; the peer must be a DEALER. */
static int parse_ready(chan_zmtp *z, const uint8_t *p, size_t n, const chan_zmtp_cb *cb)
{
	char type[32] = "";
	while (n) {
		size_t nl = p[0];
		if (nl == 0 || 1 + nl + 4 > n)
			return fail(z, "READY with a malformed property", NULL);
		const uint8_t *name = p + 1;
		uint32_t vl = (uint32_t)p[1 + nl] << 24 | (uint32_t)p[2 + nl] << 16 |
		              (uint32_t)p[3 + nl] << 8 | p[4 + nl];
		p += 1 + nl + 4;
		n -= 1 + nl + 4;
		if (vl > n)
			return fail(z, "READY with a malformed property", NULL);
		if (nl == 11 && strncasecmp((const char *)name, "Socket-Type", 11) == 0) {
			size_t k = vl < sizeof type - 1 ? vl : sizeof type - 1;
			for (size_t i = 0; i < k; i++) /* it goes into a log line */
				type[i] = p[i] >= 0x20 && p[i] < 0x7F ? (char)p[i] : '?';
			type[k] = 0;
		}
		p += vl;
		n -= vl;
	}
	if (strcmp(type, "DEALER") != 0)
		return fail(z, "peer socket type (want DEALER):", type[0] ? type : "none");
	z->ready = 1;
	return cb->on_ready ? cb->on_ready(cb->arg) : 0;
}

static int command(chan_zmtp *z, const chan_zmtp_cb *cb)
{
	const uint8_t *p = z->buf;
	size_t n = z->have;
	if (n < 1 || (size_t)p[0] + 1 > n)
		return fail(z, "malformed command", NULL);
	size_t nl = p[0];
	const char *name = (const char *)p + 1;
	p += 1 + nl;
	n -= 1 + nl;
	if (nl == 5 && memcmp(name, "READY", 5) == 0) {
		if (z->ready)
			return fail(z, "second READY", NULL);
		return parse_ready(z, p, n, cb);
	}
	if (!z->ready)
		return fail(z, "command before READY", NULL);
	if (nl == 4 && memcmp(name, "PING", 4) == 0) {
		/* TTL (2 bytes) and a context of up to 16 bytes */
		if (n < 2 || n - 2 > 16)
			return fail(z, "malformed PING", NULL);
		return cb->on_ping ? cb->on_ping(cb->arg, p + 2, n - 2) : 0;
	}
	if (nl == 5 && memcmp(name, "ERROR", 5) == 0) {
		char reason[64] = "";
		size_t k = n && p[0] < n ? p[0] : 0;
		if (k > sizeof reason - 1)
			k = sizeof reason - 1;
		for (size_t i = 0; i < k; i++)
			reason[i] = p[1 + i] >= 0x20 && p[1 + i] < 0x7F ? (char)p[1 + i] : '?';
		return fail(z, "peer sent ERROR:", reason);
	}
	return 0; /* PONG and unknown commands: ignored (ZMTP 3.1) */
}

int chan_zmtp_input(chan_zmtp *z, const uint8_t *p, size_t n, const chan_zmtp_cb *cb)
{
	int rc;
	if (z->dead)
		return FL_EPROTO;
	while (n) {
		switch (z->st) {
		case Z_GREETING:
		case Z_FHDR:
		case Z_FSIZE:
		case Z_CMD: {
			size_t k = z->need - z->have;
			if (k > n)
				k = n;
			memcpy(z->buf + z->have, p, k);
			z->have += k;
			p += k;
			n -= k;
			if (z->have < z->need)
				continue;
			break;
		}
		case Z_BODY: {
			size_t k = z->left < n ? (size_t)z->left : n;
			z->left -= k;
			if (cb->on_data && (rc = cb->on_data(cb->arg, p, k)))
				goto err;
			p += k;
			n -= k;
			if (z->left == 0) {
				z->st = Z_FHDR;
				z->have = 0;
				z->need = 1;
				if (cb->on_frame_end && (rc = cb->on_frame_end(cb->arg)))
					goto err;
			}
			continue;
		}
		}
		/* a fixed-size piece is complete */
		if (z->st == Z_GREETING) {
			if ((rc = check_greeting(z)))
				goto err;
			z->st = Z_FHDR;
			z->have = 0;
			z->need = 1;
		} else if (z->st == Z_FHDR) {
			z->flags = z->buf[0];
			if (z->flags & ~(F_MORE | F_LONG | F_COMMAND)) {
				rc = fail(z, "frame flags with reserved bits set", NULL);
				goto err;
			}
			if ((z->flags & F_COMMAND) && (z->flags & F_MORE)) {
				rc = fail(z, "command frame flagged MORE", NULL);
				goto err;
			}
			z->st = Z_FSIZE;
			z->have = 0;
			z->need = z->flags & F_LONG ? 8 : 1;
		} else if (z->st == Z_FSIZE) {
			uint64_t sz = 0;
			for (size_t i = 0; i < z->need; i++)
				sz = sz << 8 | z->buf[i];
			z->have = 0;
			if (z->flags & F_COMMAND) {
				if (sz > CHAN_ZMTP_CMD_MAX) {
					rc = fail(z, "command over the size cap", NULL);
					goto err;
				}
				z->need = (size_t)sz;
				z->st = Z_CMD;
				if (sz == 0) {
					rc = fail(z, "empty command", NULL);
					goto err;
				}
				continue;
			}
			if (!z->ready) {
				rc = fail(z, "message before READY", NULL);
				goto err;
			}
			z->left = sz;
			z->st = Z_BODY;
			if (cb->on_frame &&
			    (rc = cb->on_frame(cb->arg, z->idx, sz, (z->flags & F_MORE) != 0)))
				goto err;
			z->idx = z->flags & F_MORE ? z->idx + 1 : 0;
			if (sz == 0) {
				z->st = Z_FHDR;
				z->need = 1;
				if (cb->on_frame_end && (rc = cb->on_frame_end(cb->arg)))
					goto err;
			}
		} else { /* Z_CMD */
			if ((rc = command(z, cb)))
				goto err;
			z->st = Z_FHDR;
			z->have = 0;
			z->need = 1;
		}
	}
	return 0;
err:
	z->dead = 1;
	if (!z->why[0])
		snprintf(z->why, sizeof z->why, "%s", fl_strerror(rc));
	return rc;
}

size_t chan_zmtp_hello(uint8_t *out, size_t cap)
{
	/* greeting: version 3.1, NULL, not as-server; then READY */
	static const uint8_t ready[] = {F_COMMAND, 28,  5,   'R', 'E', 'A', 'D', 'Y', 11,  'S',
	                                'o',       'c', 'k', 'e', 't', '-', 'T', 'y', 'p', 'e',
	                                0,         0,   0,   6,   'R', 'O', 'U', 'T', 'E', 'R'};
	if (cap < CHAN_ZMTP_GREETING_LEN + sizeof ready)
		return 0;
	memset(out, 0, CHAN_ZMTP_GREETING_LEN);
	out[0] = 0xFF;
	out[8] = 1;
	out[9] = 0x7F;
	out[10] = 3;
	out[11] = 1;
	memcpy(out + 12, "NULL", 4);
	memcpy(out + CHAN_ZMTP_GREETING_LEN, ready, sizeof ready);
	return CHAN_ZMTP_GREETING_LEN + sizeof ready;
}

size_t chan_zmtp_frame_hdr(uint8_t out[9], uint64_t size, int more)
{
	uint8_t f = more ? F_MORE : 0;
	if (size <= 255) {
		out[0] = f;
		out[1] = (uint8_t)size;
		return 2;
	}
	out[0] = f | F_LONG;
	for (int i = 0; i < 8; i++)
		out[1 + i] = (uint8_t)(size >> (56 - 8 * i));
	return 9;
}

size_t chan_zmtp_command(uint8_t *out, size_t cap, const char *name, const uint8_t *data, size_t n)
{
	size_t nl = strlen(name), body = 1 + nl + n;
	if (nl > 255 || body > 255 || cap < 2 + body)
		return 0;
	out[0] = F_COMMAND;
	out[1] = (uint8_t)body;
	out[2] = (uint8_t)nl;
	memcpy(out + 3, name, nl);
	if (n)
		memcpy(out + 3 + nl, data, n);
	return 2 + body;
}
