/* Fuzz target: the chunked-transfer messages (XferOffer, XferAccept,
 * XferChunk, XferAck) through common/xfer.c. One xfer instance talks to
 * itself over a loopback (its offers, accepts, chunks and acks come back
 * as the peer's), and the input interleaves raw messages, bit flips of the
 * looped-back ones, session ends and clock ticks:
 *
 *   input = { op u8 | len u16 le | len bytes }*
 *   op % 4 == 0: the bytes are a message from the peer
 *   op % 4 == 1: the session ends and a new one starts (resume paths)
 *   op % 4 == 2: the clock moves len x 100 ms (partials expire)
 *   op % 4 == 3: the oldest message xfer sent comes back, XOR-ed with the
 *                bytes at offset (op >> 2) x 64 (no bytes: unchanged)
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "fuzz_tmpdir.h"
#include "log.h"
#include "xfer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define LOOP_MAX 64

typedef struct loop {
	uint8_t *m[LOOP_MAX];
	size_t l[LOOP_MAX];
	int n;
	size_t delivered;
} loop;

static int fz_send(void *ud, uint64_t peer, const uint8_t *d, size_t len)
{
	loop *L = ud;
	(void)peer;
	if (L->n == LOOP_MAX)
		return FL_EAGAIN; /* exercises the retry path */
	L->m[L->n] = malloc(len ? len : 1);
	if (!L->m[L->n])
		return FL_ENOMEM;
	memcpy(L->m[L->n], d, len);
	L->l[L->n++] = len;
	return 0;
}

static void fz_deliver(void *ud, uint64_t peer, const uint8_t *d, size_t len)
{
	loop *L = ud;
	(void)peer;
	(void)d;
	if (len > (4u << 20))
		abort(); /* over max_msg: must have been refused */
	L->delivered++;
}

static void fz_fail(void *ud, uint64_t peer, const char *why)
{
	(void)ud;
	(void)peer;
	if (!why || !*why)
		abort(); /* every refusal names its reason */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int quiet;
	if (!quiet) {
		log_set_level(LOG_LVL_ERROR);
		quiet = 1;
	}
	loop L;
	memset(&L, 0, sizeof L);
	xfer_opts o;
	xfer_opts_default(&o);
	o.threshold = 32u << 10;
	o.chunk_size = XFER_CHUNK_MIN;
	o.window = 3;
	o.max_msg = 4u << 20;
	o.queue_max = 8u << 20;
	o.dir = fz_tmpdir("fuzz_xfer");
	o.keep_ms = 1000;
	o.max_partials = 2;
	xfer_io io = {.ud = &L, .send = fz_send, .deliver = fz_deliver, .fail = fz_fail};
	xfer *x = NULL;
	if (xfer_new(&o, &io, &x))
		abort();
	uint64_t peer = 1, now = 0;
	xfer_peer_up(x, peer, "node-1", now);
	/* something to send: 100 KiB + 77, so 3 chunks of 16 KiB and a head */
	size_t bl = (100u << 10) + 77;
	uint8_t *b = malloc(bl);
	if (!b)
		abort();
	for (size_t i = 0; i < bl; i++)
		b[i] = (uint8_t)(i * 131 + 7);
	xfer_blob *blob = NULL;
	if (xfer_blob_wrap(b, bl, &blob))
		abort();
	xfer_send(x, peer, blob);

	size_t i = 0;
	while (i + 3 <= size) {
		uint8_t op = data[i];
		size_t len = (size_t)data[i + 1] | (size_t)data[i + 2] << 8;
		i += 3;
		if (len > size - i)
			len = size - i;
		const uint8_t *p = data + i;
		i += len;
		switch (op & 3) {
		case 0:
			xfer_on_message(x, peer, p, len, now);
			break;
		case 1:
			xfer_peer_gone(x, peer, now);
			for (int k = 0; k < L.n; k++)
				free(L.m[k]);
			L.n = 0;
			peer++;
			xfer_peer_up(x, peer, "node-1", now);
			xfer_send(x, peer, blob); /* the same bytes again: resume */
			break;
		case 2:
			now += (uint64_t)len * 100;
			xfer_tick(x, now);
			break;
		case 3: {
			if (!L.n)
				break;
			uint8_t *m = L.m[0];
			size_t ml = L.l[0];
			memmove(L.m, L.m + 1, (size_t)(L.n - 1) * sizeof L.m[0]);
			memmove(L.l, L.l + 1, (size_t)(L.n - 1) * sizeof L.l[0]);
			L.n--;
			size_t off = (size_t)(op >> 2) * 64;
			for (size_t k = 0; k < len && off + k < ml; k++)
				m[off + k] ^= p[k];
			xfer_on_message(x, peer, m, ml, now);
			free(m);
			break;
		}
		}
	}
	xfer_blob_release(blob);
	xfer_free(x);
	for (int k = 0; k < L.n; k++)
		free(L.m[k]);
	return 0;
}
