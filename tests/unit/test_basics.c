/* Small common modules: err, buf, sha, log, clock. */
#include "testutil.h"

#include "buf.h"
#include "clock.h"
#include "err.h"
#include "log.h"
#include "sha.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_err(void **s)
{
	(void)s;
	assert_string_equal(fl_strerror(FL_OK), "success");
	assert_string_equal(fl_errname(FL_ETOOBIG), "FL_ETOOBIG");
	assert_string_equal(fl_strerror(-9999), "unknown error");
	for (int e = 0; e >= FL_ENET; e--)
		assert_string_not_equal(fl_strerror(e), "unknown error");
}

static void test_buf_caps(void **s)
{
	(void)s;
	buf b;
	buf_init(&b, 10);
	assert_int_equal(buf_append(&b, "0123456789", 10), 0);
	assert_int_equal(buf_append(&b, "x", 1), FL_ETOOBIG);
	assert_int_equal(b.len, 10);
	buf_consume(&b, 4);
	assert_int_equal(b.len, 6);
	assert_memory_equal(b.data, "456789", 6);
	assert_int_equal(buf_reserve(&b, SIZE_MAX), FL_ETOOBIG);
	buf_clear(&b);
	buf_shrink(&b, 0);
	assert_null(b.data);
	assert_int_equal(buf_put_u32le(&b, 0x01020304), 0);
	assert_int_equal(buf_put_u8(&b, 9), 0);
	assert_int_equal(buf_put_u64le(&b, 0x1122334455667788ull), FL_ETOOBIG); /* 13 > 10 */
	rd r = rd_of(b.data, b.len);
	uint32_t v32;
	uint8_t v8;
	uint64_t v64;
	assert_int_equal(rd_u32le(&r, &v32), 0);
	assert_int_equal(v32, 0x01020304);
	assert_int_equal(rd_u8(&r, &v8), 0);
	assert_int_equal(v8, 9);
	assert_int_equal(rd_u64le(&r, &v64), FL_EFORMAT); /* short: refused */
	assert_int_equal(r.n, 0);
	buf_fini(&b);
	size_t out;
	assert_int_equal(sz_mul(SIZE_MAX / 2, 3, &out), FL_EOVERFLOW);
	assert_int_equal(sz_add(SIZE_MAX, 1, &out), FL_EOVERFLOW);
	assert_int_equal(sz_mul(1u << 20, 1u << 10, &out), 0);
	assert_int_equal(out, 1u << 30);
}

static void test_sha_vectors(void **s)
{
	(void)s;
	/* FIPS 180-2 test vectors. */
	uint8_t d[32];
	char hex[65];
	assert_int_equal(sha256("abc", 3, d), 0);
	hex_encode(d, 32, hex);
	assert_string_equal(hex,
	                    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	assert_int_equal(sha256("", 0, d), 0);
	hex_encode(d, 32, hex);
	assert_string_equal(hex,
	                    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	/* incremental == one-shot on the 448-bit vector */
	const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
	sha256_ctx *c;
	assert_int_equal(sha256_new(&c), 0);
	assert_int_equal(sha256_update(c, m, 10), 0);
	assert_int_equal(sha256_update(c, m + 10, strlen(m) - 10), 0);
	assert_int_equal(sha256_final(c, d), 0);
	hex_encode(d, 32, hex);
	assert_string_equal(hex,
	                    "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
	uint8_t back[32];
	assert_int_equal(hex_decode(hex, back, 32), 0);
	assert_memory_equal(back, d, 32);
	assert_int_equal(hex_decode("zz", back, 1), FL_EINVAL);
}

static void test_log_json_and_levels(void **s)
{
	(void)s;
	char path[] = "/tmp/fllog.XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	log_set_fd(fd);
	log_set_name("test");
	log_set_format(LOG_FMT_JSON);
	log_set_level(LOG_LVL_INFO);
	LOGD("mod", "hidden %d", 1);
	LOGI("chan", "quote \" backslash \\ newline \n tab \t done");
	log_set_format(LOG_FMT_TEXT);
	LOGW("cfg", "plain %s", "text");
	log_set_fd(2);
	close(fd);
	uint8_t *p;
	size_t n;
	FILE *f = fopen(path, "rb");
	assert_non_null(f);
	static char all[4096];
	n = fread(all, 1, sizeof all - 1, f);
	fclose(f);
	all[n] = 0;
	p = (uint8_t *)all;
	(void)p;
	unlink(path);
	assert_null(strstr(all, "hidden"));
	assert_non_null(strstr(all, "\"level\":\"info\",\"proc\":\"test\",\"mod\":\"chan\""));
	assert_non_null(strstr(all, "quote \\\" backslash \\\\ newline \\n tab \\u0009 done\"}\n"));
	assert_non_null(strstr(all, "warn  test[cfg] plain text\n"));
	enum log_level l;
	assert_int_equal(log_parse_level("debug", &l), 0);
	assert_int_equal(l, LOG_LVL_DEBUG);
	assert_int_equal(log_parse_level("loud", &l), FL_EINVAL);
}

static void test_clock(void **s)
{
	(void)s;
	uint64_t a = clk_mono_ns();
	clk_sleep_ms(5);
	uint64_t b = clk_mono_ns();
	assert_true(b - a >= 5000000ull);
	assert_true(clk_wall_ms() > 1600000000000ull);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_err),         cmocka_unit_test(test_buf_caps),
	    cmocka_unit_test(test_sha_vectors), cmocka_unit_test(test_log_json_and_levels),
	    cmocka_unit_test(test_clock),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
