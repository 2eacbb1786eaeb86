/* store — see store.h. */
#include "store.h"

#include "clock.h"
#include "err.h"
#include "fileio.h"
#include "journal.h"
#include "log.h"
#include "lora_fmt.h"
#include "safetensors.h"
#include "sha.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define VDIR "versions"
#define ODIR "opt"

struct store {
	char dir[PATH_MAX];
	char journal[PATH_MAX];
	int lock_fd;
	uint64_t max_version;
	/* journal records not written yet, oldest first (store.h) */
	char *bl[STORE_BACKLOG_MAX];
	size_t bl_len[STORE_BACKLOG_MAX];
	size_t nbl, bl_bytes;
	uint64_t bl_dropped;
	int jerr; /* errno of the last failed journal write */
};

#define WHY(...)                                                                                   \
	do {                                                                                       \
		if (why && whylen)                                                                 \
			snprintf(why, whylen, __VA_ARGS__);                                        \
	} while (0)

int store_version_path(const char *dir, uint64_t version, char *out, size_t cap)
{
	int n = snprintf(out, cap, "%s/" VDIR "/v%020" PRIu64 ".safetensors", dir, version);
	return (n < 0 || (size_t)n >= cap) ? FL_EINVAL : 0;
}

static int opt_path(const char *dir, uint64_t version, char *out, size_t cap)
{
	int n = snprintf(out, cap, "%s/" ODIR "/opt-%020" PRIu64 ".safetensors", dir, version);
	return (n < 0 || (size_t)n >= cap) ? FL_EINVAL : 0;
}

/* "v<digits>.safetensors" or "opt-<digits>.safetensors" -> number. */
static int parse_fname(const char *name, const char *prefix, uint64_t *v)
{
	size_t pl = strlen(prefix);
	if (strncmp(name, prefix, pl) != 0)
		return FL_EINVAL;
	const char *p = name + pl;
	uint64_t x = 0;
	size_t nd = 0;
	while (*p >= '0' && *p <= '9') {
		if (x > (UINT64_MAX - 9) / 10)
			return FL_EINVAL;
		x = x * 10 + (uint64_t)(*p - '0');
		p++;
		nd++;
	}
	if (nd == 0 || strcmp(p, ".safetensors") != 0)
		return FL_EINVAL;
	*v = x;
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Lists numbered files of a subdirectory, ascending. */
static int list_numbered(const char *dir, const char *sub, const char *prefix, uint64_t **vs,
                         size_t *n)
{
	char p[PATH_MAX];
	snprintf(p, sizeof p, "%s/%s", dir, sub);
	*vs = NULL;
	*n = 0;
	DIR *d = opendir(p);
	if (!d)
		return errno == ENOENT ? 0 : FL_EIO;
	uint64_t *arr = NULL;
	size_t cnt = 0, cap = 0;
	struct dirent *e;
	int rc = 0;
	while ((e = readdir(d))) {
		uint64_t v;
		if (parse_fname(e->d_name, prefix, &v))
			continue;
		if (cnt == cap) {
			size_t nc = cap ? cap * 2 : 16;
			uint64_t *na = realloc(arr, nc * sizeof *na);
			if (!na) {
				rc = FL_ENOMEM;
				break;
			}
			arr = na;
			cap = nc;
		}
		arr[cnt++] = v;
	}
	closedir(d);
	if (rc) {
		free(arr);
		return rc;
	}
	if (cnt)
		qsort(arr, cnt, sizeof *arr, cmp_u64);
	*vs = arr;
	*n = cnt;
	return 0;
}

int store_list_versions(const char *dir, uint64_t **vs, size_t *n)
{
	return list_numbered(dir, VDIR, "v", vs, n);
}

/* Removes fileio temp files ("*.tmp.<pid>") left by a crash. */
static void remove_temps(const char *dir, const char *sub)
{
	char p[PATH_MAX];
	snprintf(p, sizeof p, "%s/%s", dir, sub);
	DIR *d = opendir(p);
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!strstr(e->d_name, ".tmp."))
			continue;
		char f[PATH_MAX + 256];
		snprintf(f, sizeof f, "%s/%s", p, e->d_name);
		if (unlink(f) == 0)
			LOGW("store", "removed half-written %s (left by a crash)", f);
	}
	closedir(d);
}

static int journal_max_cb(const cJSON *o, void *ud)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "version");
	if (cJSON_IsNumber(v) && v->valuedouble > 0 && v->valuedouble < 1.8e19) {
		uint64_t x = (uint64_t)v->valuedouble;
		if (x > *(uint64_t *)ud)
			*(uint64_t *)ud = x;
	}
	return 0;
}

int store_open(const char *dir, store **out)
{
	store *s = calloc(1, sizeof *s);
	if (!s)
		return FL_ENOMEM;
	s->lock_fd = -1;
	int rc = FL_EINVAL;
	if (snprintf(s->dir, sizeof s->dir, "%s", dir) >= (int)sizeof s->dir - 32)
		goto out;
	snprintf(s->journal, sizeof s->journal, "%s/journal.jsonl", dir);
	char p[PATH_MAX];
	snprintf(p, sizeof p, "%s/" VDIR, dir);
	rc = file_mkdirs(p);
	if (!rc) {
		snprintf(p, sizeof p, "%s/" ODIR, dir);
		rc = file_mkdirs(p);
	}
	if (rc) {
		LOGE("store", "cannot create state directory %s", dir);
		goto out;
	}
	snprintf(p, sizeof p, "%s/LOCK", dir);
	long holder = 0;
	rc = file_lock(p, &s->lock_fd, &holder);
	if (rc == FL_EBUSY) {
		if (holder)
			LOGE("store", "%s is in use by another coordinator (pid %ld holds %s)", dir,
			     holder, p);
		else
			LOGE("store", "%s is in use by another coordinator (lock %s held)", dir, p);
	}
	if (rc)
		goto out;
	remove_temps(dir, VDIR);
	remove_temps(dir, ODIR);
	remove_temps(dir, ".");
	rc = journal_repair(s->journal);
	if (rc) {
		LOGE("store", "cannot repair journal %s", s->journal);
		goto out;
	}
	uint64_t *vs;
	size_t n;
	rc = store_list_versions(dir, &vs, &n);
	if (rc)
		goto out;
	if (n)
		s->max_version = vs[n - 1];
	free(vs);
	size_t nl, nb;
	uint64_t jm = 0;
	if (journal_read(s->journal, journal_max_cb, &jm, &nl, &nb) == 0 && jm > s->max_version)
		s->max_version = jm;
	*out = s;
	return 0;
out:
	store_free(s);
	return rc;
}

void store_free(store *s)
{
	if (!s)
		return;
	if (s->lock_fd >= 0)
		close(s->lock_fd); /* releases the flock */
	if (s->nbl || s->bl_dropped)
		(void)store_journal_flush(s); /* a last try */
	if (s->nbl)
		LOGE("store", "%zu journal record(s) never written to %s", s->nbl, s->journal);
	for (size_t i = 0; i < s->nbl; i++)
		free(s->bl[i]);
	free(s);
}

const char *store_dir(const store *s)
{
	return s->dir;
}

const char *store_journal_path(const store *s)
{
	return s->journal;
}

uint64_t store_max_version(const store *s)
{
	return s->max_version;
}

static int meta_u64(const st_file *f, const char *key, uint64_t *out)
{
	const char *v = st_meta(f, key);
	if (!v || !*v)
		return FL_ENOENT;
	char *end;
	errno = 0;
	unsigned long long x = strtoull(v, &end, 10);
	if (errno || *end || v[0] == '-')
		return FL_EFORMAT;
	*out = x;
	return 0;
}

int store_read_version(const char *dir, uint64_t version, tset **adapter, store_info *info,
                       char *why, size_t whylen)
{
	char path[PATH_MAX];
	int rc = store_version_path(dir, version, path, sizeof path);
	if (rc)
		return rc;
	st_file *f = NULL;
	tset *t = NULL;
	char w2[200] = "";
	rc = st_open(path, NULL, &f, w2, sizeof w2);
	if (rc) {
		WHY("%s: %s", path, w2);
		return rc;
	}
	store_info in;
	memset(&in, 0, sizeof in);
	const char *sha = st_meta(f, ST_META_SHA256);
	const char *ssha = st_meta(f, ST_META_SHAPE_SHA256);
	if (meta_u64(f, ST_META_VERSION, &in.version) || in.version != version) {
		WHY("%s: metadata %s missing or not %" PRIu64, path, ST_META_VERSION, version);
		rc = FL_EFORMAT;
		goto out;
	}
	if (!sha || hex_decode(sha, in.sha, 32) || !ssha || hex_decode(ssha, in.shape_sha, 32)) {
		WHY("%s: metadata %s / %s missing or not 64 hex digits", path, ST_META_SHA256,
		    ST_META_SHAPE_SHA256);
		rc = FL_EFORMAT;
		goto out;
	}
	meta_u64(f, ST_META_ROUND, &in.round);
	meta_u64(f, "fedlora.parent", &in.parent);
	meta_u64(f, "fedlora.time_ms", &in.wall_ms);
	uint64_t x;
	if (meta_u64(f, "fedlora.lora_rank", &x) == 0 && x < UINT32_MAX)
		in.rank = (uint32_t)x;
	const char *s = st_meta(f, "fedlora.lora_alpha");
	if (s)
		in.alpha = strtof(s, NULL);
	s = st_meta(f, "fedlora.lora_targets");
	if (s)
		snprintf(in.targets, sizeof in.targets, "%s", s);
	if (meta_u64(f, "fedlora.rslora", &x) == 0)
		in.rslora = x != 0;
	if (meta_u64(f, "fedlora.ffa", &x) == 0)
		in.ffa = x != 0;
	meta_u64(f, "fedlora.init_seed", &in.init_seed);
	if (meta_u64(f, "fedlora.n_head", &x) == 0 && x < UINT32_MAX)
		in.n_head = (uint32_t)x;
	if (meta_u64(f, "fedlora.n_head_kv", &x) == 0 && x < UINT32_MAX)
		in.n_head_kv = (uint32_t)x;
	s = st_meta(f, "fedlora.base_sha256");
	if (s && hex_decode(s, in.base_sha, 32) == 0)
		in.has_base = 1;
	for (size_t i = 0; i < st_count(f); i++) {
		st_info ti;
		if (st_get(f, i, &ti) == 0 && ti.dtype != ST_F32) {
			WHY("%s: tensor %s is %s, versions are stored as F32", path, ti.name,
			    st_dtype_name(ti.dtype));
			rc = FL_EFORMAT;
			goto out;
		}
	}
	rc = st_to_tset(f, &t);
	if (rc) {
		WHY("%s: cannot convert tensors (%s)", path, fl_strerror(rc));
		goto out;
	}
	uint8_t fp[32], sfp[32];
	rc = tset_fingerprint(t, fp);
	if (!rc)
		rc = tset_shape_fingerprint(t, sfp);
	if (rc)
		goto out;
	if (memcmp(fp, in.sha, 32) || memcmp(sfp, in.shape_sha, 32)) {
		char h1[65], h2[65];
		hex_encode(fp, 32, h1);
		hex_encode(in.sha, 32, h2);
		WHY("%s: fingerprint %s does not match its metadata %s", path, h1, h2);
		rc = FL_EMISMATCH;
		goto out;
	}
	*adapter = t;
	t = NULL;
	*info = in;
out:
	tset_free(t);
	st_close(f);
	return rc;
}

int store_load_latest(store *s, tset **adapter, store_info *info)
{
	uint64_t *vs;
	size_t n;
	int rc = store_list_versions(s->dir, &vs, &n);
	if (rc)
		return rc;
	rc = FL_ENOENT;
	for (size_t i = n; i-- > 0;) {
		char why[400];
		rc = store_read_version(s->dir, vs[i], adapter, info, why, sizeof why);
		if (rc == 0)
			break;
		if (rc == FL_ENOMEM)
			break;
		LOGE("store", "skipping version %" PRIu64 ": %s", vs[i], why);
		rc = FL_ENOENT;
	}
	free(vs);
	if (rc)
		return rc;
	/* optimiser files newer than the committed version are orphans */
	uint64_t *os;
	size_t no;
	if (list_numbered(s->dir, ODIR, "opt-", &os, &no) == 0) {
		for (size_t i = 0; i < no; i++)
			if (os[i] > info->version) {
				char p[PATH_MAX];
				if (opt_path(s->dir, os[i], p, sizeof p) == 0 && unlink(p) == 0)
					LOGW("store", "removed %s: its version was never committed",
					     p);
			}
		free(os);
	}
	return 0;
}

static void u64s(char *b, size_t cap, uint64_t v)
{
	snprintf(b, cap, "%" PRIu64, v);
}

int store_commit(store *s, const tset *adapter, const store_info *info, const tset *opt,
                 unsigned keep)
{
	uint8_t fp[32], sfp[32];
	int rc = tset_fingerprint(adapter, fp);
	if (!rc)
		rc = tset_shape_fingerprint(adapter, sfp);
	if (rc)
		return rc;
	if (memcmp(fp, info->sha, 32)) {
		LOGE("store", "commit of version %" PRIu64 ": fingerprint does not match",
		     info->version);
		return FL_EMISMATCH;
	}
	char path[PATH_MAX];
	if (opt && tset_count(opt)) {
		if (opt_path(s->dir, info->version, path, sizeof path))
			return FL_EINVAL;
		char vb[24];
		u64s(vb, sizeof vb, info->version);
		st_kv om[1] = {{ST_META_VERSION, vb}};
		rc = st_write(path, opt, ST_F32, om, 1);
		if (rc) {
			LOGE("store", "cannot write optimiser state %s (%s)", path,
			     fl_strerror(rc));
			return rc;
		}
	}
	char ver[24], rnd[24], par[24], tms[24], rank[24], alpha[32], seed[24], nh[24], nhkv[24];
	char sha[65], ssha[65], bsha[65];
	u64s(ver, sizeof ver, info->version);
	u64s(rnd, sizeof rnd, info->round);
	u64s(par, sizeof par, info->parent);
	u64s(tms, sizeof tms, info->wall_ms ? info->wall_ms : clk_wall_ms());
	u64s(rank, sizeof rank, info->rank);
	snprintf(alpha, sizeof alpha, "%.9g", (double)info->alpha);
	u64s(seed, sizeof seed, info->init_seed);
	u64s(nh, sizeof nh, info->n_head);
	u64s(nhkv, sizeof nhkv, info->n_head_kv);
	hex_encode(fp, 32, sha);
	hex_encode(sfp, 32, ssha);
	hex_encode(info->base_sha, 32, bsha);
	st_kv meta[24] = {
	    {ST_META_VERSION, ver},
	    {ST_META_ROUND, rnd},
	    {"fedlora.parent", par},
	    {"fedlora.time_ms", tms},
	    {ST_META_SHA256, sha},
	    {ST_META_SHAPE_SHA256, ssha},
	    {"fedlora.lora_rank", rank},
	    {"fedlora.lora_alpha", alpha},
	    {"fedlora.lora_targets", info->targets},
	    {"fedlora.rslora", info->rslora ? "1" : "0"},
	    {"fedlora.ffa", info->ffa ? "1" : "0"},
	    {"fedlora.init_seed", seed},
	    {"fedlora.n_head", nh},
	    {"fedlora.n_head_kv", nhkv},
	};
	size_t nmeta = 0; /* the entries above; the rest of meta is zero */
	while (meta[nmeta].key)
		nmeta++;
	if (info->has_base)
		meta[nmeta++] = (st_kv){"fedlora.base_sha256", bsha};
	/* The keys every reader of canonical adapters knows (lora_fmt.h), so a
	 * version file works as an adapter as it is (fedlora-node eval/export
	 * --adapter) without --alpha. */
	if (info->alpha > 0 && info->rank > 0) {
		meta[nmeta++] = (st_kv){LFMT_META_ALPHA, alpha};
		meta[nmeta++] = (st_kv){LFMT_META_RANK, rank};
		meta[nmeta++] = (st_kv){LFMT_META_RSLORA, info->rslora ? "true" : "false"};
	}
	if (store_version_path(s->dir, info->version, path, sizeof path))
		return FL_EINVAL;
	rc = st_write(path, adapter, ST_F32, meta, nmeta);
	if (rc) {
		LOGE("store", "cannot write version %s (%s)", path, fl_strerror(rc));
		return rc;
	}
	if (info->version > s->max_version)
		s->max_version = info->version;
	/* retention: the commit is durable, older files may go */
	if (keep < 1)
		keep = 1;
	uint64_t *vs;
	size_t n;
	if (store_list_versions(s->dir, &vs, &n) == 0) {
		for (size_t i = 0; i + keep < n; i++) {
			if (vs[i] >= info->version)
				break;
			if (store_version_path(s->dir, vs[i], path, sizeof path) == 0 &&
			    unlink(path) != 0 && errno != ENOENT)
				LOGW("store", "cannot remove %s: %s", path, strerror(errno));
			if (opt_path(s->dir, vs[i], path, sizeof path) == 0)
				unlink(path);
		}
		free(vs);
	}
	/* optimiser files whose version file is gone */
	uint64_t *os;
	size_t no;
	if (list_numbered(s->dir, ODIR, "opt-", &os, &no) == 0) {
		for (size_t i = 0; i < no; i++) {
			char vp[PATH_MAX];
			if (store_version_path(s->dir, os[i], vp, sizeof vp) == 0 &&
			    os[i] < info->version && !file_exists(vp) &&
			    opt_path(s->dir, os[i], path, sizeof path) == 0)
				unlink(path);
		}
		free(os);
	}
	return 0;
}

int store_load_opt(store *s, uint64_t version, tset **out)
{
	char path[PATH_MAX];
	if (opt_path(s->dir, version, path, sizeof path) || !file_exists(path))
		return FL_ENOENT;
	st_file *f = NULL;
	char why[200];
	int rc = st_open(path, NULL, &f, why, sizeof why);
	if (rc) {
		LOGW("store", "optimiser state %s unreadable: %s", path, why);
		return rc;
	}
	uint64_t v;
	if (meta_u64(f, ST_META_VERSION, &v) || v != version) {
		LOGW("store", "optimiser state %s is not for version %" PRIu64, path, version);
		st_close(f);
		return FL_EFORMAT;
	}
	rc = st_to_tset(f, out);
	st_close(f);
	return rc;
}

/* Queues a formatted record (takes line); drops it when the backlog is
 * full (counted, reported by a journal_gap record once space is back). */
static void bl_push(store *s, char *line, size_t n)
{
	if (s->nbl == STORE_BACKLOG_MAX || s->bl_bytes + n > STORE_BACKLOG_BYTES) {
		s->bl_dropped++;
		free(line);
		return;
	}
	s->bl[s->nbl] = line;
	s->bl_len[s->nbl] = n;
	s->nbl++;
	s->bl_bytes += n;
}

int store_journal(store *s, cJSON *obj)
{
	cJSON_DeleteItemFromObjectCaseSensitive(obj, "ts");
	cJSON_AddNumberToObject(obj, "ts", (double)clk_wall_ms());
	char *line = NULL;
	size_t n = 0;
	int rc = journal_format(obj, &line, &n);
	if (rc) {
		LOGE("store", "cannot format a journal record (%s)", fl_strerror(rc));
		return rc;
	}
	if (s->nbl || s->bl_dropped) {
		/* keep the order: nothing new goes out before the backlog */
		bl_push(s, line, n);
		return FL_EIO;
	}
	rc = journal_append_line(s->journal, line, n, &s->jerr);
	if (rc) {
		bl_push(s, line, n);
		return rc;
	}
	free(line);
	return 0;
}

int store_journal_flush(store *s)
{
	size_t done = 0;
	int rc = 0;
	while (done < s->nbl) {
		rc = journal_append_line(s->journal, s->bl[done], s->bl_len[done], &s->jerr);
		if (rc)
			break;
		s->bl_bytes -= s->bl_len[done];
		free(s->bl[done]);
		done++;
	}
	if (done) {
		memmove(s->bl, s->bl + done, (s->nbl - done) * sizeof *s->bl);
		memmove(s->bl_len, s->bl_len + done, (s->nbl - done) * sizeof *s->bl_len);
		s->nbl -= done;
	}
	if (rc || !s->bl_dropped)
		return rc;
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return FL_ENOMEM;
	cJSON_AddStringToObject(o, "type", "journal_gap");
	cJSON_AddNumberToObject(o, "dropped", (double)s->bl_dropped);
	cJSON_AddStringToObject(o, "detail",
	                        "records lost: the journal could not be written and the "
	                        "in-memory backlog was full");
	cJSON_AddNumberToObject(o, "ts", (double)clk_wall_ms());
	char *line = NULL;
	size_t n = 0;
	rc = journal_format(o, &line, &n);
	cJSON_Delete(o);
	if (!rc)
		rc = journal_append_line(s->journal, line, n, &s->jerr);
	free(line);
	if (!rc) {
		LOGW("store", "%" PRIu64 " journal record(s) were lost while %s was not writable",
		     s->bl_dropped, s->journal);
		s->bl_dropped = 0;
	}
	return rc;
}

size_t store_journal_backlog(const store *s)
{
	return s->nbl;
}

uint64_t store_journal_dropped(const store *s)
{
	return s->bl_dropped;
}

int store_journal_errno(const store *s)
{
	return s->jerr;
}

int store_probe(store *s, uint64_t bytes, int *os_errno)
{
	char p[PATH_MAX];
	int e = 0;
	if (snprintf(p, sizeof p, "%s/" VDIR "/.probe.tmp.%ld", s->dir, (long)getpid()) >=
	    (int)sizeof p)
		return FL_EINVAL;
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		e = errno;
	} else {
		if (bytes > (uint64_t)INT64_MAX)
			bytes = (uint64_t)INT64_MAX;
		e = bytes ? posix_fallocate(fd, 0, (off_t)bytes) : 0;
		if (!e && fsync(fd) != 0)
			e = errno;
		close(fd);
		unlink(p);
	}
	if (!e)
		return 0;
	if (os_errno)
		*os_errno = e;
	return FL_EIO;
}
