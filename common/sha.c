/* sha — see sha.h. */
#include "sha.h"

#include "err.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

struct sha256_ctx {
	EVP_MD_CTX *md;
};

int sha256(const void *data, size_t len, uint8_t out[SHA256_LEN])
{
	unsigned int n = 0;
	if (!EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) || n != SHA256_LEN)
		return FL_ECRYPTO;
	return 0;
}

int sha256_new(sha256_ctx **out)
{
	sha256_ctx *c = calloc(1, sizeof *c);
	if (!c)
		return FL_ENOMEM;
	c->md = EVP_MD_CTX_new();
	if (!c->md || !EVP_DigestInit_ex(c->md, EVP_sha256(), NULL)) {
		sha256_free(c);
		return FL_ECRYPTO;
	}
	*out = c;
	return 0;
}

int sha256_update(sha256_ctx *c, const void *data, size_t len)
{
	return EVP_DigestUpdate(c->md, data, len) ? 0 : FL_ECRYPTO;
}

int sha256_final(sha256_ctx *c, uint8_t out[SHA256_LEN])
{
	unsigned int n = 0;
	int ok = EVP_DigestFinal_ex(c->md, out, &n) && n == SHA256_LEN;
	sha256_free(c);
	return ok ? 0 : FL_ECRYPTO;
}

void sha256_free(sha256_ctx *c)
{
	if (!c)
		return;
	EVP_MD_CTX_free(c->md);
	free(c);
}

void hex_encode(const uint8_t *p, size_t n, char *out)
{
	static const char d[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = d[p[i] >> 4];
		out[2 * i + 1] = d[p[i] & 15];
	}
	out[2 * n] = 0;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int hex_decode(const char *s, uint8_t *out, size_t n)
{
	if (strlen(s) != 2 * n)
		return FL_EINVAL;
	for (size_t i = 0; i < n; i++) {
		int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return FL_EINVAL;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}
