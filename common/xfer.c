/* xfer — see xfer.h and docs/TRANSPORT.md "Chunked transfers". */
#include "xfer.h"

#include "buf.h"
#include "config.h"
#include "err.h"
#include "fileio.h"
#include "log.h"
#include "sha.h"
#include "wire.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MOD "xfer"

struct xfer_blob {
	uint8_t *data;
	size_t len;
	int refs;
	/* computed on the first chunked send, for one chunk size */
	int hashed;
	size_t hashed_cs;
	uint32_t n;
	uint8_t sha[SHA256_LEN];
	uint8_t *chunk_sha; /* n x 32 */
};

/* One session. Sorted by peer id in x->peers (ids only grow, so appending
 * on peer_up keeps the order). */
typedef struct xpeer {
	uint64_t peer;
	char key[XFER_KEY_MAX + 1];
	/* outbound queue (ring-less: head index into q) */
	xfer_blob **q;
	size_t nq, qhead, qcap;
	size_t queued_bytes;
	int blocked; /* the channel said FL_EAGAIN: retry on tick */
	/* the transfer of q[qhead], when it is above the threshold */
	int active, accepted;
	uint64_t id;
	uint8_t *done;     /* bitmap: held by the receiver, or acknowledged */
	uint32_t cursor;   /* next position in the send order */
	uint32_t inflight; /* sent, not acknowledged */
	uint32_t left;     /* chunks not yet acknowledged nor held */
	uint64_t sent_bytes;
} xpeer;

/* One inbound transfer, per peer identity; survives the session. */
typedef struct ipart {
	char key[XFER_KEY_MAX + 1];
	uint64_t peer; /* 0: session gone */
	uint64_t gone_at;
	int active; /* offer accepted, not complete */
	uint64_t id;
	uint64_t size;
	size_t cs, head;
	uint32_t n, nhave, cursor;
	uint8_t sha[SHA256_LEN];
	uint8_t *hashes; /* n x 32 */
	uint8_t *have;   /* bitmap */
	int fd;
	char path[4096];
} ipart;

struct xfer {
	xfer_opts o;
	xfer_io io;
	char dir[4096];
	xpeer **peers;
	size_t npeers, cap_peers;
	ipart **parts;
	size_t nparts, cap_parts;
	uint64_t next_id, file_seq;
	size_t nblocked;
	buf enc;      /* reused encoding buffer */
	uint8_t *tmp; /* chunk-sized buffer for file copies */
	xfer_stats st;
};

/* ------------------------------------------------------------------ */
/* geometry and bitmaps                                                */

void xfer_geometry(size_t len, size_t cs, uint32_t *n, size_t *head)
{
	size_t nb = len > XFER_HEAD_MIN ? (len - XFER_HEAD_MIN) / cs : 0;
	*n = (uint32_t)(nb + 1 > UINT32_MAX ? UINT32_MAX : nb + 1);
	*head = len - nb * cs;
}

static size_t chunk_off(size_t head, size_t cs, uint32_t i)
{
	return i == 0 ? 0 : head + (size_t)(i - 1) * cs;
}

static size_t chunk_len(size_t head, size_t cs, uint32_t i)
{
	return i == 0 ? head : cs;
}

/* Send order: chunks 1 .. n-1, then the head (so a resend with another
 * header loses nothing sent before a cut). */
static uint32_t order_idx(uint32_t n, uint32_t pos)
{
	return pos + 1 < n ? pos + 1 : 0;
}

static int bit_get(const uint8_t *m, uint32_t i)
{
	return (m[i >> 3] >> (i & 7)) & 1;
}

static void bit_set(uint8_t *m, uint32_t i)
{
	m[i >> 3] |= (uint8_t)(1u << (i & 7));
}

static void short_hex(const uint8_t *sha, char out[17])
{
	hex_encode(sha, 8, out);
}

/* ------------------------------------------------------------------ */
/* blobs                                                               */

int xfer_blob_wrap(void *data, size_t len, xfer_blob **out)
{
	xfer_blob *b = calloc(1, sizeof *b);
	if (!b) {
		free(data);
		return FL_ENOMEM;
	}
	b->data = data;
	b->len = len;
	b->refs = 1;
	*out = b;
	return 0;
}

int xfer_blob_new(const void *data, size_t len, xfer_blob **out)
{
	uint8_t *p = malloc(len ? len : 1);
	if (!p)
		return FL_ENOMEM;
	if (len)
		memcpy(p, data, len);
	return xfer_blob_wrap(p, len, out);
}

void xfer_blob_release(xfer_blob *b)
{
	if (!b || --b->refs > 0)
		return;
	free(b->data);
	free(b->chunk_sha);
	free(b);
}

/* Whole and per-chunk SHA-256, once per blob and chunk size. */
static int blob_hash(xfer_blob *b, size_t cs)
{
	if (b->hashed && b->hashed_cs == cs)
		return 0;
	uint32_t n;
	size_t head;
	xfer_geometry(b->len, cs, &n, &head);
	if (n > XFER_MAX_CHUNKS)
		return FL_ETOOBIG;
	uint8_t *h = malloc((size_t)n * SHA256_LEN);
	if (!h)
		return FL_ENOMEM;
	int rc;
	for (uint32_t i = 0; i < n; i++)
		if ((rc = sha256(b->data + chunk_off(head, cs, i), chunk_len(head, cs, i),
		                 h + (size_t)i * SHA256_LEN)) != 0) {
			free(h);
			return rc;
		}
	if ((rc = sha256(b->data, b->len, b->sha)) != 0) {
		free(h);
		return rc;
	}
	free(b->chunk_sha);
	b->chunk_sha = h;
	b->n = n;
	b->hashed = 1;
	b->hashed_cs = cs;
	return 0;
}

/* ------------------------------------------------------------------ */
/* lifecycle                                                           */

void xfer_opts_default(xfer_opts *o)
{
	memset(o, 0, sizeof *o);
	o->threshold = 16u << 20;
	o->chunk_size = 256u << 10;
	o->window = 8;
	o->max_msg = 128u << 20;
	o->queue_max = o->max_msg + (1u << 20);
	o->keep_ms = 600000;
	o->max_partials = 64;
}

void xfer_opts_from_cfg(const cfg *c, xfer_opts *o)
{
	xfer_opts_default(o);
	o->threshold = (size_t)cfg_size(c, "transport.chunk_threshold");
	o->chunk_size = (size_t)cfg_size(c, "transport.chunk_size");
	o->window = (uint32_t)cfg_int(c, "transport.chunk_window");
	o->keep_ms = (uint64_t)cfg_int(c, "transport.partial_keep_ms");
	o->max_partials = (uint32_t)cfg_int(c, "transport.max_partials");
}

static void remove_leftovers(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		size_t l = strlen(e->d_name);
		if (l > 5 && strncmp(e->d_name, "in-", 3) == 0 &&
		    strcmp(e->d_name + l - 5, ".part") == 0) {
			char p[4400];
			int k = snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
			if (k > 0 && (size_t)k < sizeof p)
				unlink(p);
		}
	}
	closedir(d);
}

int xfer_new(const xfer_opts *o, const xfer_io *io, xfer **out)
{
	if (o->chunk_size < XFER_CHUNK_MIN || o->chunk_size > XFER_CHUNK_MAX) {
		LOGE(MOD, "transport.chunk_size %zu is outside [%u, %u]", o->chunk_size,
		     XFER_CHUNK_MIN, XFER_CHUNK_MAX);
		return FL_EINVAL;
	}
	if (o->window < 1 || o->window > XFER_WINDOW_MAX) {
		LOGE(MOD, "transport.chunk_window %u is outside [1, %u]", o->window,
		     XFER_WINDOW_MAX);
		return FL_EINVAL;
	}
	if (!o->dir || !*o->dir || strlen(o->dir) > 4000 || o->max_partials < 1 || !io->send ||
	    !io->deliver || !io->fail) {
		LOGE(MOD, "spill directory, max_partials and callbacks are required");
		return FL_EINVAL;
	}
	int rc = file_mkdirs(o->dir);
	if (rc) {
		LOGE(MOD, "cannot create the transfer spill directory %s: %s", o->dir,
		     fl_strerror(rc));
		return FL_EIO;
	}
	xfer *x = calloc(1, sizeof *x);
	if (!x)
		return FL_ENOMEM;
	x->o = *o;
	x->io = *io;
	snprintf(x->dir, sizeof x->dir, "%s", o->dir);
	x->o.dir = x->dir;
	buf_init(&x->enc, 0);
	remove_leftovers(x->dir);
	*out = x;
	return 0;
}

static void part_free(xfer *x, ipart *p)
{
	(void)x;
	if (!p)
		return;
	if (p->fd >= 0) {
		close(p->fd);
		unlink(p->path);
	}
	free(p->hashes);
	free(p->have);
	free(p);
}

static void peer_clear_out(xpeer *p)
{
	for (size_t i = p->qhead; i < p->nq; i++)
		xfer_blob_release(p->q[i]);
	free(p->q);
	p->q = NULL;
	p->nq = p->qhead = p->qcap = 0;
	p->queued_bytes = 0;
	free(p->done);
	p->done = NULL;
	p->active = p->accepted = 0;
}

void xfer_free(xfer *x)
{
	if (!x)
		return;
	for (size_t i = 0; i < x->npeers; i++) {
		peer_clear_out(x->peers[i]);
		free(x->peers[i]);
	}
	free(x->peers);
	for (size_t i = 0; i < x->nparts; i++)
		part_free(x, x->parts[i]);
	free(x->parts);
	buf_fini(&x->enc);
	free(x->tmp);
	free(x);
}

/* ------------------------------------------------------------------ */
/* peers                                                               */

static xpeer *find_peer(const xfer *x, uint64_t peer, size_t *at)
{
	size_t lo = 0, hi = x->npeers;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (x->peers[mid]->peer < peer)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (at)
		*at = lo;
	return lo < x->npeers && x->peers[lo]->peer == peer ? x->peers[lo] : NULL;
}

static ipart *find_part(const xfer *x, const char *key, size_t *at)
{
	for (size_t i = 0; i < x->nparts; i++)
		if (strcmp(x->parts[i]->key, key) == 0) {
			if (at)
				*at = i;
			return x->parts[i];
		}
	return NULL;
}

static void drop_part_at(xfer *x, size_t i)
{
	part_free(x, x->parts[i]);
	x->parts[i] = x->parts[--x->nparts];
}

int xfer_peer_up(xfer *x, uint64_t peer, const char *key, uint64_t now_ms)
{
	(void)now_ms;
	size_t at;
	if (find_peer(x, peer, &at))
		return 0;
	if (x->npeers == x->cap_peers) {
		size_t nc = x->cap_peers ? x->cap_peers * 2 : 16;
		xpeer **np = realloc(x->peers, nc * sizeof *np);
		if (!np)
			return FL_ENOMEM;
		x->peers = np;
		x->cap_peers = nc;
	}
	xpeer *p = calloc(1, sizeof *p);
	if (!p)
		return FL_ENOMEM;
	p->peer = peer;
	snprintf(p->key, sizeof p->key, "%s", key ? key : "");
	memmove(x->peers + at + 1, x->peers + at, (x->npeers - at) * sizeof *x->peers);
	x->peers[at] = p;
	x->npeers++;
	/* a partial of this identity now belongs to this session (a newer
	 * session of the same CN replaces an older one) */
	ipart *ip = find_part(x, p->key, NULL);
	if (ip) {
		ip->peer = peer;
		ip->active = 0; /* the sender starts over with a new offer */
	}
	return 0;
}

void xfer_peer_gone(xfer *x, uint64_t peer, uint64_t now_ms)
{
	size_t at;
	xpeer *p = find_peer(x, peer, &at);
	if (!p)
		return;
	if (p->active) {
		xfer_blob *b = p->q[p->qhead];
		LOGI(MOD,
		     "transfer of %zu bytes to %s cut after %" PRIu64
		     " chunk bytes sent in this session (%u chunks unacknowledged)",
		     b->len, p->key, p->sent_bytes, p->inflight);
		x->st.out_cut++;
	}
	if (p->blocked)
		x->nblocked--;
	peer_clear_out(p);
	for (size_t i = 0; i < x->nparts; i++) {
		ipart *ip = x->parts[i];
		if (ip->peer == peer) {
			ip->peer = 0;
			ip->gone_at = now_ms;
			if (ip->active)
				LOGI(MOD,
				     "inbound transfer from %s cut at %u of %u chunks; kept for a "
				     "resume",
				     ip->key, ip->nhave, ip->n);
			ip->active = 0;
		}
	}
	memmove(x->peers + at, x->peers + at + 1, (x->npeers - at - 1) * sizeof *x->peers);
	x->npeers--;
	free(p);
}

/* ------------------------------------------------------------------ */
/* sending                                                             */

static int encode_send(xfer *x, uint64_t peer, Fedlora__Envelope *env)
{
	buf_clear(&x->enc);
	int rc = wire_encode(env, 0, &x->enc);
	if (rc)
		return rc;
	return x->io.send(x->io.ud, peer, x->enc.data, x->enc.len);
}

static void set_blocked(xfer *x, xpeer *p, int on)
{
	if (p->blocked != on) {
		p->blocked = on;
		if (on)
			x->nblocked++;
		else
			x->nblocked--;
	}
}

static void pop_front(xpeer *p)
{
	xfer_blob *b = p->q[p->qhead];
	p->queued_bytes -= b->len;
	xfer_blob_release(b);
	p->q[p->qhead++] = NULL;
	if (p->qhead == p->nq)
		p->qhead = p->nq = 0;
	free(p->done);
	p->done = NULL;
	p->active = p->accepted = 0;
}

/* Sends what the window and the channel allow. */
static void pump(xfer *x, xpeer *p)
{
	set_blocked(x, p, 0);
	while (p->qhead < p->nq) {
		xfer_blob *b = p->q[p->qhead];
		int rc;
		if (x->o.threshold == 0 || b->len <= x->o.threshold) {
			rc = x->io.send(x->io.ud, p->peer, b->data, b->len);
			if (rc == FL_EAGAIN) {
				set_blocked(x, p, 1);
				return;
			}
			if (rc)
				LOGD(MOD, "message to %s not sent: %s", p->key, fl_strerror(rc));
			pop_front(p);
			continue;
		}
		if (!p->active) {
			if ((rc = blob_hash(b, x->o.chunk_size)) != 0) {
				LOGE(MOD, "cannot prepare a %zu-byte message for %s: %s", b->len,
				     p->key, fl_strerror(rc));
				pop_front(p);
				continue;
			}
			Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
			Fedlora__XferOffer of = FEDLORA__XFER_OFFER__INIT;
			of.id = x->next_id + 1;
			of.size = b->len;
			of.chunk_size = (uint32_t)x->o.chunk_size;
			of.sha256.data = b->sha;
			of.sha256.len = SHA256_LEN;
			of.chunk_sha256.data = b->chunk_sha;
			of.chunk_sha256.len = (size_t)b->n * SHA256_LEN;
			env.body_case = FEDLORA__ENVELOPE__BODY_XFER_OFFER;
			env.xfer_offer = &of;
			rc = encode_send(x, p->peer, &env);
			if (rc == FL_EAGAIN) {
				set_blocked(x, p, 1);
				return;
			}
			if (rc) {
				LOGD(MOD, "offer to %s not sent: %s", p->key, fl_strerror(rc));
				pop_front(p);
				continue;
			}
			p->id = ++x->next_id;
			p->active = 1;
			p->accepted = 0;
			p->cursor = p->inflight = 0;
			p->sent_bytes = 0;
			return; /* wait for XferAccept */
		}
		if (!p->accepted)
			return;
		size_t head;
		uint32_t n;
		xfer_geometry(b->len, x->o.chunk_size, &n, &head);
		while (p->inflight < x->o.window && p->cursor < n) {
			uint32_t idx = order_idx(n, p->cursor);
			if (bit_get(p->done, idx)) {
				p->cursor++;
				continue;
			}
			size_t off = chunk_off(head, x->o.chunk_size, idx);
			size_t cl = chunk_len(head, x->o.chunk_size, idx);
			Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
			Fedlora__XferChunk ch = FEDLORA__XFER_CHUNK__INIT;
			ch.id = p->id;
			ch.index = idx;
			ch.data.data = b->data + off;
			ch.data.len = cl;
			env.body_case = FEDLORA__ENVELOPE__BODY_XFER_CHUNK;
			env.xfer_chunk = &ch;
			rc = encode_send(x, p->peer, &env);
			if (rc == FL_EAGAIN) {
				set_blocked(x, p, 1);
				return;
			}
			if (rc) {
				LOGD(MOD, "chunk to %s not sent: %s", p->key, fl_strerror(rc));
				return; /* the session is ending */
			}
			p->cursor++;
			p->inflight++;
			p->sent_bytes += cl;
			x->st.out_chunks++;
			x->st.out_chunk_bytes += cl;
		}
		return; /* wait for acknowledgements */
	}
}

int xfer_wants(const xfer *x, uint64_t peer, size_t len)
{
	if (x->o.threshold && len > x->o.threshold)
		return 1;
	const xpeer *p = find_peer(x, peer, NULL);
	return p && p->qhead < p->nq;
}

int xfer_send(xfer *x, uint64_t peer, xfer_blob *b)
{
	xpeer *p = find_peer(x, peer, NULL);
	if (!p)
		return FL_ENOENT;
	if (b->len > x->o.queue_max || p->queued_bytes > x->o.queue_max - b->len)
		return FL_EAGAIN;
	if (p->nq == p->qcap) {
		if (p->qhead > 0) {
			memmove(p->q, p->q + p->qhead, (p->nq - p->qhead) * sizeof *p->q);
			p->nq -= p->qhead;
			p->qhead = 0;
		} else {
			size_t nc = p->qcap ? p->qcap * 2 : 4;
			xfer_blob **nq = realloc(p->q, nc * sizeof *nq);
			if (!nq)
				return FL_ENOMEM;
			p->q = nq;
			p->qcap = nc;
		}
	}
	b->refs++;
	p->q[p->nq++] = b;
	p->queued_bytes += b->len;
	if (p->nq - p->qhead == 1)
		pump(x, p);
	return 0;
}

/* ------------------------------------------------------------------ */
/* receiving                                                           */

/* Top-level scan of an encoded Envelope for its body field number. */
int xfer_is_mine(const uint8_t *d, size_t len)
{
	size_t i = 0;
	for (int fields = 0; i < len && fields < 16; fields++) {
		uint64_t tag = 0;
		int sh = 0;
		while (i < len && sh < 64) {
			tag |= (uint64_t)(d[i] & 0x7f) << sh;
			sh += 7;
			if (!(d[i++] & 0x80))
				break;
		}
		uint64_t fno = tag >> 3;
		if (fno >= 38 && fno <= 41)
			return 1;
		switch (tag & 7) {
		case 0:
			while (i < len && (d[i] & 0x80))
				i++;
			i++;
			break;
		case 1:
			i += 8;
			break;
		case 5:
			i += 4;
			break;
		case 2: {
			uint64_t l = 0;
			sh = 0;
			while (i < len && sh < 64) {
				l |= (uint64_t)(d[i] & 0x7f) << sh;
				sh += 7;
				if (!(d[i++] & 0x80))
					break;
			}
			if (l > len - (i < len ? i : len))
				return 0;
			i += (size_t)l;
			break;
		}
		default:
			return 0;
		}
	}
	return 0;
}

static int fail(xfer *x, uint64_t peer, const char *key, int code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static int fail(xfer *x, uint64_t peer, const char *key, int code, const char *fmt, ...)
{
	char why[300];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof why, fmt, ap);
	va_end(ap);
	LOGW(MOD, "peer %s (session %" PRIu64 "): %s", key, peer, why);
	x->io.fail(x->io.ud, peer, why);
	return code;
}

static int ensure_tmp(xfer *x)
{
	if (!x->tmp)
		x->tmp = malloc(x->o.chunk_size + XFER_HEAD_MIN);
	return x->tmp ? 0 : FL_ENOMEM;
}

/* Copies len bytes between two files with the chunk buffer. */
static int copy_range(xfer *x, int from, size_t off_from, int to, size_t off_to, size_t len)
{
	int rc = ensure_tmp(x);
	if (rc)
		return rc;
	ssize_t r = pread(from, x->tmp, len, (off_t)off_from);
	if (r != (ssize_t)len)
		return FL_EIO;
	if (pwrite(to, x->tmp, len, (off_t)off_to) != (ssize_t)len)
		return FL_EIO;
	return 0;
}

static int on_offer(xfer *x, xpeer *p, const Fedlora__XferOffer *of)
{
	const char *k = p->key;
	uint32_t n;
	size_t head;
	if (of->size == 0 || of->size > x->o.max_msg)
		return fail(x, p->peer, k, FL_ETOOBIG,
		            "offer %" PRIu64 " of %" PRIu64
		            " bytes: size must be 1..%zu (max_message)",
		            of->id, of->size, x->o.max_msg);
	if (of->chunk_size < XFER_CHUNK_MIN || of->chunk_size > XFER_CHUNK_MAX)
		return fail(x, p->peer, k, FL_EPROTO,
		            "offer %" PRIu64 ": chunk_size %u outside [%u, %u]", of->id,
		            of->chunk_size, XFER_CHUNK_MIN, XFER_CHUNK_MAX);
	xfer_geometry((size_t)of->size, of->chunk_size, &n, &head);
	if (n > XFER_MAX_CHUNKS)
		return fail(x, p->peer, k, FL_ETOOBIG, "offer %" PRIu64 ": %u chunks, cap %u",
		            of->id, n, XFER_MAX_CHUNKS);
	if (of->sha256.len != SHA256_LEN || of->chunk_sha256.len != (size_t)n * SHA256_LEN)
		return fail(x, p->peer, k, FL_EPROTO,
		            "offer %" PRIu64 ": %zu-byte sha256 and %zu bytes of chunk hashes "
		            "(expected 32 and %zu for %u chunks)",
		            of->id, of->sha256.len, of->chunk_sha256.len, (size_t)n * SHA256_LEN,
		            n);
	size_t at = 0;
	ipart *old = find_part(x, k, &at);
	if (old && old->active && old->peer == p->peer)
		return fail(x, p->peer, k, FL_EPROTO,
		            "offer %" PRIu64 " while transfer %" PRIu64 " is incomplete", of->id,
		            old->id);
	if (!old && x->nparts >= x->o.max_partials) {
		/* evict the oldest partial of a gone session */
		size_t victim = SIZE_MAX;
		for (size_t i = 0; i < x->nparts; i++)
			if (!x->parts[i]->peer &&
			    (victim == SIZE_MAX ||
			     x->parts[i]->gone_at < x->parts[victim]->gone_at))
				victim = i;
		if (victim == SIZE_MAX)
			return fail(x, p->peer, k, FL_EBUSY,
			            "offer %" PRIu64 ": %u inbound transfers already in progress "
			            "(transport.max_partials)",
			            of->id, x->o.max_partials);
		drop_part_at(x, victim);
	}
	ipart *np = calloc(1, sizeof *np);
	int rc = FL_ENOMEM, inplace = 0;
	if (!np)
		goto nomem;
	np->fd = -1;
	np->hashes = malloc((size_t)n * SHA256_LEN);
	np->have = calloc((n + 7) / 8, 1);
	if (!np->hashes || !np->have)
		goto nomem;
	snprintf(np->key, sizeof np->key, "%s", k);
	np->peer = p->peer;
	np->id = of->id;
	np->size = of->size;
	np->cs = of->chunk_size;
	np->head = head;
	np->n = n;
	memcpy(np->sha, of->sha256.data, SHA256_LEN);
	memcpy(np->hashes, of->chunk_sha256.data, (size_t)n * SHA256_LEN);
	inplace = old && old->size == np->size && old->cs == np->cs && old->fd >= 0;
	if (inplace) {
		np->fd = old->fd;
		snprintf(np->path, sizeof np->path, "%s", old->path);
		old->fd = -1;
	} else {
		int pl = snprintf(np->path, sizeof np->path, "%s/in-%" PRIu64 ".part", x->dir,
		                  ++x->file_seq);
		if (pl < 0 || (size_t)pl >= sizeof np->path) {
			rc = FL_ETOOBIG;
			goto nomem;
		}
		np->fd = open(np->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (np->fd < 0) {
			LOGE(MOD, "cannot create %s: %s", np->path, strerror(errno));
			rc = FL_EIO;
			goto nomem;
		}
		if (ftruncate(np->fd, (off_t)np->size) != 0) {
			LOGE(MOD, "cannot size %s to %" PRIu64 " bytes: %s", np->path, np->size,
			     strerror(errno));
			rc = FL_EIO;
			goto nomem;
		}
	}
	/* what the earlier partial holds: same hash at the same distance from
	 * the end (chunks are counted from the end, so a longer or shorter
	 * header moves only the head) */
	uint64_t reused = 0;
	if (old && old->cs == np->cs) {
		for (uint32_t i = 0; i < n; i++) {
			int64_t j =
			    inplace ? (int64_t)i : (int64_t)i - (int64_t)n + (int64_t)old->n;
			if (j < 0 || j >= (int64_t)old->n || (!inplace && (i == 0 || j == 0)))
				continue;
			uint32_t ju = (uint32_t)j;
			if (!bit_get(old->have, ju) ||
			    memcmp(old->hashes + (size_t)ju * SHA256_LEN,
			           np->hashes + (size_t)i * SHA256_LEN, SHA256_LEN) != 0)
				continue;
			size_t cl = chunk_len(head, np->cs, i);
			if (!inplace && copy_range(x, old->fd, chunk_off(old->head, old->cs, ju),
			                           np->fd, chunk_off(head, np->cs, i), cl) != 0)
				continue;
			bit_set(np->have, i);
			np->nhave++;
			reused += cl;
		}
	}
	if (old) {
		part_free(x, old);
		x->parts[at] = x->parts[--x->nparts];
	}
	if (x->nparts == x->cap_parts) {
		size_t nc = x->cap_parts ? x->cap_parts * 2 : 8;
		ipart **pp = realloc(x->parts, nc * sizeof *pp);
		if (!pp)
			goto nomem;
		x->parts = pp;
		x->cap_parts = nc;
	}
	x->parts[x->nparts++] = np;
	np->active = 1;
	x->st.in_reused_bytes += reused;
	char sh[17];
	short_hex(np->sha, sh);
	LOGI(MOD,
	     "receiving %" PRIu64 " bytes (sha256 %s...) from %s in %u chunks: %u already held "
	     "(%" PRIu64 " bytes)",
	     np->size, sh, k, n, np->nhave, reused);
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__XferAccept ac = FEDLORA__XFER_ACCEPT__INIT;
	ac.id = np->id;
	ac.have.data = np->have;
	ac.have.len = (n + 7) / 8;
	env.body_case = FEDLORA__ENVELOPE__BODY_XFER_ACCEPT;
	env.xfer_accept = &ac;
	rc = encode_send(x, p->peer, &env);
	if (rc && rc != FL_EAGAIN)
		LOGD(MOD, "accept to %s not sent: %s", k, fl_strerror(rc));
	return 0;
nomem:
	if (np) {
		if (inplace && old) {
			old->fd = np->fd; /* give the file back */
			np->fd = -1;
		}
		part_free(x, np);
	}
	x->st.in_failed++;
	return fail(x, p->peer, k, rc, "cannot take offer %" PRIu64 ": %s", of->id,
	            fl_strerror(rc));
}

/* Next chunk the receiver expects, or UINT32_MAX. */
static uint32_t next_expected(ipart *ip)
{
	while (ip->cursor < ip->n && bit_get(ip->have, order_idx(ip->n, ip->cursor)))
		ip->cursor++;
	return ip->cursor < ip->n ? order_idx(ip->n, ip->cursor) : UINT32_MAX;
}

static int complete(xfer *x, xpeer *p, size_t at)
{
	ipart *ip = x->parts[at];
	/* detach first: deliver may call back into xfer */
	x->parts[at] = x->parts[--x->nparts];
	uint64_t peer = p->peer;
	char key[XFER_KEY_MAX + 1];
	snprintf(key, sizeof key, "%s", p->key);
	int rc = 0;
	void *map = mmap(NULL, (size_t)ip->size, PROT_READ, MAP_SHARED, ip->fd, 0);
	if (map == MAP_FAILED) {
		LOGE(MOD, "cannot map %s: %s", ip->path, strerror(errno));
		part_free(x, ip);
		x->st.in_failed++;
		return fail(x, peer, key, FL_EIO, "cannot read back the reassembled message");
	}
	uint8_t sha[SHA256_LEN];
	rc = sha256(map, (size_t)ip->size, sha);
	if (rc || memcmp(sha, ip->sha, SHA256_LEN) != 0) {
		uint64_t id = ip->id, size = ip->size;
		munmap(map, (size_t)ip->size);
		part_free(x, ip);
		x->st.in_failed++;
		return fail(x, peer, key, FL_EMISMATCH,
		            "transfer %" PRIu64 ": the reassembled %" PRIu64
		            " bytes do not match the offered SHA-256",
		            id, size);
	}
	char sh[17];
	short_hex(ip->sha, sh);
	LOGI(MOD, "received %" PRIu64 " bytes (sha256 %s...) from %s: verified", ip->size, sh, key);
	x->st.in_msgs++;
	x->io.deliver(x->io.ud, peer, map, (size_t)ip->size);
	munmap(map, (size_t)ip->size);
	part_free(x, ip);
	return 0;
}

static int on_chunk(xfer *x, xpeer *p, const Fedlora__XferChunk *ch)
{
	const char *k = p->key;
	size_t at;
	ipart *ip = find_part(x, k, &at);
	if (!ip || !ip->active || ip->peer != p->peer || ip->id != ch->id)
		return fail(x, p->peer, k, FL_EPROTO, "chunk %u of unknown transfer %" PRIu64,
		            ch->index, ch->id);
	if (ch->index >= ip->n)
		return fail(x, p->peer, k, FL_EPROTO,
		            "transfer %" PRIu64 ": chunk index %u out of range (%u chunks)", ch->id,
		            ch->index, ip->n);
	uint32_t want = next_expected(ip);
	if (ch->index != want) {
		if (bit_get(ip->have, ch->index))
			return fail(x, p->peer, k, FL_EPROTO,
			            "transfer %" PRIu64 ": duplicate chunk %u", ch->id, ch->index);
		return fail(x, p->peer, k, FL_EPROTO,
		            "transfer %" PRIu64 ": chunk %u out of order (expected %u)", ch->id,
		            ch->index, want);
	}
	size_t cl = chunk_len(ip->head, ip->cs, ch->index);
	if (ch->data.len != cl)
		return fail(x, p->peer, k, FL_EPROTO,
		            "transfer %" PRIu64 ": chunk %u is %zu bytes, expected %zu", ch->id,
		            ch->index, ch->data.len, cl);
	uint8_t h[SHA256_LEN];
	int rc = sha256(ch->data.data, cl, h);
	if (rc)
		return fail(x, p->peer, k, rc, "cannot hash chunk %u", ch->index);
	if (memcmp(h, ip->hashes + (size_t)ch->index * SHA256_LEN, SHA256_LEN) != 0) {
		x->st.in_failed++;
		return fail(x, p->peer, k, FL_EMISMATCH,
		            "transfer %" PRIu64 ": chunk %u does not match its SHA-256 (corrupt)",
		            ch->id, ch->index);
	}
	size_t off = chunk_off(ip->head, ip->cs, ch->index);
	if (pwrite(ip->fd, ch->data.data, cl, (off_t)off) != (ssize_t)cl) {
		LOGE(MOD, "cannot write %zu bytes to %s: %s", cl, ip->path, strerror(errno));
		x->st.in_failed++;
		drop_part_at(x, at);
		return fail(x, p->peer, k, FL_EIO,
		            "transfer %" PRIu64 ": cannot store chunk %u (disk)", ch->id,
		            ch->index);
	}
	bit_set(ip->have, ch->index);
	ip->nhave++;
	x->st.in_chunk_bytes += cl;
	Fedlora__Envelope env = FEDLORA__ENVELOPE__INIT;
	Fedlora__XferAck ack = FEDLORA__XFER_ACK__INIT;
	ack.id = ch->id;
	ack.index = ch->index;
	env.body_case = FEDLORA__ENVELOPE__BODY_XFER_ACK;
	env.xfer_ack = &ack;
	rc = encode_send(x, p->peer, &env);
	if (rc && rc != FL_EAGAIN)
		LOGD(MOD, "ack to %s not sent: %s", k, fl_strerror(rc));
	if (ip->nhave == ip->n)
		return complete(x, p, at);
	return 0;
}

static int on_accept(xfer *x, xpeer *p, const Fedlora__XferAccept *ac)
{
	if (!p->active || p->accepted || ac->id != p->id)
		return fail(x, p->peer, p->key, FL_EPROTO,
		            "accept of transfer %" PRIu64 " that is not waiting for one", ac->id);
	xfer_blob *b = p->q[p->qhead];
	uint32_t n = b->n;
	size_t bl = (n + 7) / 8;
	if (ac->have.len != 0 && ac->have.len != bl)
		return fail(x, p->peer, p->key, FL_EPROTO,
		            "accept of transfer %" PRIu64 ": %zu-byte bitmap, expected %zu", ac->id,
		            ac->have.len, bl);
	p->done = calloc(bl, 1);
	if (!p->done)
		return fail(x, p->peer, p->key, FL_ENOMEM, "out of memory");
	uint64_t held = 0;
	uint32_t nheld = 0;
	size_t head;
	xfer_geometry(b->len, x->o.chunk_size, &n, &head);
	for (uint32_t i = 0; i < n && ac->have.len; i++)
		if (bit_get(ac->have.data, i)) {
			bit_set(p->done, i);
			held += chunk_len(head, x->o.chunk_size, i);
			nheld++;
		}
	p->left = n - nheld;
	p->accepted = 1;
	x->st.out_held_bytes += held;
	LOGI(MOD,
	     "sending %zu bytes to %s in %u chunks of %zu: the receiver holds %u of them (%" PRIu64
	     " bytes), %u to send",
	     b->len, p->key, n, x->o.chunk_size, nheld, held, p->left);
	if (p->left == 0) {
		x->st.out_msgs++;
		pop_front(p);
	}
	pump(x, p);
	return 0;
}

static int on_ack(xfer *x, xpeer *p, const Fedlora__XferAck *ack)
{
	if (!p->active || !p->accepted || ack->id != p->id)
		return fail(x, p->peer, p->key, FL_EPROTO,
		            "acknowledgement for transfer %" PRIu64 " that is not running",
		            ack->id);
	xfer_blob *b = p->q[p->qhead];
	if (ack->index >= b->n || bit_get(p->done, ack->index))
		return fail(x, p->peer, p->key, FL_EPROTO,
		            "transfer %" PRIu64
		            ": acknowledgement of chunk %u that is not in flight",
		            ack->id, ack->index);
	/* in flight = sent (before the cursor) and not done */
	uint32_t pos = ack->index == 0 ? b->n - 1 : ack->index - 1;
	if (pos >= p->cursor)
		return fail(x, p->peer, p->key, FL_EPROTO,
		            "transfer %" PRIu64 ": acknowledgement of chunk %u that was not sent",
		            ack->id, ack->index);
	bit_set(p->done, ack->index);
	p->inflight--;
	p->left--;
	if (p->left == 0) {
		LOGI(MOD,
		     "%zu-byte message to %s delivered: %" PRIu64
		     " chunk bytes sent in this session",
		     b->len, p->key, p->sent_bytes);
		x->st.out_msgs++;
		pop_front(p);
	}
	pump(x, p);
	return 0;
}

int xfer_on_message(xfer *x, uint64_t peer, const uint8_t *data, size_t len, uint64_t now_ms)
{
	(void)now_ms;
	xpeer *p = find_peer(x, peer, NULL);
	if (!p)
		return FL_ENOENT;
	/* a chunk is at most XFER_CHUNK_MAX + XFER_HEAD_MIN plus a few fields;
	 * an offer at most XFER_MAX_CHUNKS hashes */
	size_t cap = (size_t)XFER_MAX_CHUNKS * SHA256_LEN + 4096;
	if (cap < XFER_CHUNK_MAX + XFER_HEAD_MIN + 4096)
		cap = XFER_CHUNK_MAX + XFER_HEAD_MIN + 4096;
	wire_msg *m = NULL;
	int rc = wire_decode(data, len, cap, 0, &m);
	if (rc)
		return fail(x, peer, p->key, rc, "undecodable transfer message (%zu bytes): %s",
		            len, fl_strerror(rc));
	const Fedlora__Envelope *e = wire_env(m);
	switch (e->body_case) {
	case FEDLORA__ENVELOPE__BODY_XFER_OFFER:
		rc = on_offer(x, p, e->xfer_offer);
		break;
	case FEDLORA__ENVELOPE__BODY_XFER_ACCEPT:
		rc = on_accept(x, p, e->xfer_accept);
		break;
	case FEDLORA__ENVELOPE__BODY_XFER_CHUNK:
		rc = on_chunk(x, p, e->xfer_chunk);
		break;
	case FEDLORA__ENVELOPE__BODY_XFER_ACK:
		rc = on_ack(x, p, e->xfer_ack);
		break;
	default:
		rc = fail(x, peer, p->key, FL_EPROTO, "%s is not a transfer message",
		          wire_body_name(e));
		break;
	}
	wire_free(m);
	return rc;
}

/* ------------------------------------------------------------------ */
/* timers, stats                                                       */

void xfer_tick(xfer *x, uint64_t now_ms)
{
	if (x->nblocked)
		for (size_t i = 0; i < x->npeers; i++)
			if (x->peers[i]->blocked)
				pump(x, x->peers[i]);
	for (size_t i = 0; i < x->nparts;) {
		ipart *ip = x->parts[i];
		if (!ip->peer && now_ms - ip->gone_at >= x->o.keep_ms) {
			LOGI(MOD, "partial transfer from %s (%u of %u chunks) expired", ip->key,
			     ip->nhave, ip->n);
			drop_part_at(x, i);
			continue;
		}
		i++;
	}
}

int xfer_timeout(const xfer *x, uint64_t now_ms)
{
	int t = -1;
	if (x->nblocked)
		t = 10;
	for (size_t i = 0; i < x->nparts; i++) {
		const ipart *ip = x->parts[i];
		if (ip->peer)
			continue;
		uint64_t due = ip->gone_at + x->o.keep_ms;
		uint64_t d = due > now_ms ? due - now_ms : 0;
		if (d > INT32_MAX)
			d = INT32_MAX;
		if (t < 0 || (int)d < t)
			t = (int)d;
	}
	return t;
}

void xfer_get_stats(const xfer *x, xfer_stats *st)
{
	*st = x->st;
	st->partials = x->nparts;
	st->peers = x->npeers;
}
