/* err — the project's one error enum.
 *
 * Fallible functions return int: 0 on success, a negative FL_E* code on
 * failure. fl_strerror() gives a short text for any code. */
#ifndef FL_ERR_H
#define FL_ERR_H
#include <stdarg.h>
#include <stddef.h>

enum fl_err {
	FL_OK = 0,
	FL_ENOMEM = -1,        /* allocation failed or a budget/cap was exceeded */
	FL_EINVAL = -2,        /* invalid argument (programmer or user input) */
	FL_EIO = -3,           /* operating-system I/O error; errno logged */
	FL_ENOENT = -4,        /* file or named item not found */
	FL_ETOOBIG = -5,       /* size over a configured or format cap */
	FL_EPROTO = -6,        /* malformed wire message or protocol violation */
	FL_EFORMAT = -7,       /* malformed or corrupt file */
	FL_ECRYPTO = -8,       /* TLS / crypto failure */
	FL_EAUTH = -9,         /* authentication or authorisation refused */
	FL_ETIMEDOUT = -10,    /* deadline passed */
	FL_ECLOSED = -11,      /* peer, session or object closed */
	FL_EAGAIN = -12,       /* try again later (would block) */
	FL_ECONFIG = -13,      /* bad configuration key or value */
	FL_EUNSUPPORTED = -14, /* valid but not supported by this build/version */
	FL_EOVERFLOW = -15,    /* arithmetic overflow in a size computation */
	FL_EMISMATCH = -16,    /* fingerprint, hash, shape or version mismatch */
	FL_ENUMERIC = -17,     /* NaN/Inf or other numeric failure */
	FL_ESTATE = -18,       /* operation not valid in the current state */
	FL_EINTR = -19,        /* interrupted by a signal / stop request */
	FL_EBUSY = -20,        /* resource busy (address in use, lock held) */
	FL_ENET = -21,         /* ZeroMQ / network error; library message logged */
};

/* Short static description of an error code (never NULL). */
const char *fl_strerror(int err);

/* Name of the code ("FL_EINVAL"), for logs and JSON (never NULL). */
const char *fl_errname(int err);

/* The "code + sentence" convention of functions that take (char *why,
 * size_t whylen): formats the message into why (when why && whylen, always
 * NUL-terminated, truncated to whylen) and returns rc, so that a caller
 * writes  return fl_fail(why, whylen, FL_EINVAL, "x = %d is ...", x);  */
#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
int fl_fail(char *why, size_t whylen, int rc, const char *fmt, ...);
/* fl_fail with a va_list, for a module's own wrapper that also logs or
 * prefixes (ap is consumed as by vsnprintf). */
#if defined(__GNUC__)
__attribute__((format(printf, 4, 0)))
#endif
int fl_vfail(char *why, size_t whylen, int rc, const char *fmt, va_list ap);

#endif
