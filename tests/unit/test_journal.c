/* journal: lines round-trip; a torn tail is skipped and repaired. */
#include "testutil.h"

#include "err.h"
#include "fileio.h"
#include "journal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int sum_rounds(const cJSON *o, void *ud)
{
	const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, "round");
	*(double *)ud += cJSON_IsNumber(r) ? r->valuedouble : 0;
	return 0;
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

int main(void)
{
	const struct CMUnitTest tests[] = {cmocka_unit_test(test_append_read_repair)};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
