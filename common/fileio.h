/* fileio — atomic file writes, bounded whole-file reads, read-only maps.
 *
 * Atomic write: data goes to "<path>.tmp.<pid>", is fsync'd, renamed over
 * <path>, and the directory is fsync'd; a crash at any point leaves either
 * the old file or the new one, never a mix. Errors are logged with errno. */
#ifndef FL_FILEIO_H
#define FL_FILEIO_H
#include <stddef.h>
#include <stdint.h>

/* File modes (docs/FORMATS.md, "File modes"). FILE_PRIVATE: 0600 whatever
 * the umask, for state only this user may read (node state, keys, residuals,
 * the coordinator's store, data shards). FILE_PUBLIC: 0666 less the umask,
 * for deployment outputs another user's inference server may need to read
 * (merged GGUF, GGUF LoRA, PEFT, `train` output, init-model). */
#define FILE_PRIVATE 0600
#define FILE_PUBLIC  0666

/* Writes n bytes atomically, mode FILE_PRIVATE. */
int file_write_atomic(const char *path, const void *data, size_t n);

/* Atomic write from several pieces (avoids concatenating big buffers). */
typedef struct file_piece {
	const void *p;
	size_t n;
} file_piece;
int file_write_atomic_v(const char *path, const file_piece *pieces, size_t npieces);
/* As file_write_atomic_v with the file created as `mode` (FILE_PRIVATE or
 * FILE_PUBLIC; the umask applies, so FILE_PRIVATE stays 0600). */
int file_write_atomic_vm(const char *path, const file_piece *pieces, size_t npieces, unsigned mode);

/* Appends n bytes and fsyncs (journals). The file is created if missing. */
int file_append_sync(const char *path, const void *data, size_t n);

/* Reads a whole file into a malloc'd buffer (NUL-terminated for text, the
 * NUL not counted). FL_ETOOBIG if larger than max. Caller frees *out. */
int file_read_all(const char *path, size_t max, uint8_t **out, size_t *len);

/* Read-only mapping of a whole file. An empty file maps to p = NULL, n = 0. */
typedef struct file_map {
	const uint8_t *p;
	size_t n;
} file_map;
int file_map_open(const char *path, file_map *m);
void file_map_close(file_map *m);

/* mkdir -p with mode 0700 for created components. */
int file_mkdirs(const char *path);
/* mkdir -p with mode 0777 less the umask (directories of FILE_PUBLIC
 * exports). An existing directory keeps its mode. */
int file_mkdirs_public(const char *path);
int file_fsync_dir(const char *dir);
int file_exists(const char *path);

/* Why path could not be read, for a message after file_read_all or
 * file_map_open failed with rc: "is a directory", "no such file", "not a
 * regular file", "permission denied", "larger than the size limit", or
 * fl_strerror(rc). A static string (never NULL). */
const char *file_why(const char *path, int rc);

/* Takes an exclusive flock on path (created 0600 if missing) without
 * waiting and writes "pid <getpid()>\n" into it. On success *fd holds the
 * lock until closed (the process's exit releases it too). FL_EBUSY when
 * another process holds it: *holder then gets the pid that process wrote
 * (0 when unknown). FL_EIO otherwise (logged). holder may be NULL. */
int file_lock(const char *path, int *fd, long *holder);

/* Tests only: called between the temp file's fsync and the rename, so a test
 * can kill the writer at exactly that point. NULL in production. */
extern void (*fileio_test_hook)(const char *tmp_path);

#endif
