/* fuzz_seed — for the seed generators of the fuzz targets whose inputs are
 * message sequences (built with -DFUZZ_..._MAKE_SEEDS): append one framed
 * envelope, write a seed file. Header-only. */
#ifndef FL_FUZZ_SEED_H
#define FL_FUZZ_SEED_H
#include <stdio.h>
#include <stdlib.h>

#include "buf.h"
#include "wire.h"

/* Appends [peer byte if peer >= 0] u32le length, then the envelope. */
static inline void fz_seed_msg(buf *out, int peer, Fedlora__Envelope *e)
{
	buf b;
	buf_init(&b, 0);
	if (wire_encode(e, 0, &b))
		abort();
	uint8_t h[5], *p = h;
	if (peer >= 0)
		*p++ = (uint8_t)peer;
	for (int i = 0; i < 4; i++)
		*p++ = (uint8_t)(b.len >> (8 * i));
	buf_append(out, h, (size_t)(p - h));
	buf_append(out, b.data, b.len);
	buf_fini(&b);
}

static inline void fz_seed_put(const char *dir, const char *name, const buf *b)
{
	char p[1024];
	snprintf(p, sizeof p, "%s/%s", dir, name);
	FILE *f = fopen(p, "wb");
	if (!f || fwrite(b->data, 1, b->len, f) != b->len)
		abort();
	fclose(f);
}

#endif
