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

int journal_append(const char *path, const cJSON *obj)
{
	char *txt = cJSON_PrintUnformatted(obj);
	if (!txt)
		return FL_ENOMEM;
	size_t n = strlen(txt);
	char *line = realloc(txt, n + 2);
	if (!line) {
		free(txt);
		return FL_ENOMEM;
	}
	line[n] = '\n';
	line[n + 1] = 0;
	int rc = file_append_sync(path, line, n + 1);
	free(line);
	return rc;
}

int journal_repair(const char *path)
{
	uint8_t *d = NULL;
	size_t n = 0;
	int rc = file_read_all(path, JOURNAL_MAX_BYTES, &d, &n);
	if (rc == FL_ENOENT)
		return 0;
	if (rc)
		return rc;
	size_t keep = n;
	while (keep > 0 && d[keep - 1] != '\n')
		keep--;
	free(d);
	if (keep == n)
		return 0;
	LOGW("journal", "%s: cutting a torn final line (%zu bytes)", path, n - keep);
	if (truncate(path, (off_t)keep) != 0) {
		LOGE("journal", "truncate %s: %s", path, strerror(errno));
		return FL_EIO;
	}
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
	return 0;
}

int journal_read(const char *path, journal_cb cb, void *ud, size_t *nlines, size_t *nbad)
{
	uint8_t *d = NULL;
	size_t n = 0, lines = 0, bad = 0;
	int rc = file_read_all(path, JOURNAL_MAX_BYTES, &d, &n);
	if (rc)
		return rc;
	size_t i = 0, lineno = 0;
	while (i < n && !rc) {
		const uint8_t *nl = memchr(d + i, '\n', n - i);
		size_t end = nl ? (size_t)(nl - d) : n;
		lineno++;
		if (end > i) {
			cJSON *j = cJSON_ParseWithLength((const char *)d + i, end - i);
			if (!j || !cJSON_IsObject(j)) {
				LOGW("journal", "%s:%zu: %s, skipped", path, lineno,
				     nl ? "not a JSON object" : "torn final line");
				bad++;
			} else {
				lines++;
				rc = cb(j, ud);
			}
			cJSON_Delete(j);
		}
		i = end + 1;
	}
	free(d);
	if (nlines)
		*nlines = lines;
	if (nbad)
		*nbad = bad;
	return rc;
}
