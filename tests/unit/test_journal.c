/* journal: lines round-trip; a torn tail is skipped and repaired; appends
 * are all or nothing under a real short write (RLIMIT_FSIZE makes the
 * kernel write part of a record, then fail with EFBIG); the reader skips
 * exactly a damaged line and recovers a record glued to a torn one; the
 * store's in-memory backlog keeps order and reports what it dropped. */
#include "testutil.h"

#include "err.h"
#include "fileio.h"
#include "journal.h"
#include "store.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

static int sum_rounds(const cJSON *o, void *ud)
{
	const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, "round");
	*(double *)ud += cJSON_IsNumber(r) ? r->valuedouble : 0;
	return 0;
}

/* Collects the "round" of every record, in order. */
typedef struct rounds {
	int r[512];
	int n;
	int gap_dropped; /* from a journal_gap record */
} rounds;

static int collect(const cJSON *o, void *ud)
{
	rounds *rs = ud;
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type");
	if (cJSON_IsString(t) && strcmp(t->valuestring, "journal_gap") == 0) {
		rs->gap_dropped = cJSON_GetObjectItemCaseSensitive(o, "dropped")->valueint;
		return 0;
	}
	const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, "round");
	if (rs->n < 512)
		rs->r[rs->n++] = cJSON_IsNumber(r) ? r->valueint : -1;
	return 0;
}

static cJSON *rec(int round)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "type", "round_end");
	cJSON_AddNumberToObject(o, "round", round);
	cJSON_AddStringToObject(o, "detail", "a detail long enough that the limit cuts it");
	return o;
}

static long fsize(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0 ? (long)st.st_size : -1;
}

/* Lowers the soft file-size limit so that writes past `lim` are short. */
static struct rlimit limit_file_size(rlim_t lim)
{
	struct rlimit old, nw;
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	nw = old;
	nw.rlim_cur = lim;
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &nw), 0);
	return old;
}

static void test_append_read_repair(void **s)
{
	(void)s;
	char *dir = tu_mkdtemp();
	char p[512];
	snprintf(p, sizeof p, "%s/journal.jsonl", dir);
	assert_int_equal(journal_repair(p), 0); /* missing file is fine */
	for (int i = 1; i <= 5; i++) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddNumberToObject(o, "round", i);
		cJSON_AddStringToObject(o, "note", "line\nwith newline");
		assert_int_equal(journal_append(p, o), 0);
		cJSON_Delete(o);
	}
	double sum = 0;
	size_t nl, nb;
	assert_int_equal(journal_read(p, sum_rounds, &sum, &nl, &nb), 0);
	assert_int_equal(nl, 5);
	assert_int_equal(nb, 0);
	assert_true(sum == 15);
	/* A crash mid-append leaves a torn line. */
	assert_int_equal(file_append_sync(p, "{\"round\": 6, \"no", 16), 0);
	sum = 0;
	assert_int_equal(journal_read(p, sum_rounds, &sum, &nl, &nb), 0);
	assert_int_equal(nl, 5);
	assert_int_equal(nb, 1);
	assert_int_equal(journal_repair(p), 0);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "round", 6);
	assert_int_equal(journal_append(p, o), 0);
	cJSON_Delete(o);
	sum = 0;
	assert_int_equal(journal_read(p, sum_rounds, &sum, &nl, &nb), 0);
	assert_int_equal(nl, 6);
	assert_int_equal(nb, 0);
	assert_true(sum == 21);
	tu_rmtree(dir);
	free(dir);
}

/* A short write (the disk, here the file-size limit, takes 10 bytes of
 * the record) leaves the file exactly as it was; the next append after
 * space is back is whole and nothing is glued. */
static void test_short_write_all_or_nothing(void **s)
{
	(void)s;
	signal(SIGXFSZ, SIG_IGN); /* EFBIG instead of the signal */
	char *dir = tu_mkdtemp();
	char p[512], q[512];
	snprintf(p, sizeof p, "%s/journal.jsonl", dir);
	snprintf(q, sizeof q, "%s/old.jsonl", dir);
	char *line;
	size_t n;
	for (int i = 1; i <= 3; i++) {
		cJSON *o = rec(i);
		assert_int_equal(journal_append(p, o), 0);
		assert_int_equal(journal_append(q, o), 0);
		cJSON_Delete(o);
	}
	long before = fsize(p);
	assert_true(before > 0);
	cJSON *o = rec(4);
	assert_int_equal(journal_format(o, &line, &n), 0);
	cJSON_Delete(o);
	assert_true(n > 20);

	struct rlimit old = limit_file_size((rlim_t)before + 10);
	/* the plain append the journal used before: the kernel really does
	 * write 10 bytes of the record and then fails */
	int plain = file_append_sync(q, line, n);
	int e = 0;
	int rc = journal_append_line(p, line, n, &e);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	assert_int_not_equal(plain, 0);
	assert_int_equal(fsize(q), before + 10); /* torn: what used to stay */
	assert_int_equal(rc, FL_EIO);
	assert_int_equal(e, EFBIG);
	assert_int_equal(fsize(p), before); /* cut back: nothing of it stays */

	/* space is back: the same record and the next one go out whole */
	assert_int_equal(journal_append_line(p, line, n, &e), 0);
	free(line);
	o = rec(5);
	assert_int_equal(journal_append(p, o), 0);
	cJSON_Delete(o);
	rounds rs = {0};
	size_t nl, nb;
	assert_int_equal(journal_read(p, collect, &rs, &nl, &nb), 0);
	assert_int_equal(nb, 0);
	assert_int_equal(rs.n, 5);
	for (int i = 0; i < 5; i++)
		assert_int_equal(rs.r[i], i + 1);

	/* a torn tail that no cut-back removed (the old writer's) is cut by
	 * the next append instead of swallowing it */
	o = rec(4);
	assert_int_equal(journal_append(q, o), 0);
	cJSON_Delete(o);
	memset(&rs, 0, sizeof rs);
	assert_int_equal(journal_read(q, collect, &rs, &nl, &nb), 0);
	assert_int_equal(nb, 0);
	assert_int_equal(rs.n, 4);
	assert_int_equal(rs.r[3], 4);
	/* bad arguments: a line must be one line */
	assert_int_equal(journal_append_line(p, "{}", 2, NULL), FL_EINVAL);
	assert_int_equal(journal_append_line(p, "{}\n{}\n", 6, NULL), FL_EINVAL);
	signal(SIGXFSZ, SIG_DFL);
	tu_rmtree(dir);
	free(dir);
}

/* The reader skips exactly the damaged line and nothing else. */
static void test_reader_skips_exactly(void **s)
{
	(void)s;
	static const char j[] =
	    "{\"type\":\"round_end\",\"round\":1}\n"
	    "garbage that is not json\n"
	    "\n"
	    "{\"type\":\"round_end\",\"round\":2}\n"
	    /* torn record (an old writer on a full disk) with the next glued */
	    "{\"type\":\"round_end\",\"round\":77,\"det{\"type\":\"round_end\",\"round\":3}\n"
	    "{\"type\":\"round_end\",\"round\":88}trailing\n"
	    "[1,2,3]\n"
	    "{\"type\":\"round_end\",\"round\":4}\r\n"
	    "{\"type\":\"round_end\",\"round\":99,\"x\":";
	rounds rs = {0};
	size_t nl = 0, nb = 0;
	assert_int_equal(
	    journal_scan((const uint8_t *)j, sizeof j - 1, "test", collect, &rs, &nl, &nb), 0);
	assert_int_equal(nl, 4);
	assert_int_equal(nb, 5); /* garbage, torn+glued, trailing, array, torn tail */
	assert_int_equal(rs.n, 4);
	for (int i = 0; i < 4; i++)
		assert_int_equal(rs.r[i], i + 1);
}

/* The store's backlog: a failed record waits, newer ones queue behind it
 * without a write attempt, and all go out in order once space is back;
 * past the bound they are counted and a journal_gap record says so. */
static void test_store_backlog(void **s)
{
	(void)s;
	signal(SIGXFSZ, SIG_IGN);
	char *dir = tu_mkdtemp();
	store *st;
	assert_int_equal(store_open(dir, &st), 0);
	const char *jp = store_journal_path(st);
	cJSON *o = rec(1);
	assert_int_equal(store_journal(st, o), 0);
	cJSON_Delete(o);
	long before = fsize(jp);
	struct rlimit old = limit_file_size((rlim_t)before + 5);
	int total = STORE_BACKLOG_MAX + 20;
	for (int i = 2; i <= total; i++) {
		o = rec(i);
		assert_int_equal(store_journal(st, o), FL_EIO);
		cJSON_Delete(o);
	}
	assert_int_equal(store_journal_errno(st), EFBIG);
	assert_int_equal(store_journal_backlog(st), STORE_BACKLOG_MAX);
	assert_int_equal(store_journal_dropped(st), total - 1 - STORE_BACKLOG_MAX);
	assert_int_equal(store_journal_flush(st), FL_EIO); /* still full */
	assert_int_equal(fsize(jp), before);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	o = rec(total + 1); /* queued behind the backlog, not written first */
	assert_int_equal(store_journal(st, o), FL_EIO);
	cJSON_Delete(o);
	assert_int_equal(store_journal_flush(st), 0);
	assert_int_equal(store_journal_backlog(st), 0);
	assert_int_equal(store_journal_dropped(st), 0);
	o = rec(total + 2);
	assert_int_equal(store_journal(st, o), 0);
	cJSON_Delete(o);
	rounds rs = {0};
	size_t nl, nb;
	assert_int_equal(journal_read(jp, collect, &rs, &nl, &nb), 0);
	assert_int_equal(nb, 0);
	assert_int_equal(rs.gap_dropped, total - STORE_BACKLOG_MAX); /* incl. total+1 */
	assert_int_equal(rs.n, 1 + STORE_BACKLOG_MAX + 1);
	for (int i = 0; i <= STORE_BACKLOG_MAX; i++)
		assert_int_equal(rs.r[i], i + 1); /* the oldest kept, in order */
	assert_int_equal(rs.r[STORE_BACKLOG_MAX + 1], total + 2);
	store_free(st);
	signal(SIGXFSZ, SIG_DFL);
	tu_rmtree(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_append_read_repair),
	    cmocka_unit_test(test_short_write_all_or_nothing),
	    cmocka_unit_test(test_reader_skips_exactly),
	    cmocka_unit_test(test_store_backlog),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
