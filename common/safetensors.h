/* safetensors — read and write the safetensors file format (adapters on disk).
 *
 * Layout (public spec): 8-byte little-endian header length N, N bytes of
 * JSON header (an object: "__metadata__" -> string map, and per tensor
 * name -> {"dtype", "shape", "data_offsets": [begin, end]}), then the data
 * buffer; offsets are relative to the start of the buffer. Reading maps the
 * file and validates the header strictly before anything is used (size
 * caps, offsets inside the buffer, tensors covering the buffer with no
 * overlap and no gap, byte lengths matching dtype x shape, no duplicate
 * names, overflow-checked shape products); every rejection comes with a
 * sentence naming the problem. Writing is atomic (fileio) and pads the
 * header with spaces so tensor data starts 8-byte aligned.
 *
 * A st_file is read-only after st_open/st_parse and may be read from
 * several threads. */
#ifndef FL_SAFETENSORS_H
#define FL_SAFETENSORS_H
#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

/* Element types. Reading accepts every dtype of the spec (sizes are
 * validated); conversion to f32 supports F32, F16 and BF16. */
enum st_dtype {
	ST_F32 = 0,
	ST_F16,
	ST_BF16,
	ST_F64,
	ST_I64,
	ST_U64,
	ST_I32,
	ST_U32,
	ST_I16,
	ST_U16,
	ST_I8,
	ST_U8,
	ST_BOOL,
	ST_F8_E4M3,
	ST_F8_E5M2,
	ST_DTYPE_COUNT
};

#define ST_MAX_DIM 8

/* fedlora's __metadata__ keys (values are strings, as the spec requires). */
#define ST_META_FORMAT       "format"               /* "pt", added when absent */
#define ST_META_VERSION      "fedlora.version"      /* global adapter version, decimal */
#define ST_META_ROUND        "fedlora.round"        /* round that produced it, decimal */
#define ST_META_SHA256       "fedlora.sha256"       /* tset_fingerprint, 64 hex digits */
#define ST_META_SHAPE_SHA256 "fedlora.shape_sha256" /* tset_shape_fingerprint, hex */

typedef struct st_limits {
	uint64_t max_header; /* JSON header bytes; 0 -> 4 MiB (at most 100 MB, the spec limit) */
	size_t max_tensors;  /* 0 -> 65536 */
	uint64_t max_elems;  /* per tensor; 0 -> 2^31 */
} st_limits;

typedef struct st_info {
	const char *name;
	enum st_dtype dtype;
	uint32_t ndim;
	uint64_t shape[ST_MAX_DIM];
	uint64_t numel;
	const uint8_t *data; /* inside the mapping; not aligned in general */
	size_t nbytes;
} st_info;

typedef struct st_kv {
	const char *key;
	const char *val;
} st_kv;

typedef struct st_file st_file;

/* Maps and validates path. why (may be NULL) receives the reason on
 * failure, which is also logged. FL_ENOENT/FL_EIO for file errors,
 * FL_EFORMAT for a malformed file, FL_ETOOBIG past the limits,
 * FL_EOVERFLOW for a shape product overflow. lim may be NULL. */
int st_open(const char *path, const st_limits *lim, st_file **out, char *why, size_t whylen);
/* Same on bytes in memory, which the caller keeps alive and unchanged
 * until st_close (used by the fuzzer). Does not log. */
int st_parse(const uint8_t *p, size_t n, const st_limits *lim, st_file **out, char *why,
             size_t whylen);
void st_close(st_file *f);

/* Tensors in header order. */
size_t st_count(const st_file *f);
int st_get(const st_file *f, size_t i, st_info *out);
/* Index of a tensor by name; FL_ENOENT when absent. */
int st_find(const st_file *f, const char *name, size_t *idx);
/* Metadata value or NULL. */
const char *st_meta(const st_file *f, const char *key);
size_t st_meta_count(const st_file *f);
int st_meta_at(const st_file *f, size_t i, st_kv *out);

/* Converts every tensor to f32 into a new set (header order). Tensors with
 * more than TSET_MAX_DIM dimensions or a non-float dtype make it fail with
 * FL_EUNSUPPORTED. */
int st_to_tset(const st_file *f, tset **out);
/* st_open + st_to_tset + st_close. */
int st_read_tset(const char *path, const st_limits *lim, tset **out);

/* Writes s (insertion order) as dtype F32, F16 or BF16 with the given
 * metadata (keys unique and non-empty; "format": "pt" is added unless
 * given). F16/BF16 round to nearest even; an F16 overflow is FL_ENUMERIC.
 * Atomic: the file is either the old one or the complete new one. */
int st_write(const char *path, const tset *s, enum st_dtype dtype, const st_kv *meta, size_t nmeta);
/* st_write with the file mode given: st_write is FILE_PRIVATE (state);
 * exports pass FILE_PUBLIC (fileio.h). */
int st_write_mode(const char *path, const tset *s, enum st_dtype dtype, const st_kv *meta,
                  size_t nmeta, unsigned mode);

const char *st_dtype_name(enum st_dtype d);
size_t st_dtype_size(enum st_dtype d);

#endif
