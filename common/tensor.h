/* tensor — named sets of f32 tensors (adapters, deltas, residuals).
 *
 * A tset owns named, row-major f32 tensors in a stable insertion order with
 * lookup by name, the element-wise operations federated training needs, and
 * two SHA-256 fingerprints: the full one (names + shapes + bytes) that
 * identifies a global adapter version, and the shape-only one (names +
 * shapes) that says whether two adapters have the same layout. The exact
 * byte streams hashed are specified in docs/FORMATS.md.
 *
 * Not thread-safe: one thread mutates a set at a time; concurrent readers of
 * an unchanging set are fine. */
#ifndef FL_TENSOR_H
#define FL_TENSOR_H
#include <stddef.h>
#include <stdint.h>

#define TSET_MAX_DIM     4
#define TSET_NAME_MAX    255          /* bytes, without the NUL */
#define TSET_MAX_TENSORS 65536        /* per set */
#define TSET_MAX_ELEMS   (1ull << 31) /* per tensor (8 GiB of f32) */

/* One tensor of a set. The set owns name and data; pointers stay valid until
 * the set is freed (adding tensors never moves existing ones). data is
 * 64-byte aligned and holds n floats, row-major, shape outermost first. */
typedef struct tensor {
	const char *name;
	uint32_t ndim;
	uint64_t shape[TSET_MAX_DIM];
	size_t n; /* product of shape (1 for ndim == 0) */
	float *data;
} tensor;

typedef struct tset tset;

int tset_new(tset **out);
void tset_free(tset *s);

/* Adds a tensor named `name` (1..TSET_NAME_MAX bytes, no control
 * characters) with the given shape. Its data is copied from `init` (n floats)
 * or zero-filled when init is NULL. FL_EINVAL for a bad name or ndim,
 * FL_EMISMATCH if the name exists, FL_ETOOBIG past the caps, FL_EOVERFLOW,
 * FL_ENOMEM. *out (may be NULL) points at the new tensor. */
int tset_insert(tset *s, const char *name, uint32_t ndim, const uint64_t *shape, const float *init,
                tensor **out);

size_t tset_count(const tset *s);
/* i-th tensor in insertion order, NULL if i >= count. */
tensor *tset_at(const tset *s, size_t i);
/* Tensor by name or NULL. */
tensor *tset_find(const tset *s, const char *name);
/* Total elements over all tensors. */
size_t tset_numel(const tset *s);

/* Deep copy / same layout filled with zeros. */
int tset_clone(const tset *s, tset **out);
int tset_zeros_like(const tset *s, tset **out);

/* 0 when a and b hold the same names with the same shapes (order may
 * differ), FL_EMISMATCH otherwise. All binary operations below pair tensors
 * by name and check this first: on a mismatch nothing is modified. */
int tset_same_layout(const tset *a, const tset *b);

/* Element-wise, per tensor, in place on the first argument.
 * Arithmetic is plain IEEE f32, one operation per statement (no fused
 * multiply-add): axpy computes t = a*x rounded, then y + t rounded. */
int tset_copy(tset *dst, const tset *src);      /* dst = src */
int tset_add(tset *y, const tset *x);           /* y += x */
int tset_sub(tset *y, const tset *x);           /* y -= x */
int tset_axpy(tset *y, float a, const tset *x); /* y += a * x */
/* out = a - b (out, a, b of the same layout; out may alias a or b). */
int tset_diff(tset *out, const tset *a, const tset *b);
void tset_scale(tset *y, float a); /* y *= a */
void tset_zero(tset *y);
/* Sum over all tensors of a_i * b_i, accumulated in double in insertion
 * order of a. */
int tset_dot(const tset *a, const tset *b, double *out);
/* L2 norm over all tensors, accumulated in double. */
double tset_norm(const tset *s);
/* 1 when every element is finite, 0 otherwise; *where (may be NULL) is set
 * to the first tensor holding a NaN/Inf. */
int tset_all_finite(const tset *s, const tensor **where);

/* SHA-256 over names, shapes and f32 bytes of every tensor, tensors in
 * canonical order (names sorted by unsigned bytes), see docs/FORMATS.md. */
int tset_fingerprint(const tset *s, uint8_t out[32]);
/* SHA-256 over names and shapes only (layout identity). */
int tset_shape_fingerprint(const tset *s, uint8_t out[32]);

#endif
