/* Fuzz target: the coordinator's ZMTP 3.x decoder (common/chan_zmtp.c), the
 * first code that sees a peer's bytes. The first input byte picks how the
 * rest is cut into reads (1 to 256 bytes, as TCP may deliver them); the
 * same bytes are also decoded in one piece and both runs must agree.
 * Invariants: no crash or over-read; a frame's bytes never exceed the size
 * announced before them; frame indexes run 0, 1, ... within a message and
 * restart after a frame without MORE; once the decoder failed it stays
 * failed. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "chan_int.h"
#include "err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct obs {
	uint64_t left; /* bytes still due for the current frame */
	unsigned next; /* expected index of the next frame */
	int in_frame;
	uint64_t frames, bytes, pings, readies;
	uint64_t digest; /* order-sensitive hash of what was delivered */
} obs;

static void mix(obs *o, uint64_t v)
{
	o->digest = (o->digest ^ v) * 0x100000001B3ull;
}

static int on_ready(void *arg)
{
	obs *o = arg;
	o->readies++;
	mix(o, 1);
	return 0;
}

static int on_ping(void *arg, const uint8_t *ctx, size_t n)
{
	obs *o = arg;
	if (n > 16)
		abort();
	o->pings++;
	for (size_t i = 0; i < n; i++)
		mix(o, ctx[i]);
	return 0;
}

static int on_frame(void *arg, unsigned idx, uint64_t size, int more)
{
	obs *o = arg;
	if (o->in_frame || idx != o->next)
		abort();
	o->in_frame = 1;
	o->left = size;
	o->next = more ? idx + 1 : 0;
	o->frames++;
	mix(o, size ^ ((uint64_t)more << 63) ^ ((uint64_t)idx << 40));
	return 0;
}

static int on_data(void *arg, const uint8_t *p, size_t n)
{
	obs *o = arg;
	if (!o->in_frame || n == 0 || n > o->left)
		abort();
	o->left -= n;
	o->bytes += n;
	for (size_t i = 0; i < n; i++)
		mix(o, p[i]);
	return 0;
}

static int on_frame_end(void *arg)
{
	obs *o = arg;
	if (!o->in_frame || o->left)
		abort();
	o->in_frame = 0;
	mix(o, 2);
	return 0;
}

static int run(const uint8_t *p, size_t n, size_t piece, obs *o)
{
	chan_zmtp z;
	chan_zmtp_cb cb = {o, on_ready, on_ping, on_frame, on_data, on_frame_end};
	chan_zmtp_init(&z);
	memset(o, 0, sizeof *o);
	int rc = 0;
	for (size_t off = 0; off < n;) {
		size_t k = n - off < piece ? n - off : piece;
		rc = chan_zmtp_input(&z, p + off, k, &cb);
		off += k;
		if (rc) {
			/* failed for good */
			if (!z.why[0] || chan_zmtp_input(&z, p, n ? 1 : 0, &cb) != FL_EPROTO)
				abort();
			break;
		}
	}
	return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	size_t piece = (size_t)data[0] + 1;
	obs a, b;
	int ra = run(data + 1, size - 1, piece, &a);
	int rb = run(data + 1, size - 1, size, &b);
	/* Where a frame was cut differs between the runs, the rest must not. */
	if (ra != rb || a.frames != b.frames || a.bytes != b.bytes || a.pings != b.pings ||
	    a.readies != b.readies)
		abort();
	return 0;
}
