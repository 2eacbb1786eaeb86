/* testpki — a throw-away PKI made with the OpenSSL API, for the fuzz
 * target and the benchmark (which need certificates without running
 * deploy/certs.sh, or a thousand of them quickly). Header-only. The tests
 * proper use deploy/certs.sh. */
#ifndef FL_TESTPKI_H
#define FL_TESTPKI_H
#include <stdio.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

static inline int tp_add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *v)
{
	X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, ctx, nid, v);
	if (!e)
		return -1;
	int ok = X509_add_ext(x, e, -1);
	X509_EXTENSION_free(e);
	return ok == 1 ? 0 : -1;
}

static inline X509 *tp_make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *ikey,
                                 int ca, const char *eku, const char *san, long serial)
{
	X509 *x = X509_new();
	X509V3_CTX ctx;
	if (!x)
		return NULL;
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
	X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	X509_gmtime_adj(X509_getm_notAfter(x), 3650L * 86400);
	X509_set_pubkey(x, key);
	X509_NAME *n = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
	X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : n);
	X509V3_set_ctx_nodb(&ctx);
	X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
	int bad = 0;
	bad |= tp_add_ext(x, &ctx, NID_basic_constraints,
	                  ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
	bad |= tp_add_ext(x, &ctx, NID_key_usage,
	                  ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature");
	bad |= tp_add_ext(x, &ctx, NID_subject_key_identifier, "hash");
	if (issuer)
		bad |= tp_add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always");
	if (eku)
		bad |= tp_add_ext(x, &ctx, NID_ext_key_usage, eku);
	if (san)
		bad |= tp_add_ext(x, &ctx, NID_subject_alt_name, san);
	if (bad || !X509_sign(x, ikey ? ikey : key, EVP_sha256())) {
		X509_free(x);
		return NULL;
	}
	return x;
}

static inline int tp_write_pem(const char *path, X509 *x, EVP_PKEY *k)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return -1;
	int ok = x ? PEM_write_X509(f, x) : PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
	fclose(f);
	return ok == 1 ? 0 : -1;
}

#endif
