/* export — deployment exports that need the model engine: the merged model
 * (the adapter folded into the base, W + s * B * A for every targeted
 * weight) written as a GGUF in F32/F16/Q8_0/Q4_0 with all of the base's
 * metadata and tokenizer, optionally quantized with GPTQ on calibration
 * tokens run through the model layer by layer. Adapter file formats
 * (gguf-lora, PEFT) are in common/lora_fmt.h; the algorithm for one matrix
 * is in gptq.h; choices and memory use are in docs/EXPORT.md.
 *
 * One thread calls these; the kernels inside use OpenMP. */
#ifndef FL_EXPORT_H
#define FL_EXPORT_H
#include <stddef.h>
#include <stdint.h>

#include "gptq.h"
#include "lora_fmt.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "tensor.h"

#define EXP_TYPE_KEEP 0xffffffffu /* matrices keep the base's type */

typedef struct exp_opts {
	const tset *adapter; /* canonical adapter (checked against the base), or NULL */
	lora_spec params;    /* its alpha / rank / rslora (scale s = lora_scale) */
	uint32_t type;       /* matrices: GTYPE_F32/F16/Q8_0/Q4_0 or EXP_TYPE_KEEP */
	int gptq;            /* 1: GPTQ for the linear weights (type Q8_0 or Q4_0) */
	/* GPTQ calibration: n_seq sequences of seq_len token ids [n_seq, seq_len] */
	const int32_t *calib;
	int n_seq, seq_len;
	int batch;        /* sequences per forward chunk (<= 0: 4) */
	gptq_opts gq;     /* damp, block, stats */
	int verbose;      /* one log line per quantized tensor */
	const char *note; /* free text stored as fedlora.export.source (may be NULL) */
} exp_opts;

typedef struct exp_report {
	int n_tensors;   /* tensors written */
	int n_merged;    /* matrices that received s * B * A */
	int n_gptq;      /* matrices quantized with GPTQ */
	int n_converted; /* matrices converted/quantized by round-to-nearest */
	double secs_total, secs_calib, secs_gptq;
	/* with gq.stats: sums over GPTQ'd matrices of gptq_stats.err_* */
	double err_gptq, err_rtn;
	double damp_max; /* largest dampening fraction used (after retries) */
	uint64_t calib_tokens;
	uint64_t out_bytes; /* file size */
} exp_report;

/* Writes the merged (and converted / quantized) model of base_path to
 * out_path atomically. Every 2-D tensor ("matrices", token_embd and output
 * included) gets o->type; 1-D tensors are copied unchanged. With o->gptq the
 * seven projections of every layer and output.weight (untied) are quantized
 * with GPTQ, the token embedding by round-to-nearest. Metadata: every key of
 * the base in order, general.file_type updated, plus fedlora.export.* keys
 * recording what was done. Errors come with a one-line reason in why:
 * FL_EMISMATCH (adapter does not fit the base), FL_EINVAL (bad options,
 * e.g. a row length not a multiple of 32 for Q types), FL_EUNSUPPORTED,
 * FL_ENUMERIC, FL_ENOMEM, FL_EIO. rep (may be NULL) gets what was done. */
int exp_merged(const char *base_path, const exp_opts *o, const char *out_path, exp_report *rep,
               char *why, size_t whylen);

/* W [rows, cols] += s * B [rows, r] @ A [r, cols], each element's product
 * sum in double and rounded once. */
void exp_fold(float *W, int rows, int cols, const float *A, const float *B, int r, double s);

/* Tokenizes text with tk (BOS/EOS as the model's metadata says) and cuts
 * n_seq windows of seq_len tokens, evenly spaced over the token stream and
 * not overlapping. FL_EINVAL with a reason when the text has fewer than
 * n_seq * seq_len tokens. *out is malloc'd [n_seq, seq_len]; *n_avail
 * (may be NULL) gets the token count of the text. */
int exp_calib_tokens(const tok *tk, const void *text, size_t n, int n_seq, int seq_len,
                     int32_t **out, size_t *n_avail, char *why, size_t whylen);

/* The final-norm outputs [S * T, C] of S sequences of T tokens, computed
 * with m's own weights by the same chunked per-layer code (batch sequences
 * at a time) that feeds GPTQ its calibration inputs; tests compare it with
 * model_forward. */
int exp_forward_final(model *m, const int32_t *tokens, int S, int T, int batch, float *out);

#endif
