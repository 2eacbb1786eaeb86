/* partition: shards cover the corpus exactly once; Dirichlet with large
 * alpha approaches IID; by-key never splits a key; deterministic by seed. */
#include "testutil.h"

#include "err.h"
#include "fileio.h"
#include "partition.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NREC  3000
#define NKEYS 12

static char *g_dir;

static int setup(void **s)
{
	(void)s;
	g_dir = tu_mkdtemp();
	return g_dir ? 0 : -1;
}
static int teardown(void **s)
{
	(void)s;
	tu_rmtree(g_dir);
	free(g_dir);
	return 0;
}

/* Synthetic play: NREC speeches by NKEYS speakers with skewed frequencies;
 * each speech is unique ("line <i>"). */
static void write_play(const char *path)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	uint64_t rs = 11;
	for (int i = 0; i < NREC; i++) {
		int spk = (int)(tu_rand(&rs) % NKEYS);
		if (spk > 6 && (tu_rand(&rs) & 1))
			spk = 0; /* skew */
		fprintf(f, "SPEAKER%02d:\nline %d of the play\nand more %d\n\n", spk, i, i * 7);
	}
	fclose(f);
}

static void write_jsonl(const char *path)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	for (int i = 0; i < 400; i++)
		fprintf(f, "{\"text\": \"sample %d\", \"site\": \"plant-%d\"}\n", i, i % 9);
	fclose(f);
}

typedef struct seen {
	int count[NREC];
	int shard_of_key[NKEYS];
	int key_in_shard[64][NKEYS];
} seen;

/* Reads every node-NNN/{train,eval}.txt and counts each speech. */
static void collect(const char *out, int nodes, seen *sn)
{
	memset(sn, 0, sizeof *sn);
	for (int k = 0; k < NKEYS; k++)
		sn->shard_of_key[k] = -1;
	for (int s = 0; s < nodes; s++) {
		for (int ev = 0; ev < 2; ev++) {
			char p[1100];
			snprintf(p, sizeof p, "%s/node-%03d/%s.txt", out, s, ev ? "eval" : "train");
			uint8_t *d;
			size_t n;
			assert_int_equal(file_read_all(p, 1 << 26, &d, &n), 0);
			char *c = (char *)d;
			int spk, line, more;
			while ((c = strstr(c, "SPEAKER")) != NULL) {
				assert_int_equal(
				    sscanf(c, "SPEAKER%d:\nline %d of the play\nand more %d\n",
				           &spk, &line, &more),
				    3);
				assert_int_equal(more, line * 7);
				assert_true(line >= 0 && line < NREC);
				sn->count[line]++;
				sn->key_in_shard[s][spk]++;
				c += 7;
			}
			free(d);
		}
	}
}

static void test_iid_covers_exactly_once(void **st)
{
	(void)st;
	char in[512], out[512];
	snprintf(in, sizeof in, "%s/play.txt", g_dir);
	snprintf(out, sizeof out, "%s/iid", g_dir);
	write_play(in);
	part_opts o = {.input = in,
	               .out_dir = out,
	               .nodes = 7,
	               .mode = PART_IID,
	               .holdout = 0.2,
	               .seed = 5,
	               .quiet = 1};
	part_shard *sh = NULL;
	assert_int_equal(part_run(&o, &sh), 0);
	static seen sn;
	collect(out, 7, &sn);
	for (int i = 0; i < NREC; i++)
		if (sn.count[i] != 1)
			fail_msg("speech %d appears %d times", i, sn.count[i]);
	size_t total = 0, held = 0;
	for (int s = 0; s < 7; s++) {
		total += sh[s].train_records + sh[s].eval_records;
		held += sh[s].eval_records;
		/* IID: shard sizes differ by at most one */
		assert_true(sh[s].train_records + sh[s].eval_records >= NREC / 7);
		assert_true(sh[s].train_records + sh[s].eval_records <= NREC / 7 + 1);
	}
	assert_int_equal(total, NREC);
	assert_true(fabs((double)held / NREC - 0.2) < 0.01);
	char man[600];
	snprintf(man, sizeof man, "%s/partition.json", out);
	assert_true(file_exists(man));
	free(sh);
}

/* Total-variation distance between each shard's key histogram and the
 * corpus's, averaged over shards. */
static double mean_tv(const seen *sn, int nodes)
{
	double global[NKEYS] = {0}, gt = 0, acc = 0;
	for (int s = 0; s < nodes; s++)
		for (int k = 0; k < NKEYS; k++) {
			global[k] += sn->key_in_shard[s][k];
			gt += sn->key_in_shard[s][k];
		}
	for (int s = 0; s < nodes; s++) {
		double t = 0, tv = 0;
		for (int k = 0; k < NKEYS; k++)
			t += sn->key_in_shard[s][k];
		for (int k = 0; k < NKEYS; k++)
			tv += fabs(sn->key_in_shard[s][k] / t - global[k] / gt);
		acc += tv / 2;
	}
	return acc / nodes;
}

static void test_dirichlet_alpha(void **st)
{
	(void)st;
	char in[512], out[512];
	snprintf(in, sizeof in, "%s/play.txt", g_dir);
	write_play(in);
	static seen sn;
	double tv_small = 0, tv_large = 0, tv_iid = 0;
	const double alphas[3] = {0.1, 1000.0, 0};
	for (int a = 0; a < 3; a++) {
		snprintf(out, sizeof out, "%s/dir%d", g_dir, a);
		part_opts o = {.input = in,
		               .out_dir = out,
		               .nodes = 5,
		               .mode = a < 2 ? PART_DIRICHLET : PART_IID,
		               .key = "speaker",
		               .alpha = alphas[a],
		               .holdout = 0.1,
		               .seed = 9,
		               .quiet = 1};
		part_shard *sh = NULL;
		assert_int_equal(part_run(&o, &sh), 0);
		collect(out, 5, &sn);
		for (int i = 0; i < NREC; i++)
			assert_int_equal(sn.count[i], 1);
		double tv = mean_tv(&sn, 5);
		if (a == 0)
			tv_small = tv;
		else if (a == 1)
			tv_large = tv;
		else
			tv_iid = tv;
		free(sh);
	}
	print_message("mean TV distance to the corpus key mix: alpha 0.1 %.3f, alpha 1000 %.3f, "
	              "iid %.3f\n",
	              tv_small, tv_large, tv_iid);
	/* Large alpha is as close to the corpus mix as IID sampling (within
	 * sampling noise of ~600 records per shard); small alpha is far. */
	assert_true(tv_large < 0.08);
	assert_true(tv_iid < 0.08);
	assert_true(tv_small > 0.3);
}

static void test_by_key_never_splits(void **st)
{
	(void)st;
	char in[512], out[512];
	snprintf(in, sizeof in, "%s/play.txt", g_dir);
	snprintf(out, sizeof out, "%s/bykey", g_dir);
	write_play(in);
	part_opts o = {.input = in,
	               .out_dir = out,
	               .nodes = 4,
	               .mode = PART_BY_KEY,
	               .key = "speaker",
	               .holdout = 0.1,
	               .seed = 2,
	               .quiet = 1};
	part_shard *sh = NULL;
	assert_int_equal(part_run(&o, &sh), 0);
	static seen sn;
	collect(out, 4, &sn);
	for (int i = 0; i < NREC; i++)
		assert_int_equal(sn.count[i], 1);
	for (int k = 0; k < NKEYS; k++) {
		int holders = 0;
		for (int s = 0; s < 4; s++)
			holders += sn.key_in_shard[s][k] > 0;
		assert_int_equal(holders, 1);
	}
	free(sh);
	/* More shards than keys: refused with a clear error. */
	o.nodes = NKEYS + 1;
	assert_int_equal(part_run(&o, &sh), FL_EINVAL);
}

static void test_deterministic_and_seed_sensitive(void **st)
{
	(void)st;
	char in[512], a[512], b[512], c[512];
	snprintf(in, sizeof in, "%s/play.txt", g_dir);
	write_play(in);
	snprintf(a, sizeof a, "%s/s1", g_dir);
	snprintf(b, sizeof b, "%s/s2", g_dir);
	snprintf(c, sizeof c, "%s/s3", g_dir);
	part_opts o = {.input = in,
	               .out_dir = a,
	               .nodes = 3,
	               .mode = PART_DIRICHLET,
	               .key = "speaker",
	               .alpha = 0.5,
	               .holdout = 0.1,
	               .seed = 77,
	               .quiet = 1};
	part_shard *sh;
	assert_int_equal(part_run(&o, &sh), 0);
	free(sh);
	o.out_dir = b;
	assert_int_equal(part_run(&o, &sh), 0);
	free(sh);
	o.out_dir = c;
	o.seed = 78;
	assert_int_equal(part_run(&o, &sh), 0);
	free(sh);
	assert_int_equal(tu_system("diff -r '%s' '%s' >/dev/null", a, b), 0);
	assert_int_not_equal(tu_system("diff -r '%s' '%s' >/dev/null", a, c), 0);
}

static void test_jsonl_and_errors(void **st)
{
	(void)st;
	char in[512], out[512];
	snprintf(in, sizeof in, "%s/d.jsonl", g_dir);
	snprintf(out, sizeof out, "%s/js", g_dir);
	write_jsonl(in);
	part_opts o = {.input = in,
	               .out_dir = out,
	               .nodes = 3,
	               .mode = PART_BY_KEY,
	               .key = "site",
	               .holdout = 0.1,
	               .seed = 1,
	               .jsonl = 1,
	               .quiet = 1};
	part_shard *sh;
	assert_int_equal(part_run(&o, &sh), 0);
	size_t tot = 0;
	for (int s = 0; s < 3; s++)
		tot += sh[s].train_records + sh[s].eval_records;
	assert_int_equal(tot, 400);
	free(sh);
	/* missing key field */
	o.key = "nope";
	assert_int_equal(part_run(&o, &sh), FL_EFORMAT);
	/* invalid JSON line */
	FILE *f = fopen(in, "a");
	fputs("{not json\n", f);
	fclose(f);
	o.key = "site";
	assert_int_equal(part_run(&o, &sh), FL_EFORMAT);
	/* missing file */
	o.input = "/nonexistent/corpus.jsonl";
	assert_int_equal(part_run(&o, &sh), FL_ENOENT);
}

static void test_shakespeare_by_role(void **st)
{
	(void)st;
	const char *p = tu_shared_data("tinyshakespeare.txt");
	if (!p) {
		print_message("skipped: ../shared/data/tinyshakespeare.txt not present\n");
		skip();
	}
	char out[512];
	snprintf(out, sizeof out, "%s/shakes", g_dir);
	part_opts o = {.input = p,
	               .out_dir = out,
	               .nodes = 20,
	               .mode = PART_BY_KEY,
	               .key = "speaker",
	               .holdout = 0.1,
	               .seed = 1,
	               .quiet = 1};
	part_shard *sh;
	assert_int_equal(part_run(&o, &sh), 0);
	size_t bytes = 0, mn = SIZE_MAX, mx = 0;
	for (int s = 0; s < 20; s++) {
		size_t b = sh[s].train_bytes + sh[s].eval_bytes;
		bytes += b;
		mn = b < mn ? b : mn;
		mx = b > mx ? b : mx;
		assert_true(sh[s].eval_records > 0);
	}
	/* Every speech (paragraph) lands once; only blank-line runs differ. */
	assert_true(bytes > 1000000 && bytes < 1115394 + 20000);
	assert_true(mx > 2 * mn); /* non-IID sizes */
	free(sh);
}

/* Prose: 12 stories of 10 paragraphs, each story's first paragraph starting
 * with "STORY <s>". --key document keeps every story in one shard and holds
 * out each shard's tail: every held-out paragraph comes after all of the
 * shard's training paragraphs in file order. */
#define NSTORY 12
static void check_documents(const char *out, int nodes)
{
	int shard_of[NSTORY * 10], eval_of[NSTORY * 10];
	for (int i = 0; i < NSTORY * 10; i++)
		shard_of[i] = -1;
	for (int s = 0; s < nodes; s++) {
		int max_train = -1, min_eval = 1 << 30, n_eval = 0;
		for (int ev = 0; ev < 2; ev++) {
			char p[1100];
			snprintf(p, sizeof p, "%s/node-%03d/%s.txt", out, s, ev ? "eval" : "train");
			uint8_t *d;
			size_t n;
			assert_int_equal(file_read_all(p, 1 << 24, &d, &n), 0);
			for (char *c = (char *)d; (c = strstr(c, "paragraph ")) != NULL; c += 10) {
				int k = atoi(c + 10);
				assert_true(k >= 0 && k < NSTORY * 10);
				assert_int_equal(shard_of[k], -1); /* each paragraph once */
				shard_of[k] = s;
				eval_of[k] = ev;
				if (ev) {
					n_eval++;
					min_eval = k < min_eval ? k : min_eval;
				} else {
					max_train = k > max_train ? k : max_train;
				}
			}
			free(d);
		}
		assert_true(n_eval > 0);
		assert_true(max_train < min_eval); /* the held-out part is the tail */
	}
	for (int k = 0; k < NSTORY * 10; k++) {
		assert_true(shard_of[k] >= 0);
		assert_int_equal(shard_of[k], shard_of[k - k % 10]); /* one story, one shard */
	}
	(void)eval_of;
}

static void test_by_document(void **st)
{
	(void)st;
	char in[512], out[512];
	snprintf(in, sizeof in, "%s/prose.txt", g_dir);
	FILE *f = fopen(in, "w");
	assert_non_null(f);
	for (int k = 0; k < NSTORY * 10; k++)
		fprintf(f, "%s%d\nparagraph %d of the tale, words words.\n\n",
		        k % 10 == 0 ? "STORY " : "Then ", k / 10, k);
	fclose(f);
	part_opts o = {.input = in,
	               .nodes = 4,
	               .mode = PART_BY_KEY,
	               .key = "document",
	               .doc_start = "^STORY [0-9]+$",
	               .holdout = 0.2,
	               .seed = 3,
	               .quiet = 1};
	part_shard *sh = NULL;
	snprintf(out, sizeof out, "%s/docs-re", g_dir);
	o.out_dir = out;
	assert_int_equal(part_run(&o, &sh), 0);
	free(sh);
	check_documents(out, 4);
	/* the same stories by size: a document every 10 paragraphs */
	snprintf(out, sizeof out, "%s/docs-size", g_dir);
	o.out_dir = out;
	o.doc_start = NULL;
	o.doc_size = 10;
	assert_int_equal(part_run(&o, &sh), 0);
	free(sh);
	check_documents(out, 4);
	/* refusals: a bad expression, document options with another key */
	o.doc_start = "([";
	assert_int_equal(part_run(&o, &sh), FL_EINVAL);
	o.key = "speaker";
	o.doc_start = "^STORY";
	assert_int_equal(part_run(&o, &sh), FL_EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_iid_covers_exactly_once),
	    cmocka_unit_test(test_dirichlet_alpha),
	    cmocka_unit_test(test_by_key_never_splits),
	    cmocka_unit_test(test_deterministic_and_seed_sensitive),
	    cmocka_unit_test(test_jsonl_and_errors),
	    cmocka_unit_test(test_by_document),
	    cmocka_unit_test(test_shakespeare_by_role),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
