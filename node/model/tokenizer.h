/* tokenizer — text <-> token ids from a GGUF file's tokenizer metadata, the
 * way GGUF runtimes tokenize, so a model sees the ids it was trained on.
 *
 * Supported (anything else is refused at load with a message naming it):
 *   tokenizer.ggml.model "llama": SentencePiece-style BPE by scores with
 *     byte fallback (<0xXX> tokens), spaces escaped as U+2581, optional
 *     space prefix (tokenizer.ggml.add_space_prefix, default on);
 *     tokenizer.ggml.pre absent or "default".
 *   tokenizer.ggml.model "gpt2": byte-level BPE with merges and the
 *     pre-tokenizer that tokenizer.ggml.pre names: "gpt-2",
 *     "llama-bpe" (Llama 3), "qwen2" (Qwen2/2.5/3), "smollm" (SmolLM/2).
 *     No Unicode normalization is applied (HF's Qwen tokenizers NFC the
 *     text first: NFC text tokenizes the same).
 * BOS/EOS insertion follows tokenizer.ggml.add_bos_token / add_eos_token;
 * without the key BOS is added for "llama" and "llama-bpe" vocabularies
 * only (as llama.cpp does), EOS never.
 * User-defined tokens (type 4) written in the text always map to their id;
 * control/unknown tokens only with TOK_PARSE_SPECIAL. See docs/GGUF.md.
 *
 * A tok is immutable after creation: any number of threads may encode and
 * decode with it concurrently. It copies what it needs: the gguf can be
 * freed afterwards. */
#ifndef FL_TOKENIZER_H
#define FL_TOKENIZER_H
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "gguf.h"

typedef struct tok tok;

enum tok_kind { TOK_SPM = 1, TOK_BPE = 2 };

/* Pre-tokenizers (tokenizer.ggml.pre) of "gpt2" vocabularies; see
 * tokenizer.c for their regexes. */
enum tok_pre {
	TOK_PRE_SPM = 0,    /* "llama" vocabularies: none */
	TOK_PRE_GPT2 = 1,   /* "gpt-2" */
	TOK_PRE_LLAMA3 = 2, /* "llama-bpe" (Llama 3.x) */
	TOK_PRE_QWEN2 = 3,  /* "qwen2" (Qwen2, Qwen2.5, Qwen3) */
	TOK_PRE_SMOLLM = 4, /* "smollm" (SmolLM, SmolLM2) */
};

/* Token types as GGUF numbers them (tokenizer.ggml.token_type). */
enum tok_type {
	TOK_TYPE_NORMAL = 1,
	TOK_TYPE_UNKNOWN = 2,
	TOK_TYPE_CONTROL = 3,
	TOK_TYPE_USER_DEFINED = 4,
	TOK_TYPE_UNUSED = 5,
	TOK_TYPE_BYTE = 6,
};

#define TOK_MAX_VOCAB (1u << 24)

/* Builds a tokenizer from g's tokenizer.* metadata. FL_EUNSUPPORTED for a
 * model / pre-tokenizer we do not implement exactly, FL_EFORMAT for bad
 * metadata; err (may be NULL: then logged) gets a one-line reason. */
int tok_from_gguf(const gguf *g, tok **out, char *err, size_t errlen);

/* The built-in byte-level vocabulary (see tok_write_byte_vocab). */
int tok_new_byte_vocab(tok **out);

void tok_free(tok *t); /* NULL is a no-op */

enum tok_kind tok_get_kind(const tok *t);
enum tok_pre tok_get_pre(const tok *t);
size_t tok_n_vocab(const tok *t);
/* Special ids, -1 when the vocabulary has none. */
int32_t tok_bos(const tok *t);
int32_t tok_eos(const tok *t);
int32_t tok_unk(const tok *t);
int32_t tok_pad(const tok *t);
int tok_adds_bos(const tok *t); /* add_bos_token in effect */
int tok_adds_eos(const tok *t);
/* Raw vocabulary entry: text as stored, type (enum tok_type), score. */
int tok_token(const tok *t, int32_t id, gguf_str *text, int *type, float *score);
/* Id of the token whose text is exactly s, or FL_ENOENT. */
int32_t tok_find(const tok *t, const void *s, size_t n);

/* Encode flags. */
#define TOK_ADD_SPECIAL   1 /* BOS/EOS as add_bos_token/add_eos_token say */
#define TOK_PARSE_SPECIAL 2 /* "<s>" etc. in the text become control ids */

/* Upper bound on the ids tok_encode produces for n bytes of text
 * (SIZE_MAX when n is absurd). */
size_t tok_encode_bound(size_t n);

/* Tokenizes n bytes (any bytes: invalid UTF-8 is carried through byte
 * tokens) into ids[0..cap). FL_ETOOBIG when cap is too small (use
 * tok_encode_bound), FL_ENOMEM, FL_EUNSUPPORTED when a byte has neither a
 * byte token nor an unknown token to stand for it. *n_ids written only on
 * success. Allocates scratch proportional to n per call. */
int tok_encode(const tok *t, const void *text, size_t n, int flags, int32_t *ids, size_t cap,
               size_t *n_ids);

/* The pre-tokens of n bytes of text under a "gpt2" vocabulary's
 * pre-tokenizer (no special-token matching): their byte lengths, in order,
 * into lens[0..cap), their number in *count. FL_EUNSUPPORTED for a "llama"
 * vocabulary, FL_ETOOBIG when cap is too small (n is always enough). */
int tok_pretokenize(const tok *t, const void *text, size_t n, size_t *lens, size_t cap,
                    size_t *count);

/* Decode flags. */
#define TOK_DECODE_SPECIAL      1 /* render control/unknown tokens' text */
#define TOK_DECODE_STRIP_PREFIX 2 /* drop the space the encoder's prefix added */

/* Bytes a token stands for (control/unknown: empty unless
 * TOK_DECODE_SPECIAL). Points into t. FL_EINVAL for an id out of range. */
int tok_piece(const tok *t, int32_t id, int flags, const char **p, size_t *n);

/* Appends the bytes of ids[0..n) to out. FL_EINVAL on an id out of range
 * (nothing appended then), FL_ETOOBIG/FL_ENOMEM from the buf. */
int tok_decode(const tok *t, const int32_t *ids, size_t n, int flags, buf *out);

/* Writes the built-in byte-level vocabulary's tokenizer.* keys into w: a
 * "llama" (SentencePiece-style) vocabulary of 260 tokens — 0 <unk>, 1 <s>,
 * 2 </s>, 3..258 the byte tokens <0x00>..<0xFF>, 259 "▁" (U+2581, the
 * escaped space, so spaces cost one token and decode back to spaces) —
 * with scores, token types, bos/eos/unk ids, add_bos_token on,
 * add_eos_token off, add_space_prefix off. Returns 0 or the writer's
 * error. The caller writes the architecture keys. */
#define TOK_BYTE_VOCAB_SIZE 260
int tok_write_byte_vocab(gguf_writer *w);

#endif
