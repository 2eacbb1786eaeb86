/* tokenizer — see tokenizer.h and docs/GGUF.md.
 *
 * Both models run the same merge loop: the text is cut into symbols
 * (characters for "llama", bytes for "gpt2"), every adjacent pair that the
 * vocabulary allows to merge goes into a priority queue, and the best pair
 * is merged until none is left; a pair made stale by an earlier merge is
 * recognised by its recorded size and skipped.
 *   llama: a pair may merge when the concatenated text is a token; best =
 *          highest token score, then leftmost. Symbols that are not tokens
 *          at the end fall back to their bytes' <0xXX> tokens.
 *   gpt2:  a pair may merge when "left right" is in the merges list; best =
 *          lowest merge rank, then leftmost. Runs per pre-token word, on the
 *          byte-level alphabet (each byte shown as a printable code point).
 * The pre-tokenizers (tokenizer.ggml.pre) are regexes, implemented by hand
 * over the Unicode classes of tok_unicode_data.h (see pretok_gpt2 and
 * pretok_llama3); their public definitions:
 *   gpt-2:
 *     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *   llama-bpe (Llama 3):
 *     (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 *     ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 *   qwen2 (Qwen2, Qwen2.5, Qwen3): as llama-bpe with \p{N} for \p{N}{1,3}
 *   smollm: every \p{N} character split off alone first, then gpt-2 on the
 *     pieces between them.
 * The case-insensitive contractions of llama-bpe/qwen2 are matched in ASCII
 * only (as llama.cpp does). llama-bpe also ignores merges for a pre-token
 * that is itself a token (HF "ignore_merges"). */
#include "tokenizer.h"

#include "err.h"
#include "hmap.h"
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok_unicode_data.h"

#define ARENA_MAX ((size_t)UINT32_MAX)
#define TEXT_MAX  ((size_t)1 << 30) /* bytes per tok_encode call */

struct tokent {
	uint32_t off, len;   /* text in the arena */
	uint32_t poff, plen; /* decoded piece in the arena */
	float score;
	int8_t type;
};

struct merge {
	uint32_t loff, llen, roff, rlen;
};

struct tok {
	enum tok_kind kind;
	size_t nv;
	struct tokent *v;
	char *arena;
	size_t alen, acap;
	hidx map; /* token text -> id (keyed hash: the vocabulary comes from a file) */
	struct merge *mg;
	size_t nmg;
	hidx mmap; /* merge pair -> rank */
	int32_t bos, eos, unk, pad;
	int add_bos, add_eos, add_space_prefix;
	int32_t byte_tok[256]; /* token standing for each byte (-1: none) */
	uint16_t byte_cp[256]; /* gpt2: code point each byte is shown as */
	uint8_t barrier[128];  /* llama: ASCII bytes no multi-char token holds */
	int32_t *spec;         /* tokens matched in raw text, longest first */
	size_t nspec;
	enum tok_pre pre;  /* gpt2: pre-tokenizer */
	int ignore_merges; /* gpt2: a pre-token that is a token is kept whole */
};

/* ------------------------------------------------------------------ */
/* Small helpers                                                        */

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static int
terr(char *err, size_t errlen, int code, const char *fmt, ...)
{
	char local[300];
	char *e = err && errlen ? err : local;
	size_t el = err && errlen ? errlen : sizeof local;
	va_list ap;
	va_start(ap, fmt);
	fl_vfail(e, el, code, fmt, ap);
	va_end(ap);
	if (!(err && errlen))
		LOGE("tok", "%s", e);
	return code;
}

static const char *tok_text(const tok *t, size_t id, size_t *n)
{
	*n = t->v[id].len;
	return t->arena + t->v[id].off;
}

struct bytes {
	const void *p;
	size_t n;
};

static int text_eq(const void *ctx, uint32_t id, const void *key)
{
	const struct bytes *k = key;
	size_t ln;
	const char *p = tok_text(ctx, id, &ln);
	return ln == k->n && memcmp(p, k->p, k->n) == 0;
}

/* The slot for text s: either the one holding it or the empty one where it
 * would go. */
static uint32_t *tmap_slot(const tok *t, const void *s, size_t n)
{
	struct bytes k = {s, n};
	return hidx_slot(&t->map, hmap_hash(s, n), text_eq, t, &k);
}

int32_t tok_find(const tok *t, const void *s, size_t n)
{
	uint32_t v = *tmap_slot(t, s, n);
	return v ? (int32_t)(v - 1) : FL_ENOENT;
}

struct pair {
	const void *l, *r;
	size_t ln, rn;
};

static int pair_eq(const void *ctx, uint32_t i, const void *key)
{
	const tok *t = ctx;
	const struct pair *k = key;
	const struct merge *g = &t->mg[i];
	return g->llen == k->ln && g->rlen == k->rn &&
	       memcmp(t->arena + g->loff, k->l, k->ln) == 0 &&
	       memcmp(t->arena + g->roff, k->r, k->rn) == 0;
}

static uint32_t *mmap_slot(const tok *t, const void *l, size_t ln, const void *r, size_t rn)
{
	struct pair k = {l, r, ln, rn};
	return hidx_slot(&t->mmap, hmap_hash2(l, ln, r, rn), pair_eq, t, &k);
}

/* Rank of merging l and r, or -1. */
static long merge_rank(const tok *t, const void *l, size_t ln, const void *r, size_t rn)
{
	uint32_t v = *mmap_slot(t, l, ln, r, rn);
	return v ? (long)(v - 1) : -1;
}

static int arena_reserve(tok *t, size_t n)
{
	if (n > ARENA_MAX - t->alen)
		return FL_ETOOBIG;
	if (t->alen + n > t->acap) {
		size_t nc = t->acap ? t->acap : 4096;
		while (nc < t->alen + n)
			nc = nc > ARENA_MAX / 2 ? ARENA_MAX : nc * 2;
		char *a = realloc(t->arena, nc);
		if (!a)
			return FL_ENOMEM;
		t->arena = a;
		t->acap = nc;
	}
	return 0;
}

/* Appends n bytes; p must not point into the arena unless space was
 * reserved beforehand (a reallocation would move it). */
static int arena_add(tok *t, const void *p, size_t n, uint32_t *off)
{
	int rc = arena_reserve(t, n);
	if (rc)
		return rc;
	if (n)
		memcpy(t->arena + t->alen, p, n);
	if (off)
		*off = (uint32_t)t->alen;
	t->alen += n;
	return 0;
}

static size_t utf8_put(uint32_t cp, uint8_t *o)
{
	if (cp < 0x80) {
		o[0] = (uint8_t)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (uint8_t)(0xc0 | cp >> 6);
		o[1] = (uint8_t)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (uint8_t)(0xe0 | cp >> 12);
		o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
		o[2] = (uint8_t)(0x80 | (cp & 0x3f));
		return 3;
	}
	o[0] = (uint8_t)(0xf0 | cp >> 18);
	o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
	o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
	o[3] = (uint8_t)(0x80 | (cp & 0x3f));
	return 4;
}

/* Strict UTF-8 decoding: returns the length of the character at s (n > 0
 * bytes available); an invalid or truncated sequence yields one byte with
 * *cp = UINT32_MAX. */
#define CP_INVALID UINT32_MAX
static size_t utf8_dec(const uint8_t *s, size_t n, uint32_t *cp)
{
	uint8_t c = s[0];
	size_t len;
	uint32_t v, min;
	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2, v = c & 0x1f, min = 0x80;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3, v = c & 0x0f, min = 0x800;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4, v = c & 0x07, min = 0x10000;
	} else {
		*cp = CP_INVALID;
		return 1;
	}
	if (n < len) {
		*cp = CP_INVALID;
		return 1;
	}
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80) {
			*cp = CP_INVALID;
			return 1;
		}
		v = v << 6 | (s[i] & 0x3f);
	}
	if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) {
		*cp = CP_INVALID;
		return 1;
	}
	*cp = v;
	return len;
}

enum { UC_OTHER = 0, UC_LETTER = 1, UC_NUMBER = 2, UC_SPACE = 3 };

static int uc_class(uint32_t cp)
{
	if (cp < 0x80) { /* fast path, same answers as the table */
		if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z')
			return UC_LETTER;
		if (cp >= '0' && cp <= '9')
			return UC_NUMBER;
		if (cp == ' ' || (cp >= 0x09 && cp <= 0x0d))
			return UC_SPACE;
		return UC_OTHER;
	}
	size_t lo = 0, hi = sizeof tok_uc_ranges / sizeof tok_uc_ranges[0];
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (cp < tok_uc_ranges[mid].lo)
			hi = mid;
		else if (cp > tok_uc_ranges[mid].hi)
			lo = mid + 1;
		else
			return tok_uc_ranges[mid].cls;
	}
	return UC_OTHER; /* includes unassigned code points and invalid bytes */
}

/* ------------------------------------------------------------------ */
/* Loading                                                              */

void tok_free(tok *t)
{
	if (!t)
		return;
	free(t->v);
	free(t->arena);
	hidx_fini(&t->map);
	free(t->mg);
	hidx_fini(&t->mmap);
	free(t->spec);
	free(t);
}

/* GPT-2's byte alphabet: bytes that are printable Latin-1 show as
 * themselves, the other 68 as U+0100.. in byte order. */
static void gpt2_byte_map(uint16_t cp[256])
{
	unsigned next = 256;
	for (unsigned b = 0; b < 256; b++) {
		int printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
		cp[b] = (uint16_t)(printable ? b : next++);
	}
}

static int str_is(gguf_str s, const char *lit)
{
	return s.n == strlen(lit) && memcmp(s.p, lit, s.n) == 0;
}

/* Optional bool key: default when absent, error when of another type. */
static int opt_bool(const gguf *g, const char *key, int def, int *out, char *err, size_t errlen)
{
	int v;
	int rc = gguf_get_bool(g, key, &v);
	if (rc == FL_ENOENT) {
		*out = def;
		return 0;
	}
	if (rc)
		return terr(err, errlen, FL_EFORMAT, "%s must be a bool", key);
	*out = v;
	return 0;
}

/* Optional token id key: default when absent; an id outside the vocabulary
 * means "none" (with a warning), as other GGUF runtimes treat it. */
static int opt_id(const gguf *g, const char *key, int32_t def, size_t nv, int32_t *out, char *err,
                  size_t errlen)
{
	int64_t v;
	int rc = gguf_get_int(g, key, &v);
	if (rc == FL_ENOENT) {
		*out = def;
		return 0;
	}
	if (rc)
		return terr(err, errlen, FL_EFORMAT, "%s must be an integer", key);
	if (v < 0 || (uint64_t)v >= nv) {
		LOGW("tok", "%s = %lld is outside the %zu-token vocabulary; ignored", key,
		     (long long)v, nv);
		*out = -1;
		return 0;
	}
	*out = (int32_t)v;
	return 0;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* "<0xHH>" -> byte, or -1. */
static int byte_token_value(const char *p, size_t n)
{
	if (n != 6 || memcmp(p, "<0x", 3) != 0 || p[5] != '>')
		return -1;
	int hi = hexval(p[3]), lo = hexval(p[4]);
	return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

static int load_vocab(tok *t, const gguf *g, char *err, size_t errlen)
{
	const gguf_str *toks;
	size_t n;
	int rc = gguf_get_arr_strs(g, "tokenizer.ggml.tokens", &toks, &n);
	if (rc)
		return terr(err, errlen, FL_EFORMAT,
		            "tokenizer.ggml.tokens is %s (need an array of strings)",
		            rc == FL_ENOENT ? "missing" : "not an array of strings");
	if (n == 0 || n > TOK_MAX_VOCAB)
		return terr(err, errlen, FL_EFORMAT, "vocabulary of %zu tokens (must be 1..%u)", n,
		            TOK_MAX_VOCAB);
	t->nv = n;
	t->v = calloc(n, sizeof *t->v);
	float *scores = calloc(n, sizeof *scores);
	int64_t *types = calloc(n, sizeof *types);
	if (!t->v || !scores || !types || hidx_reserve(&t->map, n, NULL, NULL)) {
		rc = terr(err, errlen, FL_ENOMEM, "out of memory");
		goto out;
	}
	rc = gguf_get_arr_f32(g, "tokenizer.ggml.scores", scores, n);
	if (rc && rc != FL_ENOENT) {
		rc = terr(err, errlen, FL_EFORMAT,
		          "tokenizer.ggml.scores must be a float array of %zu entries", n);
		goto out;
	}
	rc = gguf_get_arr_i64(g, "tokenizer.ggml.token_type", types, n);
	if (rc == FL_ENOENT) {
		for (size_t i = 0; i < n; i++)
			types[i] = TOK_TYPE_NORMAL;
	} else if (rc) {
		rc = terr(err, errlen, FL_EFORMAT,
		          "tokenizer.ggml.token_type must be an integer array of %zu entries", n);
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		if (types[i] < 0 || types[i] > TOK_TYPE_BYTE) {
			rc = terr(err, errlen, FL_EFORMAT, "token %zu has unknown type %lld", i,
			          (long long)types[i]);
			goto out;
		}
		struct tokent *e = &t->v[i];
		e->type = (int8_t)(types[i] == 0 ? TOK_TYPE_NORMAL : types[i]);
		e->score = scores[i];
		if ((rc = arena_add(t, toks[i].p, toks[i].n, &e->off))) {
			rc = terr(err, errlen, rc, "vocabulary text too large");
			goto out;
		}
		e->len = (uint32_t)toks[i].n;
		/* a repeated text maps to its last id, as other runtimes do */
		uint32_t *slot = tmap_slot(t, toks[i].p, toks[i].n);
		if (*slot)
			*slot = (uint32_t)i + 1;
		else
			hidx_fill(&t->map, slot, (uint32_t)i);
	}
	rc = 0;
out:
	free(scores);
	free(types);
	return rc;
}

static int load_merges(tok *t, const gguf *g, char *err, size_t errlen)
{
	const gguf_str *m;
	size_t n;
	int rc = gguf_get_arr_strs(g, "tokenizer.ggml.merges", &m, &n);
	if (rc)
		return terr(err, errlen, FL_EFORMAT, "gpt2 tokenizer: tokenizer.ggml.merges is %s",
		            rc == FL_ENOENT ? "missing" : "not an array of strings");
	if (n >= UINT32_MAX || hidx_reserve(&t->mmap, n, NULL, NULL))
		return terr(err, errlen, FL_ENOMEM, "out of memory");
	t->mg = calloc(n ? n : 1, sizeof *t->mg);
	if (!t->mg)
		return terr(err, errlen, FL_ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		/* "left right", split at the first space after the first byte */
		const char *sp = m[i].n > 1 ? memchr(m[i].p + 1, ' ', m[i].n - 1) : NULL;
		if (!sp)
			return terr(err, errlen, FL_EFORMAT, "merge %zu ('%.*s') has no space", i,
			            (int)(m[i].n > 40 ? 40 : m[i].n), m[i].p);
		size_t ln = (size_t)(sp - m[i].p), rn = m[i].n - ln - 1;
		struct merge *e = &t->mg[t->nmg];
		if ((rc = arena_add(t, m[i].p, ln, &e->loff)) ||
		    (rc = arena_add(t, sp + 1, rn, &e->roff)))
			return terr(err, errlen, rc, "merges too large");
		e->llen = (uint32_t)ln;
		e->rlen = (uint32_t)rn;
		t->nmg = i + 1;
		uint32_t *s = mmap_slot(t, m[i].p, ln, sp + 1, rn);
		if (*s == 0) /* a repeated pair keeps its first rank */
			hidx_fill(&t->mmap, s, (uint32_t)i);
	}
	return 0;
}

static int cmp_spec_len(const tok *t, int32_t a, int32_t b)
{
	if (t->v[a].len != t->v[b].len)
		return t->v[a].len > t->v[b].len ? -1 : 1;
	return a < b ? -1 : a > b;
}

/* Shell sort by (length desc, id asc): a deterministic order for tokens
 * of equal length. */
static void sort_specials(tok *t)
{
	size_t n = t->nspec;
	for (size_t gap = n / 2; gap > 0; gap /= 2)
		for (size_t i = gap; i < n; i++) {
			int32_t x = t->spec[i];
			size_t j = i;
			while (j >= gap && cmp_spec_len(t, t->spec[j - gap], x) > 0) {
				t->spec[j] = t->spec[j - gap];
				j -= gap;
			}
			t->spec[j] = x;
		}
}

/* Decoded bytes of each token (see tok_piece). */
static int build_pieces(tok *t, char *err, size_t errlen)
{
	int16_t inv[0x144]; /* gpt2: code point of the byte alphabet -> byte */
	for (size_t c = 0; c < 0x144; c++)
		inv[c] = -1;
	for (int b = 0; b < 256; b++)
		if (t->kind == TOK_BPE)
			inv[t->byte_cp[b]] = (int16_t)b;
	/* a piece is never longer than its token's text: reserve them all so
	 * the token texts stay put while pieces are appended */
	size_t total = t->alen;
	int rc0 = arena_reserve(t, total);
	if (rc0)
		return terr(err, errlen, rc0, "vocabulary pieces too large");
	for (size_t i = 0; i < t->nv; i++) {
		struct tokent *e = &t->v[i];
		size_t n;
		const char *s = tok_text(t, i, &n);
		uint8_t tmp[8];
		int rc = 0;
		switch (e->type) {
		case TOK_TYPE_CONTROL:
		case TOK_TYPE_UNKNOWN:
		case TOK_TYPE_UNUSED:
			e->poff = e->off;
			e->plen = 0;
			break;
		case TOK_TYPE_USER_DEFINED:
			e->poff = e->off;
			e->plen = e->len;
			break;
		case TOK_TYPE_BYTE: {
			if (t->kind == TOK_BPE) {
				e->poff = e->off;
				e->plen = 0;
				break;
			}
			int b = byte_token_value(s, n);
			if (b < 0)
				return terr(err, errlen, FL_EFORMAT,
				            "token %zu is a byte token but its text '%.*s' is not "
				            "<0xHH>",
				            i, (int)(n > 16 ? 16 : n), s);
			tmp[0] = (uint8_t)b;
			rc = arena_add(t, tmp, 1, &e->poff);
			e->plen = 1;
			break;
		}
		default: { /* normal */
			uint32_t start = (uint32_t)t->alen;
			for (size_t k = 0; k < n && !rc;) {
				if (t->kind == TOK_SPM) {
					if (n - k >= 3 && memcmp(s + k, "\xe2\x96\x81", 3) == 0) {
						rc = arena_add(t, " ", 1, NULL);
						k += 3;
					} else {
						rc = arena_add(t, s + k, 1, NULL);
						k++;
					}
					continue;
				}
				/* gpt2: each character of the byte alphabet is one byte */
				uint32_t cp;
				size_t l = utf8_dec((const uint8_t *)s + k, n - k, &cp);
				int b = cp < 0x144 ? inv[cp] : -1;
				if (b >= 0) {
					tmp[0] = (uint8_t)b;
					rc = arena_add(t, tmp, 1, NULL);
				} else {
					rc = arena_add(t, s + k, l, NULL);
				}
				k += l;
			}
			e->poff = start;
			e->plen = (uint32_t)(t->alen - start);
			break;
		}
		}
		if (rc)
			return terr(err, errlen, rc, "vocabulary pieces too large");
	}
	return 0;
}

int tok_from_gguf(const gguf *g, tok **out, char *err, size_t errlen)
{
	gguf_str model, pre;
	int rc = gguf_get_str(g, "tokenizer.ggml.model", &model);
	if (rc)
		return terr(err, errlen, rc == FL_ENOENT ? FL_ENOENT : FL_EFORMAT,
		            "tokenizer.ggml.model is %s",
		            rc == FL_ENOENT ? "missing" : "not a string");
	int have_pre = gguf_get_str(g, "tokenizer.ggml.pre", &pre) == 0;
	if (gguf_find_key(g, "tokenizer.ggml.pre") >= 0 && !have_pre)
		return terr(err, errlen, FL_EFORMAT, "tokenizer.ggml.pre is not a string");
	enum tok_kind kind;
	enum tok_pre pret = TOK_PRE_SPM;
	if (str_is(model, "llama")) {
		kind = TOK_SPM;
		if (have_pre && !str_is(pre, "default"))
			return terr(err, errlen, FL_EUNSUPPORTED,
			            "tokenizer.ggml.pre '%.*s' is not supported for model 'llama' "
			            "(only 'default')",
			            (int)(pre.n > 64 ? 64 : pre.n), pre.p);
	} else if (str_is(model, "gpt2")) {
		kind = TOK_BPE;
		if (!have_pre)
			return terr(err, errlen, FL_EUNSUPPORTED,
			            "gpt2 tokenizer without tokenizer.ggml.pre: pre-tokenizer "
			            "unknown, refusing to guess");
		/* "default" is not GPT-2's split for a gpt2 vocabulary in
		 * llama.cpp (it splits punctuation and 3-digit groups first):
		 * refused like any other unknown value */
		if (str_is(pre, "gpt-2"))
			pret = TOK_PRE_GPT2;
		else if (str_is(pre, "llama-bpe"))
			pret = TOK_PRE_LLAMA3;
		else if (str_is(pre, "qwen2"))
			pret = TOK_PRE_QWEN2;
		else if (str_is(pre, "smollm"))
			pret = TOK_PRE_SMOLLM;
		else
			return terr(err, errlen, FL_EUNSUPPORTED,
			            "tokenizer.ggml.pre '%.*s' is not supported (gpt2 models: "
			            "'gpt-2', 'llama-bpe', 'qwen2', 'smollm')",
			            (int)(pre.n > 64 ? 64 : pre.n), pre.p);
	} else {
		return terr(err, errlen, FL_EUNSUPPORTED,
		            "tokenizer.ggml.model '%.*s' is not supported (only 'llama', 'gpt2')",
		            (int)(model.n > 64 ? 64 : model.n), model.p);
	}

	tok *t = calloc(1, sizeof *t);
	if (!t)
		return FL_ENOMEM;
	t->kind = kind;
	t->pre = pret;
	t->ignore_merges = pret == TOK_PRE_LLAMA3;
	if ((rc = load_vocab(t, g, err, errlen)))
		goto fail;
	int spm = kind == TOK_SPM;
	if ((rc = opt_id(g, "tokenizer.ggml.bos_token_id", spm ? 1 : -1, t->nv, &t->bos, err,
	                 errlen)) ||
	    (rc = opt_id(g, "tokenizer.ggml.eos_token_id", spm ? 2 : -1, t->nv, &t->eos, err,
	                 errlen)) ||
	    (rc = opt_id(g, "tokenizer.ggml.unknown_token_id", spm ? 0 : -1, t->nv, &t->unk, err,
	                 errlen)) ||
	    (rc = opt_id(g, "tokenizer.ggml.padding_token_id", -1, t->nv, &t->pad, err, errlen)) ||
	    /* llama-bpe adds BOS unless the file says otherwise, as llama.cpp */
	    (rc = opt_bool(g, "tokenizer.ggml.add_bos_token", spm || pret == TOK_PRE_LLAMA3,
	                   &t->add_bos, err, errlen)) ||
	    (rc = opt_bool(g, "tokenizer.ggml.add_eos_token", 0, &t->add_eos, err, errlen)) ||
	    (rc = opt_bool(g, "tokenizer.ggml.add_space_prefix", spm, &t->add_space_prefix, err,
	                   errlen)))
		goto fail;
	if (!spm)
		t->add_space_prefix = 0; /* byte-level BPE has no space prefix */

	for (int b = 0; b < 256; b++)
		t->byte_tok[b] = -1;
	if (spm) {
		/* byte fallback: "<0xHH>" (upper-case hex), else the byte itself */
		for (int b = 0; b < 256; b++) {
			char name[7];
			snprintf(name, sizeof name, "<0x%02X>", b);
			int32_t id = tok_find(t, name, 6);
			if (id < 0) {
				char c = (char)b;
				id = tok_find(t, &c, 1);
			}
			t->byte_tok[b] = id;
		}
		/* an ASCII byte that no multi-character token contains never
		 * merges: the text can be processed in pieces split there */
		memset(t->barrier, 1, sizeof t->barrier);
		for (size_t i = 0; i < t->nv; i++) {
			size_t n;
			const char *s = tok_text(t, i, &n);
			if (n < 2)
				continue;
			for (size_t k = 0; k < n; k++)
				if ((uint8_t)s[k] < 128)
					t->barrier[(uint8_t)s[k]] = 0;
		}
	} else {
		gpt2_byte_map(t->byte_cp);
		for (int b = 0; b < 256; b++) {
			uint8_t u[4];
			size_t l = utf8_put(t->byte_cp[b], u);
			t->byte_tok[b] = tok_find(t, u, l);
			if (t->byte_tok[b] < 0) {
				rc = terr(err, errlen, FL_EFORMAT,
				          "gpt2 vocabulary has no token for byte 0x%02x", b);
				goto fail;
			}
		}
		if ((rc = load_merges(t, g, err, errlen)))
			goto fail;
	}

	/* tokens recognised in raw text: control, unknown, user-defined */
	t->spec = malloc(t->nv * sizeof *t->spec);
	if (!t->spec) {
		rc = terr(err, errlen, FL_ENOMEM, "out of memory");
		goto fail;
	}
	for (size_t i = 0; i < t->nv; i++) {
		int ty = t->v[i].type;
		if ((ty == TOK_TYPE_CONTROL || ty == TOK_TYPE_UNKNOWN ||
		     ty == TOK_TYPE_USER_DEFINED) &&
		    t->v[i].len > 0)
			t->spec[t->nspec++] = (int32_t)i;
	}
	sort_specials(t);
	if ((rc = build_pieces(t, err, errlen)))
		goto fail;
	*out = t;
	return 0;
fail:
	tok_free(t);
	return rc;
}

enum tok_kind tok_get_kind(const tok *t)
{
	return t->kind;
}

enum tok_pre tok_get_pre(const tok *t)
{
	return t->pre;
}

size_t tok_n_vocab(const tok *t)
{
	return t->nv;
}

int32_t tok_bos(const tok *t)
{
	return t->bos;
}

int32_t tok_eos(const tok *t)
{
	return t->eos;
}

int32_t tok_unk(const tok *t)
{
	return t->unk;
}

int32_t tok_pad(const tok *t)
{
	return t->pad;
}

int tok_adds_bos(const tok *t)
{
	return t->add_bos && t->bos >= 0;
}

int tok_adds_eos(const tok *t)
{
	return t->add_eos && t->eos >= 0;
}

int tok_token(const tok *t, int32_t id, gguf_str *text, int *type, float *score)
{
	if (id < 0 || (size_t)id >= t->nv)
		return FL_EINVAL;
	if (text) {
		text->p = t->arena + t->v[id].off;
		text->n = t->v[id].len;
	}
	if (type)
		*type = t->v[id].type;
	if (score)
		*score = t->v[id].score;
	return 0;
}

/* ------------------------------------------------------------------ */
/* Encoding                                                             */

struct sym {
	uint32_t off, n; /* text (escaped text for llama, mapped text for gpt2) */
	uint32_t ob, on; /* gpt2: original bytes */
	int32_t prev, next;
};

struct bigram {
	double pri; /* larger first: score (llama) or -rank (gpt2) */
	int32_t left, right;
	uint32_t size;
};

/* Scratch reused across the pieces of one tok_encode call. */
struct scratch {
	struct sym *sym;
	size_t nsym, capsym;
	struct bigram *heap;
	size_t nheap, capheap;
	uint8_t *txt; /* escaped / mapped text */
	size_t ntxt, captxt;
	int32_t *ids; /* output */
	size_t nids, capids;
};

static int grow_arr(void **p, size_t *cap, size_t need, size_t es)
{
	if (need <= *cap)
		return 0;
	size_t nc = *cap ? *cap : 64;
	while (nc < need) {
		if (nc > SIZE_MAX / 2 / es)
			return FL_ENOMEM;
		nc *= 2;
	}
	void *q = realloc(*p, nc * es);
	if (!q)
		return FL_ENOMEM;
	*p = q;
	*cap = nc;
	return 0;
}

static int emit(struct scratch *s, int32_t id)
{
	if (s->nids == s->capids)
		return FL_ETOOBIG;
	s->ids[s->nids++] = id;
	return 0;
}

static int bg_better(const struct bigram *a, const struct bigram *b)
{
	return a->pri > b->pri || (a->pri == b->pri && a->left < b->left);
}

static int heap_push(struct scratch *s, struct bigram bg)
{
	if (grow_arr((void **)&s->heap, &s->capheap, s->nheap + 1, sizeof *s->heap))
		return FL_ENOMEM;
	size_t i = s->nheap++;
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!bg_better(&bg, &s->heap[p]))
			break;
		s->heap[i] = s->heap[p];
		i = p;
	}
	s->heap[i] = bg;
	return 0;
}

static struct bigram heap_pop(struct scratch *s)
{
	struct bigram top = s->heap[0];
	struct bigram last = s->heap[--s->nheap];
	size_t i = 0, n = s->nheap;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= n)
			break;
		if (c + 1 < n && bg_better(&s->heap[c + 1], &s->heap[c]))
			c++;
		if (!bg_better(&s->heap[c], &last))
			break;
		s->heap[i] = s->heap[c];
		i = c;
	}
	if (n)
		s->heap[i] = last;
	return top;
}

/* Queues the pair (l, r) if the vocabulary lets it merge. */
static int try_pair(const tok *t, struct scratch *s, int32_t l, int32_t r)
{
	if (l < 0 || r < 0)
		return 0;
	const struct sym *a = &s->sym[l], *b = &s->sym[r];
	struct bigram bg = {0, l, r, a->n + b->n};
	if (t->kind == TOK_SPM) {
		int32_t id = tok_find(t, s->txt + a->off, bg.size);
		if (id < 0)
			return 0;
		bg.pri = t->v[id].score;
	} else {
		long rank = merge_rank(t, s->txt + a->off, a->n, s->txt + b->off, b->n);
		if (rank < 0)
			return 0;
		bg.pri = -(double)rank;
	}
	return heap_push(s, bg);
}

/* The merge loop over s->sym[0..nsym) (text in s->txt). */
static int merge_all(const tok *t, struct scratch *s)
{
	int rc = 0;
	s->nheap = 0;
	for (size_t i = 1; i < s->nsym && !rc; i++)
		rc = try_pair(t, s, (int32_t)i - 1, (int32_t)i);
	while (!rc && s->nheap) {
		struct bigram bg = heap_pop(s);
		struct sym *a = &s->sym[bg.left], *b = &s->sym[bg.right];
		if (a->n == 0 || b->n == 0 || a->n + b->n != bg.size)
			continue; /* stale */
		a->n += b->n;
		a->on += b->on;
		b->n = 0;
		a->next = b->next;
		if (b->next >= 0)
			s->sym[b->next].prev = bg.left;
		rc = try_pair(t, s, a->prev, bg.left);
		if (!rc)
			rc = try_pair(t, s, bg.left, a->next);
	}
	return rc;
}

/* llama: tokenizes escaped text s->txt[from, to). */
static int spm_run(const tok *t, struct scratch *s, size_t from, size_t to)
{
	uint32_t cp;
	s->nsym = 0;
	for (size_t i = from; i < to;) {
		size_t l = utf8_dec(s->txt + i, to - i, &cp);
		if (grow_arr((void **)&s->sym, &s->capsym, s->nsym + 1, sizeof *s->sym))
			return FL_ENOMEM;
		s->sym[s->nsym] = (struct sym){(uint32_t)i,          (uint32_t)l,         0, 0,
		                               (int32_t)s->nsym - 1, (int32_t)s->nsym + 1};
		s->nsym++;
		i += l;
	}
	if (s->nsym == 0)
		return 0;
	s->sym[s->nsym - 1].next = -1;
	int rc = merge_all(t, s);
	for (int32_t i = 0; !rc && i >= 0; i = s->sym[i].next) {
		const struct sym *y = &s->sym[i];
		int32_t id = tok_find(t, s->txt + y->off, y->n);
		if (id >= 0) {
			rc = emit(s, id);
			continue;
		}
		for (uint32_t k = 0; k < y->n && !rc; k++) {
			int32_t b = t->byte_tok[s->txt[y->off + k]];
			if (b < 0)
				b = t->unk;
			rc = b < 0 ? FL_EUNSUPPORTED : emit(s, b);
		}
	}
	return rc;
}

/* llama: one raw-text fragment. Spaces become U+2581, a space prefix is
 * added when asked, then the text is processed in pieces split at barrier
 * bytes (which never merge, so the result is the same as in one go). */
static int spm_fragment(const tok *t, struct scratch *s, const uint8_t *p, size_t n, int prefix)
{
	s->ntxt = 0;
	if (grow_arr((void **)&s->txt, &s->captxt, 3 * n + 3, 1))
		return FL_ENOMEM;
	if (prefix) {
		memcpy(s->txt, "\xe2\x96\x81", 3);
		s->ntxt = 3;
	}
	for (size_t i = 0; i < n; i++) {
		if (p[i] == ' ') {
			memcpy(s->txt + s->ntxt, "\xe2\x96\x81", 3);
			s->ntxt += 3;
		} else {
			s->txt[s->ntxt++] = p[i];
		}
	}
	uint32_t cp;
	size_t start = 0;
	int rc = 0;
	for (size_t i = 0; i < s->ntxt && !rc;) {
		uint8_t c = s->txt[i];
		if (c < 128 && t->barrier[c]) { /* a one-byte symbol that never merges */
			rc = spm_run(t, s, start, i);
			if (!rc)
				rc = spm_run(t, s, i, i + 1);
			start = i + 1;
		}
		i += utf8_dec(s->txt + i, s->ntxt - i, &cp); /* next symbol */
	}
	if (!rc)
		rc = spm_run(t, s, start, s->ntxt);
	return rc;
}

/* gpt2: byte-level BPE of one pre-token word. */
static int bpe_word(const tok *t, struct scratch *s, const uint8_t *p, size_t n)
{
	s->nsym = 0;
	s->ntxt = 0;
	if (grow_arr((void **)&s->txt, &s->captxt, 2 * n, 1) ||
	    grow_arr((void **)&s->sym, &s->capsym, n, sizeof *s->sym))
		return FL_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		size_t l = utf8_put(t->byte_cp[p[i]], s->txt + s->ntxt);
		s->sym[i] = (struct sym){(uint32_t)s->ntxt, (uint32_t)l,   (uint32_t)i, 1,
		                         (int32_t)i - 1,    (int32_t)i + 1};
		s->ntxt += l;
	}
	s->nsym = n;
	if (n == 0)
		return 0;
	if (t->ignore_merges) {
		int32_t whole = tok_find(t, s->txt, s->ntxt);
		if (whole >= 0)
			return emit(s, whole);
	}
	s->sym[n - 1].next = -1;
	int rc = merge_all(t, s);
	for (int32_t i = 0; !rc && i >= 0; i = s->sym[i].next) {
		const struct sym *y = &s->sym[i];
		int32_t id = tok_find(t, s->txt + y->off, y->n);
		if (id >= 0) {
			rc = emit(s, id);
			continue;
		}
		/* a merge whose result is not a token: its bytes' tokens */
		for (uint32_t k = 0; k < y->on && !rc; k++)
			rc = emit(s, t->byte_tok[p[y->ob + k]]);
	}
	return rc;
}

/* GPT-2 pre-tokenizer: length of the match at p[0..n), n > 0. The
 * alternatives are tried in the regex's order; the first that matches
 * wins, each greedy.
 *   's 't 're 've 'm 'll 'd     contractions (lower case only)
 *   ' ?' L+ | N+ | O+           an optional space, then a run of letters,
 *                               numbers or "other" (not space/L/N)
 *   \s+(?!\S)                   spaces not followed by a non-space: a run
 *                               before a non-space leaves its last one
 *   \s+                         otherwise the whole run (length 1 here) */
static size_t class_run(const uint8_t *p, size_t n, int cls, size_t max);
static size_t space_tail(const uint8_t *p, size_t n);

static size_t pretok_gpt2(const uint8_t *p, size_t n)
{
	uint32_t c0;
	utf8_dec(p, n, &c0);
	if (c0 == '\'' && n >= 2) {
		uint8_t a = p[1];
		if (a == 's' || a == 't' || a == 'm' || a == 'd')
			return 2;
		if (n >= 3) {
			uint8_t b = p[2];
			if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') ||
			    (a == 'l' && b == 'l'))
				return 3;
		}
	}
	int run = -1;
	size_t k = 0;
	if (c0 == ' ' && n > 1) {
		uint32_t c1;
		utf8_dec(p + 1, n - 1, &c1);
		int cl = uc_class(c1);
		if (cl != UC_SPACE) {
			run = cl;
			k = 1;
		}
	} else if (uc_class(c0) != UC_SPACE) {
		run = uc_class(c0);
	}
	if (run >= 0)
		return k + class_run(p + k, n - k, run, SIZE_MAX);
	return space_tail(p, n);
}

/* Bytes of the run of characters of class cls at p[0..n), at most max
 * characters. */
static size_t class_run(const uint8_t *p, size_t n, int cls, size_t max)
{
	size_t k = 0;
	for (size_t count = 0; k < n && count < max; count++) {
		uint32_t c;
		size_t l = utf8_dec(p + k, n - k, &c);
		if (uc_class(c) != cls)
			break;
		k += l;
	}
	return k;
}

/* \s+(?!\S)|\s+ at p (p[0] is whitespace): the whitespace run, less its
 * last character when a non-space follows a run of two or more. */
static size_t space_tail(const uint8_t *p, size_t n)
{
	size_t last = 0, count = 0, k = 0;
	while (k < n) {
		uint32_t c;
		size_t l = utf8_dec(p + k, n - k, &c);
		if (uc_class(c) != UC_SPACE)
			break;
		last = k;
		k += l;
		count++;
	}
	if (k < n && count >= 2)
		return last;
	return k;
}

static int is_crlf(uint32_t c)
{
	return c == '\r' || c == '\n';
}

/* Llama 3 / Qwen2 pre-tokenizer (maxdig: 3 for \p{N}{1,3}, 1 for \p{N}):
 * length of the match at p[0..n), n > 0, alternatives in the regex's order.
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d)   contractions, either case (ASCII)
 *   [^\r\n\p{L}\p{N}]?\p{L}+       letters, after at most one character
 *                                  that is not CR, LF, letter or number
 *   \p{N}{1,maxdig}
 *    ?[^\s\p{L}\p{N}]+[\r\n]*      an optional space, "other" characters,
 *                                  then any CR/LF run
 *   \s*[\r\n]+                     whitespace up to its last CR/LF
 *   \s+(?!\S)|\s+                  as in gpt-2 */
static size_t pretok_llama3(const uint8_t *p, size_t n, size_t maxdig)
{
	uint32_t c0, c1 = 0;
	size_t l0 = utf8_dec(p, n, &c0);
	int have1 = l0 < n; /* a second character (c1) exists */
	if (have1)
		utf8_dec(p + l0, n - l0, &c1);
	if (c0 == '\'' && n >= 2) {
		uint8_t a = (uint8_t)(p[1] | 0x20), b = n >= 3 ? (uint8_t)(p[2] | 0x20) : 0;
		if (a == 's' || a == 't' || a == 'm' || a == 'd')
			return 2;
		if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
			return 3;
	}
	int k0 = uc_class(c0);
	if (k0 == UC_LETTER)
		return class_run(p, n, UC_LETTER, SIZE_MAX);
	if (k0 != UC_NUMBER && !is_crlf(c0) && have1 && uc_class(c1) == UC_LETTER)
		return l0 + class_run(p + l0, n - l0, UC_LETTER, SIZE_MAX);
	if (k0 == UC_NUMBER)
		return class_run(p, n, UC_NUMBER, maxdig);
	size_t k = 0;
	if (c0 == ' ' && have1 && uc_class(c1) == UC_OTHER)
		k = l0;
	else if (k0 == UC_OTHER)
		k = 0;
	else
		k = SIZE_MAX;
	if (k != SIZE_MAX) {
		k += class_run(p + k, n - k, UC_OTHER, SIZE_MAX);
		while (k < n && (p[k] == '\r' || p[k] == '\n'))
			k++;
		return k;
	}
	/* c0 is whitespace: \s*[\r\n]+ ends after the run's last CR/LF */
	size_t end_crlf = 0;
	k = 0;
	while (k < n) {
		uint32_t c;
		size_t l = utf8_dec(p + k, n - k, &c);
		if (uc_class(c) != UC_SPACE)
			break;
		k += l;
		if (is_crlf(c))
			end_crlf = k;
	}
	if (end_crlf)
		return end_crlf;
	return space_tail(p, n);
}

/* Length of the next pre-token at p[0..n), n > 0. */
static size_t pretok_next(const tok *t, const uint8_t *p, size_t n)
{
	switch (t->pre) {
	case TOK_PRE_LLAMA3:
		return pretok_llama3(p, n, 3);
	case TOK_PRE_QWEN2:
		return pretok_llama3(p, n, 1);
	default:
		return pretok_gpt2(p, n);
	}
}

/* Walk over the pre-tokens of p[0..n): pretok_step gives the length of the
 * next one at p + *i (0 at the end) and advances *i. *piece_end bounds the
 * smollm pieces (number characters alone, gpt-2 on the text between);
 * start with *i = *piece_end = 0. */
static size_t pretok_step(const tok *t, const uint8_t *p, size_t n, size_t *i, size_t *piece_end)
{
	if (*i >= n)
		return 0;
	if (t->pre != TOK_PRE_SMOLLM)
		*piece_end = n;
	else if (*i >= *piece_end) {
		size_t k = *i;
		while (k < n) {
			uint32_t c;
			size_t l = utf8_dec(p + k, n - k, &c);
			if (uc_class(c) == UC_NUMBER) {
				if (k == *i)
					k += l;
				break;
			}
			k += l;
		}
		*piece_end = k;
	}
	size_t l = pretok_next(t, p + *i, *piece_end - *i);
	*i += l;
	return l;
}

static int bpe_fragment(const tok *t, struct scratch *s, const uint8_t *p, size_t n)
{
	int rc = 0;
	size_t i = 0, pe = 0, l;
	while (!rc && (l = pretok_step(t, p, n, &i, &pe)) > 0)
		rc = bpe_word(t, s, p + i - l, l);
	return rc;
}

int tok_pretokenize(const tok *t, const void *text, size_t n, size_t *lens, size_t cap,
                    size_t *count)
{
	if (!t || (!text && n) || (!lens && cap) || !count)
		return FL_EINVAL;
	if (t->kind != TOK_BPE)
		return FL_EUNSUPPORTED;
	size_t i = 0, pe = 0, l, k = 0;
	while ((l = pretok_step(t, text, n, &i, &pe)) > 0) {
		if (k == cap)
			return FL_ETOOBIG;
		lens[k++] = l;
	}
	*count = k;
	return 0;
}

/* Raw text split around tokens matched in it. */
struct frag {
	size_t off, len;
	int32_t id; /* -1: raw text */
};

/* First occurrence of needle (nn > 0 bytes) in hay, or NULL. */
static const uint8_t *find_bytes(const uint8_t *hay, size_t hn, const char *needle, size_t nn)
{
	const uint8_t *end = hay + hn;
	while ((size_t)(end - hay) >= nn) {
		const uint8_t *c = memchr(hay, (uint8_t)needle[0], (size_t)(end - hay) - nn + 1);
		if (!c)
			return NULL;
		if (memcmp(c, needle, nn) == 0)
			return c;
		hay = c + 1;
	}
	return NULL;
}

/* Splits every raw fragment at the occurrences of special token sid
 * (leftmost first, non-overlapping) into a new list. */
static int push_frag(struct frag **fr, size_t *n, size_t *cap, struct frag f)
{
	if (grow_arr((void **)fr, cap, *n + 1, sizeof **fr))
		return FL_ENOMEM;
	(*fr)[(*n)++] = f;
	return 0;
}

static int split_special(const tok *t, const uint8_t *text, struct frag **fr, size_t *nfr,
                         int32_t sid)
{
	size_t sl;
	const char *st = tok_text(t, (size_t)sid, &sl);
	struct frag *nf = NULL;
	size_t nn = 0, capn = 0;
	int rc = 0;
	for (size_t i = 0; i < *nfr && !rc; i++) {
		struct frag f = (*fr)[i];
		if (f.id >= 0 || f.len < sl) {
			rc = push_frag(&nf, &nn, &capn, f);
			continue;
		}
		size_t off = f.off, end = f.off + f.len;
		while (off < end && !rc) {
			const uint8_t *m = find_bytes(text + off, end - off, st, sl);
			if (!m) {
				rc = push_frag(&nf, &nn, &capn, (struct frag){off, end - off, -1});
				break;
			}
			size_t mo = (size_t)(m - text);
			if (mo > off)
				rc = push_frag(&nf, &nn, &capn, (struct frag){off, mo - off, -1});
			if (!rc)
				rc = push_frag(&nf, &nn, &capn, (struct frag){mo, sl, sid});
			off = mo + sl;
		}
	}
	if (rc) {
		free(nf);
		return rc;
	}
	free(*fr);
	*fr = nf;
	*nfr = nn;
	return 0;
}

size_t tok_encode_bound(size_t n)
{
	/* llama: every byte may become 3 (space -> U+2581 -> byte fallback),
	 * plus the space prefix per fragment (at most one per input byte and
	 * one more) and BOS/EOS. */
	if (n > (SIZE_MAX - 8) / 6)
		return SIZE_MAX;
	return 6 * n + 8;
}

int tok_encode(const tok *t, const void *text, size_t n, int flags, int32_t *ids, size_t cap,
               size_t *n_ids)
{
	if (!t || (!text && n) || (!ids && cap))
		return FL_EINVAL;
	if (n > TEXT_MAX)
		return FL_ETOOBIG;
	const uint8_t *p = text;
	struct scratch s = {0};
	s.ids = ids;
	s.capids = cap;
	struct frag *fr = NULL;
	size_t nfr = 0, capfr = 0;
	int rc = 0;

	if ((flags & TOK_ADD_SPECIAL) && t->add_bos && t->bos >= 0)
		rc = emit(&s, t->bos);
	if (!rc && n > 0) {
		if (grow_arr((void **)&fr, &capfr, 1, sizeof *fr)) {
			rc = FL_ENOMEM;
			goto out;
		}
		fr[nfr++] = (struct frag){0, n, -1};
		for (size_t k = 0; k < t->nspec && !rc; k++) {
			int ty = t->v[t->spec[k]].type;
			if (ty != TOK_TYPE_USER_DEFINED && !(flags & TOK_PARSE_SPECIAL))
				continue;
			rc = split_special(t, p, &fr, &nfr, t->spec[k]);
		}
	}
	int prev_special = 1; /* llama: the space prefix goes before the first text */
	for (size_t i = 0; i < nfr && !rc; i++) {
		if (fr[i].id >= 0) {
			rc = emit(&s, fr[i].id);
			prev_special = 1;
			continue;
		}
		if (t->kind == TOK_SPM)
			rc = spm_fragment(t, &s, p + fr[i].off, fr[i].len,
			                  t->add_space_prefix && prev_special);
		else
			rc = bpe_fragment(t, &s, p + fr[i].off, fr[i].len);
		prev_special = 0;
	}
	if (!rc && (flags & TOK_ADD_SPECIAL) && t->add_eos && t->eos >= 0)
		rc = emit(&s, t->eos);
	if (!rc)
		*n_ids = s.nids;
out:
	free(s.sym);
	free(s.heap);
	free(s.txt);
	free(fr);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Decoding                                                             */

int tok_piece(const tok *t, int32_t id, int flags, const char **p, size_t *n)
{
	if (id < 0 || (size_t)id >= t->nv)
		return FL_EINVAL;
	const struct tokent *e = &t->v[id];
	if ((flags & TOK_DECODE_SPECIAL) &&
	    (e->type == TOK_TYPE_CONTROL || e->type == TOK_TYPE_UNKNOWN)) {
		*p = t->arena + e->off;
		*n = e->len;
		return 0;
	}
	*p = t->arena + e->poff;
	*n = e->plen;
	return 0;
}

int tok_decode(const tok *t, const int32_t *ids, size_t n, int flags, buf *out)
{
	for (size_t i = 0; i < n; i++)
		if (ids[i] < 0 || (size_t)ids[i] >= t->nv)
			return FL_EINVAL;
	int strip = (flags & TOK_DECODE_STRIP_PREFIX) && t->add_space_prefix;
	for (size_t i = 0; i < n; i++) {
		const char *p = NULL;
		size_t k = 0;
		tok_piece(t, ids[i], flags, &p, &k); /* ids checked above */
		if (strip && k) {
			if (p[0] == ' ') {
				p++;
				k--;
			}
			strip = 0;
		}
		int rc = buf_append(out, p, k);
		if (rc)
			return rc;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Built-in byte-level vocabulary                                       */

int tok_write_byte_vocab(gguf_writer *w)
{
	enum { N = TOK_BYTE_VOCAB_SIZE };
	static char names[256][7];
	const char *toks[N];
	float scores[N];
	int32_t types[N];
	toks[0] = "<unk>";
	toks[1] = "<s>";
	toks[2] = "</s>";
	types[0] = TOK_TYPE_UNKNOWN;
	types[1] = types[2] = TOK_TYPE_CONTROL;
	for (int b = 0; b < 256; b++) {
		char tmp[7];
		snprintf(tmp, sizeof tmp, "<0x%02X>", b);
		memcpy(names[b], tmp, sizeof tmp); /* same bytes every call */
		toks[3 + b] = names[b];
		types[3 + b] = TOK_TYPE_BYTE;
	}
	toks[259] = "\xe2\x96\x81";
	types[259] = TOK_TYPE_NORMAL;
	for (int i = 0; i < N; i++)
		scores[i] = 0.0f;
	scores[259] = -1.0f;
	int rc;
	if ((rc = gguf_set_str(w, "tokenizer.ggml.model", "llama")) ||
	    (rc = gguf_set_str(w, "tokenizer.ggml.pre", "default")) ||
	    (rc = gguf_set_arr_str(w, "tokenizer.ggml.tokens", toks, N)) ||
	    (rc = gguf_set_arr(w, "tokenizer.ggml.scores", GGUF_F32, scores, N)) ||
	    (rc = gguf_set_arr(w, "tokenizer.ggml.token_type", GGUF_I32, types, N)) ||
	    (rc = gguf_set_u32(w, "tokenizer.ggml.bos_token_id", 1)) ||
	    (rc = gguf_set_u32(w, "tokenizer.ggml.eos_token_id", 2)) ||
	    (rc = gguf_set_u32(w, "tokenizer.ggml.unknown_token_id", 0)) ||
	    (rc = gguf_set_bool(w, "tokenizer.ggml.add_bos_token", 1)) ||
	    (rc = gguf_set_bool(w, "tokenizer.ggml.add_eos_token", 0)) ||
	    (rc = gguf_set_bool(w, "tokenizer.ggml.add_space_prefix", 0)))
		return rc;
	return 0;
}

int tok_new_byte_vocab(tok **out)
{
	gguf_writer *w = gguf_writer_new();
	uint8_t *mem = NULL;
	size_t n = 0;
	gguf *g = NULL;
	int rc = w ? tok_write_byte_vocab(w) : FL_ENOMEM;
	if (!rc)
		rc = gguf_writer_serialize(w, &mem, &n);
	if (!rc)
		rc = gguf_open_mem(mem, n, &g, NULL, 0);
	if (!rc)
		rc = tok_from_gguf(g, out, NULL, 0);
	gguf_free(g);
	free(mem);
	gguf_writer_free(w);
	return rc;
}
