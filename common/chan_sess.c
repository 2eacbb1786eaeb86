/* chan_sess — one TLS 1.3 session over OpenSSL memory BIOs, carrying
 * length-prefixed application messages (see chan_int.h). Both ends of the
 * channel use it; they only move frames between it and ZeroMQ. */
#include "chan_int.h"

#include "buf.h"
#include "err.h"
#include "log.h"

#include <openssl/err.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static BIO *new_mem_bio(void)
{
	BIO *b = BIO_new(BIO_s_mem());
	/* An empty read BIO means "no more bytes yet" (retry), not EOF: the
	 * default (0) would make OpenSSL see a truncated stream. */
	if (b)
		BIO_set_mem_eof_return(b, -1);
	return b;
}

int chan_sess_init(chan_sess *s, tlsctx *t, const char *server_name, size_t max_msg, size_t out_max,
                   chan_counters *ctr)
{
	SSL *ssl = NULL;
	BIO *r = NULL, *w = NULL;
	memset(s, 0, sizeof *s);
	int rc = tlsctx_ssl_new(t, server_name, &s->note, &ssl);
	if (rc)
		return rc;
	r = new_mem_bio();
	w = new_mem_bio();
	if (!r || !w) {
		BIO_free(r);
		BIO_free(w);
		SSL_free(ssl);
		ERR_clear_error();
		return FL_ENOMEM;
	}
	SSL_set_bio(ssl, r, w);
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
	SSL_free(s->ssl); /* frees both BIOs */
	s->ssl = NULL;
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
	free(s->pend);
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
				size_t cap =
				    len < CHAN_MSG_FIRST_ALLOC ? len : CHAN_MSG_FIRST_ALLOC;
				s->msg = malloc(cap);
				if (!s->msg)
					return fail(s, FL_ENOMEM,
					            "out of memory for a %u-byte message", len);
				if (cap > s->ctr->max_alloc)
					s->ctr->max_alloc = cap;
				s->msg_cap = cap;
				s->msg_len = len;
				s->msg_got = 0;
				continue;
			}
		} else {
			if (s->msg_got == s->msg_cap) {
				size_t ncap =
				    s->msg_cap > s->msg_len / 2 ? s->msg_len : s->msg_cap * 2;
				uint8_t *nm = realloc(s->msg, ncap);
				if (!nm)
					return fail(s, FL_ENOMEM,
					            "out of memory for a %zu-byte message",
					            s->msg_len);
				s->msg = nm;
				s->msg_cap = ncap;
				if (ncap > s->ctr->max_alloc)
					s->ctr->max_alloc = ncap;
			}
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
	size_t off = 0;
	if (s->dead)
		return s->err;
	do {
		size_t k = n - off > CHAN_FEED_CHUNK ? CHAN_FEED_CHUNK : n - off;
		if (k) {
			ERR_clear_error();
			if (BIO_write(SSL_get_rbio(s->ssl), p + off, (int)k) != (int)k)
				return fail(s, FL_ENOMEM, "out of memory buffering TLS records");
			off += k;
		}
		int rc = pump(s, cb);
		if (rc) {
			if (!s->dead)
				s->dead = 1, s->err = rc;
			return rc;
		}
	} while (off < n);
	return 0;
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

static int drain(BIO *w, uint8_t *f, size_t *flen, size_t fcap)
{
	size_t pend = BIO_ctrl_pending(w);
	size_t k = pend < fcap - *flen ? pend : fcap - *flen;
	if (k == 0)
		return 0;
	int r = BIO_read(w, f + *flen, (int)k);
	if (r != (int)k)
		return FL_ECRYPTO;
	*flen += k;
	return 0;
}

int chan_sess_produce(chan_sess *s, uint8_t **out, size_t *outlen)
{
	BIO *w = SSL_get_wbio(s->ssl);
	size_t pend = BIO_ctrl_pending(w);
	size_t plain = s->hs_done && !s->shut && !s->dead ? s->oq_bytes : 0;
	size_t est, flen = 0;
	uint8_t *f;
	int rc;

	if (pend == 0 && plain == 0)
		return FL_EAGAIN;
	if (plain > CHAN_FRAME_MAX)
		est = CHAN_FRAME_MAX;
	else
		est = pend + plain + (plain / CHAN_REC_PLAIN + 1) * CHAN_REC_OVERHEAD;
	if (est > CHAN_FRAME_MAX)
		est = CHAN_FRAME_MAX;
	f = malloc(est);
	if (!f)
		return fail(s, FL_ENOMEM, "out of memory for an outbound frame");
	if ((rc = drain(w, f, &flen, est)))
		goto bad;
	while (s->hs_done && !s->shut && !s->dead && s->oq_head) {
		size_t chunk = s->oq_bytes < CHAN_REC_PLAIN ? s->oq_bytes : CHAN_REC_PLAIN;
		if (flen + BIO_ctrl_pending(w) + chunk + CHAN_REC_OVERHEAD > est)
			break;
		if ((rc = write_record(s)))
			goto out_err;
		if (BIO_ctrl_pending(w) >= CHAN_DRAIN_AT && (rc = drain(w, f, &flen, est)))
			goto bad;
	}
	if ((rc = drain(w, f, &flen, est)))
		goto bad;
	if (flen == 0) {
		free(f);
		return FL_EAGAIN;
	}
	if (est - flen > 4096) {
		uint8_t *nf = realloc(f, flen);
		if (nf)
			f = nf;
	}
	*out = f;
	*outlen = flen;
	return 0;
bad:
	rc = fail(s, FL_ECRYPTO, "reading TLS output failed");
out_err:
	free(f);
	return rc;
}

int chan_sess_flush(chan_sess *s, chan_sendfn send, void *arg, size_t budget)
{
	size_t sent = 0;
	for (;;) {
		if (!s->pend) {
			int rc = chan_sess_produce(s, &s->pend, &s->pend_len);
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
		int rc = send(arg, s->next_kind, s->pend, n);
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

static int bio_big_empty(BIO *b)
{
	BUF_MEM *bm = NULL;
	if (BIO_ctrl_pending(b) != 0)
		return 0;
	BIO_get_mem_ptr(b, &bm);
	return bm && bm->max > CHAN_BIO_KEEP;
}

void chan_sess_shrink(chan_sess *s)
{
	if (!s->ssl || !s->hs_done)
		return;
	BIO *r = SSL_get_rbio(s->ssl), *w = SSL_get_wbio(s->ssl);
	if (r && bio_big_empty(r)) {
		BIO *nb = new_mem_bio();
		if (nb)
			SSL_set0_rbio(s->ssl, nb);
	}
	if (w && bio_big_empty(w)) {
		BIO *nb = new_mem_bio();
		if (nb)
			SSL_set0_wbio(s->ssl, nb);
	}
	ERR_clear_error();
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
