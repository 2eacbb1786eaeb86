/* fuzz_jsonl — the training-data reader (node/dataset.c) on arbitrary bytes:
 * parsed as JSONL and as plain text with the built-in byte vocabulary and
 * a seeded held-out split. Either an error with a message, or a stream
 * whose invariants hold: tokens in the vocabulary, targets counted right,
 * windows covering every target exactly once. First byte: bit 0 selects
 * a 20 % held-out split. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "model/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static tok *tk;

static void check(const ds *d)
{
	if (!d)
		return;
	const int32_t *t = ds_token_data(d);
	const uint8_t *m = ds_mask_data(d);
	size_t n = ds_n_tokens(d), targets = 0;
	for (size_t i = 0; i < n; i++) {
		if (t[i] < 0 || (size_t)t[i] >= tok_n_vocab(tk))
			abort();
		if (i > 0)
			targets += m[i] != 0;
	}
	if (targets != ds_n_targets(d))
		abort();
	const int ctx = 7;
	int32_t in[7], tg[7];
	size_t got = 0;
	for (size_t w = 0; w < ds_n_windows(d, ctx); w++)
		got += (size_t)ds_window(d, ctx, w, in, tg);
	if (got != targets)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!tk && tok_new_byte_vocab(&tk) != 0)
		return 0;
	if (size < 1)
		return 0;
	ds_opts o = {.holdout = (data[0] & 1) ? 0.2 : 0.0, .seed = data[0]};
	for (int fmt = DS_FMT_TEXT; fmt <= DS_FMT_JSONL; fmt++) {
		o.format = fmt;
		ds *tr = NULL, *ev = NULL;
		char err[256];
		err[0] = 0;
		int rc = ds_parse("fuzz", data + 1, size - 1, tk, &o, &tr, &ev, err, sizeof err);
		if (rc != 0 && (tr || ev || !err[0]))
			abort(); /* failures leave nothing behind and say why */
		if (rc == 0 && !tr)
			abort();
		check(tr);
		check(ev);
		ds_free(tr);
		ds_free(ev);
	}
	return 0;
}
