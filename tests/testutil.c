/* testutil — see testutil.h. */
#include "testutil.h"

#include "fileio.h"

#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

char *tu_mkdtemp(void)
{
	char tmpl[] = "/tmp/fltest.XXXXXX";
	char *d = mkdtemp(tmpl);
	if (!d)
		return NULL;
	return strdup(d);
}

void tu_rmtree(const char *path)
{
	if (path && strncmp(path, "/tmp/fltest.", 12) == 0)
		tu_system("rm -rf '%s'", path);
}

const char *tu_src_path(const char *rel)
{
	static char p[PATH_MAX];
	const char *root = getenv("FEDLORA_SRC");
	snprintf(p, sizeof p, "%s/%s", root ? root : ".", rel);
	return p;
}

const char *tu_shared_data(const char *name)
{
	static char p[PATH_MAX];
	const char *root = getenv("FEDLORA_SHARED");
	if (!root)
		return NULL;
	snprintf(p, sizeof p, "%s/data/%s", root, name);
	if (access(p, R_OK) != 0)
		return NULL;
	return p;
}

char *tu_read_text(const char *path)
{
	uint8_t *p = NULL;
	size_t n;
	if (file_read_all(path, 1 << 20, &p, &n) != 0)
		return strdup("");
	return (char *)p;
}

int tu_system(const char *fmt, ...)
{
	char cmd[8192];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof cmd, fmt, ap);
	va_end(ap);
	int st = system(cmd);
	if (st == -1 || !WIFEXITED(st))
		return -1;
	return WEXITSTATUS(st);
}

uint64_t tu_rand(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

double tu_randu(uint64_t *s)
{
	return (double)(tu_rand(s) >> 11) * (1.0 / 9007199254740992.0);
}

char *tu_http_get(int port, const char *path)
{
	int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a;
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
		if (s >= 0)
			close(s);
		return NULL;
	}
	char req[512];
	int k = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
	size_t cap = 1 << 20, len = 0;
	char *b = k > 0 && (size_t)k < sizeof req ? malloc(cap) : NULL;
	if (!b || write(s, req, (size_t)k) != k) {
		free(b);
		close(s);
		return NULL;
	}
	ssize_t r;
	while (len + 1 < cap && (r = read(s, b + len, cap - len - 1)) > 0)
		len += (size_t)r;
	b[len] = 0;
	close(s);
	return b;
}
