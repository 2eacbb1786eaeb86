/* test_tokenizer — tokenizers from GGUF metadata: the reference vectors in
 * ../shared/data/vocab (every input must give exactly the expected ids),
 * encode/decode round trips of arbitrary UTF-8 and invalid bytes, special
 * tokens, the built-in byte vocabulary, and refusal of metadata we do not
 * implement. */
#include "testutil.h"

#include "buf.h"
#include "err.h"
#include "fileio.h"
#include "gguf.h"
#include "model/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SEP "\n__ggml_vocab_test__\n"

static tok *load_tok(const char *name, gguf **gout)
{
	const char *path = tu_shared_data(name);
	if (!path)
		return NULL;
	gguf *g = NULL;
	char err[256];
	if (gguf_open(path, &g, err, sizeof err) != 0) {
		print_error("%s: %s\n", path, err);
		fail();
	}
	tok *t = NULL;
	if (tok_from_gguf(g, &t, err, sizeof err) != 0) {
		print_error("%s: %s\n", path, err);
		fail();
	}
	if (gout)
		*gout = g;
	else
		gguf_free(g);
	return t;
}

static int32_t *encode(const tok *t, const void *s, size_t n, int flags, size_t *nids)
{
	size_t cap = tok_encode_bound(n);
	int32_t *ids = malloc(cap * sizeof *ids);
	assert_non_null(ids);
	int rc = tok_encode(t, s, n, flags, ids, cap, nids);
	if (rc) {
		print_error("encode of %zu bytes failed: %s\n", n, fl_errname(rc));
		fail();
	}
	return ids;
}

/* decode(encode(s)) == s */
static void roundtrip(const tok *t, const void *s, size_t n, const char *what)
{
	size_t k;
	int32_t *ids = encode(t, s, n, 0, &k);
	buf b;
	buf_init(&b, 0);
	assert_int_equal(tok_decode(t, ids, k, TOK_DECODE_STRIP_PREFIX, &b), 0);
	if (b.len != n || (n && memcmp(b.data, s, n) != 0)) {
		print_error("%s: round trip of %zu bytes gave %zu bytes\n", what, n, b.len);
		for (size_t i = 0; i < n && i < 64; i++)
			print_error("%02x%s", ((const uint8_t *)s)[i], i + 1 < n ? " " : "\n");
		for (size_t i = 0; i < b.len && i < 64; i++)
			print_error("%02x%s", b.data[i], i + 1 < b.len ? " " : "\n");
		fail();
	}
	buf_fini(&b);
	free(ids);
}

/* Runs every input of <vectors>.inp against the ids in <vectors>.out;
 * vectors is under the shared data dir, or under the source tree when
 * in_src is set. */
static void check_vectors(const char *vocab, const char *vectors, int in_src, int min_count)
{
	char name[256];
	tok *t = load_tok(vocab, NULL);
	if (!t) {
		skip();
		return;
	}
	uint8_t *inp, *outp;
	size_t in_n, out_n;
	/* the path helpers return static storage: read each file at once */
	snprintf(name, sizeof name, "%s.inp", vectors);
	const char *path = in_src ? tu_src_path(name) : tu_shared_data(name);
	assert_non_null(path);
	assert_int_equal(file_read_all(path, 1 << 20, &inp, &in_n), 0);
	snprintf(name, sizeof name, "%s.out", vectors);
	path = in_src ? tu_src_path(name) : tu_shared_data(name);
	assert_non_null(path);
	assert_int_equal(file_read_all(path, 1 << 20, &outp, &out_n), 0);

	/* inputs: each one is followed by SEP (the file ends with SEP) */
	const char *p = (const char *)inp, *end = p + in_n;
	const char *line = (const char *)outp, *oend = line + out_n;
	int count = 0, bad = 0;
	size_t sl = strlen(SEP);
	while (p < end) {
		const char *q = p;
		while (q + sl <= end && memcmp(q, SEP, sl) != 0)
			q++;
		assert_true(q + sl <= end); /* every input is terminated */
		size_t n = (size_t)(q - p);
		/* expected ids: one line */
		assert_true(line < oend);
		const char *le = memchr(line, '\n', (size_t)(oend - line));
		assert_non_null(le);
		int32_t want[4096];
		size_t nw = 0;
		for (const char *c = line; c < le;) {
			while (c < le && *c == ' ')
				c++;
			if (c >= le)
				break;
			char *e;
			long v = strtol(c, &e, 10);
			assert_true(e > c && nw < 4096);
			want[nw++] = (int32_t)v;
			c = e;
		}
		size_t ng;
		int32_t *got = encode(t, p, n, 0, &ng);
		if (ng != nw || memcmp(got, want, nw * sizeof *want) != 0) {
			bad++;
			print_error("%s input %d ('%.*s'): got", vocab, count,
			            (int)(n > 60 ? 60 : n), p);
			for (size_t i = 0; i < ng; i++)
				print_error(" %d", got[i]);
			print_error("\n  want");
			for (size_t i = 0; i < nw; i++)
				print_error(" %d", want[i]);
			print_error("\n");
		}
		roundtrip(t, p, n, vocab);
		free(got);
		count++;
		p = q + sl;
		line = le + 1;
	}
	assert_true(line == oend); /* as many expected lines as inputs */
	print_message("%s: %d inputs, %d mismatches\n", vectors, count, bad);
	assert_true(count >= min_count);
	assert_int_equal(bad, 0);
	free(inp);
	free(outp);
	tok_free(t);
}

static void test_vectors_llama_spm(void **state)
{
	(void)state;
	check_vectors("vocab/ggml-vocab-llama-spm.gguf", "vocab/ggml-vocab-llama-spm.gguf", 0, 46);
}

static void test_vectors_gpt2(void **state)
{
	(void)state;
	check_vectors("vocab/ggml-vocab-gpt-2.gguf", "vocab/ggml-vocab-gpt-2.gguf", 0, 46);
}

/* 400 random strings (many scripts, combining marks, emoji, digits,
 * contractions, whitespace runs) tokenized by an independent GPT-2
 * implementation (the npm package gpt-3-encoder 1.1.4, JavaScript regex
 * with V8's Unicode tables); U+0085 and U+FEFF left out, where JavaScript's
 * \s differs from Unicode White_Space. Made by tests/unit/data/gen_gpt2.js. */
/* 300 random strings tokenized by an independent LLaMA SentencePiece
 * implementation (npm llama-tokenizer-js 1.2.2, which carries its own copy
 * of the vocabulary). Made by tests/unit/data/gen_llama.mjs. */
static void test_vectors_llama_random(void **state)
{
	(void)state;
	check_vectors("vocab/ggml-vocab-llama-spm.gguf", "tests/unit/data/llama-random", 1, 250);
}

static void test_vectors_gpt2_random(void **state)
{
	(void)state;
	check_vectors("vocab/ggml-vocab-gpt-2.gguf", "tests/unit/data/gpt2-random", 1, 400);
}

/* Random valid UTF-8 from several scripts, and random bytes. */
static size_t random_utf8(uint64_t *rng, uint8_t *o, size_t max_chars)
{
	static const uint32_t starts[] = {0x20,   0x0a,   0xa0,    0x400,  0x3040, 0x4e00,
	                                  0x1780, 0x0300, 0x1f600, 0x2000, 0xac00, 0x10000};
	size_t n = 0, chars = (size_t)(tu_rand(rng) % max_chars);
	for (size_t i = 0; i < chars; i++) {
		uint32_t cp = starts[tu_rand(rng) % 12] + (uint32_t)(tu_rand(rng) % 96);
		if (cp >= 0xd800 && cp <= 0xdfff)
			cp = 'x';
		if (cp < 0x80) {
			o[n++] = (uint8_t)cp;
		} else if (cp < 0x800) {
			o[n++] = (uint8_t)(0xc0 | cp >> 6);
			o[n++] = (uint8_t)(0x80 | (cp & 0x3f));
		} else if (cp < 0x10000) {
			o[n++] = (uint8_t)(0xe0 | cp >> 12);
			o[n++] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
			o[n++] = (uint8_t)(0x80 | (cp & 0x3f));
		} else {
			o[n++] = (uint8_t)(0xf0 | cp >> 18);
			o[n++] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
			o[n++] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
			o[n++] = (uint8_t)(0x80 | (cp & 0x3f));
		}
	}
	return n;
}

static void roundtrips(const tok *t, const char *what)
{
	uint64_t rng = 1234;
	uint8_t s[1024];
	for (int it = 0; it < 300; it++) {
		size_t n = random_utf8(&rng, s, 200);
		roundtrip(t, s, n, what);
	}
	for (int it = 0; it < 300; it++) { /* arbitrary bytes: invalid UTF-8 */
		size_t n = (size_t)(tu_rand(&rng) % 100);
		for (size_t i = 0; i < n; i++)
			s[i] = (uint8_t)tu_rand(&rng);
		roundtrip(t, s, n, what);
	}
	/* hand-picked invalid sequences, NULs, lone spaces */
	static const char *const odd[] = {
	    "\xe2\x28\xa1",  "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80",
	    "\x80\x80 \xff", "a\0b",     "\xe2\x96",     " ",
	    "  \n ",         "<s>",      "</s><unk>",    "<|endoftext|>",
	    "<0x41>"};
	for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++)
		roundtrip(t, odd[i], i == 5 ? 3 : strlen(odd[i]), what);
}

static void test_roundtrip_llama_spm(void **state)
{
	(void)state;
	tok *t = load_tok("vocab/ggml-vocab-llama-spm.gguf", NULL);
	if (!t) {
		skip();
		return;
	}
	roundtrips(t, "llama-spm");
	tok_free(t);
}

static void test_roundtrip_gpt2(void **state)
{
	(void)state;
	tok *t = load_tok("vocab/ggml-vocab-gpt-2.gguf", NULL);
	if (!t) {
		skip();
		return;
	}
	roundtrips(t, "gpt-2");
	tok_free(t);
}

static void test_special_tokens(void **state)
{
	(void)state;
	tok *t = load_tok("vocab/ggml-vocab-llama-spm.gguf", NULL);
	if (!t) {
		skip();
		return;
	}
	assert_int_equal(tok_get_kind(t), TOK_SPM);
	assert_int_equal(tok_n_vocab(t), 32000);
	assert_int_equal(tok_bos(t), 1);
	assert_int_equal(tok_eos(t), 2);
	assert_int_equal(tok_unk(t), 0);
	assert_int_equal(tok_pad(t), -1);
	assert_int_equal(tok_adds_bos(t), 1);
	assert_int_equal(tok_adds_eos(t), 0);
	size_t n;
	/* "Hello world" -> 15043 3186 (vector above); with specials BOS first */
	int32_t *ids = encode(t, "Hello world", 11, TOK_ADD_SPECIAL, &n);
	assert_int_equal(n, 3);
	assert_int_equal(ids[0], 1);
	assert_int_equal(ids[1], 15043);
	assert_int_equal(ids[2], 3186);
	free(ids);
	/* control tokens in the text: ids only when asked */
	ids = encode(t, "<s>Hello world</s>", 18, TOK_PARSE_SPECIAL, &n);
	assert_int_equal(n, 4);
	assert_int_equal(ids[0], 1);
	assert_int_equal(ids[1], 15043); /* space prefix after a special token */
	assert_int_equal(ids[2], 3186);
	assert_int_equal(ids[3], 2);
	buf b;
	buf_init(&b, 0);
	assert_int_equal(tok_decode(t, ids, n, 0, &b), 0);
	assert_int_equal(b.len, 12);
	assert_memory_equal(b.data, " Hello world", 12);
	buf_clear(&b);
	assert_int_equal(tok_decode(t, ids, n, TOK_DECODE_SPECIAL, &b), 0);
	assert_int_equal(b.len, 19);
	assert_memory_equal(b.data, "<s> Hello world</s>", 19);
	free(ids);
	ids = encode(t, "<s>", 3, 0, &n);
	assert_true(n > 1 || ids[0] != 1); /* not the control id */
	free(ids);
	/* pieces; invalid ids */
	const char *p;
	size_t k;
	assert_int_equal(tok_piece(t, 1, 0, &p, &k), 0);
	assert_int_equal(k, 0);
	assert_int_equal(tok_piece(t, 3 + 0x41, 0, &p, &k), 0); /* <0x41> */
	assert_true(k == 1 && p[0] == 'A');
	assert_int_equal(tok_piece(t, 15043, 0, &p, &k), 0);
	assert_true(k == 6 && memcmp(p, " Hello", 6) == 0);
	assert_int_equal(tok_piece(t, 32000, 0, &p, &k), FL_EINVAL);
	assert_int_equal(tok_piece(t, -1, 0, &p, &k), FL_EINVAL);
	int32_t badids[2] = {15043, 99999};
	buf_clear(&b);
	assert_int_equal(tok_decode(t, badids, 2, 0, &b), FL_EINVAL);
	assert_int_equal(b.len, 0);
	gguf_str txt;
	int type;
	float score;
	assert_int_equal(tok_token(t, 15043, &txt, &type, &score), 0);
	assert_true(txt.n == 8 && memcmp(txt.p, "\xe2\x96\x81Hello", 8) == 0);
	assert_int_equal(type, TOK_TYPE_NORMAL);
	assert_int_equal(tok_find(t, "\xe2\x96\x81Hello", 8), 15043);
	assert_int_equal(tok_find(t, "no such token", 13), FL_ENOENT);
	/* output capacity */
	int32_t small[2];
	assert_int_equal(tok_encode(t, "Hello world again", 17, 0, small, 2, &n), FL_ETOOBIG);
	buf_fini(&b);
	tok_free(t);

	t = load_tok("vocab/ggml-vocab-gpt-2.gguf", NULL);
	assert_non_null(t);
	assert_int_equal(tok_get_kind(t), TOK_BPE);
	assert_int_equal(tok_bos(t), 50256);
	assert_int_equal(tok_eos(t), 50256);
	assert_int_equal(tok_unk(t), -1);
	assert_int_equal(tok_adds_bos(t), 0);
	ids = encode(t, "<|endoftext|>", 13, TOK_PARSE_SPECIAL, &n);
	assert_int_equal(n, 1);
	assert_int_equal(ids[0], 50256);
	free(ids);
	ids = encode(t, "<|endoftext|>", 13, 0, &n);
	assert_true(n > 1);
	free(ids);
	ids = encode(t, "Hello world", 11, TOK_ADD_SPECIAL, &n);
	assert_int_equal(n, 2); /* gpt2 adds no BOS by default */
	free(ids);
	tok_free(t);
}

/* Builds a tokenizer from a writer's metadata. */
static int tok_of(gguf_writer *w, tok **t, char *err, size_t errlen)
{
	uint8_t *mem;
	size_t n;
	assert_int_equal(gguf_writer_serialize(w, &mem, &n), 0);
	gguf *g;
	assert_int_equal(gguf_open_mem(mem, n, &g, NULL, 0), 0);
	int rc = tok_from_gguf(g, t, err, errlen);
	gguf_free(g); /* the tokenizer must not need it any more */
	free(mem);
	return rc;
}

static void test_byte_vocab(void **state)
{
	(void)state;
	gguf_writer *w = gguf_writer_new();
	assert_int_equal(tok_write_byte_vocab(w), 0);
	assert_int_equal(gguf_set_str(w, "general.architecture", "llama"), 0);
	uint8_t *mem;
	size_t n;
	assert_int_equal(gguf_writer_serialize(w, &mem, &n), 0);
	gguf *g;
	assert_int_equal(gguf_open_mem(mem, n, &g, NULL, 0), 0);
	const gguf_str *toks;
	size_t nt;
	assert_int_equal(gguf_get_arr_strs(g, "tokenizer.ggml.tokens", &toks, &nt), 0);
	assert_int_equal(nt, TOK_BYTE_VOCAB_SIZE);
	assert_true(toks[3 + 0xab].n == 6 && memcmp(toks[3 + 0xab].p, "<0xAB>", 6) == 0);
	tok *t;
	char err[256];
	assert_int_equal(tok_from_gguf(g, &t, err, sizeof err), 0);
	gguf_free(g);
	free(mem);
	gguf_writer_free(w);

	assert_int_equal(tok_n_vocab(t), TOK_BYTE_VOCAB_SIZE);
	assert_int_equal(tok_bos(t), 1);
	assert_int_equal(tok_eos(t), 2);
	assert_int_equal(tok_unk(t), 0);
	size_t k;
	int32_t *ids = encode(t, "Hi there\n", 9, TOK_ADD_SPECIAL, &k);
	int32_t want[] = {1,       3 + 'H', 3 + 'i', 259,     3 + 't',
	                  3 + 'h', 3 + 'e', 3 + 'r', 3 + 'e', 3 + '\n'};
	assert_int_equal(k, 10);
	assert_memory_equal(ids, want, sizeof want);
	free(ids);
	/* multi-byte characters become their bytes */
	ids = encode(t, "\xc3\xa9", 2, 0, &k);
	assert_int_equal(k, 2);
	assert_int_equal(ids[0], 3 + 0xc3);
	assert_int_equal(ids[1], 3 + 0xa9);
	free(ids);
	roundtrips(t, "byte-vocab");
	tok_free(t);

	/* the convenience constructor gives the same tokenizer */
	assert_int_equal(tok_new_byte_vocab(&t), 0);
	ids = encode(t, "a b", 3, 0, &k);
	assert_int_equal(k, 3);
	assert_int_equal(ids[1], 259);
	free(ids);
	tok_free(t);
}

/* Tiny hand-made vocabularies: merge order by score / rank. */
static void test_small_vocabs(void **state)
{
	(void)state;
	/* llama: "ab" (score -1) vs "bc" (score -0.5): "abc" -> a + "bc" */
	gguf_writer *w = gguf_writer_new();
	const char *tk[] = {"<unk>", "<s>", "</s>", "a", "b", "c", "ab", "bc", "\xe2\x96\x81"};
	float sc[] = {0, 0, 0, -3, -3, -3, -1, -0.5f, -2};
	int32_t ty[] = {2, 3, 3, 1, 1, 1, 1, 1, 1};
	assert_int_equal(gguf_set_str(w, "tokenizer.ggml.model", "llama"), 0);
	assert_int_equal(gguf_set_arr_str(w, "tokenizer.ggml.tokens", tk, 9), 0);
	assert_int_equal(gguf_set_arr(w, "tokenizer.ggml.scores", GGUF_F32, sc, 9), 0);
	assert_int_equal(gguf_set_arr(w, "tokenizer.ggml.token_type", GGUF_I32, ty, 9), 0);
	assert_int_equal(gguf_set_bool(w, "tokenizer.ggml.add_space_prefix", 0), 0);
	tok *t;
	char err[256];
	assert_int_equal(tok_of(w, &t, err, sizeof err), 0);
	gguf_writer_free(w);
	size_t k;
	int32_t *ids = encode(t, "abc", 3, 0, &k);
	assert_int_equal(k, 2);
	assert_int_equal(ids[0], 3);
	assert_int_equal(ids[1], 7);
	free(ids);
	/* no byte tokens: a character outside the vocabulary becomes <unk> */
	ids = encode(t, "ax", 2, 0, &k);
	assert_int_equal(k, 2);
	assert_int_equal(ids[1], 0);
	free(ids);
	tok_free(t);

	/* gpt2: merges by rank; "Ġ" is the shown form of the space byte */
	w = gguf_writer_new();
	static char bytes[256][4];
	const char *btk[256 + 3];
	int nb = 0;
	unsigned next = 256;
	for (unsigned b = 0; b < 256; b++) {
		/* printable Latin-1 stays, the rest -> U+0100.. in order */
		int printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
		unsigned cp = printable ? b : next++;
		if (cp < 0x80) {
			bytes[b][0] = (char)cp;
			bytes[b][1] = 0;
		} else {
			bytes[b][0] = (char)(0xc0 | cp >> 6);
			bytes[b][1] = (char)(0x80 | (cp & 0x3f));
			bytes[b][2] = 0;
		}
		btk[nb++] = bytes[b];
	}
	btk[nb++] = "ab";
	/* U+0120 (bytes c4 a0) shows the space byte; octal escapes end at 3 digits */
	btk[nb++] = "\304\240a";
	btk[nb++] = "\304\240ab";
	const char *merges[] = {"\304\240 a", "a b", "\304\240a b"};
	assert_int_equal(gguf_set_str(w, "tokenizer.ggml.model", "gpt2"), 0);
	assert_int_equal(gguf_set_str(w, "tokenizer.ggml.pre", "gpt-2"), 0);
	assert_int_equal(gguf_set_arr_str(w, "tokenizer.ggml.tokens", btk, (size_t)nb), 0);
	assert_int_equal(gguf_set_arr_str(w, "tokenizer.ggml.merges", merges, 3), 0);
	assert_int_equal(tok_of(w, &t, err, sizeof err), 0);
	gguf_writer_free(w);
	/* " ab": rank 0 merges " a" first, then " a"+"b" -> " ab" */
	ids = encode(t, " ab", 3, 0, &k);
	assert_int_equal(k, 1);
	assert_int_equal(ids[0], 258);
	free(ids);
	/* "ab ab": pre-tokens "ab", " ab" */
	ids = encode(t, "ab ab", 5, 0, &k);
	assert_int_equal(k, 2);
	assert_int_equal(ids[0], 256);
	assert_int_equal(ids[1], 258);
	free(ids);
	/* "a  ab": "a", " " (the run leaves its last space), " ab" */
	ids = encode(t, "a  ab", 5, 0, &k);
	assert_int_equal(k, 3);
	assert_int_equal(ids[0], 'a');
	assert_int_equal(ids[1], tok_find(t, "\xc4\xa0", 2));
	assert_int_equal(ids[2], 258);
	free(ids);
	tok_free(t);
}

/* A byte-level vocabulary (the 256 byte tokens, one merge; BOS id 0,
 * add_bos_token unset) under
 * pre-tokenizer pre. */
static tok *bytes_tok(const char *pre)
{
	static char bytes[256][4];
	const char *btk[256];
	uint16_t cp[256];
	int n = 0;
	for (int b = 0; b < 256; b++) /* GPT-2's byte alphabet */
		if ((b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || b >= 0xae)
			cp[b] = (uint16_t)b;
		else
			cp[b] = (uint16_t)(256 + n++);
	for (int b = 0; b < 256; b++) {
		if (cp[b] < 0x80) {
			bytes[b][0] = (char)cp[b];
			bytes[b][1] = 0;
		} else {
			bytes[b][0] = (char)(0xc0 | cp[b] >> 6);
			bytes[b][1] = (char)(0x80 | (cp[b] & 0x3f));
			bytes[b][2] = 0;
		}
		btk[b] = bytes[b];
	}
	const char *merges[] = {"a b"};
	gguf_writer *w = gguf_writer_new();
	assert_int_equal(gguf_set_str(w, "tokenizer.ggml.model", "gpt2"), 0);
	assert_int_equal(gguf_set_str(w, "tokenizer.ggml.pre", pre), 0);
	assert_int_equal(gguf_set_arr_str(w, "tokenizer.ggml.tokens", btk, 256), 0);
	assert_int_equal(gguf_set_arr_str(w, "tokenizer.ggml.merges", merges, 1), 0);
	assert_int_equal(gguf_set_u32(w, "tokenizer.ggml.bos_token_id", 0), 0);
	tok *t;
	char err[256];
	assert_int_equal(tok_of(w, &t, err, sizeof err), 0);
	gguf_writer_free(w);
	return t;
}

/* The pre-tokens of text joined by '|' must equal want. */
static void expect_split(const tok *t, const char *text, const char *want)
{
	size_t n = strlen(text), lens[128], k;
	assert_int_equal(tok_pretokenize(t, text, n, lens, 128, &k), 0);
	char got[512];
	size_t o = 0, at = 0;
	for (size_t i = 0; i < k; i++) {
		if (i)
			got[o++] = '|';
		memcpy(got + o, text + at, lens[i]);
		o += lens[i];
		at += lens[i];
	}
	got[o] = 0;
	assert_int_equal(at, n);
	if (strcmp(got, want) != 0) {
		print_error("pre-tokens of '%s': '%s', want '%s'\n", text, got, want);
		fail();
	}
}

/* Each pre-tokenizer on cases worked out by hand from its regex (see
 * tokenizer.c); the parity test checks them on thousands of strings
 * against an independent implementation. */
static void test_pretokenizers(void **state)
{
	(void)state;
	tok *t = bytes_tok("gpt-2");
	assert_int_equal(tok_get_pre(t), TOK_PRE_GPT2);
	expect_split(t, "Hello world's 123  x", "Hello| world|'s| 123| | x");
	expect_split(t, "I'M a  1", "I|'|M| a| | 1");
	expect_split(t, "x\n\n y", "x|\n\n| y");
	tok_free(t);

	t = bytes_tok("llama-bpe");
	assert_int_equal(tok_get_pre(t), TOK_PRE_LLAMA3);
	assert_int_equal(tok_adds_bos(t), 1); /* no add_bos_token key: on for llama-bpe */
	expect_split(t, "Hello world's 12345  x", "Hello| world|'s| |123|45| | x");
	expect_split(t, "I'M here 'LL", "I|'M| here| '|LL");
	expect_split(t, "x  \n  y", "x|  \n| | y");
	expect_split(t, "!!!\n\nok .hi\tfoo", "!!!\n\n|ok| .|hi|\tfoo");
	expect_split(t, "x.hi", "x|.hi");
	expect_split(t, "12345678", "123|456|78");
	expect_split(t, "\xd0\xbf\xd1\x80\xd0\xb8 \xd0\xbc\xd0\xb8\xd1\x80", /* при мир */
	             "\xd0\xbf\xd1\x80\xd0\xb8| \xd0\xbc\xd0\xb8\xd1\x80");
	expect_split(t, "a \r\nb", "a| \r\n|b");
	tok_free(t);

	t = bytes_tok("qwen2");
	assert_int_equal(tok_get_pre(t), TOK_PRE_QWEN2);
	assert_int_equal(tok_adds_bos(t), 0);
	expect_split(t, "x 12345", "x| |1|2|3|4|5");
	expect_split(t, "x\xc2\xb2y", "x|\xc2\xb2|y"); /* superscript two is \p{N} */
	expect_split(t, "you'RE", "you|'RE");
	tok_free(t);

	t = bytes_tok("smollm");
	assert_int_equal(tok_get_pre(t), TOK_PRE_SMOLLM);
	expect_split(t, "a 1 b", "a| |1| b");
	expect_split(t, "abc12 d", "abc|1|2| d");
	expect_split(t, "x\xc2\xb3 it's", "x|\xc2\xb3| it|'s");
	expect_split(t, "a  1", "a|  |1");
	tok_free(t);

	size_t lens[2], k;
	t = bytes_tok("gpt-2");
	assert_int_equal(tok_pretokenize(t, "a b c", 5, lens, 2, &k), FL_ETOOBIG);
	tok_free(t);
}

static void expect_refused(gguf_writer *w, int code, const char *what)
{
	tok *t = (tok *)0x1;
	char err[256] = "";
	int rc = tok_of(w, &t, err, sizeof err);
	if (rc != code || !strstr(err, what)) {
		print_error("rc %s err '%s'; want %s and '%s'\n", fl_errname(rc), err,
		            fl_errname(code), what);
		fail();
	}
	assert_ptr_equal(t, (tok *)0x1);
	gguf_writer_free(w);
}

static gguf_writer *base(const char *model, const char *pre)
{
	gguf_writer *w = gguf_writer_new();
	if (model)
		assert_int_equal(gguf_set_str(w, "tokenizer.ggml.model", model), 0);
	if (pre)
		assert_int_equal(gguf_set_str(w, "tokenizer.ggml.pre", pre), 0);
	return w;
}

static void test_refusals(void **state)
{
	(void)state;
	const char *tk[] = {"<unk>", "a"};
	expect_refused(base(NULL, NULL), FL_ENOENT, "tokenizer.ggml.model is missing");
	expect_refused(base("bert", NULL), FL_EUNSUPPORTED, "'bert' is not supported");
	expect_refused(base("t5", NULL), FL_EUNSUPPORTED, "'t5'");
	expect_refused(base("gpt2", NULL), FL_EUNSUPPORTED, "without tokenizer.ggml.pre");
	expect_refused(base("gpt2", "deepseek-llm"), FL_EUNSUPPORTED,
	               "'deepseek-llm' is not supported");
	expect_refused(base("gpt2", "falcon"), FL_EUNSUPPORTED, "'falcon'");
	/* llama.cpp's "default" split for BPE is not GPT-2's */
	expect_refused(base("gpt2", "default"), FL_EUNSUPPORTED, "'default' is not supported");
	expect_refused(base("llama", "qwen2"), FL_EUNSUPPORTED, "'qwen2' is not supported");
	expect_refused(base("llama", NULL), FL_EFORMAT, "tokenizer.ggml.tokens is missing");

	gguf_writer *w = base("llama", "default");
	assert_int_equal(gguf_set_arr(w, "tokenizer.ggml.tokens", GGUF_I32, tk, 0), 0);
	expect_refused(w, FL_EFORMAT, "not an array of strings");

	w = base("llama", "default");
	assert_int_equal(gguf_set_arr_str(w, "tokenizer.ggml.tokens", tk, 0), 0);
	expect_refused(w, FL_EFORMAT, "vocabulary of 0 tokens");

	float sc[1] = {0};
	w = base("llama", NULL);
	assert_int_equal(gguf_set_arr_str(w, "tokenizer.ggml.tokens", tk, 2), 0);
	assert_int_equal(gguf_set_arr(w, "tokenizer.ggml.scores", GGUF_F32, sc, 1), 0);
	expect_refused(w, FL_EFORMAT, "scores must be a float array of 2 entries");

	int32_t ty[2] = {2, 9};
	w = base("llama", NULL);
	assert_int_equal(gguf_set_arr_str(w, "tokenizer.ggml.tokens", tk, 2), 0);
	assert_int_equal(gguf_set_arr(w, "tokenizer.ggml.token_type", GGUF_I32, ty, 2), 0);
	expect_refused(w, FL_EFORMAT, "token 1 has unknown type 9");

	const char *btk[] = {"<unk>", "<0xZZ>"};
	int32_t bty[2] = {2, 6};
	w = base("llama", NULL);
	assert_int_equal(gguf_set_arr_str(w, "tokenizer.ggml.tokens", btk, 2), 0);
	assert_int_equal(gguf_set_arr(w, "tokenizer.ggml.token_type", GGUF_I32, bty, 2), 0);
	expect_refused(w, FL_EFORMAT, "not <0xHH>");

	w = base("llama", NULL);
	assert_int_equal(gguf_set_arr_str(w, "tokenizer.ggml.tokens", tk, 2), 0);
	assert_int_equal(gguf_set_u32(w, "tokenizer.ggml.add_bos_token", 1), 0);
	expect_refused(w, FL_EFORMAT, "add_bos_token must be a bool");

	/* gpt2 without byte tokens / merges */
	w = base("gpt2", "gpt-2");
	assert_int_equal(gguf_set_arr_str(w, "tokenizer.ggml.tokens", tk, 2), 0);
	expect_refused(w, FL_EFORMAT, "no token for byte 0x00");

	/* an out-of-range special id is ignored, not fatal */
	w = base("llama", NULL);
	assert_int_equal(gguf_set_arr_str(w, "tokenizer.ggml.tokens", tk, 2), 0);
	assert_int_equal(gguf_set_u32(w, "tokenizer.ggml.bos_token_id", 7), 0);
	tok *t;
	char err[256];
	assert_int_equal(tok_of(w, &t, err, sizeof err), 0);
	assert_int_equal(tok_bos(t), -1);
	assert_int_equal(tok_adds_bos(t), 0);
	tok_free(t);
	gguf_writer_free(w);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_vectors_llama_spm),   cmocka_unit_test(test_vectors_gpt2),
	    cmocka_unit_test(test_vectors_gpt2_random), cmocka_unit_test(test_vectors_llama_random),
	    cmocka_unit_test(test_roundtrip_llama_spm), cmocka_unit_test(test_roundtrip_gpt2),
	    cmocka_unit_test(test_special_tokens),      cmocka_unit_test(test_byte_vocab),
	    cmocka_unit_test(test_small_vocabs),        cmocka_unit_test(test_refusals),
	    cmocka_unit_test(test_pretokenizers),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
