/* Resumable chunked transfers end to end, all real processes on 127.0.0.1
 * over mutual TLS: a coordinator and two nodes with a 262,144-parameter
 * adapter (rank 128 on the tiny model) exchanged in f32, so every
 * RoundStart delta and every Update is about 1 MiB, sent in 16 KiB chunks
 * with a window of 4 (transport.* keys). Node 1 reaches the coordinator
 * through a TCP proxy in this test that cuts its connection at several
 * points: twice during uploads, twice during downloads. Checks: every
 * round commits with both nodes' updates (each Update's SHA-256 verified
 * by xfer, then the normal decode path), node 1 verifies every version
 * it receives against the coordinator's files, both ends report resumed
 * transfers, and per cut the chunk bytes sent again are at most one window
 * (counted from the senders' logs: total chunk bytes sent for a message
 * minus its size). */
#include "fedtest.h"

#include <poll.h>
#include <pthread.h>

#define CS  (16 * 1024)
#define WIN 4

/* ---- a proxy that cuts connection k after so many bytes ---- */

typedef struct proxy {
	int lfd, port, upstream;
	volatile int stop;
	pthread_t th;
	/* connection k is cut when its bytes coordinator->node reach down[k]
	 * or node->coordinator reach up[k] (0: no cut) */
	long down[8], up[8];
	int conns, cuts;
} proxy;

static int connect_to(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static void *proxy_main(void *arg)
{
	proxy *P = arg;
	static char b[65536];
	while (!P->stop) {
		struct pollfd lp = {.fd = P->lfd, .events = POLLIN};
		if (poll(&lp, 1, 100) <= 0)
			continue;
		int c = accept(P->lfd, NULL, NULL);
		if (c < 0)
			continue;
		int u = connect_to(P->upstream);
		if (u < 0) {
			close(c);
			continue;
		}
		int k = P->conns++;
		long down = k < 8 ? P->down[k] : 0, up = k < 8 ? P->up[k] : 0;
		long nd = 0, nu = 0;
		int cut = 0;
		while (!P->stop && !cut) {
			struct pollfd p[2] = {{.fd = c, .events = POLLIN},
			                      {.fd = u, .events = POLLIN}};
			if (poll(p, 2, 100) <= 0)
				continue;
			if (p[0].revents) {
				ssize_t r = read(c, b, sizeof b);
				if (r <= 0 || write_all(u, b, (size_t)r))
					break;
				nu += r;
			}
			if (p[1].revents) {
				ssize_t r = read(u, b, sizeof b);
				if (r <= 0 || write_all(c, b, (size_t)r))
					break;
				nd += r;
			}
			if ((down && nd >= down) || (up && nu >= up)) {
				cut = 1;
				P->cuts++;
				print_message(
				    "proxy: connection %d cut after %ld bytes down, %ld up\n", k,
				    nd, nu);
			}
		}
		close(c);
		close(u);
	}
	return NULL;
}

static void proxy_start(proxy *P, int upstream)
{
	P->upstream = upstream;
	P->lfd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(P->lfd >= 0);
	int one = 1;
	setsockopt(P->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(P->lfd, (struct sockaddr *)&a, sizeof a), 0);
	assert_int_equal(listen(P->lfd, 8), 0);
	socklen_t al = sizeof a;
	getsockname(P->lfd, (struct sockaddr *)&a, &al);
	P->port = ntohs(a.sin_port);
	assert_int_equal(pthread_create(&P->th, NULL, proxy_main, P), 0);
}

static void proxy_stop(proxy *P)
{
	P->stop = 1;
	pthread_join(P->th, NULL);
	close(P->lfd);
}

/* ---- re-sent bytes from a sender's log ----
 * For every message to `key`: the chunk bytes sent in each session
 * ("cut after X chunk bytes" per cut session, "delivered: Y chunk bytes"
 * at the end) minus the message's size. Returns the number of messages
 * that needed more than one session; *worst = the largest re-sent bytes
 * per cut, *cuts = cuts seen. */
static int resent_from_log(const ft *f, const char *log, const char *key, long *worst, int *cuts)
{
	char *t = ft_read(ft_path(f, "%s", log));
	assert_non_null(t);
	char cut_pat[96], done_pat[96];
	snprintf(cut_pat, sizeof cut_pat, " bytes to %s cut after ", key);
	snprintf(done_pat, sizeof done_pat, "-byte message to %s delivered: ", key);
	long acc = 0;
	int ncut = 0, resumed = 0;
	*worst = 0;
	*cuts = 0;
	for (char *line = t; line && *line;) {
		char *e = strchr(line, '\n');
		if (e)
			*e = 0;
		char *p;
		if ((p = strstr(line, cut_pat)) != NULL) {
			acc += atol(p + strlen(cut_pat));
			ncut++;
		} else if ((p = strstr(line, done_pat)) != NULL) {
			char *q = p;
			while (q > line && q[-1] >= '0' && q[-1] <= '9')
				q--;
			long size = atol(q);
			long sent = acc + atol(p + strlen(done_pat));
			long re = sent - size;
			if (ncut) {
				print_message(
				    "%s: %ld-byte message to %s: %ld chunk bytes sent over %d "
				    "sessions, %ld re-sent (%d cuts)\n",
				    log, size, key, sent, ncut + 1, re, ncut);
				resumed++;
				if (re / ncut > *worst)
					*worst = re / ncut;
				*cuts += ncut;
			}
			assert_true(re >= 0 || ncut);
			acc = 0;
			ncut = 0;
		}
		line = e ? e + 1 : NULL;
	}
	free(t);
	return resumed;
}

static void test_link_cut_mid_transfer(void **state)
{
	(void)state;
	static ft f;
	static proxy P;
	memset(&f, 0, sizeof f);
	memset(&P, 0, sizeof P);
	if (ft_bins(&f) != 0)
		skip();
	setenv("FEDLORA_FED_TRAINER", "synth", 1);
	ft_setup(&f, 2, 0);
	proxy_start(&P, f.port);
	/* connection 0: cut during the round-1 upload; 1: during a download;
	 * 2: again during that download; 3: during the next upload */
	P.up[0] = 350000;
	P.down[1] = 450000;
	P.down[2] = 300000;
	P.up[3] = 600000;
	const char *cx[] = {"--lora.rank=128",
	                    "--train.uplink_format=f32",
	                    "--train.uplink_block=0",
	                    "--aggregation.downlink_format=f32",
	                    "--aggregation.downlink_block=0",
	                    "--transport.chunk_threshold=64KiB",
	                    "--transport.chunk_size=16KiB",
	                    "--transport.chunk_window=4",
	                    "--train.local_steps=1",
	                    "--rounds.max_rounds=4",
	                    NULL};
	ft_start_coord(&f, cx);
	char ep[64];
	snprintf(ep, sizeof ep, "--coordinator.endpoint=tcp://127.0.0.1:%d", P.port);
	const char *nx0[] = {"--lora.rank=128",
	                     "--transport.chunk_threshold=64KiB",
	                     "--transport.chunk_size=16KiB",
	                     "--transport.chunk_window=4",
	                     ep,
	                     NULL};
	const char *nx1[] = {"--lora.rank=128", "--transport.chunk_threshold=64KiB",
	                     "--transport.chunk_size=16KiB", "--transport.chunk_window=4", NULL};
	ft_start_node(&f, 0, nx0);
	ft_start_node(&f, 1, nx1);
	int done = ft_wait_committed(&f, 4, 240000);
	if (done < 4)
		ft_dump_logs(&f);
	assert_true(done >= 4);
	ft_stop_all(&f);
	proxy_stop(&P);
	print_message("proxy: %d connections, %d cut\n", P.conns, P.cuts);
	assert_int_equal(P.cuts, 4);

	/* every round had both updates */
	ft_rounds r = ft_journal(&f);
	assert_true(r.committed >= 4);
	for (int k = 0; k < 4; k++)
		assert_int_equal(r.participants[k], 2);
	ft_check_versions(&f, 0);
	ft_check_versions(&f, 1);

	/* resumed both ways: the receiver already held chunks */
	char *cl = ft_read(ft_path(&f, "coordinator.log"));
	char *nl = ft_read(ft_path(&f, "node-01.log"));
	assert_non_null(cl);
	assert_non_null(nl);
	int up_resumed = 0, down_resumed = 0;
	for (char *p = cl; (p = strstr(p, "from node-01 in ")) != NULL; p++) {
		char *h = strstr(p, " already held (");
		char *nlp = strchr(p, '\n');
		if (h && (!nlp || h < nlp) && atol(h + 15) > 0)
			up_resumed++;
	}
	for (char *p = nl; (p = strstr(p, "from coordinator in ")) != NULL; p++) {
		char *h = strstr(p, " already held (");
		char *nlp = strchr(p, '\n');
		if (h && (!nlp || h < nlp) && atol(h + 15) > 0)
			down_resumed++;
	}
	free(cl);
	free(nl);
	print_message("resumed transfers: %d uploads, %d downloads\n", up_resumed, down_resumed);
	assert_true(up_resumed >= 1);
	assert_true(down_resumed >= 1);

	/* at most one window re-sent per cut; the head chunk (sent last) may
	 * be up to XFER_HEAD_MIN + chunk_size when a cut falls in the final
	 * window */
	long worst_up, worst_down;
	int cuts_up, cuts_down;
	int mu = resent_from_log(&f, "node-01.log", "coordinator", &worst_up, &cuts_up);
	int md = resent_from_log(&f, "coordinator.log", "node-01", &worst_down, &cuts_down);
	print_message("re-sent per cut: uploads at most %ld bytes (%d cuts, %d messages), "
	              "downloads at most %ld bytes (%d cuts, %d messages); one window = %d x %d "
	              "= %d bytes\n",
	              worst_up, cuts_up, mu, worst_down, cuts_down, md, WIN, CS, WIN * CS);
	assert_true(mu >= 1);
	assert_true(md >= 1);
	long bound = (long)(WIN - 1) * CS + 64 * 1024 + CS;
	assert_true(worst_up <= bound);
	assert_true(worst_down <= bound);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_teardown(test_link_cut_mid_transfer, ft_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
