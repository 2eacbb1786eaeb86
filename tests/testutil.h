/* testutil — helpers shared by the cmocka tests: temp dirs, paths to the
 * source tree, the shared data folder and the built binaries. */
#ifndef FL_TESTUTIL_H
#define FL_TESTUTIL_H
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

/* Creates a fresh temporary directory (removed by tu_rmtree). */
char *tu_mkdtemp(void);
/* rm -rf path (best effort). */
void tu_rmtree(const char *path);
/* Path of a file under the source tree, the shared data dir, or "" if the
 * env var is unset. Returned pointer is static storage (one per call site
 * is not needed: copy it if you need two at once). */
const char *tu_src_path(const char *rel);
/* ../shared/data/<name> or NULL when absent (tests then skip()). */
const char *tu_shared_data(const char *name);
/* A text file (at most 1 MiB) as a malloc'd NUL-terminated string; "" (also
 * malloc'd) when it cannot be read. Caller frees. */
char *tu_read_text(const char *path);
/* Runs a shell command, returns its exit status (or -1). */
#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
int tu_system(const char *fmt, ...);
/* HTTP/1.0 GET of path from 127.0.0.1:port: the whole response (headers
 * and body, NUL-terminated, at most 1 MiB), or NULL. Caller frees. */
char *tu_http_get(int port, const char *path);
/* Deterministic PRNG for tests (splitmix64). */
uint64_t tu_rand(uint64_t *state);
double tu_randu(uint64_t *state); /* [0,1) */

#endif
