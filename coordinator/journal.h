/* journal — the coordinator's append-only round journal (JSON lines).
 *
 * Each record is one JSON object on one line (compact JSON, so it holds no
 * raw '\n'), appended and fdatasync'd. Appends are all or nothing: a short
 * or failed write, or a failed fdatasync, cuts the file back to its length
 * before the append, so a full disk never leaves a partial line that the
 * next record would be glued to. A crash can still leave at most a torn
 * final line: journal_repair() cuts it off before new appends, an append
 * cuts it too, and journal_read() skips it with a warning. The reader skips
 * a damaged line exactly (up to its '\n') and recovers a whole record glued
 * after a torn one (as older versions wrote on a full disk). Only the
 * event-loop thread writes. */
#ifndef FL_JOURNAL_H
#define FL_JOURNAL_H
#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#define JOURNAL_MAX_BYTES (1ull << 30)
/* Longest record a reader accepts (and a writer writes): a round_end of
 * 10,000 participants (the max_nodes default) is about 1.5 MB. */
#define JOURNAL_MAX_LINE  (16u << 20)

/* One record as a line: compact JSON + '\n' in a malloc'd string (NUL
 * terminated, the NUL not counted in *n). FL_ETOOBIG over JOURNAL_MAX_LINE. */
int journal_format(const cJSON *obj, char **line, size_t *n);

/* Appends one line (it must end in '\n' and hold no other '\n'; FL_EINVAL
 * otherwise) and fdatasyncs it, all or nothing (see above). On FL_EIO,
 * *os_errno (may be NULL) gets the errno of the call that failed; nothing
 * is logged, so a caller that retries decides how often to say so. */
int journal_append_line(const char *path, const char *line, size_t n, int *os_errno);
/* journal_format + journal_append_line; logs a failure. */
int journal_append(const char *path, const cJSON *obj);
/* Truncates a torn (unterminated) last line. Missing file: ok. */
int journal_repair(const char *path);

/* Calls cb for every valid record in order; a non-zero return from cb
 * stops the walk and is returned. A line that is not one JSON object is
 * skipped, counted in *nbad and logged with its line number; when a whole
 * record follows a torn one on the same line, that record is read too. */
typedef int (*journal_cb)(const cJSON *obj, void *ud);
int journal_read(const char *path, journal_cb cb, void *ud, size_t *nlines, size_t *nbad);
/* The same walk over a buffer (name is used in log lines). */
int journal_scan(const uint8_t *d, size_t n, const char *name, journal_cb cb, void *ud,
                 size_t *nlines, size_t *nbad);

#endif
