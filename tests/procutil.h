/* procutil — what tests and benchmarks ask of the machine about processes
 * and ports: a free loopback port and a process's resident memory.
 * Header-only, libc and Linux /proc only, so that unit tests, the
 * federation tests (fedtest.h) and benchmarks (tests/bench/) share it. */
#ifndef FL_PROCUTIL_H
#define FL_PROCUTIL_H
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

/* A TCP port free right now on 127.0.0.1 (the kernel's choice for a bind
 * to port 0, released at once so that a process started next, or a
 * restarted coordinator, can bind it), or -1. */
static inline int pu_free_port(void)
{
	int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a;
	socklen_t l = sizeof a;
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 ||
	    getsockname(s, (struct sockaddr *)&a, &l) != 0) {
		if (s >= 0)
			close(s);
		return -1;
	}
	close(s);
	return ntohs(a.sin_port);
}

/* Resident set size of process pid in KiB (VmRSS in /proc/PID/status), or
 * -1 when the process or the line is not there. */
static inline long pu_rss_kb(pid_t pid)
{
	char p[64], line[256];
	long kb = -1;
	snprintf(p, sizeof p, "/proc/%d/status", (int)pid);
	FILE *f = fopen(p, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

#endif
