/* test_dataset — training data: plain text and both JSONL kinds tokenized
 * with the built-in byte vocabulary (so expected ids are the bytes + 3),
 * the response-only loss mask of instruction records, held-out splits,
 * packing into windows, and every kind of bad file (empty, not UTF-8,
 * invalid JSON, not an object, missing / non-string / empty fields)
 * refused with the file and line in the message. */
#include "testutil.h"

#include "dataset.h"
#include "err.h"
#include "model/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static tok *tk;

static int setup(void **state)
{
	(void)state;
	return tok_new_byte_vocab(&tk);
}

static int teardown(void **state)
{
	(void)state;
	tok_free(tk);
	return 0;
}

/* byte vocabulary: <s> = 1, </s> = 2, byte b = b + 3, space = 259 */
static int32_t id_of(char ch)
{
	return ch == ' ' ? 259 : (int32_t)(uint8_t)ch + 3;
}

static void test_text(void **state)
{
	(void)state;
	const char *txt = "ab cd\nef";
	ds_opts o = {.format = DS_FMT_TEXT};
	ds *tr = NULL, *ev = NULL;
	char err[256];
	assert_int_equal(ds_parse("t.txt", txt, strlen(txt), tk, &o, &tr, &ev, err, sizeof err), 0);
	assert_null(ev);
	/* BOS + 8 bytes */
	assert_int_equal(ds_n_tokens(tr), 9);
	assert_int_equal(ds_n_targets(tr), 8);
	assert_int_equal(ds_n_records(tr), 1);
	const int32_t *t = ds_token_data(tr);
	assert_int_equal(t[0], 1);
	for (int i = 0; i < 8; i++)
		assert_int_equal(t[i + 1], id_of(txt[i]));
	/* windows of 3: inputs [0..3) [3..6) [6..9), targets shifted by one */
	assert_int_equal(ds_n_windows(tr, 3), 3);
	assert_int_equal(ds_n_windows(tr, 8), 1);
	assert_int_equal(ds_n_windows(tr, 5), 2);
	int32_t in[9], tg[9];
	assert_int_equal(ds_window(tr, 3, 0, in, tg), 3);
	assert_int_equal(in[0], 1);
	assert_int_equal(tg[0], id_of('a'));
	assert_int_equal(tg[2], 259);
	assert_int_equal(ds_window(tr, 3, 2, in, tg), 2); /* last target 'f' at 8 */
	assert_int_equal(in[2], id_of('f'));
	assert_int_equal(tg[2], -1);
	assert_int_equal(ds_window(tr, 5, 1, in, tg), 3);
	assert_int_equal(tg[3], -1);
	assert_int_equal(in[4], 0); /* padding input */
	/* every target exactly once over all windows */
	for (int ctx = 1; ctx <= 9; ctx++) {
		size_t cnt = 0;
		for (size_t w = 0; w < ds_n_windows(tr, ctx); w++)
			cnt += (size_t)ds_window(tr, ctx, w, in, tg);
		assert_int_equal(cnt, 8);
	}
	ds_free(tr);

	/* hold out the last 25 % of 101 tokens */
	char big[101];
	memset(big, 'x', 100);
	big[100] = 0;
	o.holdout = 0.25;
	assert_int_equal(ds_parse("big.txt", big, 100, tk, &o, &tr, &ev, err, sizeof err), 0);
	assert_int_equal(ds_n_tokens(tr) + ds_n_tokens(ev), 101);
	assert_int_equal(ds_n_tokens(ev), 25);
	assert_int_equal(ds_n_targets(ev), 24); /* its first token has no predecessor */
	ds_free(tr);
	ds_free(ev);
	/* too little to hold out from */
	assert_int_equal(ds_parse("s.txt", "ab", 2, tk, &o, &tr, &ev, err, sizeof err), FL_EINVAL);
	assert_non_null(strstr(err, "s.txt"));
	/* holdout needs somewhere to go */
	assert_int_equal(ds_parse("s.txt", big, 100, tk, &o, &tr, NULL, err, sizeof err),
	                 FL_EINVAL);
}

static void test_jsonl(void **state)
{
	(void)state;
	const char *j = "{\"text\": \"hi\"}\n"
	                "\n"
	                "  \r\n"
	                "{\"instruction\": \"Q\", \"input\": \"\", \"output\": \"ok\"}\r\n"
	                "{\"instruction\": \"Q\", \"input\": \"x\", \"output\": \"yo\", "
	                "\"extra\": 1}";
	ds_opts o = {.format = DS_FMT_AUTO};
	ds *tr = NULL, *ev = NULL;
	char err[256];
	assert_int_equal(ds_parse("d.jsonl", j, strlen(j), tk, &o, &tr, &ev, err, sizeof err), 0);
	assert_int_equal(ds_n_records(tr), 3);
	const int32_t *t = ds_token_data(tr);
	const uint8_t *m = ds_mask_data(tr);
	/* record 1: <s> h i </s>, all targets but BOS */
	assert_int_equal(t[0], 1);
	assert_int_equal(t[1], id_of('h'));
	assert_int_equal(t[3], 2);
	assert_int_equal(m[1] + m[2] + m[3], 3);
	/* record 2: <s> "### Instruction:\nQ\n\n### Response:\nok" </s>: only
	 * "ok" and </s> are targets */
	const char *p2 = "### Instruction:\nQ\n\n### Response:\nok";
	size_t a = 4, n2 = strlen(p2);
	assert_int_equal(t[a], 1);
	assert_int_equal(m[a], 0);
	for (size_t i = 0; i < n2; i++) {
		assert_int_equal(t[a + 1 + i], id_of(p2[i]));
		assert_int_equal(m[a + 1 + i], i >= n2 - 2);
	}
	assert_int_equal(t[a + 1 + n2], 2);
	assert_int_equal(m[a + 1 + n2], 1);
	/* record 3 has the Input section */
	size_t b = a + n2 + 2;
	const char *p3 = "### Instruction:\nQ\n\n### Input:\nx\n\n### Response:\nyo";
	for (size_t i = 0; i < strlen(p3); i++)
		assert_int_equal(t[b + 1 + i], id_of(p3[i]));
	assert_int_equal(ds_n_targets(tr), 3 + 3 + 3);
	assert_int_equal(ds_n_tokens(tr), b + 1 + strlen(p3) + 1);
	ds_free(tr);

	/* a file named .txt parsed as JSONL when asked */
	o.format = DS_FMT_JSONL;
	assert_int_equal(
	    ds_parse("d.txt", "{\"text\":\"a\"}", 12, tk, &o, &tr, NULL, err, sizeof err), 0);
	assert_int_equal(ds_n_tokens(tr), 3);
	ds_free(tr);
}

static void test_holdout_records(void **state)
{
	(void)state;
	char j[2000];
	size_t n = 0;
	for (int i = 0; i < 40; i++)
		n += (size_t)snprintf(j + n, sizeof j - n, "{\"text\": \"r%02d\"}\n", i);
	ds_opts o = {.format = DS_FMT_JSONL, .holdout = 0.1, .seed = 5};
	ds *tr = NULL, *ev = NULL, *tr2 = NULL, *ev2 = NULL;
	char err[256];
	assert_int_equal(ds_parse("h.jsonl", j, n, tk, &o, &tr, &ev, err, sizeof err), 0);
	assert_int_equal(ds_n_records(tr), 36);
	assert_int_equal(ds_n_records(ev), 4);
	assert_int_equal(ds_n_tokens(tr) + ds_n_tokens(ev), 40 * 5); /* <s> r d d </s> */
	/* same seed, same split; another seed, another split */
	assert_int_equal(ds_parse("h.jsonl", j, n, tk, &o, &tr2, &ev2, err, sizeof err), 0);
	assert_memory_equal(ds_token_data(ev), ds_token_data(ev2), sizeof(int32_t) * 20);
	ds_free(tr2);
	ds_free(ev2);
	o.seed = 6;
	assert_int_equal(ds_parse("h.jsonl", j, n, tk, &o, &tr2, &ev2, err, sizeof err), 0);
	assert_memory_not_equal(ds_token_data(ev), ds_token_data(ev2), sizeof(int32_t) * 20);
	/* every record lands in exactly one part: count the record numbers */
	int seen[40] = {0};
	const ds *parts[2] = {tr, ev};
	for (int pi = 0; pi < 2; pi++) {
		const int32_t *t = ds_token_data(parts[pi]);
		for (size_t i = 0; i + 4 < ds_n_tokens(parts[pi]); i += 5) {
			int d = (t[i + 2] - 3 - '0') * 10 + (t[i + 3] - 3 - '0');
			assert_true(d >= 0 && d < 40);
			seen[d]++;
		}
	}
	for (int i = 0; i < 40; i++)
		assert_int_equal(seen[i], 1);
	ds_free(tr);
	ds_free(ev);
	ds_free(tr2);
	ds_free(ev2);
}

static void bad(const char *name, const char *data, size_t n, int format, const char *want1,
                const char *want2)
{
	ds_opts o = {.format = format};
	ds *tr = NULL;
	char err[256] = "";
	int rc = ds_parse(name, data, n, tk, &o, &tr, NULL, err, sizeof err);
	printf("  %-12s -> %s\n", name, err);
	assert_int_not_equal(rc, 0);
	assert_null(tr);
	assert_non_null(strstr(err, name));
	if (want1)
		assert_non_null(strstr(err, want1));
	if (want2)
		assert_non_null(strstr(err, want2));
}

static void test_bad_files(void **state)
{
	(void)state;
	bad("empty.txt", "", 0, DS_FMT_AUTO, "empty", NULL);
	bad("blank.txt", " \n\t\n", 4, DS_FMT_AUTO, "empty", NULL);
	bad("empty.jsonl", "\n\n", 2, DS_FMT_AUTO, "empty", NULL);
	bad("latin1.txt", "ok\nline two caf\xe9\n", 17, DS_FMT_AUTO, "latin1.txt:2:", "UTF-8");
	bad("surr.txt", "a\xed\xa0\x80z", 5, DS_FMT_AUTO, "UTF-8", NULL);
	bad("over.txt", "a\xc0\xafz", 4, DS_FMT_AUTO, "UTF-8", NULL);
	const char *j1 = "{\"text\":\"a\"}\n{\"text\": \"b\"\n";
	bad("badjson.jsonl", j1, strlen(j1), DS_FMT_AUTO, "badjson.jsonl:2:", "invalid JSON");
	const char *j2 = "{\"text\":\"a\"} x\n";
	bad("trail.jsonl", j2, strlen(j2), DS_FMT_AUTO, "trail.jsonl:1:", "trailing");
	const char *j3 = "{\"text\":\"a\"}\n[1, 2]\n";
	bad("arr.jsonl", j3, strlen(j3), DS_FMT_AUTO, "arr.jsonl:2:", "not a JSON object");
	const char *j4 = "{\"txt\":\"a\"}\n";
	bad("nofield.jsonl", j4, strlen(j4), DS_FMT_AUTO, "nofield.jsonl:1:", "missing field");
	const char *j5 = "{\"instruction\":\"a\"}\n";
	bad("noout.jsonl", j5, strlen(j5), DS_FMT_AUTO, "noout.jsonl:1:", "\"output\"");
	const char *j6 = "{\"text\": 5}\n";
	bad("num.jsonl", j6, strlen(j6), DS_FMT_AUTO, "num.jsonl:1:", "not a string");
	const char *j7 = "{\"text\": \"\"}\n";
	bad("emptyf.jsonl", j7, strlen(j7), DS_FMT_AUTO, "emptyf.jsonl:1:", "empty");
	const char *j8 = "{\"instruction\":\"a\", \"input\": 3, \"output\": \"b\"}\n";
	bad("input.jsonl", j8, strlen(j8), DS_FMT_AUTO, "input.jsonl:1:", "\"input\"");
	const char *j9 = "{\"text\":\"ok\"}\n{\"text\":\"\xff\"}\n";
	bad("bin.jsonl", j9, strlen(j9), DS_FMT_AUTO, "bin.jsonl:2:", "UTF-8");
	const char *j10 = "{\"text\":\"\\ud800\"}\n";
	bad("esc.jsonl", j10, strlen(j10), DS_FMT_AUTO, "esc.jsonl:1:", NULL);

	/* files */
	char *dir = tu_mkdtemp();
	char path[512], err[512];
	ds_opts o = {0};
	ds *tr = NULL;
	snprintf(path, sizeof path, "%s/missing.txt", dir);
	assert_int_equal(ds_load(path, tk, &o, &tr, NULL, err, sizeof err), FL_ENOENT);
	assert_non_null(strstr(err, "missing.txt"));
	snprintf(path, sizeof path, "%s/bad.jsonl", dir);
	FILE *f = fopen(path, "w");
	fputs("{\"text\":\"fine\"}\n{\"text\":\"fine\"}\n{oops}\n", f);
	fclose(f);
	assert_int_equal(ds_load(path, tk, &o, &tr, NULL, err, sizeof err), FL_EFORMAT);
	assert_non_null(strstr(err, "bad.jsonl:3:"));
	printf("  %s\n", err);
	tu_rmtree(dir);
	free(dir);
}

static void test_utf8(void **state)
{
	(void)state;
	size_t b = 99;
	assert_true(ds_utf8_valid("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14, &b));
	assert_false(ds_utf8_valid("ab\xc3", 3, &b)); /* truncated */
	assert_int_equal(b, 2);
	assert_false(ds_utf8_valid("\xe0\x80\x80", 3, &b));     /* overlong */
	assert_false(ds_utf8_valid("\xf4\x90\x80\x80", 4, &b)); /* > U+10FFFF */
	assert_false(ds_utf8_valid("\x80", 1, &b));
	assert_false(ds_utf8_valid("\xf8\x88\x80\x80\x80", 5, &b));
	assert_true(ds_utf8_valid("\xf4\x8f\xbf\xbf", 4, &b)); /* U+10FFFF */
	assert_true(ds_utf8_valid("", 0, &b));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_text),
	    cmocka_unit_test(test_jsonl),
	    cmocka_unit_test(test_holdout_records),
	    cmocka_unit_test(test_bad_files),
	    cmocka_unit_test(test_utf8),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
