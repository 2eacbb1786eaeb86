/* tlsctx — see tlsctx.h. */
#include "tlsctx.h"

#include "err.h"
#include "fileio.h"
#include "log.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MOD            "tls"
#define ALLOW_FILE_MAX (4u << 20)

struct tlsctx {
	int refs;
	enum tlsctx_role role;
	SSL_CTX *ctx;
	X509_CRL *crl; /* owned reference, NULL without CRL */
	char **allow;  /* sorted node names, NULL without allow-list */
	size_t nallow;
	int has_allow;
};

static int g_note_idx = -1;
static int g_ctx_idx = -1;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void init_indices(void)
{
	g_note_idx = SSL_get_ex_new_index(0, "fedlora note", NULL, NULL, NULL);
	g_ctx_idx = SSL_CTX_get_ex_new_index(0, "fedlora tlsctx", NULL, NULL, NULL);
}

void tlsctx_errstr(char *buf, size_t n)
{
	size_t off = 0;
	unsigned long e;
	const char *data = NULL;
	int flags = 0;
	if (n == 0)
		return;
	buf[0] = '\0';
	while ((e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0) {
		const char *r = ERR_reason_error_string(e);
		char tmp[64];
		if (!r) {
			snprintf(tmp, sizeof tmp, "error %lx", e);
			r = tmp;
		}
		int k = snprintf(buf + off, n - off, "%s%s%s%s", off ? "; " : "", r,
		                 (flags & ERR_TXT_STRING) && data && *data ? ": " : "",
		                 (flags & ERR_TXT_STRING) && data ? data : "");
		if (k < 0 || (size_t)k >= n - off) {
			ERR_clear_error();
			break;
		}
		off += (size_t)k;
	}
}

int tlsctx_valid_name(const char *s, size_t n)
{
	if (n == 0 || n > 64)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		int alnum =
		    (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
		if (i == 0 && !alnum)
			return 0;
		if (!alnum && c != '.' && c != '_' && c != '-')
			return 0;
	}
	return 1;
}

/* ---- allow-list ---- */

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void free_allow(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

/* One name per line; blanks and '#' comments ignored; surrounding
 * whitespace trimmed. A bad name is a configuration error (a typo in an
 * allow-list should not silently lock a node out). */
static int load_allow(const char *path, char ***out, size_t *nout)
{
	uint8_t *txt = NULL;
	size_t len = 0;
	char **v = NULL;
	size_t n = 0, cap = 0;
	int rc = file_read_all(path, ALLOW_FILE_MAX, &txt, &len);
	if (rc) {
		LOGE(MOD, "allow-list %s: cannot read it (%s)", path, fl_strerror(rc));
		return rc == FL_ENOENT ? FL_ENOENT : FL_ECONFIG;
	}
	size_t lineno = 0;
	for (size_t pos = 0; pos < len;) {
		size_t end = pos;
		while (end < len && txt[end] != '\n')
			end++;
		lineno++;
		size_t a = pos, b = end;
		pos = end + 1;
		while (a < b && (txt[a] == ' ' || txt[a] == '\t' || txt[a] == '\r'))
			a++;
		while (b > a && (txt[b - 1] == ' ' || txt[b - 1] == '\t' || txt[b - 1] == '\r'))
			b--;
		if (a == b || txt[a] == '#')
			continue;
		if (!tlsctx_valid_name((const char *)txt + a, b - a)) {
			LOGE(MOD,
			     "allow-list %s line %zu: '%.*s' is not a node id "
			     "(1-64 of [A-Za-z0-9._-], starting with a letter or digit)",
			     path, lineno, (int)(b - a > 80 ? 80 : b - a), (const char *)txt + a);
			rc = FL_ECONFIG;
			goto out;
		}
		if (n == cap) {
			size_t ncap = cap ? cap * 2 : 16;
			char **nv = realloc(v, ncap * sizeof *nv);
			if (!nv) {
				rc = FL_ENOMEM;
				goto out;
			}
			v = nv;
			cap = ncap;
		}
		v[n] = strndup((const char *)txt + a, b - a);
		if (!v[n]) {
			rc = FL_ENOMEM;
			goto out;
		}
		n++;
	}
	if (n > 1)
		qsort(v, n, sizeof *v, cmp_str);
	*out = v;
	*nout = n;
	v = NULL;
	n = 0;
	rc = 0;
out:
	free_allow(v, n);
	free(txt);
	return rc;
}

static int allowed(const tlsctx *t, const char *cn)
{
	if (!t->has_allow)
		return 1;
	return t->nallow && bsearch(&cn, t->allow, t->nallow, sizeof *t->allow, cmp_str) != NULL;
}

/* ---- certificate helpers ---- */

static int cert_cn(X509 *x, char cn[65])
{
	X509_NAME *nm = X509_get_subject_name(x);
	int i = X509_NAME_get_index_by_NID(nm, NID_commonName, -1);
	if (i < 0 || X509_NAME_get_index_by_NID(nm, NID_commonName, i) >= 0)
		return FL_EAUTH; /* none, or ambiguous */
	ASN1_STRING *s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(nm, i));
	unsigned char *u = NULL;
	int n = ASN1_STRING_to_UTF8(&u, s);
	if (n < 0)
		return FL_EAUTH;
	int ok = tlsctx_valid_name((const char *)u, (size_t)n);
	if (ok) {
		memcpy(cn, u, (size_t)n);
		cn[n] = '\0';
	}
	OPENSSL_free(u);
	return ok ? 0 : FL_EAUTH;
}

static void subject_str(X509 *x, char *buf, size_t n)
{
	buf[0] = '\0';
	if (!x)
		return;
	BIO *b = BIO_new(BIO_s_mem());
	if (!b)
		return;
	X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_ONELINE & ~ASN1_STRFLGS_ESC_MSB);
	int k = BIO_read(b, buf, (int)n - 1);
	buf[k > 0 ? k : 0] = '\0';
	BIO_free(b);
}

/* Checks the extended key usage of a leaf: present and holding the one we
 * need (a node certificate presented as a coordinator is refused here, as
 * well as by OpenSSL's purpose check). */
static int eku_ok(X509 *x, enum tlsctx_role want_peer_role)
{
	uint32_t xku = X509_get_extended_key_usage(x);
	if (xku == UINT32_MAX)
		return 0;
	return want_peer_role == TLSCTX_SERVER ? (xku & XKU_SSL_SERVER) != 0
	                                       : (xku & XKU_SSL_CLIENT) != 0;
}

static int verify_cb(int ok, X509_STORE_CTX *xs)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
	tlsctx_note *note = ssl ? SSL_get_ex_data(ssl, g_note_idx) : NULL;
	tlsctx *t = ssl ? SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), g_ctx_idx) : NULL;
	int depth = X509_STORE_CTX_get_error_depth(xs);
	X509 *cur = X509_STORE_CTX_get_current_cert(xs);
	char subj[160];

	if (!ok) {
		int err = X509_STORE_CTX_get_error(xs);
		if (note && !note->why[0]) {
			subject_str(cur, subj, sizeof subj);
			snprintf(note->why, sizeof note->why,
			         "%s certificate refused: %s (depth %d, %s)",
			         t && t->role == TLSCTX_SERVER ? "node" : "coordinator",
			         X509_verify_cert_error_string(err), depth, subj[0] ? subj : "?");
		}
		return 0;
	}
	if (depth != 0 || !t)
		return 1;
	/* Leaf checks beyond the chain: EKU, CN syntax, allow-list. */
	enum tlsctx_role peer = t->role == TLSCTX_SERVER ? TLSCTX_CLIENT : TLSCTX_SERVER;
	const char *fail = NULL;
	char cn[65] = "";
	char buf[120];
	if (!eku_ok(cur, peer)) {
		fail = peer == TLSCTX_SERVER
		           ? "coordinator certificate lacks extended key usage serverAuth "
		             "(a node certificate cannot act as coordinator)"
		           : "node certificate lacks extended key usage clientAuth";
	} else if (peer == TLSCTX_CLIENT && cert_cn(cur, cn) != 0) {
		fail = "node certificate subject CN missing, repeated or not a valid node id";
	} else if (peer == TLSCTX_CLIENT && !allowed(t, cn)) {
		snprintf(buf, sizeof buf, "node CN '%s' is not in the allow-list", cn);
		fail = buf;
	}
	if (!fail)
		return 1;
	if (note && !note->why[0])
		snprintf(note->why, sizeof note->why, "%s", fail);
	/* CERT_REJECTED: the node gets a bad_certificate alert (the reason
	 * itself stays in the coordinator's log). */
	X509_STORE_CTX_set_error(xs, X509_V_ERR_CERT_REJECTED);
	return 0;
}

static X509 *read_first_cert(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return NULL;
	X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	return x;
}

static int need_file(const char *what, const char *path)
{
	if (!path || !*path) {
		LOGE(MOD, "%s path not set", what);
		return FL_EINVAL;
	}
	if (access(path, R_OK) != 0) {
		LOGE(MOD, "%s %s: %s", what, path, strerror(errno));
		return errno == ENOENT ? FL_ENOENT : FL_ECONFIG;
	}
	return 0;
}

static int load_crl(tlsctx *t, const char *path, X509 *ca)
{
	char e[256];
	FILE *f = fopen(path, "r");
	if (!f) {
		LOGE(MOD, "CRL %s: %s", path, strerror(errno));
		return errno == ENOENT ? FL_ENOENT : FL_ECONFIG;
	}
	X509_CRL *crl = PEM_read_X509_CRL(f, NULL, NULL, NULL);
	fclose(f);
	if (!crl) {
		tlsctx_errstr(e, sizeof e);
		LOGE(MOD, "CRL %s: not a PEM CRL (%s)", path, e);
		return FL_ECONFIG;
	}
	EVP_PKEY *pk = X509_get0_pubkey(ca);
	if (!pk || X509_CRL_verify(crl, pk) != 1) {
		ERR_clear_error();
		LOGE(MOD, "CRL %s: not signed by the federation CA", path);
		X509_CRL_free(crl);
		return FL_ECONFIG;
	}
	const ASN1_TIME *next = X509_CRL_get0_nextUpdate(crl);
	if (next && X509_cmp_current_time(next) < 0)
		LOGE(MOD,
		     "CRL %s has expired: every peer will be refused until it is renewed "
		     "(deploy/certs.sh crl DIR)",
		     path);
	X509_STORE *st = SSL_CTX_get_cert_store(t->ctx);
	if (X509_STORE_add_crl(st, crl) != 1) {
		tlsctx_errstr(e, sizeof e);
		LOGE(MOD, "CRL %s: cannot add it (%s)", path, e);
		X509_CRL_free(crl);
		return FL_ECRYPTO;
	}
	X509_STORE_set_flags(st, X509_V_FLAG_CRL_CHECK);
	t->crl = crl;
	return 0;
}

int tlsctx_new(const tlsctx_opts *o, tlsctx **out)
{
	char e[256];
	int rc;
	tlsctx *t = NULL;
	X509 *ca = NULL;
	STACK_OF(X509_NAME) *cas = NULL;

	pthread_once(&g_once, init_indices);
	if (!o || !out || (o->role != TLSCTX_SERVER && o->role != TLSCTX_CLIENT))
		return FL_EINVAL;
	if (g_note_idx < 0 || g_ctx_idx < 0)
		return FL_ECRYPTO;
	if ((rc = need_file("CA certificate", o->ca_path)))
		return rc;
	if (o->role == TLSCTX_SERVER || o->cert_path || o->key_path) {
		if ((rc = need_file("certificate", o->cert_path)) ||
		    (rc = need_file("private key", o->key_path)))
			return rc;
	}
	if (o->allow_path && o->role != TLSCTX_SERVER) {
		LOGE(MOD, "an allow-list is a coordinator setting");
		return FL_EINVAL;
	}

	t = calloc(1, sizeof *t);
	if (!t)
		return FL_ENOMEM;
	t->refs = 1;
	t->role = o->role;
	ERR_clear_error();
	t->ctx = SSL_CTX_new(o->role == TLSCTX_SERVER ? TLS_server_method() : TLS_client_method());
	if (!t->ctx) {
		rc = FL_ENOMEM;
		goto out;
	}
	SSL_CTX_set_ex_data(t->ctx, g_ctx_idx, t);
	if (SSL_CTX_set_min_proto_version(t->ctx, TLS1_3_VERSION) != 1 ||
	    SSL_CTX_set_max_proto_version(t->ctx, TLS1_3_VERSION) != 1) {
		rc = FL_ECRYPTO;
		goto out;
	}
	/* Idle sessions keep no 16 KiB record buffers; no tickets, no cache:
	 * every session is a full handshake (no resumption by design). */
	SSL_CTX_set_mode(t->ctx, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_session_cache_mode(t->ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_options(t->ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
	if (o->role == TLSCTX_SERVER)
		SSL_CTX_set_num_tickets(t->ctx, 0);

	/* The federation CA is the only trust anchor: no default paths. */
	if (SSL_CTX_load_verify_file(t->ctx, o->ca_path) != 1) {
		tlsctx_errstr(e, sizeof e);
		LOGE(MOD, "CA certificate %s: cannot load it (%s)", o->ca_path, e);
		rc = FL_ECONFIG;
		goto out;
	}
	ca = read_first_cert(o->ca_path);
	if (!ca) {
		ERR_clear_error();
		LOGE(MOD, "CA certificate %s: no PEM certificate in it", o->ca_path);
		rc = FL_ECONFIG;
		goto out;
	}
	if (X509_check_ca(ca) == 0)
		LOGW(MOD, "CA certificate %s is not marked as a CA", o->ca_path);
	SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_cb);
	SSL_CTX_set_verify_depth(t->ctx, 2);
	SSL_CTX_set_purpose(t->ctx, o->role == TLSCTX_SERVER ? X509_PURPOSE_SSL_CLIENT
	                                                     : X509_PURPOSE_SSL_SERVER);
	X509_STORE_set_flags(SSL_CTX_get_cert_store(t->ctx), X509_V_FLAG_X509_STRICT);
	if (o->role == TLSCTX_SERVER) {
		cas = SSL_load_client_CA_file(o->ca_path);
		if (cas) {
			SSL_CTX_set_client_CA_list(t->ctx, cas);
			cas = NULL;
		}
		ERR_clear_error();
	}

	if (o->cert_path) {
		if (SSL_CTX_use_certificate_chain_file(t->ctx, o->cert_path) != 1) {
			tlsctx_errstr(e, sizeof e);
			LOGE(MOD, "certificate %s: cannot load it (%s)", o->cert_path, e);
			rc = FL_ECONFIG;
			goto out;
		}
		if (SSL_CTX_use_PrivateKey_file(t->ctx, o->key_path, SSL_FILETYPE_PEM) != 1) {
			tlsctx_errstr(e, sizeof e);
			LOGE(MOD, "private key %s: cannot load it (%s)", o->key_path, e);
			rc = FL_ECONFIG;
			goto out;
		}
		if (SSL_CTX_check_private_key(t->ctx) != 1) {
			ERR_clear_error();
			LOGE(MOD, "private key %s does not match certificate %s", o->key_path,
			     o->cert_path);
			rc = FL_ECONFIG;
			goto out;
		}
		X509 *own = SSL_CTX_get0_certificate(t->ctx);
		if (own && !eku_ok(own, o->role))
			LOGW(MOD,
			     "certificate %s lacks extended key usage %s: peers will refuse it",
			     o->cert_path, o->role == TLSCTX_SERVER ? "serverAuth" : "clientAuth");
		if (own && X509_cmp_current_time(X509_get0_notAfter(own)) < 0)
			LOGW(MOD, "certificate %s has expired: peers will refuse it", o->cert_path);
		if (own && X509_cmp_current_time(X509_get0_notBefore(own)) > 0)
			LOGW(MOD, "certificate %s is not yet valid: peers will refuse it",
			     o->cert_path);
	}
	if (o->crl_path && *o->crl_path && (rc = load_crl(t, o->crl_path, ca)))
		goto out;
	if (o->allow_path && *o->allow_path) {
		if ((rc = load_allow(o->allow_path, &t->allow, &t->nallow)))
			goto out;
		t->has_allow = 1;
		if (t->nallow == 0)
			LOGW(MOD, "allow-list %s is empty: every node will be refused",
			     o->allow_path);
	}
	*out = t;
	t = NULL;
	rc = 0;
out:
	X509_free(ca);
	if (t)
		tlsctx_unref(t);
	ERR_clear_error();
	return rc;
}

tlsctx *tlsctx_ref(tlsctx *t)
{
	if (t)
		t->refs++;
	return t;
}

void tlsctx_unref(tlsctx *t)
{
	if (!t || --t->refs > 0)
		return;
	SSL_CTX_free(t->ctx);
	X509_CRL_free(t->crl);
	free_allow(t->allow, t->nallow);
	free(t);
}

int tlsctx_ssl_new(tlsctx *t, const char *server_name, tlsctx_note *note, SSL **out)
{
	ERR_clear_error();
	SSL *ssl = SSL_new(t->ctx);
	if (!ssl)
		return FL_ENOMEM;
	note->why[0] = '\0';
	SSL_set_ex_data(ssl, g_note_idx, note);
	if (t->role == TLSCTX_CLIENT) {
		unsigned char tmp[16];
		int ok;
		if (!server_name || !*server_name) {
			SSL_free(ssl);
			return FL_EINVAL;
		}
		X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
		if (inet_pton(AF_INET, server_name, tmp) == 1 ||
		    inet_pton(AF_INET6, server_name, tmp) == 1) {
			ok = X509_VERIFY_PARAM_set1_ip_asc(vp, server_name);
		} else {
			X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
			ok = SSL_set1_host(ssl, server_name) &&
			     SSL_set_tlsext_host_name(ssl, server_name);
		}
		if (ok != 1) {
			ERR_clear_error();
			SSL_free(ssl);
			return FL_EINVAL;
		}
		SSL_set_connect_state(ssl);
	} else {
		SSL_set_accept_state(ssl);
	}
	*out = ssl;
	return 0;
}

int tlsctx_peer_info(SSL *ssl, tlsctx_peer *out)
{
	X509 *x = SSL_get0_peer_certificate(ssl);
	tlsctx_peer p;
	memset(&p, 0, sizeof p);
	if (!x)
		return FL_EAUTH;
	if (cert_cn(x, p.cn) != 0) {
		/* Coordinator CNs are free-form: keep a sanitised copy. */
		X509_NAME *nm = X509_get_subject_name(x);
		int n = X509_NAME_get_text_by_NID(nm, NID_commonName, p.cn, sizeof p.cn);
		if (n < 0)
			p.cn[0] = '\0';
		for (char *c = p.cn; *c; c++)
			if ((unsigned char)*c < 0x20 || (unsigned char)*c > 0x7e)
				*c = '?';
	}
	const ASN1_INTEGER *sn = X509_get0_serialNumber(x);
	int sl = ASN1_STRING_length(sn);
	if (sl > 0 && sl <= (int)sizeof p.serial) {
		memcpy(p.serial, ASN1_STRING_get0_data(sn), (size_t)sl);
		p.serial_len = (uint8_t)sl;
	}
	struct tm tm;
	if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1)
		p.not_after = timegm(&tm);
	*out = p;
	return 0;
}

int tlsctx_recheck(const tlsctx *t, const tlsctx_peer *p, char *why, size_t why_len)
{
	if (!allowed(t, p->cn)) {
		snprintf(why, why_len, "node CN '%s' is no longer in the allow-list", p->cn);
		return FL_EAUTH;
	}
	if (t->crl && p->serial_len) {
		ASN1_INTEGER *sn = ASN1_INTEGER_new();
		X509_REVOKED *rev = NULL;
		int found = 0;
		if (sn && ASN1_STRING_set(sn, p->serial, p->serial_len) == 1)
			found = X509_CRL_get0_by_serial(t->crl, &rev, sn) == 1;
		ASN1_INTEGER_free(sn);
		ERR_clear_error();
		if (found) {
			snprintf(why, why_len, "node certificate of '%s' is revoked in the CRL",
			         p->cn);
			return FL_EAUTH;
		}
	}
	return 0;
}

int tlsctx_crl_entries(const tlsctx *t)
{
	if (!t->crl)
		return -1;
	STACK_OF(X509_REVOKED) *r = X509_CRL_get_REVOKED(t->crl);
	return r ? sk_X509_REVOKED_num(r) : 0;
}

int tlsctx_allow_count(const tlsctx *t)
{
	return t->has_allow ? (int)t->nallow : -1;
}
