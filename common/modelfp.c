/* modelfp — see modelfp.h. */
#include "modelfp.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "buf.h"
#include "err.h"
#include "fileio.h"
#include "gguf.h"
#include "log.h"
#include "sha.h"

#define MFP_MAGIC     "fedlora-base-model-v1\n"
#define MFP_CACHE_TAG "fedlora-modelfp 1"

static int put_u64(sha256_ctx *h, uint64_t v)
{
	uint8_t b[8];
	st_u64le(b, v);
	return sha256_update(h, b, 8);
}

static int put_u32(sha256_ctx *h, uint32_t v)
{
	uint8_t b[4];
	st_u32le(b, v);
	return sha256_update(h, b, 4);
}

typedef struct ent {
	const char *name;
	size_t idx;
} ent;

static int by_name(const void *a, const void *b)
{
	/* strcmp compares as unsigned char */
	return strcmp(((const ent *)a)->name, ((const ent *)b)->name);
}

int mfp_compute(const char *path, uint8_t out[MFP_LEN])
{
	gguf *g = NULL;
	sha256_ctx *h = NULL;
	ent *e = NULL;
	int rc = gguf_open(path, &g, NULL, 0);
	if (rc)
		return rc;
	size_t n = gguf_tensor_count(g);
	e = calloc(n ? n : 1, sizeof *e);
	if (!e) {
		rc = FL_ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		gguf_tensor t;
		if ((rc = gguf_tensor_at(g, i, &t)) != 0)
			goto out;
		e[i].name = t.name;
		e[i].idx = i;
	}
	qsort(e, n, sizeof *e, by_name);
	if ((rc = sha256_new(&h)) != 0)
		goto out;
	gguf_str arch = {NULL, 0};
	if (gguf_get_str(g, "general.architecture", &arch) != 0)
		arch.n = 0;
	if ((rc = sha256_update(h, MFP_MAGIC, strlen(MFP_MAGIC))) != 0 ||
	    (rc = put_u64(h, arch.n)) != 0 || (arch.n && (rc = sha256_update(h, arch.p, arch.n))) ||
	    (rc = put_u64(h, n)) != 0)
		goto out;
	for (size_t i = 0; i < n; i++) {
		gguf_tensor t;
		if ((rc = gguf_tensor_at(g, e[i].idx, &t)) != 0)
			goto out;
		size_t nl = strlen(t.name);
		if ((rc = put_u64(h, nl)) != 0 || (rc = sha256_update(h, t.name, nl)) != 0 ||
		    (rc = put_u32(h, t.type)) != 0 || (rc = put_u32(h, (uint32_t)t.ndims)) != 0)
			goto out;
		for (int d = 0; d < t.ndims; d++)
			if ((rc = put_u64(h, t.ne[d])) != 0)
				goto out;
		if ((rc = put_u64(h, t.size)) != 0 || (rc = sha256_update(h, t.data, t.size)) != 0)
			goto out;
	}
	rc = sha256_final(h, out);
	h = NULL;
out:
	sha256_free(h);
	free(e);
	gguf_free(g);
	return rc;
}

/* "dev ino size mtime_sec mtime_nsec" of path. */
static int file_key(const char *path, char *key, size_t n)
{
	struct stat st;
	if (stat(path, &st) != 0)
		return FL_ENOENT;
	snprintf(key, n, "%" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRId64 " %ld", (uint64_t)st.st_dev,
	         (uint64_t)st.st_ino, (uint64_t)st.st_size, (int64_t)st.st_mtim.tv_sec,
	         (long)st.st_mtim.tv_nsec);
	return 0;
}

int mfp_compute_cached(const char *path, const char *cache_path, uint8_t out[MFP_LEN])
{
	char key[160], want[512];
	int rc = file_key(path, key, sizeof key);
	if (rc) {
		LOGE("modelfp", "%s: cannot stat the model file", path);
		return rc;
	}
	int k = snprintf(want, sizeof want, "%s\n%s\n", MFP_CACHE_TAG, key);
	if (k < 0 || (size_t)k >= sizeof want)
		return FL_ETOOBIG;
	uint8_t *txt = NULL;
	size_t len = 0;
	if (cache_path && file_read_all(cache_path, 4096, &txt, &len) == 0) {
		size_t wl = (size_t)k;
		if (len == wl + 65 && memcmp(txt, want, wl) == 0 && txt[len - 1] == '\n') {
			char hex[65];
			memcpy(hex, txt + wl, 64);
			hex[64] = 0;
			if (hex_decode(hex, out, MFP_LEN) == 0) {
				free(txt);
				return 0;
			}
		}
		free(txt);
	}
	uint8_t fp[MFP_LEN];
	if ((rc = mfp_compute(path, fp)) != 0)
		return rc;
	if (cache_path) {
		char line[sizeof want + 80], hex[65];
		hex_encode(fp, MFP_LEN, hex);
		int m = snprintf(line, sizeof line, "%s%s\n", want, hex);
		if (m > 0 && (size_t)m < sizeof line &&
		    file_write_atomic(cache_path, line, (size_t)m))
			LOGW("modelfp", "cannot write the fingerprint cache %s", cache_path);
	}
	memcpy(out, fp, MFP_LEN);
	return 0;
}
