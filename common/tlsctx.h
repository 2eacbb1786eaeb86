/* tlsctx — OpenSSL contexts for the channel (chan.h): TLS 1.3 only, mutual
 * authentication against the federation CA as the only trust anchor,
 * optional CRL and (coordinator side) optional allow-list of node names.
 *
 * A tlsctx is immutable once built and reference counted: a reload builds a
 * new one from the same files while sessions created from the old one keep
 * it alive until they end. Build, ref/unref and every SSL made from it
 * belong to one thread (the channel's). */
#ifndef FL_TLSCTX_H
#define FL_TLSCTX_H
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/ssl.h>

typedef struct tlsctx tlsctx;

enum tlsctx_role { TLSCTX_SERVER = 1, TLSCTX_CLIENT = 2 };

typedef struct tlsctx_opts {
	enum tlsctx_role role;
	/* PEM certificate (chain) and key of this end. Required for the server;
	 * a client without them is refused by every coordinator (tests only). */
	const char *cert_path;
	const char *key_path;
	const char *ca_path;    /* required: the federation CA certificate */
	const char *crl_path;   /* optional: CRL signed by that CA */
	const char *allow_path; /* optional, server only: allowed node names */
} tlsctx_opts;

/* Reads the files and builds the context. Errors name the file at fault:
 * FL_EINVAL (missing option), FL_ENOENT (file absent), FL_ECONFIG (file
 * unusable: bad PEM, key does not match the certificate, CRL not signed by
 * the CA, bad allow-list line), FL_ENOMEM, FL_ECRYPTO. */
int tlsctx_new(const tlsctx_opts *o, tlsctx **out);
tlsctx *tlsctx_ref(tlsctx *t);
void tlsctx_unref(tlsctx *t); /* frees on the last reference; NULL ok */

/* Per-SSL note where the verify callback writes why a peer was refused. */
typedef struct tlsctx_note {
	char why[200];
} tlsctx_note;

/* New SSL* from the context. For a client, server_name (DNS name or IP
 * literal) is what the coordinator's certificate must match (SAN); note
 * must outlive the SSL*. The caller sets the BIOs. */
int tlsctx_ssl_new(tlsctx *t, const char *server_name, tlsctx_note *note, SSL **out);

/* After a completed handshake: the peer's subject CN (validated node-id
 * syntax, NUL-terminated, <= 64 chars), serial number (DER content bytes,
 * <= 20) and notAfter. FL_EAUTH if there is no peer certificate. */
typedef struct tlsctx_peer {
	char cn[65];
	uint8_t serial[20];
	uint8_t serial_len;
	time_t not_after;
} tlsctx_peer;
int tlsctx_peer_info(SSL *ssl, tlsctx_peer *out);

/* Re-checks an established peer against this context's CRL and
 * allow-list (after a reload). 0 if still admitted, FL_EAUTH with a reason
 * in why otherwise. */
int tlsctx_recheck(const tlsctx *t, const tlsctx_peer *p, char *why, size_t why_len);

/* Counts for logs: CRL entries (-1 without CRL), allow-list names (-1
 * without allow-list). */
int tlsctx_crl_entries(const tlsctx *t);
int tlsctx_allow_count(const tlsctx *t);

/* Whether a string is a valid node id / CN: 1-64 of [A-Za-z0-9._-],
 * starting with a letter or digit (the rule of deploy/certs.sh). */
int tlsctx_valid_name(const char *s, size_t n);

/* Drains OpenSSL's (thread-local) error queue into buf as "reason; reason".
 * Writes "" when the queue is empty. */
void tlsctx_errstr(char *buf, size_t n);

#endif
