/* dataset — a node's private training data, tokenized with the model's
 * tokenizer into one token stream with a loss mask, a held-out part for
 * evaluation, and packing into windows of the context length.
 *
 * Formats (docs/TRAINING.md):
 *   text   any UTF-8 file: one document, tokenized whole (BOS/EOS as the
 *          tokenizer's metadata says); every token is a target. Held-out:
 *          the last `holdout` fraction of the tokens.
 *   JSONL  one JSON object per line (blank lines are not records):
 *            {"text": "..."}                        every token a target;
 *            {"instruction": "...", "input": "...", "output": "..."}
 *                                                   ("input" optional)
 *          the second kind is rendered with the template
 *            "### Instruction:\n{instruction}\n\n"
 *            "### Input:\n{input}\n\n"              (only when input is non-empty)
 *            "### Response:\n{output}"
 *          and only the response's tokens (and the EOS after it) are
 *          targets: the prompt is tokenized alone and the targets start
 *          where its tokens stop being a prefix of the whole record's.
 *          Each record: BOS (if the tokenizer adds one), tokens, EOS (if
 *          the vocabulary has one). Held-out: a seeded random choice of
 *          round(holdout * records) whole records.
 * Records are concatenated in file order. A file that is empty, not UTF-8,
 * holds a line that is not a JSON object, lacks the fields above, or has
 * empty or non-string fields is refused with an error naming the file and
 * line; nothing is skipped silently.
 *
 * Packing: window w of context ctx has inputs tokens[w*ctx .. w*ctx+ctx)
 * and targets tokens[w*ctx+1 .. w*ctx+ctx+1) (-1 where the mask says no
 * target or past the end), so every token after the first is predicted
 * exactly once; documents are not separated inside a window.
 *
 * A ds is immutable after loading; any thread may read it. */
#ifndef FL_DATASET_H
#define FL_DATASET_H
#include "model/tokenizer.h"

#include <stddef.h>
#include <stdint.h>

#define DS_MAX_FILE ((size_t)1 << 30)  /* bytes of a data file */
#define DS_MAX_LINE ((size_t)16 << 20) /* bytes of a JSONL line */

enum ds_format {
	DS_FMT_AUTO = 0, /* .jsonl / .json -> JSONL, anything else text */
	DS_FMT_TEXT = 1,
	DS_FMT_JSONL = 2,
};

typedef struct ds_opts {
	int format;     /* enum ds_format */
	double holdout; /* fraction held out for evaluation, [0, 0.9] */
	uint64_t seed;  /* which JSONL records are held out */
} ds_opts;

typedef struct ds ds;

/* Loads and tokenizes path. *train gets the training part; *heldout (must
 * be non-NULL when holdout > 0, else may be NULL and is set to NULL) the
 * held-out part. Errors (FL_ENOENT, FL_EIO, FL_ETOOBIG, FL_EFORMAT for bad
 * content, FL_EINVAL for bad options or too little data to hold out from)
 * come with a sentence in err naming the file and, for content, the line. */
int ds_load(const char *path, const tok *tk, const ds_opts *o, ds **train, ds **heldout, char *err,
            size_t errlen);
/* The same over a buffer; name appears in messages. */
int ds_parse(const char *name, const void *data, size_t n, const tok *tk, const ds_opts *o,
             ds **train, ds **heldout, char *err, size_t errlen);
void ds_free(ds *d);

size_t ds_n_tokens(const ds *d);  /* tokens in the stream */
size_t ds_n_targets(const ds *d); /* tokens after the first that carry loss */
size_t ds_n_records(const ds *d); /* documents / JSONL records */
const int32_t *ds_token_data(const ds *d);
/* 1 where the token is a target (it is predicted from what precedes it). */
const uint8_t *ds_mask_data(const ds *d);

/* Windows of context ctx (>= 1): ceil((tokens - 1) / ctx), 0 under 2 tokens. */
size_t ds_n_windows(const ds *d, int ctx);
/* Window w into inp [ctx] and tgt [ctx]; positions past the end get input
 * 0 and target -1. Returns the number of targets >= 0. */
int ds_window(const ds *d, int ctx, size_t w, int32_t *inp, int32_t *tgt);
/* Indices of the windows that hold at least one target: *idx malloc'd
 * (caller frees), *n entries. FL_ENOMEM, FL_ETOOBIG (over 2^32 windows). */
int ds_window_index(const ds *d, int ctx, uint32_t **idx, size_t *n);

/* 1 when the n bytes are well-formed UTF-8 (no overlong forms, no
 * surrogates, nothing above U+10FFFF); else 0 and *bad (may be NULL) gets
 * the offset of the first offending byte. */
int ds_utf8_valid(const void *p, size_t n, size_t *bad);

/* The checks every plain-text input gets (training data, `eval --data`):
 * FL_EFORMAT with "<name>: the file is empty (no text in it)" when it holds
 * only white space, or "<name>:<line>: not valid UTF-8 (byte 0x.. at file
 * offset N)" for binary or mis-encoded bytes. 0 when it is text. */
int ds_text_check(const char *name, const void *p, size_t n, char *err, size_t errlen);

#endif
