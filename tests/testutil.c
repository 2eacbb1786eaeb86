/* testutil — see testutil.h. */
#include "testutil.h"

#include "fileio.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
