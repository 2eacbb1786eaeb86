/* qtensor — one quantized tensor in memory, its byte layout, and its mapping
 * to and from the protobuf QTensor message (proto/fedlora.proto).
 *
 * A qtensor holds a format, a block size, a shape and two byte strings
 * (f16 block scales and packed element codes) laid out exactly as on the
 * wire (docs/FORMATS.md). quant.h fills and decodes it; this module sizes,
 * validates, copies and converts it. Everything arriving from a peer goes
 * through qt_check (directly or via qt_from_proto / qt_view_proto) before
 * any decoder sees it: after a successful check the lengths match the
 * shape, scales are finite and non-negative, and f32/f16 elements are
 * finite, so every dequantized value is finite. */
#ifndef FL_QTENSOR_H
#define FL_QTENSOR_H
#include <stddef.h>
#include <stdint.h>

/* Numbers equal the protobuf QFormat values. */
enum qt_fmt {
	QT_F32 = 1, /* raw f32, no scales */
	QT_F16 = 2, /* IEEE half, no scales */
	QT_Q8 = 3,  /* int8 code per element, f16 scale per block */
	QT_Q4 = 4,  /* 4-bit code per element, f16 scale per block */
	QT_Q2 = 5,  /* 2-bit code per element, f16 scale per block */
};

#define QT_MAX_DIM           4
#define QT_NAME_MAX          255
#define QT_BLOCK_DEFAULT     32
#define QT_DEFAULT_MAX_ELEMS (1ull << 28) /* per tensor: 1 GiB of f32 */

/* Caps applied when checking a tensor from outside. */
typedef struct qt_limits {
	uint64_t max_elems; /* 0 -> QT_DEFAULT_MAX_ELEMS */
} qt_limits;

typedef struct qtensor {
	char name[QT_NAME_MAX + 1]; /* NUL-terminated; "" when unnamed */
	enum qt_fmt fmt;            /* 0 when empty (after init or a failed encode) */
	uint32_t block;             /* 32, 64 or 128 for q formats; 0 for f32/f16 */
	int stochastic;             /* informational: stochastic rounding was used */
	uint32_t ndim;
	uint64_t shape[QT_MAX_DIM];
	size_t n; /* product of shape */
	/* The two byte strings. They point either at the qtensor's own buffers
	 * (after an encode, qt_copy or qt_from_proto) or into a protobuf
	 * message (after qt_view_proto: valid while that message lives). */
	const uint8_t *scales;
	size_t scales_len;
	const uint8_t *data;
	size_t data_len;
	/* private: owned buffers, reused across encodes */
	uint8_t *own_scales, *own_data;
	size_t own_scales_cap, own_data_cap;
} qtensor;

void qt_init(qtensor *q);
void qt_fini(qtensor *q); /* frees owned buffers; q is reusable after qt_init */
/* Marks q empty (fmt = 0, no bytes) but keeps its buffers for reuse. */
void qt_reset(qtensor *q);

/* Element size in bits (32, 16, 8, 4, 2), 0 for an unknown format. */
unsigned qt_fmt_bits(enum qt_fmt fmt);
/* "f32" "f16" "q8" "q4" "q2"; "?" for unknown. */
const char *qt_fmt_name(enum qt_fmt fmt);
/* Parses the names above; 0 or FL_EINVAL. */
int qt_fmt_parse(const char *s, enum qt_fmt *out);
/* 0 when (fmt, block) is a valid pair: block 0 for f32/f16, 32/64/128 for
 * q formats; FL_EINVAL otherwise. */
int qt_check_fmt_block(enum qt_fmt fmt, uint32_t block);
/* Exact byte lengths of scales and data for n elements. FL_EINVAL for a
 * bad (fmt, block), FL_EOVERFLOW if a length does not fit size_t. */
int qt_layout(enum qt_fmt fmt, uint32_t block, uint64_t n, size_t *scales_len, size_t *data_len);
/* Bits per parameter including scales, for a tensor whose n is a multiple
 * of the block: bits + 16 / block. */
double qt_bits_per_param(enum qt_fmt fmt, uint32_t block);

/* Prepares q to receive an encoding: sets header fields, grows the owned
 * buffers to the exact lengths and points scales/data at them (contents
 * undefined until written). name may be NULL (""). Used by quant.h. */
int qt_prepare(qtensor *q, const char *name, enum qt_fmt fmt, uint32_t block, uint32_t ndim,
               const uint64_t *shape);
/* Writable views of the owned buffers (valid after qt_prepare). */
uint8_t *qt_scales_mut(qtensor *q);
uint8_t *qt_data_mut(qtensor *q);

/* Full validation (see the header comment). why (may be NULL) receives a
 * sentence naming what is wrong. FL_EPROTO for structure (format, block,
 * shape, lengths, padding bits, negative scale), FL_EOVERFLOW for a shape
 * whose product overflows, FL_ETOOBIG past lim->max_elems, FL_ENUMERIC for
 * a NaN/Inf scale or element. lim may be NULL (defaults). */
int qt_check(const qtensor *q, const qt_limits *lim, char *why, size_t whylen);

/* Deep copy into dst's owned buffers (dst initialised). */
int qt_copy(qtensor *dst, const qtensor *src);

/* Size in bytes of the QTensor protobuf message for q (what it costs on the
 * wire, excluding the tag and length prefix of an enclosing field). */
size_t qt_encoded_size(const qtensor *q);

struct Fedlora__QTensor;
/* Fills *m (initialised here) as a view of q: no copy, m borrows q's name,
 * shape and bytes and is valid while q is unchanged. Do not free m's
 * fields with protobuf-c. */
void qt_to_proto(const qtensor *q, struct Fedlora__QTensor *m);
/* Validates m (qt_check rules) and copies it into q's owned buffers. On
 * failure q is left empty and why says what is wrong. */
int qt_from_proto(const struct Fedlora__QTensor *m, const qt_limits *lim, qtensor *q, char *why,
                  size_t whylen);
/* Same checks, but q borrows m's scale and data bytes (no copy; valid while
 * m lives). This is the coordinator's path: decode an Update, view each
 * tensor, accumulate, free the message. */
int qt_view_proto(const struct Fedlora__QTensor *m, const qt_limits *lim, qtensor *q, char *why,
                  size_t whylen);

#endif
