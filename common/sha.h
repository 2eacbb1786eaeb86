/* sha — SHA-256 through OpenSSL EVP, one-shot and incremental. */
#ifndef FL_SHA_H
#define FL_SHA_H
#include <stddef.h>
#include <stdint.h>

#define SHA256_LEN 32

typedef struct sha256_ctx sha256_ctx;

int sha256(const void *data, size_t len, uint8_t out[SHA256_LEN]);
/* Incremental: new → update* → final (final frees the context). */
int sha256_new(sha256_ctx **out);
int sha256_update(sha256_ctx *c, const void *data, size_t len);
int sha256_final(sha256_ctx *c, uint8_t out[SHA256_LEN]);
void sha256_free(sha256_ctx *c); /* for abandoning a context; NULL ok */
/* Lower-case hex of n bytes into out (2n+1 bytes, NUL-terminated). */
void hex_encode(const uint8_t *p, size_t n, char *out);
/* Parses exactly 2n hex digits; 0 or FL_EINVAL. */
int hex_decode(const char *s, uint8_t *out, size_t n);

#endif
