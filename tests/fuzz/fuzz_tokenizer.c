/* fuzz_tokenizer — encodes arbitrary bytes with the built-in byte vocabulary
 * (SentencePiece-style) and with a small synthetic GPT-2 byte-level
 * vocabulary (merges) under each pre-tokenizer (gpt-2, llama-bpe, qwen2,
 * smollm), checking decode(encode(x)) == x and that the pre-tokens tile the
 * input, and decodes the input read as arbitrary token ids.
 * First input byte: bit 0 TOK_PARSE_SPECIAL, bit 1 TOK_ADD_SPECIAL. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "gguf.h"
#include "model/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define N_PRE 4
static const char *const pre_names[N_PRE] = {"gpt-2", "llama-bpe", "qwen2", "smollm"};
static tok *byte_tok, *bpe_tok[N_PRE];

static tok *make_bpe(const char *pre)
{
	static char bytes[256][3];
	const char *toks[256 + 4];
	unsigned next = 256;
	for (unsigned b = 0; b < 256; b++) {
		int printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
		unsigned cp = printable ? b : next++;
		if (cp < 0x80) {
			bytes[b][0] = (char)cp;
		} else {
			bytes[b][0] = (char)(0xc0 | cp >> 6);
			bytes[b][1] = (char)(0x80 | (cp & 0x3f));
		}
		toks[b] = bytes[b];
	}
	toks[256] = "\xc4\xa0t";
	toks[257] = "he";
	toks[258] = "\xc4\xa0the";
	toks[259] = "<|endoftext|>";
	const char *merges[] = {"\xc4\xa0 t", "h e", "\xc4\xa0t he"};
	int32_t types[260];
	for (int i = 0; i < 260; i++)
		types[i] = i == 259 ? 3 : 1;
	gguf_writer *w = gguf_writer_new();
	uint8_t *mem = NULL;
	size_t n = 0;
	gguf *g = NULL;
	tok *t = NULL;
	if (w && !gguf_set_str(w, "tokenizer.ggml.model", "gpt2") &&
	    !gguf_set_str(w, "tokenizer.ggml.pre", pre) &&
	    !gguf_set_arr_str(w, "tokenizer.ggml.tokens", toks, 260) &&
	    !gguf_set_arr(w, "tokenizer.ggml.token_type", GGUF_I32, types, 260) &&
	    !gguf_set_arr_str(w, "tokenizer.ggml.merges", merges, 3) &&
	    !gguf_set_u32(w, "tokenizer.ggml.eos_token_id", 259) &&
	    !gguf_writer_serialize(w, &mem, &n) && !gguf_open_mem(mem, n, &g, NULL, 0))
		tok_from_gguf(g, &t, NULL, 0);
	gguf_free(g);
	free(mem);
	gguf_writer_free(w);
	return t;
}

static void run(const tok *t, const uint8_t *p, size_t n, int flags, int exact)
{
	size_t cap = tok_encode_bound(n), k = 0;
	int32_t *ids = malloc(cap * sizeof *ids);
	if (!ids)
		return;
	if (tok_encode(t, p, n, flags, ids, cap, &k) != 0)
		abort(); /* both vocabularies can represent every byte */
	buf b;
	buf_init(&b, 0);
	if (tok_decode(t, ids, k, TOK_DECODE_STRIP_PREFIX, &b) != 0)
		abort();
	if (exact && (b.len != n || (n && memcmp(b.data, p, n) != 0)))
		abort(); /* lost or changed bytes */
	buf_fini(&b);
	free(ids);
}

static int has_seq(const uint8_t *p, size_t n, const char *s, size_t sn)
{
	for (size_t i = 0; i + sn <= n; i++)
		if (memcmp(p + i, s, sn) == 0)
			return 1;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!byte_tok && tok_new_byte_vocab(&byte_tok) != 0)
		abort();
	for (int i = 0; i < N_PRE; i++)
		if (!bpe_tok[i] && !(bpe_tok[i] = make_bpe(pre_names[i])))
			abort();
	if (size == 0)
		return 0;
	int flags = (data[0] & 1 ? TOK_PARSE_SPECIAL : 0) | (data[0] & 2 ? TOK_ADD_SPECIAL : 0);
	const uint8_t *p = data + 1;
	size_t n = size - 1;
	/* exact round trips: no specials; the byte vocabulary also maps a
	 * literal U+2581 to its space token (SentencePiece's escape) */
	int plain = flags == 0;
	run(byte_tok, p, n, flags, plain && !has_seq(p, n, "\xe2\x96\x81", 3));
	for (int i = 0; i < N_PRE; i++) {
		run(bpe_tok[i], p, n, flags, plain);
		size_t *lens = malloc((n ? n : 1) * sizeof *lens), k = 0, sum = 0;
		if (!lens)
			return 0;
		if (tok_pretokenize(bpe_tok[i], p, n, lens, n, &k) != 0)
			abort(); /* n pre-tokens always fit */
		for (size_t j = 0; j < k; j++) {
			if (lens[j] == 0)
				abort();
			sum += lens[j];
		}
		if (sum != n)
			abort(); /* the pre-tokens must tile the input */
		free(lens);
	}

	/* arbitrary ids */
	size_t nid = n / 4;
	int32_t *ids = malloc((nid ? nid : 1) * sizeof *ids);
	if (!ids)
		return 0;
	memcpy(ids, p, nid * 4);
	for (size_t i = 0; i < nid; i++)
		ids[i] = data[0] & 4 ? ids[i] % 300 : ids[i];
	buf b;
	buf_init(&b, 1 << 20);
	tok_decode(byte_tok, ids, nid, data[0] & 8 ? TOK_DECODE_SPECIAL : 0, &b);
	buf_clear(&b);
	tok_decode(bpe_tok[0], ids, nid, data[0] & 8 ? TOK_DECODE_SPECIAL : 0, &b);
	buf_fini(&b);
	free(ids);
	return 0;
}
