/* fuzz_tmpdir — a scratch directory for a fuzz target that needs files:
 * made once under /dev/shm (or /tmp), emptied and removed at exit, so runs
 * leave nothing behind. Header-only. */
#ifndef FL_FUZZ_TMPDIR_H
#define FL_FUZZ_TMPDIR_H
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char fz_dir[64];

static void fz_tmpdir_remove(void)
{
	DIR *d = opendir(fz_dir);
	struct dirent *e;
	char p[384];
	while (d && (e = readdir(d))) {
		if (e->d_name[0] == '.' &&
		    (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2])))
			continue;
		snprintf(p, sizeof p, "%s/%s", fz_dir, e->d_name);
		unlink(p);
	}
	if (d)
		closedir(d);
	rmdir(fz_dir);
}

/* The directory, made on first call ("prefix.XXXXXX"); aborts if it cannot
 * be made (the target cannot run without it). */
static const char *fz_tmpdir(const char *prefix)
{
	if (!fz_dir[0]) {
		snprintf(fz_dir, sizeof fz_dir, "%s/%s.XXXXXX",
		         access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp", prefix);
		if (!mkdtemp(fz_dir))
			abort();
		atexit(fz_tmpdir_remove);
	}
	return fz_dir;
}

#endif
