/* chan_sess — one TLS 1.3 session over an in-memory BIO, carrying
 * length-prefixed application messages (see chan_int.h). Both ends of the
 * channel use it; they only move frames between it and ZeroMQ.
 *
 * The session's BIO is our own memory BIO (one object for both
 * directions). Reading, it hands OpenSSL the bytes of the frame being fed
 * without copying them first, and when they run out it says "retry", never
 * EOF (what BIO_set_mem_eof_return(rbio, -1) does for BIO_s_mem). Writing,
 * it appends to the frame under construction, whose buffer then goes to
 * ZeroMQ as it is (zero-copy). It keeps nothing between frames: an idle
 * session holds no BIO memory at all, whatever it transferred before
 * (where BIO_s_mem buffers have to be replaced or shrunk). Against
 * BIO_s_mem this saves one copy of every byte on each side (docs/TRANSPORT.md
 * has the figures). */
#include "chan_int.h"

#include "buf.h"
#include "err.h"
#include "log.h"

#include <openssl/err.h>

#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static BIO_METHOD *g_meth;
static pthread_once_t g_meth_once = PTHREAD_ONCE_INIT;

static int bio_write(BIO *b, const char *data, size_t n, size_t *written)
{
	chan_sess *s = BIO_get_data(b);
	BIO_clear_retry_flags(b);
	if (n > s->wcap - s->wlen) {
		size_t need, ncap;
		if (sz_add(s->wlen, n, &need))
			return 0;
		ncap = s->wcap ? s->wcap : 4096;
		while (ncap < need)
			ncap = ncap > SIZE_MAX / 2 ? need : ncap * 2;
		uint8_t *nb = realloc(s->wb, ncap);
		if (!nb)
			return 0;
		s->wb = nb;
		s->wcap = ncap;
	}
	memcpy(s->wb + s->wlen, data, n);
	s->wlen += n;
	*written = n;
	return 1;
}

static int bio_read(BIO *b, char *out, size_t n, size_t *readbytes)
{
	chan_sess *s = BIO_get_data(b);
	BIO_clear_retry_flags(b);
	if (s->in_n == 0) {
		BIO_set_retry_read(b); /* more bytes later, not the end */
		*readbytes = 0;
		return 0;
	}
	size_t k = n < s->in_n ? n : s->in_n;
	memcpy(out, s->in_p, k);
	s->in_p += k;
	s->in_n -= k;
	*readbytes = k;
	return 1;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	chan_sess *s = BIO_get_data(b);
	(void)num;
	(void)ptr;
	switch (cmd) {
	case BIO_CTRL_FLUSH:
		return 1;
	case BIO_CTRL_PENDING:
		return s ? (long)s->in_n : 0;
	case BIO_CTRL_WPENDING:
		return s ? (long)s->wlen : 0;
	default:
		return 0;
	}
}

static int bio_create(BIO *b)
{
	BIO_set_init(b, 1);
	return 1;
}

static void init_meth(void)
{
	BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "fedlora chan");
	if (m && BIO_meth_set_write_ex(m, bio_write) && BIO_meth_set_read_ex(m, bio_read) &&
	    BIO_meth_set_ctrl(m, bio_ctrl) && BIO_meth_set_create(m, bio_create)) {
		g_meth = m;
		return;
	}
	BIO_meth_free(m);
}

int chan_sess_init(chan_sess *s, tlsctx *t, const char *server_name, size_t max_msg, size_t out_max,
                   chan_counters *ctr)
{
	SSL *ssl = NULL;
	BIO *b = NULL;
	memset(s, 0, sizeof *s);
	pthread_once(&g_meth_once, init_meth);
	if (!g_meth)
		return FL_ECRYPTO;
	int rc = tlsctx_ssl_new(t, server_name, &s->note, &ssl);
	if (rc)
		return rc;
	b = BIO_new(g_meth);
	if (!b) {
		SSL_free(ssl);
		ERR_clear_error();
		return FL_ENOMEM;
	}
	BIO_set_data(b, s);
	SSL_set_bio(ssl, b, b); /* one BIO both ways: one reference */
	s->ssl = ssl;
	s->tls = tlsctx_ref(t);
	s->max_msg = max_msg;
	s->out_max = out_max;
	s->ctr = ctr;
	s->next_kind = CHAN_KIND_TLS;
	s->last_in_ms = s->last_out_ms = chan_now_ms();
	return 0;
}

static void item_free(chan_oitem *it)
{
	if (it->sh)
		chan_shared_release(it->sh);
	free(it);
}

void chan_sess_fini(chan_sess *s)
{
	if (!s)
		return;
	SSL_free(s->ssl); /* frees the BIO */
	s->ssl = NULL;
	chan_frame_put(s->wb, s->wcap);
	s->wb = NULL;
	s->wlen = s->wcap = 0;
	tlsctx_unref(s->tls);
	s->tls = NULL;
	free(s->msg);
	s->msg = NULL;
	for (chan_oitem *it = s->oq_head; it;) {
		chan_oitem *n = it->next;
		item_free(it);
		it = n;
	}
	s->oq_head = s->oq_tail = NULL;
	s->oq_bytes = 0;
	chan_frame_put(s->pend, s->pend_cap);
	s->pend = NULL;
	ERR_clear_error();
}

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int
fail(chan_sess *s, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->why, sizeof s->why, fmt, ap);
	va_end(ap);
	s->err = code;
	s->dead = 1;
	return code;
}

/* Alerts by which a peer says it refused our certificate (or us). */
static int auth_alert(int alert)
{
	switch (alert) {
	case SSL_AD_BAD_CERTIFICATE:
	case SSL_AD_UNSUPPORTED_CERTIFICATE:
	case SSL_AD_CERTIFICATE_REVOKED:
	case SSL_AD_CERTIFICATE_EXPIRED:
	case SSL_AD_CERTIFICATE_UNKNOWN:
	case SSL_AD_UNKNOWN_CA:
	case SSL_AD_ACCESS_DENIED:
	case SSL_AD_CERTIFICATE_REQUIRED:
		return 1;
	default:
		return 0;
	}
}

static int tls_fail(chan_sess *s, int sslerr, const char *what)
{
	char errs[160];
	unsigned long first = ERR_peek_error();
	tlsctx_errstr(errs, sizeof errs);
	if (s->note.why[0])
		return fail(s, FL_EAUTH, "%s", s->note.why);
	if (sslerr == SSL_ERROR_SSL && first && ERR_GET_LIB(first) == ERR_LIB_SSL) {
		int reason = ERR_GET_REASON(first);
		if (reason >= SSL_AD_REASON_OFFSET && auth_alert(reason - SSL_AD_REASON_OFFSET))
			return fail(s, FL_EAUTH, "refused by the peer: %s", errs);
	}
	if (sslerr == SSL_ERROR_SYSCALL && !errs[0])
		return fail(s, FL_ECRYPTO, "%s failed (unexpected end of the TLS stream)", what);
	return fail(s, FL_ECRYPTO, "%s failed: %s", what, errs[0] ? errs : "TLS error");
}

static int deliver(chan_sess *s, const chan_sess_cb *cb, uint8_t *data, size_t len)
{
	s->ctr->msgs_in++;
	s->ctr->bytes_in += len;
	if (cb && cb->on_msg)
		return cb->on_msg(cb->arg, data, len);
	free(data);
	return 0;
}

/* Reads application data until OpenSSL needs more input. */
static int read_app(chan_sess *s, const chan_sess_cb *cb)
{
	for (;;) {
		int r;
		ERR_clear_error();
		if (!s->msg) {
			r = SSL_read(s->ssl, s->lenbuf + s->lenget, (int)(4 - s->lenget));
			if (r > 0) {
				s->last_in_ms = chan_now_ms();
				s->lenget += (unsigned)r;
				if (s->lenget < 4)
					continue;
				s->lenget = 0;
				uint32_t len = ld_u32le(s->lenbuf);
				if (len == CHAN_KEEPALIVE_LEN)
					continue;
				/* The cap is checked before anything is allocated. */
				if (len > s->max_msg)
					return fail(
					    s, FL_ETOOBIG,
					    "application message of %u bytes is over the cap of "
					    "%zu bytes",
					    len, s->max_msg);
				if (len == 0) {
					int rc = deliver(s, cb, NULL, 0);
					if (rc)
						return rc;
					continue;
				}
				s->msg = malloc(len);
				if (!s->msg)
					return fail(s, FL_ENOMEM,
					            "out of memory for a %u-byte message", len);
				if (len > s->ctr->max_alloc)
					s->ctr->max_alloc = len;
				s->msg_cap = len;
				s->msg_len = len;
				s->msg_got = 0;
				continue;
			}
		} else {
			size_t want = s->msg_cap - s->msg_got;
			if (want > INT_MAX)
				want = INT_MAX;
			r = SSL_read(s->ssl, s->msg + s->msg_got, (int)want);
			if (r > 0) {
				s->last_in_ms = chan_now_ms();
				s->msg_got += (size_t)r;
				if (s->msg_got == s->msg_len) {
					uint8_t *m = s->msg;
					size_t n = s->msg_len;
					s->msg = NULL;
					s->msg_len = s->msg_got = s->msg_cap = 0;
					int rc = deliver(s, cb, m, n);
					if (rc)
						return rc;
				}
				continue;
			}
		}
		int e = SSL_get_error(s->ssl, r);
		if (e == SSL_ERROR_WANT_READ)
			return 0;
		if (e == SSL_ERROR_ZERO_RETURN)
			return fail(s, FL_ECLOSED, "peer closed the session (close_notify)");
		return tls_fail(s, e, "TLS read");
	}
}

static int pump(chan_sess *s, const chan_sess_cb *cb)
{
	if (!s->hs_done) {
		ERR_clear_error();
		int r = SSL_do_handshake(s->ssl);
		if (r != 1) {
			int e = SSL_get_error(s->ssl, r);
			if (e == SSL_ERROR_WANT_READ)
				return 0;
			return tls_fail(s, e, "TLS handshake");
		}
		s->hs_done = 1;
		s->last_in_ms = chan_now_ms();
		if (cb && cb->on_up) {
			int rc = cb->on_up(cb->arg);
			if (rc)
				return rc;
		}
	}
	return read_app(s, cb);
}

int chan_sess_start(chan_sess *s)
{
	ERR_clear_error();
	int r = SSL_do_handshake(s->ssl);
	if (r == 1)
		return fail(s, FL_ESTATE, "handshake finished without the peer");
	int e = SSL_get_error(s->ssl, r);
	if (e != SSL_ERROR_WANT_READ)
		return tls_fail(s, e, "TLS handshake start");
	return 0;
}

int chan_sess_input(chan_sess *s, const uint8_t *p, size_t n, const chan_sess_cb *cb)
{
	if (s->dead)
		return s->err;
	/* OpenSSL reads the frame through the BIO; a record cut at the end of
	 * the frame waits inside OpenSSL for the next frame. */
	s->in_p = p;
	s->in_n = n;
	int rc = pump(s, cb);
	s->in_p = NULL;
	s->in_n = 0;
	if (rc && !s->dead) {
		s->dead = 1;
		s->err = rc;
	}
	return rc;
}

static int enqueue(chan_sess *s, chan_oitem *it)
{
	it->next = NULL;
	if (s->oq_tail)
		s->oq_tail->next = it;
	else
		s->oq_head = it;
	s->oq_tail = it;
	s->oq_bytes += 4 + it->len;
	return 0;
}

int chan_sess_queue(chan_sess *s, const void *data, size_t len, chan_shared *sh)
{
	size_t add, total, sz;
	if (s->shut || s->dead)
		return FL_ESTATE;
	if (len > CHAN_MAX_SEND_LEN)
		return FL_ETOOBIG;
	add = 4 + len;
	if (add > s->out_max)
		return FL_ETOOBIG;
	if (sz_add(chan_sess_queued(s), add, &total) || total > s->out_max)
		return FL_EAGAIN;
	if (sz_add(sizeof(chan_oitem), sh ? 0 : len, &sz))
		return FL_EOVERFLOW;
	chan_oitem *it = malloc(sz);
	if (!it)
		return FL_ENOMEM;
	memset(it, 0, sizeof *it);
	if (sh) {
		it->sh = chan_shared_ref(sh);
		it->data = sh->data;
	} else {
		if (len)
			memcpy(it + 1, data, len);
		it->data = (const uint8_t *)(it + 1);
	}
	it->len = len;
	st_u32le(it->pfx, (uint32_t)len);
	return enqueue(s, it);
}

int chan_sess_queue_keepalive(chan_sess *s)
{
	if (s->shut || s->dead)
		return FL_ESTATE;
	chan_oitem *it = calloc(1, sizeof *it);
	if (!it)
		return FL_ENOMEM;
	it->ka = 1;
	it->data = (const uint8_t *)"";
	st_u32le(it->pfx, CHAN_KEEPALIVE_LEN);
	return enqueue(s, it);
}

size_t chan_sess_queued(const chan_sess *s)
{
	return s->oq_bytes + s->pend_len;
}

/* Takes up to n stream bytes of the head item into dst (prefix first). */
static size_t take(chan_sess *s, uint8_t *dst, size_t n)
{
	chan_oitem *it = s->oq_head;
	size_t got = 0;
	while (got < n && it->off < 4) {
		dst[got++] = it->pfx[it->off++];
	}
	if (got < n && it->off >= 4) {
		size_t k = 4 + it->len - it->off;
		if (k > n - got)
			k = n - got;
		memcpy(dst + got, it->data + (it->off - 4), k);
		it->off += k;
		got += k;
	}
	return got;
}

static void pop_done(chan_sess *s)
{
	chan_oitem *it = s->oq_head;
	if (!it || it->off < 4 + it->len)
		return;
	s->oq_head = it->next;
	if (!s->oq_head)
		s->oq_tail = NULL;
	if (!it->ka) {
		s->ctr->msgs_out++;
		s->ctr->bytes_out += it->len;
	}
	item_free(it);
}

/* Encrypts the next record's worth (<= CHAN_REC_PLAIN) of queued bytes. */
static int write_record(chan_sess *s)
{
	uint8_t scratch[CHAN_REC_PLAIN];
	chan_oitem *it = s->oq_head;
	const uint8_t *p;
	size_t n;
	if (it->off >= 4 && 4 + it->len - it->off >= CHAN_REC_PLAIN) {
		/* Inside a large message: encrypt straight from it. */
		p = it->data + (it->off - 4);
		n = CHAN_REC_PLAIN;
		it->off += n;
	} else {
		/* Gather small messages and tails into one record. */
		n = 0;
		while (s->oq_head && n < CHAN_REC_PLAIN) {
			n += take(s, scratch + n, CHAN_REC_PLAIN - n);
			pop_done(s);
		}
		p = scratch;
	}
	s->oq_bytes -= n;
	ERR_clear_error();
	int r = SSL_write(s->ssl, p, (int)n);
	pop_done(s);
	if (r != (int)n)
		return tls_fail(s, SSL_get_error(s->ssl, r), "TLS write");
	return 0;
}

/* Makes sure the frame buffer takes want bytes without growing. */
static int reserve(chan_sess *s, size_t want)
{
	if (s->wcap >= want)
		return 0;
	uint8_t *nb = !s->wb && want == CHAN_FRAME_MAX ? chan_frame_get() : realloc(s->wb, want);
	if (!nb)
		return FL_ENOMEM;
	s->wb = nb;
	s->wcap = want;
	return 0;
}

int chan_sess_produce(chan_sess *s, uint8_t **out, size_t *outlen, size_t *outcap)
{
	size_t plain = s->hs_done && !s->shut && !s->dead ? s->oq_bytes : 0;
	int rc;

	if (s->wlen == 0 && plain == 0)
		return FL_EAGAIN;
	if (plain) {
		/* Room for this frame's records: exact for small messages, a
		 * whole frame for bulk. */
		size_t est =
		    plain > CHAN_FRAME_MAX
		        ? CHAN_FRAME_MAX
		        : s->wlen + plain + (plain / CHAN_REC_PLAIN + 1) * CHAN_REC_OVERHEAD;
		if (est > CHAN_FRAME_MAX)
			est = CHAN_FRAME_MAX;
		if (reserve(s, est))
			return fail(s, FL_ENOMEM, "out of memory for an outbound frame");
	}
	while (plain && s->oq_head && !s->dead) {
		size_t chunk = s->oq_bytes < CHAN_REC_PLAIN ? s->oq_bytes : CHAN_REC_PLAIN;
		if (s->wlen + chunk + CHAN_REC_OVERHEAD > CHAN_FRAME_MAX)
			break;
		if ((rc = write_record(s)))
			return rc;
	}
	if (s->wlen == 0)
		return FL_EAGAIN;
	if (s->wlen <= CHAN_FRAME_MAX) {
		/* The buffer itself becomes the frame. */
		uint8_t *f = s->wb;
		size_t cap = s->wcap;
		if (cap - s->wlen > 4096 &&
		    (cap != CHAN_FRAME_MAX || s->wlen < CHAN_FRAME_MAX / 2)) {
			uint8_t *nf = realloc(f, s->wlen);
			if (nf) {
				f = nf;
				cap = s->wlen;
			}
		}
		*out = f;
		*outlen = s->wlen;
		*outcap = cap;
		s->wb = NULL;
		s->wlen = s->wcap = 0;
		return 0;
	}
	/* More than a frame at once (never in practice: records are sized to
	 * fit): cut, keep the rest. TLS is a byte stream; records may span
	 * frames. */
	uint8_t *f = chan_frame_get();
	if (!f)
		return fail(s, FL_ENOMEM, "out of memory for an outbound frame");
	memcpy(f, s->wb, CHAN_FRAME_MAX);
	memmove(s->wb, s->wb + CHAN_FRAME_MAX, s->wlen - CHAN_FRAME_MAX);
	s->wlen -= CHAN_FRAME_MAX;
	*out = f;
	*outlen = CHAN_FRAME_MAX;
	*outcap = CHAN_FRAME_MAX;
	return 0;
}

int chan_sess_flush(chan_sess *s, chan_sendfn send, void *arg, size_t budget)
{
	size_t sent = 0;
	for (;;) {
		if (!s->pend) {
			int rc = chan_sess_produce(s, &s->pend, &s->pend_len, &s->pend_cap);
			if (rc == FL_EAGAIN) {
				s->pend = NULL;
				s->pend_len = 0;
				return 0;
			}
			if (rc) {
				s->pend = NULL;
				s->pend_len = 0;
				return rc;
			}
		}
		size_t n = s->pend_len;
		int rc = send(arg, s->next_kind, s->pend, n, s->pend_cap);
		if (rc)
			return rc;
		s->pend = NULL;
		s->pend_len = 0;
		s->next_kind = CHAN_KIND_TLS;
		s->last_out_ms = chan_now_ms();
		sent += n;
		if (sent >= budget)
			return FL_EBUSY;
	}
}

void chan_sess_shutdown(chan_sess *s)
{
	if (s->shut || !s->ssl)
		return;
	s->shut = 1;
	if (!s->hs_done || s->dead)
		return;
	ERR_clear_error();
	SSL_shutdown(s->ssl);
	ERR_clear_error();
}

int chan_sess_idle(const chan_sess *s)
{
	return !s->msg && s->lenget == 0 && !s->oq_head && !s->pend;
}

void chan_sess_shrink(chan_sess *s)
{
	/* Only an unused frame buffer can be left over here. */
	if (s->wb && s->wlen == 0) {
		chan_frame_put(s->wb, s->wcap);
		s->wb = NULL;
		s->wcap = 0;
	}
}

int chan_sess_write_raw(chan_sess *s, const void *p, size_t n)
{
	if (!s->hs_done || s->shut || s->dead || n == 0 || n > INT_MAX)
		return FL_ESTATE;
	ERR_clear_error();
	int r = SSL_write(s->ssl, p, (int)n);
	if (r != (int)n)
		return tls_fail(s, SSL_get_error(s->ssl, r), "TLS write");
	return 0;
}
