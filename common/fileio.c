/* fileio — see fileio.h. */
#include "fileio.h"

#include "err.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

void (*fileio_test_hook)(const char *tmp_path);

static int write_full(int fd, const void *p, size_t n)
{
	const uint8_t *c = p;
	while (n) {
		ssize_t k = write(fd, c, n);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return FL_EIO;
		}
		c += k;
		n -= (size_t)k;
	}
	return 0;
}

int file_fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		LOGE("file", "open directory %s: %s", dir, strerror(errno));
		return FL_EIO;
	}
	int rc = fsync(fd) == 0 ? 0 : FL_EIO;
	if (rc)
		LOGE("file", "fsync directory %s: %s", dir, strerror(errno));
	close(fd);
	return rc;
}

static void dir_of(const char *path, char *dir, size_t cap)
{
	const char *slash = strrchr(path, '/');
	if (!slash) {
		snprintf(dir, cap, ".");
	} else if (slash == path) {
		snprintf(dir, cap, "/");
	} else {
		size_t n = (size_t)(slash - path);
		if (n >= cap)
			n = cap - 1;
		memcpy(dir, path, n);
		dir[n] = 0;
	}
}

int file_write_atomic_v(const char *path, const file_piece *pieces, size_t npieces)
{
	return file_write_atomic_vm(path, pieces, npieces, FILE_PRIVATE);
}

int file_write_atomic_vm(const char *path, const file_piece *pieces, size_t npieces, unsigned mode)
{
	char tmp[PATH_MAX], dir[PATH_MAX];
	int n = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
	if (n < 0 || (size_t)n >= sizeof tmp)
		return FL_EINVAL;
	if (mode != FILE_PRIVATE && mode != FILE_PUBLIC)
		return FL_EINVAL;
	/* O_EXCL: a stale temp file of a dead process with this pid could carry
	 * another mode; it is removed first. */
	unlink(tmp);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, (mode_t)mode);
	if (fd < 0) {
		LOGE("file", "create %s: %s", tmp, strerror(errno));
		return FL_EIO;
	}
	int rc = 0;
	for (size_t i = 0; i < npieces && !rc; i++)
		rc = write_full(fd, pieces[i].p, pieces[i].n);
	if (!rc && fsync(fd) != 0)
		rc = FL_EIO;
	if (rc)
		LOGE("file", "write %s: %s", tmp, strerror(errno));
	if (close(fd) != 0 && !rc) {
		LOGE("file", "close %s: %s", tmp, strerror(errno));
		rc = FL_EIO;
	}
	if (!rc && fileio_test_hook)
		fileio_test_hook(tmp);
	if (!rc && rename(tmp, path) != 0) {
		LOGE("file", "rename %s -> %s: %s", tmp, path, strerror(errno));
		rc = FL_EIO;
	}
	if (rc) {
		unlink(tmp);
		return rc;
	}
	dir_of(path, dir, sizeof dir);
	return file_fsync_dir(dir);
}

int file_write_atomic(const char *path, const void *data, size_t n)
{
	file_piece p = {data, n};
	return file_write_atomic_v(path, &p, 1);
}

int file_append_sync(const char *path, const void *data, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (fd < 0) {
		LOGE("file", "open %s: %s", path, strerror(errno));
		return FL_EIO;
	}
	int rc = write_full(fd, data, n);
	if (!rc && fdatasync(fd) != 0)
		rc = FL_EIO;
	if (rc)
		LOGE("file", "append %s: %s", path, strerror(errno));
	close(fd);
	return rc;
}

int file_read_all(const char *path, size_t max, uint8_t **out, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? FL_ENOENT : FL_EIO;
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return FL_EIO;
	}
	if ((uint64_t)st.st_size > max) {
		close(fd);
		return FL_ETOOBIG;
	}
	size_t n = (size_t)st.st_size;
	uint8_t *p = malloc(n + 1);
	if (!p) {
		close(fd);
		return FL_ENOMEM;
	}
	size_t got = 0;
	while (got < n) {
		ssize_t k = read(fd, p + got, n - got);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		got += (size_t)k;
	}
	close(fd);
	if (got != n) {
		free(p);
		return FL_EIO;
	}
	p[n] = 0;
	*out = p;
	*len = n;
	return 0;
}

int file_map_open(const char *path, file_map *m)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? FL_ENOENT : FL_EIO;
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return FL_EIO;
	}
	if (st.st_size == 0) {
		close(fd);
		m->p = NULL;
		m->n = 0;
		return 0;
	}
	void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (p == MAP_FAILED)
		return FL_EIO;
	m->p = p;
	m->n = (size_t)st.st_size;
	return 0;
}

void file_map_close(file_map *m)
{
	if (m->p)
		munmap((void *)m->p, m->n);
	m->p = NULL;
	m->n = 0;
}

int file_exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

static int mkdirs_mode(const char *path, mode_t mode)
{
	char tmp[PATH_MAX];
	size_t n = strlen(path);
	if (n == 0 || n >= sizeof tmp)
		return FL_EINVAL;
	memcpy(tmp, path, n + 1);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(tmp, mode) != 0 && errno != EEXIST)
			return FL_EIO;
		*p = '/';
	}
	if (mkdir(tmp, mode) != 0 && errno != EEXIST) {
		LOGE("file", "mkdir %s: %s", tmp, strerror(errno));
		return FL_EIO;
	}
	return 0;
}

int file_mkdirs(const char *path)
{
	return mkdirs_mode(path, 0700);
}

int file_mkdirs_public(const char *path)
{
	return mkdirs_mode(path, 0777);
}

const char *file_why(const char *path, int rc)
{
	struct stat st;
	if (rc == FL_ETOOBIG)
		return "larger than the size limit";
	if (stat(path, &st) != 0)
		return errno == ENOENT   ? "no such file"
		       : errno == EACCES ? "permission denied"
		                         : fl_strerror(rc);
	if (S_ISDIR(st.st_mode))
		return "is a directory";
	if (!S_ISREG(st.st_mode))
		return "not a regular file";
	if (access(path, R_OK) != 0)
		return "permission denied";
	return fl_strerror(rc);
}

int file_lock(const char *path, int *fd_out, long *holder)
{
	if (holder)
		*holder = 0;
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		LOGE("file", "open %s: %s", path, strerror(errno));
		return FL_EIO;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		int e = errno;
		if (e == EWOULDBLOCK && holder) {
			char b[32];
			ssize_t k = pread(fd, b, sizeof b - 1, 0);
			long pid = 0;
			if (k > 4) {
				b[k] = 0;
				char *end;
				pid = strncmp(b, "pid ", 4) == 0 ? strtol(b + 4, &end, 10) : 0;
			}
			*holder = pid > 0 ? pid : 0;
		}
		close(fd);
		if (e == EWOULDBLOCK)
			return FL_EBUSY;
		LOGE("file", "flock %s: %s", path, strerror(e));
		return FL_EIO;
	}
	/* Who holds it, for the message of the next one that tries; a failure
	 * here (full disk) does not matter for the lock itself. */
	char b[32];
	int k = snprintf(b, sizeof b, "pid %ld\n", (long)getpid());
	if (ftruncate(fd, 0) == 0 && k > 0)
		(void)!pwrite(fd, b, (size_t)k, 0);
	*fd_out = fd;
	return 0;
}
