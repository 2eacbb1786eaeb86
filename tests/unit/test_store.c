/* store: versions round-trip with their metadata and fingerprint; damaged,
 * half-written and orphaned files are skipped or removed; retention; the
 * directory lock; and kill -9 of a writer child at random moments never
 * leaves anything that loads as valid but wrong. */
#include "testutil.h"

#include "err.h"
#include "fileio.h"
#include "safetensors.h"
#include "sha.h"
#include "store.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static tset *mk(uint64_t seed, size_t n)
{
	tset *s;
	assert_int_equal(tset_new(&s), 0);
	uint64_t a[2] = {4, n}, b[2] = {n, 4};
	tensor *x, *y;
	assert_int_equal(tset_insert(s, "blk.0.attn_q.lora_a", 2, a, NULL, &x), 0);
	assert_int_equal(tset_insert(s, "blk.0.attn_q.lora_b", 2, b, NULL, &y), 0);
	for (size_t k = 0; k < x->n; k++)
		x->data[k] = (float)tu_randu(&seed);
	for (size_t k = 0; k < y->n; k++)
		y->data[k] = (float)tu_randu(&seed);
	return s;
}

static void info_for(const tset *s, uint64_t v, store_info *in)
{
	memset(in, 0, sizeof *in);
	in->version = v;
	in->round = v * 10;
	in->parent = v ? v - 1 : 0;
	in->rank = 4;
	in->alpha = 16;
	snprintf(in->targets, sizeof in->targets, "attn_q");
	in->n_head = 2;
	in->n_head_kv = 1;
	memset(in->base_sha, 0xab, 32);
	in->has_base = 1;
	assert_int_equal(tset_fingerprint(s, in->sha), 0);
}

static void test_roundtrip(void **st)
{
	(void)st;
	char *dir = tu_mkdtemp();
	store *s;
	assert_int_equal(store_open(dir, &s), 0);
	tset *a, *b;
	store_info in, out;
	assert_int_equal(store_load_latest(s, &a, &out), FL_ENOENT);
	for (uint64_t v = 0; v < 4; v++) {
		a = mk(v + 1, 40);
		info_for(a, v, &in);
		tset *opt = mk(v + 100, 40);
		assert_int_equal(store_commit(s, a, &in, opt, 2), 0);
		tset_free(opt);
		tset_free(a);
	}
	/* wrong fingerprint in the info is refused */
	a = mk(9, 40);
	info_for(a, 9, &in);
	in.sha[0] ^= 1;
	assert_int_equal(store_commit(s, a, &in, NULL, 2), FL_EMISMATCH);
	tset_free(a);
	assert_int_equal(store_max_version(s), 3);
	uint64_t *vs;
	size_t n;
	assert_int_equal(store_list_versions(dir, &vs, &n), 0);
	assert_int_equal(n, 2); /* retention */
	assert_int_equal(vs[0], 2);
	assert_int_equal(vs[1], 3);
	free(vs);
	assert_int_equal(store_load_latest(s, &b, &out), 0);
	a = mk(4, 40);
	uint8_t fa[32], fb[32];
	assert_int_equal(tset_fingerprint(a, fa), 0);
	assert_int_equal(tset_fingerprint(b, fb), 0);
	assert_memory_equal(fa, fb, 32);
	assert_memory_equal(out.sha, fa, 32);
	assert_int_equal(out.version, 3);
	assert_int_equal(out.round, 30);
	assert_int_equal(out.parent, 2);
	assert_int_equal(out.rank, 4);
	assert_true(out.alpha == 16.0f);
	assert_string_equal(out.targets, "attn_q");
	assert_int_equal(out.n_head, 2);
	assert_int_equal(out.n_head_kv, 1);
	assert_true(out.has_base);
	tset *opt;
	assert_int_equal(store_load_opt(s, 3, &opt), 0);
	tset *want = mk(103, 40);
	assert_int_equal(tset_fingerprint(opt, fa), 0);
	assert_int_equal(tset_fingerprint(want, fb), 0);
	assert_memory_equal(fa, fb, 32);
	tset_free(want);
	tset_free(opt);
	assert_int_equal(store_load_opt(s, 0, &opt), FL_ENOENT); /* removed with v0 */
	tset_free(a);
	tset_free(b);
	/* journal lines get a timestamp */
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "type", "test");
	assert_int_equal(store_journal(s, j), 0);
	assert_non_null(cJSON_GetObjectItem(j, "ts"));
	cJSON_Delete(j);
	/* the lock */
	store *s2;
	assert_int_equal(store_open(dir, &s2), FL_EBUSY);
	store_free(s);
	assert_int_equal(store_open(dir, &s2), 0);
	store_free(s2);
	tu_rmtree(dir);
	free(dir);
}

/* Damage: flipped data byte, truncated file, edited metadata, a temp file
 * left by a crash, an optimiser file whose version never landed. */
static void test_damage(void **st)
{
	(void)st;
	char *dir = tu_mkdtemp();
	store *s;
	assert_int_equal(store_open(dir, &s), 0);
	store_info in, out;
	for (uint64_t v = 1; v <= 4; v++) {
		tset *a = mk(v, 64);
		info_for(a, v, &in);
		assert_int_equal(store_commit(s, a, &in, NULL, 10), 0);
		tset_free(a);
	}
	store_free(s);
	char p[600], why[400];
	/* v4: one bit flipped in the data */
	store_version_path(dir, 4, p, sizeof p);
	assert_int_equal(
	    tu_system("printf '\\x01' | dd of='%s' bs=1 seek=$(( $(stat -c %%s '%s') - 5 )) "
	              "conv=notrunc status=none",
	              p, p),
	    0);
	tset *t;
	assert_int_equal(store_read_version(dir, 4, &t, &out, why, sizeof why), FL_EMISMATCH);
	assert_non_null(strstr(why, "fingerprint"));
	/* v3: truncated */
	store_version_path(dir, 3, p, sizeof p);
	assert_int_equal(tu_system("truncate -s -100 '%s'", p), 0);
	assert_true(store_read_version(dir, 3, &t, &out, why, sizeof why) < 0);
	/* v2: metadata version edited to another number */
	store_version_path(dir, 2, p, sizeof p);
	assert_int_equal(
	    tu_system("sed -i 's/\"fedlora.version\":\"2\"/\"fedlora.version\":\"7\"/' '%s'", p),
	    0);
	assert_int_equal(store_read_version(dir, 2, &t, &out, why, sizeof why), FL_EFORMAT);
	/* leftovers of a crash */
	char tmp[700];
	snprintf(tmp, sizeof tmp, "%s/versions/v00000000000000000005.safetensors.tmp.12345", dir);
	assert_int_equal(file_write_atomic(tmp, "partial", 7), 0);
	snprintf(tmp, sizeof tmp, "%s/opt/opt-00000000000000000009.safetensors", dir);
	tset *o = mk(1, 8);
	st_kv meta[1] = {{ST_META_VERSION, "9"}};
	assert_int_equal(st_write(tmp, o, ST_F32, meta, 1), 0);
	tset_free(o);
	assert_int_equal(store_open(dir, &s), 0);
	snprintf(tmp, sizeof tmp, "%s/versions/v00000000000000000005.safetensors.tmp.12345", dir);
	assert_false(file_exists(tmp));
	assert_int_equal(store_max_version(s), 4); /* damaged ones still count */
	assert_int_equal(store_load_latest(s, &t, &out), 0);
	assert_int_equal(out.version, 1);
	snprintf(tmp, sizeof tmp, "%s/opt/opt-00000000000000000009.safetensors", dir);
	assert_false(file_exists(tmp));
	tset_free(t);
	store_free(s);
	tu_rmtree(dir);
	free(dir);
}

static void die_hook(const char *tmp)
{
	(void)tmp;
	_exit(9); /* between fsync of the temp file and the rename */
}

/* A writer dying right before the rename leaves the previous version. */
static void test_die_before_rename(void **st)
{
	(void)st;
	char *dir = tu_mkdtemp();
	store *s;
	assert_int_equal(store_open(dir, &s), 0);
	store_info in;
	tset *a = mk(1, 64);
	info_for(a, 1, &in);
	assert_int_equal(store_commit(s, a, &in, NULL, 10), 0);
	tset_free(a);
	store_free(s);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		store *c;
		if (store_open(dir, &c))
			_exit(1);
		tset *b = mk(2, 64);
		store_info i2;
		memset(&i2, 0, sizeof i2);
		i2.version = 2;
		tset_fingerprint(b, i2.sha);
		fileio_test_hook = die_hook;
		store_commit(c, b, &i2, NULL, 10);
		_exit(0);
	}
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 9);
	assert_int_equal(store_open(dir, &s), 0);
	tset *t;
	store_info out;
	assert_int_equal(store_load_latest(s, &t, &out), 0);
	assert_int_equal(out.version, 1);
	tset_free(t);
	store_free(s);
	tu_rmtree(dir);
	free(dir);
}

/* kill -9 a child that commits versions in a loop, at random moments:
 * the newest loadable version always verifies and is the last one the
 * child reported as committed (or the one after, if the kill landed
 * after the rename but before the report). */
static void test_kill9_loop(void **st)
{
	(void)st;
	char *dir = tu_mkdtemp();
	uint64_t seed = (uint64_t)time(NULL);
	for (int iter = 0; iter < 6; iter++) {
		int fds[2];
		assert_int_equal(pipe(fds), 0);
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			close(fds[0]);
			store *c;
			if (store_open(dir, &c))
				_exit(1);
			uint64_t v = store_max_version(c);
			for (;;) {
				v++;
				tset *b = mk(v, 20000); /* 640 KB per version */
				store_info i2;
				info_for(b, v, &i2);
				if (store_commit(c, b, &i2, NULL, 3))
					_exit(2);
				tset_free(b);
				uint8_t vb[8];
				memcpy(vb, &v, 8);
				if (write(fds[1], vb, 8) != 8)
					_exit(3);
			}
		}
		close(fds[1]);
		/* let it commit a few, then kill at a random moment */
		uint64_t last = 0, got = 0;
		uint8_t vb[8];
		while (got < 2 && read(fds[0], vb, 8) == 8) {
			memcpy(&last, vb, 8);
			got++;
		}
		struct timespec ts = {0, (long)(tu_rand(&seed) % 40000000)};
		nanosleep(&ts, NULL);
		kill(pid, SIGKILL);
		int status;
		waitpid(pid, &status, 0);
		while (read(fds[0], vb, 8) == 8)
			memcpy(&last, vb, 8);
		close(fds[0]);
		store *s;
		assert_int_equal(store_open(dir, &s), 0);
		tset *t;
		store_info out;
		assert_int_equal(store_load_latest(s, &t, &out), 0);
		if (out.version != last && out.version != last + 1)
			fail_msg("iteration %d: loaded version %llu, last committed %llu", iter,
			         (unsigned long long)out.version, (unsigned long long)last);
		tset *want = mk(out.version, 20000);
		uint8_t fa[32], fb[32];
		assert_int_equal(tset_fingerprint(t, fa), 0);
		assert_int_equal(tset_fingerprint(want, fb), 0);
		assert_memory_equal(fa, fb, 32);
		tset_free(want);
		tset_free(t);
		store_free(s);
	}
	tu_rmtree(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_roundtrip),
	    cmocka_unit_test(test_damage),
	    cmocka_unit_test(test_die_before_rename),
	    cmocka_unit_test(test_kill9_loop),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
