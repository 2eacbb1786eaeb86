/* gguf — reader and writer for GGUF files (the llama.cpp/ggml model format),
 * versions 2 and 3, little endian.
 *
 * Reader: maps the file (or borrows a caller's buffer), validates the whole
 * header before anything is used — every count, string length, array
 * length, alignment, dimension, tensor type, offset and data range — and
 * refuses duplicate keys and tensor names. Metadata values and tensor data
 * are then served from the mapping without copies. A reader is immutable
 * after open: any number of threads may read from it concurrently.
 *
 * Writer: collects metadata and tensors and writes a version-3 file
 * atomically (temp file, fsync, rename); tensor data is padded to the
 * alignment (general.alignment, default 32) so other GGUF tools load it.
 * A writer belongs to one thread. See docs/GGUF.md. */
#ifndef FL_GGUF_H
#define FL_GGUF_H
#include <stddef.h>
#include <stdint.h>

/* Metadata value types, numbered as the format numbers them. */
enum gguf_vtype {
	GGUF_U8 = 0,
	GGUF_I8 = 1,
	GGUF_U16 = 2,
	GGUF_I16 = 3,
	GGUF_U32 = 4,
	GGUF_I32 = 5,
	GGUF_F32 = 6,
	GGUF_BOOL = 7,
	GGUF_STR = 8,
	GGUF_ARR = 9,
	GGUF_U64 = 10,
	GGUF_I64 = 11,
	GGUF_F64 = 12,
};

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS          4
/* Longest tensor name the writer accepts (ggml's limit, NUL excluded). The
 * reader accepts names up to GGUF_MAX_NAME_READ bytes. */
#define GGUF_MAX_NAME          63
#define GGUF_MAX_NAME_READ     1024
#define GGUF_MAX_KEY           65535 /* bytes in a metadata key */

/* A string inside the file: not NUL-terminated, may hold any bytes. */
typedef struct gguf_str {
	const char *p;
	size_t n;
} gguf_str;

/* Name of a value type ("u32", "string", "array"...), "?" if unknown. */
const char *gguf_vtype_name(uint32_t t);

/* ------------------------------------------------------------------ */
/* Reader                                                              */

typedef struct gguf gguf;

/* Opens and validates a file. On failure returns a negative FL_E* code
 * (FL_EFORMAT malformed, FL_EUNSUPPORTED valid but not supported here —
 * v1, big endian, a tensor type we do not decode — FL_EIO, FL_ENOMEM) and,
 * when err is not NULL, a one-line message naming what is wrong (without
 * the path: the caller prefixes it); with err == NULL the message is logged
 * instead, with the path. *out written only on
 * success. Tensor data pointers are aligned to the file's alignment. */
int gguf_open(const char *path, gguf **out, char *err, size_t errlen);

/* Same over a caller's buffer, which must outlive the reader (no copy).
 * Tensor data is aligned only as far as p is. */
int gguf_open_mem(const void *p, size_t n, gguf **out, char *err, size_t errlen);

void gguf_free(gguf *g); /* NULL is a no-op; unmaps the file */

uint32_t gguf_version(const gguf *g);
size_t gguf_alignment(const gguf *g);
size_t gguf_data_offset(const gguf *g); /* file offset of the data section */

/* Metadata by index: 0 <= i < gguf_kv_count(). */
size_t gguf_kv_count(const gguf *g);
const char *gguf_kv_key(const gguf *g, size_t i); /* NUL-terminated */
enum gguf_vtype gguf_kv_type(const gguf *g, size_t i);
/* Index of key, or FL_ENOENT. */
int gguf_find_key(const gguf *g, const char *key);

/* Typed scalar access. FL_ENOENT when the key is absent, FL_EMISMATCH when
 * it holds another type (the exact type is required). */
int gguf_get_u8(const gguf *g, const char *key, uint8_t *out);
int gguf_get_i8(const gguf *g, const char *key, int8_t *out);
int gguf_get_u16(const gguf *g, const char *key, uint16_t *out);
int gguf_get_i16(const gguf *g, const char *key, int16_t *out);
int gguf_get_u32(const gguf *g, const char *key, uint32_t *out);
int gguf_get_i32(const gguf *g, const char *key, int32_t *out);
int gguf_get_u64(const gguf *g, const char *key, uint64_t *out);
int gguf_get_i64(const gguf *g, const char *key, int64_t *out);
int gguf_get_f32(const gguf *g, const char *key, float *out);
int gguf_get_f64(const gguf *g, const char *key, double *out);
int gguf_get_bool(const gguf *g, const char *key, int *out); /* 0 or 1 */
/* Points into the file; valid until gguf_free. */
int gguf_get_str(const gguf *g, const char *key, gguf_str *out);

/* Lenient access for values writers store with varying widths: any
 * integer type (u8..i64), FL_EOVERFLOW when the value does not fit
 * (negative for get_uint, > INT64_MAX for get_int); any of f32/f64 for
 * get_float. */
int gguf_get_int(const gguf *g, const char *key, int64_t *out);
int gguf_get_uint(const gguf *g, const char *key, uint64_t *out);
int gguf_get_float(const gguf *g, const char *key, double *out);

/* Arrays. gguf_get_arr gives the element type and length. */
int gguf_get_arr(const gguf *g, const char *key, enum gguf_vtype *etype, size_t *n);
/* Raw elements of a numeric/bool array of exactly type `want`: little
 * endian, possibly unaligned (read with memcpy). Valid until gguf_free. */
int gguf_get_arr_data(const gguf *g, const char *key, enum gguf_vtype want, const void **p,
                      size_t *n);
/* Array of strings: *strs[0..n-1] owned by the reader. */
int gguf_get_arr_strs(const gguf *g, const char *key, const gguf_str **strs, size_t *n);
/* Copies exactly n elements, converting: get_arr_f32 takes f32/f64 arrays;
 * get_arr_i64 takes any integer or bool array. FL_EMISMATCH when the type
 * or the length (n) differs. */
int gguf_get_arr_f32(const gguf *g, const char *key, float *dst, size_t n);
int gguf_get_arr_i64(const gguf *g, const char *key, int64_t *dst, size_t n);

/* Tensors. ne[0] is the row length (innermost); unused dims are 1. */
typedef struct gguf_tensor {
	const char *name; /* NUL-terminated, owned by the reader */
	uint32_t type;    /* enum gtype (always supported: checked at open) */
	int ndims;        /* 1..GGUF_MAX_DIMS */
	uint64_t ne[GGUF_MAX_DIMS];
	uint64_t nelem;
	const void *data; /* into the mapping; size bytes */
	size_t size;
	uint64_t offset; /* relative to the data section */
} gguf_tensor;

size_t gguf_tensor_count(const gguf *g);
/* FL_ENOENT when out of range / not found. */
int gguf_tensor_at(const gguf *g, size_t i, gguf_tensor *out);
int gguf_tensor_find(const gguf *g, const char *name, gguf_tensor *out);

/* ------------------------------------------------------------------ */
/* Writer                                                              */

typedef struct gguf_writer gguf_writer;

gguf_writer *gguf_writer_new(void); /* NULL on allocation failure */
void gguf_writer_free(gguf_writer *w);

/* Metadata setters. Keys are 1..GGUF_MAX_KEY bytes; a key already set is
 * refused (FL_EINVAL). "general.alignment" must be a u32 power of two and
 * sets the alignment used for tensor data. */
int gguf_set_u8(gguf_writer *w, const char *key, uint8_t v);
int gguf_set_i8(gguf_writer *w, const char *key, int8_t v);
int gguf_set_u16(gguf_writer *w, const char *key, uint16_t v);
int gguf_set_i16(gguf_writer *w, const char *key, int16_t v);
int gguf_set_u32(gguf_writer *w, const char *key, uint32_t v);
int gguf_set_i32(gguf_writer *w, const char *key, int32_t v);
int gguf_set_u64(gguf_writer *w, const char *key, uint64_t v);
int gguf_set_i64(gguf_writer *w, const char *key, int64_t v);
int gguf_set_f32(gguf_writer *w, const char *key, float v);
int gguf_set_f64(gguf_writer *w, const char *key, double v);
int gguf_set_bool(gguf_writer *w, const char *key, int v);
int gguf_set_str(gguf_writer *w, const char *key, const char *s);
int gguf_set_strn(gguf_writer *w, const char *key, const void *s, size_t n);
/* Numeric/bool array from a C array of the natural type (uint8_t ...
 * double; bool elements as uint8_t 0/1). */
int gguf_set_arr(gguf_writer *w, const char *key, enum gguf_vtype etype, const void *vals,
                 size_t n);
int gguf_set_arr_str(gguf_writer *w, const char *key, const char *const *strs, size_t n);
int gguf_set_arr_strn(gguf_writer *w, const char *key, const gguf_str *strs, size_t n);
/* Copies key (any type) from a reader, e.g. a vocabulary from another
 * model. FL_ENOENT when the reader lacks it. */
int gguf_set_copy(gguf_writer *w, const gguf *src, const char *key);

/* Adds a tensor of type `type` (a supported gtype) with dims ne[0..ndims-1]
 * (ne[0] a multiple of the type's block size) whose data is `size` bytes
 * (must equal the computed size). gguf_add_tensor borrows data: it must
 * stay valid until the write. gguf_add_tensor_own takes a malloc'd buffer
 * and frees it with the writer, also when the call fails. Names are
 * 1..GGUF_MAX_NAME bytes and unique. */
int gguf_add_tensor(gguf_writer *w, const char *name, uint32_t type, int ndims, const uint64_t *ne,
                    const void *data, size_t size);
int gguf_add_tensor_own(gguf_writer *w, const char *name, uint32_t type, int ndims,
                        const uint64_t *ne, void *data, size_t size);

/* Writes the file atomically. The writer stays usable (e.g. to write the
 * same content elsewhere). GGUF files are deployment outputs (models,
 * GGUF LoRA adapters): created FILE_PUBLIC, 0666 less the umask. */
int gguf_writer_write(const gguf_writer *w, const char *path);
/* The same bytes into one malloc'd buffer (tests, fuzz seeds). Caller
 * frees *out. */
int gguf_writer_serialize(const gguf_writer *w, uint8_t **out, size_t *n);

#endif
