/* journal — see journal.h. */
#include "journal.h"

#include "err.h"
#include "fileio.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Every record the coordinator writes starts with its type (fed.c adds it
 * first); the reader looks for this to find a record glued to a torn one. */
static const char rec_start[] = "{\"type\":";
#define RESYNC_TRIES 16

int journal_format(const cJSON *obj, char **line, size_t *n)
{
	char *txt = cJSON_PrintUnformatted(obj);
	if (!txt)
		return FL_ENOMEM;
	size_t k = strlen(txt);
	if (k > JOURNAL_MAX_LINE) {
		free(txt);
		return FL_ETOOBIG;
	}
	char *l = realloc(txt, k + 2);
	if (!l) {
		free(txt);
		return FL_ENOMEM;
	}
	l[k] = '\n';
	l[k + 1] = 0;
	*line = l;
	*n = k + 1;
	return 0;
}

/* Length of the file up to and including its last '\n' (0 when none). */
static int last_newline(int fd, off_t size, off_t *keep)
{
	char b[4096];
	off_t end = size;
	while (end > 0) {
		size_t k = end > (off_t)sizeof b ? sizeof b : (size_t)end;
		off_t at = end - (off_t)k;
		ssize_t r = pread(fd, b, k, at);
		if (r != (ssize_t)k) {
			if (r >= 0)
				errno = EIO;
			return FL_EIO;
		}
		for (size_t i = k; i > 0; i--)
			if (b[i - 1] == '\n') {
				*keep = at + (off_t)i;
				return 0;
			}
		end = at;
	}
	*keep = 0;
	return 0;
}

int journal_append_line(const char *path, const char *line, size_t n, int *os_errno)
{
	if (n == 0 || n > JOURNAL_MAX_LINE + 1 || line[n - 1] != '\n' || memchr(line, '\n', n - 1))
		return FL_EINVAL;
	int e = 0;
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		e = errno;
		goto fail;
	}
	struct stat st;
	if (fstat(fd, &st) != 0) {
		e = errno;
		goto fail;
	}
	off_t size = st.st_size;
	if (size > 0) {
		/* A tail without '\n' (a crash, or a cut-back that failed) would
		 * swallow this record: cut it first. */
		char last;
		if (pread(fd, &last, 1, size - 1) != 1) {
			e = errno ? errno : EIO;
			goto fail;
		}
		if (last != '\n') {
			off_t keep;
			if (last_newline(fd, size, &keep) != 0 || ftruncate(fd, keep) != 0) {
				e = errno;
				goto fail;
			}
			size = keep;
		}
	}
	size_t done = 0;
	while (done < n) {
		ssize_t k = pwrite(fd, line + done, n - done, size + (off_t)done);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			e = k < 0 ? errno : ENOSPC;
			goto cut;
		}
		done += (size_t)k;
	}
	if (fdatasync(fd) != 0) {
		e = errno;
		goto cut;
	}
	close(fd);
	return 0;
cut:
	/* All or nothing: back to the length before this record. If even this
	 * fails, the next append (or journal_repair) cuts the torn tail. */
	if (ftruncate(fd, size) == 0)
		(void)fdatasync(fd);
fail:
	if (fd >= 0)
		close(fd);
	if (os_errno)
		*os_errno = e ? e : EIO;
	return FL_EIO;
}

int journal_append(const char *path, const cJSON *obj)
{
	char *line = NULL;
	size_t n = 0;
	int e = 0;
	int rc = journal_format(obj, &line, &n);
	if (!rc)
		rc = journal_append_line(path, line, n, &e);
	if (rc == FL_EIO)
		LOGE("journal", "append to %s: %s", path, strerror(e));
	else if (rc)
		LOGE("journal", "append to %s: %s", path, fl_strerror(rc));
	free(line);
	return rc;
}

int journal_repair(const char *path)
{
	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : FL_EIO;
	int rc = 0;
	struct stat st;
	off_t keep = 0;
	if (fstat(fd, &st) != 0 || last_newline(fd, st.st_size, &keep) != 0) {
		LOGE("journal", "read %s: %s", path, strerror(errno));
		rc = FL_EIO;
		goto out;
	}
	if (keep == st.st_size)
		goto out;
	LOGW("journal", "%s: cutting a torn final line (%lld bytes)", path,
	     (long long)(st.st_size - keep));
	if (ftruncate(fd, keep) != 0 || fsync(fd) != 0) {
		LOGE("journal", "truncate %s: %s", path, strerror(errno));
		rc = FL_EIO;
	}
out:
	close(fd);
	return rc;
}

/* One JSON object spanning exactly [p, p+n) (trailing blanks allowed). */
static cJSON *parse_obj(const char *p, size_t n)
{
	if (n == 0 || n > JOURNAL_MAX_LINE)
		return NULL;
	const char *end = NULL;
	cJSON *j = cJSON_ParseWithLengthOpts(p, n, &end, 0);
	if (!j)
		return NULL;
	while (end && end < p + n && (*end == ' ' || *end == '\t' || *end == '\r'))
		end++;
	if (end != p + n || !cJSON_IsObject(j)) {
		cJSON_Delete(j);
		return NULL;
	}
	return j;
}

/* A damaged line: the first record start after its beginning from which a
 * whole object runs to the end of the line (a record glued to a torn one). */
static cJSON *resync(const char *p, size_t n, size_t *skipped)
{
	size_t at = 1;
	for (int tries = 0; tries < RESYNC_TRIES && at < n; tries++) {
		const size_t k = sizeof rec_start - 1;
		const char *s = p + at;
		while ((s = memchr(s, '{', (size_t)(p + n - s))) != NULL &&
		       ((size_t)(p + n - s) < k || memcmp(s, rec_start, k) != 0))
			s++;
		if (!s)
			return NULL;
		size_t off = (size_t)(s - p);
		cJSON *j = parse_obj(s, n - off);
		if (j) {
			*skipped = off;
			return j;
		}
		at = off + 1;
	}
	return NULL;
}

int journal_scan(const uint8_t *d, size_t n, const char *name, journal_cb cb, void *ud,
                 size_t *nlines, size_t *nbad)
{
	size_t lines = 0, bad = 0, i = 0, lineno = 0;
	int rc = 0;
	while (i < n && !rc) {
		const uint8_t *nl = memchr(d + i, '\n', n - i);
		size_t end = nl ? (size_t)(nl - d) : n;
		const char *p = (const char *)d + i;
		size_t len = end - i;
		lineno++;
		if (len > 0) {
			cJSON *j = parse_obj(p, len);
			if (!j) {
				size_t skipped = 0;
				j = resync(p, len, &skipped);
				bad++;
				if (j)
					LOGW("journal",
					     "%s:%zu: %zu damaged bytes skipped before a whole "
					     "record",
					     name, lineno, skipped);
				else
					LOGW("journal", "%s:%zu: %s (%zu bytes), skipped", name,
					     lineno, nl ? "not a JSON object" : "torn final line",
					     len);
			}
			if (j) {
				lines++;
				rc = cb(j, ud);
			}
			cJSON_Delete(j);
		}
		i = end + 1;
	}
	if (nlines)
		*nlines = lines;
	if (nbad)
		*nbad = bad;
	return rc;
}

int journal_read(const char *path, journal_cb cb, void *ud, size_t *nlines, size_t *nbad)
{
	uint8_t *d = NULL;
	size_t n = 0;
	int rc = file_read_all(path, JOURNAL_MAX_BYTES, &d, &n);
	if (rc)
		return rc;
	rc = journal_scan(d, n, path, cb, ud, nlines, nbad);
	free(d);
	return rc;
}
