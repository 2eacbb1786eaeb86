/* hostile — attacker clients against a real coordinator (header-only,
 * static), for tests/integration/slow_hostile.c: raw TCP to 127.0.0.1
 * speaking ZMTP 3.1 as a DEALER would (greeting, NULL mechanism, READY),
 * then misbehaving below TLS. Each attack runs in its own thread with a
 * number of connections, reconnects when the coordinator closes one (after
 * a short pause, as a persistent attacker would) and stops at its deadline.
 *
 *   HZ_MULTIPART  a message of 256 KiB frames all flagged MORE, never the
 *                 last one, then one 1-byte MORE frame a second;
 *   HZ_MANYFRAMES complete messages of 2,048 small frames;
 *   HZ_DRIP       every 8 s a HELLO whose TLS record announces 16,000 bytes
 *                 and carries 100 (the handshake never progresses);
 *   HZ_HALFOPEN   TCP connections that send nothing (or half a greeting). */
#ifndef FL_HOSTILE_H
#define FL_HOSTILE_H
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum hz_kind { HZ_MULTIPART, HZ_MANYFRAMES, HZ_DRIP, HZ_HALFOPEN };

typedef struct hz_attack {
	enum hz_kind kind;
	int port;
	int conns;    /* connections held at once */
	int seconds;  /* how long the attack runs */
	int pause_ms; /* before reconnecting a closed connection */
	int nsrc;     /* source addresses 127.0.0.(2 + src0 + i % nsrc); 0: any */
	int src0;
	pthread_t th;
	uint8_t *big; /* 256 KiB of frame bytes, shared by its threads */
	/* results */
	long opened;     /* TCP connections made */
	long closed;     /* closed by the coordinator (EOF, reset, EPIPE) */
	long bytes_sent; /* payload accepted by the kernel */
} hz_attack;

static inline uint64_t hz_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* A connection to 127.0.0.1:port from 127.0.0.(2 + src) (src < 0: any). */
static inline int hz_connect(int port, int src)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	struct sockaddr_in a;
	if (src >= 0) {
		memset(&a, 0, sizeof a);
		a.sin_family = AF_INET;
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK + 1u + (uint32_t)src);
		if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) {
			close(fd);
			return -1;
		}
	}
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
		close(fd);
		return -1;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	return fd;
}

/* Writes everything or fails (-1: the coordinator closed the connection).
 * A full socket buffer waits up to timeout_ms (a reader that stopped
 * reading is not a failure of the attack: it returns 0 with *sent short). */
static inline int hz_write(int fd, const void *p, size_t n, int timeout_ms, long *sent)
{
	const uint8_t *b = p;
	uint64_t t0 = hz_ms();
	while (n) {
		ssize_t k = send(fd, b, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (k > 0) {
			b += k;
			n -= (size_t)k;
			*sent += k;
			continue;
		}
		if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			return -1;
		if (hz_ms() - t0 >= (uint64_t)timeout_ms)
			return 0;
		struct pollfd pf = {fd, POLLOUT, 0};
		poll(&pf, 1, 50);
	}
	return 0;
}

/* Whether the coordinator closed the connection (reads and drops what it
 * sent). */
static inline int hz_peer_closed(int fd)
{
	uint8_t buf[4096];
	for (;;) {
		ssize_t k = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
		if (k > 0)
			continue;
		if (k == 0)
			return 1;
		return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : 1;
	}
}

/* ZMTP 3.1 greeting and READY of a DEALER. */
static inline int hz_zmtp_hello(int fd, long *sent)
{
	uint8_t g[64 + 2 + 28];
	memset(g, 0, sizeof g);
	g[0] = 0xFF;
	g[8] = 1;
	g[9] = 0x7F;
	g[10] = 3;
	g[11] = 1;
	memcpy(g + 12, "NULL", 4);
	static const uint8_t ready[] = {4,   28,  5,   'R', 'E', 'A', 'D', 'Y', 11,  'S',
	                                'o', 'c', 'k', 'e', 't', '-', 'T', 'y', 'p', 'e',
	                                0,   0,   0,   6,   'D', 'E', 'A', 'L', 'E', 'R'};
	memcpy(g + 64, ready, sizeof ready);
	return hz_write(fd, g, 64 + sizeof ready, 2000, sent);
}

/* A message frame header: flags (MORE), size. */
static inline size_t hz_frame_hdr(uint8_t *o, uint64_t size, int more)
{
	if (size <= 255) {
		o[0] = more ? 1 : 0;
		o[1] = (uint8_t)size;
		return 2;
	}
	o[0] = (uint8_t)((more ? 1 : 0) | 2);
	for (int i = 0; i < 8; i++)
		o[1 + i] = (uint8_t)(size >> (56 - 8 * i));
	return 9;
}

static inline int hz_frame(int fd, const void *p, size_t n, int more, long *sent)
{
	uint8_t h[9];
	size_t k = hz_frame_hdr(h, n, more);
	if (hz_write(fd, h, k, 2000, sent))
		return -1;
	return n ? hz_write(fd, p, n, 2000, sent) : 0;
}

/* What a connection sends after its ZMTP greeting, per attack: 1 when the
 * coordinator closed it, 0 at the deadline. */
static inline int hz_run_body(hz_attack *a, int fd, uint64_t until, const uint8_t *big, long *sent)
{
	switch (a->kind) {
	case HZ_MULTIPART:
		for (int i = 0; i < 1024 && hz_ms() < until; i++) {
			if (hz_frame(fd, big, 256 * 1024, 1, sent) || hz_peer_closed(fd))
				return 1;
		}
		while (hz_ms() < until) {
			if (hz_frame(fd, big, 1, 1, sent) || hz_peer_closed(fd))
				return 1;
			struct pollfd pf = {fd, POLLIN, 0};
			poll(&pf, 1, 1000);
		}
		return 0;
	case HZ_MANYFRAMES:
		while (hz_ms() < until) {
			for (int i = 0; i < 2048; i++)
				if (hz_frame(fd, big, 16, i + 1 < 2048, sent))
					return 1;
			if (hz_peer_closed(fd))
				return 1;
		}
		return 0;
	case HZ_DRIP:
		for (uint64_t sid = 1; hz_ms() < until; sid++) {
			uint8_t hdr[9] = {1}; /* HELLO */
			for (int i = 0; i < 8; i++)
				hdr[1 + i] = (uint8_t)((sid * 0x9E3779B97F4A7C15ull) >> (8 * i));
			/* TLS handshake record announcing 16,000 bytes, carrying 95 */
			uint8_t rec[100];
			memset(rec, 0x41, sizeof rec);
			rec[0] = 0x16;
			rec[1] = 3;
			rec[2] = 1;
			rec[3] = (uint8_t)(16000 >> 8);
			rec[4] = (uint8_t)(16000 & 0xFF);
			if (hz_frame(fd, hdr, sizeof hdr, 1, sent) ||
			    hz_frame(fd, rec, sizeof rec, 0, sent))
				return 1;
			for (uint64_t t = hz_ms() + 8000; hz_ms() < t && hz_ms() < until;) {
				struct pollfd pf = {fd, POLLIN, 0};
				if (poll(&pf, 1, 200) > 0 && hz_peer_closed(fd))
					return 1;
			}
		}
		return 0;
	case HZ_HALFOPEN:
		break;
	}
	return 0;
}

/* One connection's life for each attack; returns when the coordinator
 * closed it (1) or the deadline passed (0). */
static inline int hz_run_conn(hz_attack *a, int fd, uint64_t until)
{
	long sent0 = 0, *sent = &sent0;
	const uint8_t *big = a->big;
	int rc = 1;
	if (hz_zmtp_hello(fd, sent))
		goto out;
	rc = hz_run_body(a, fd, until, big, sent);
out:
	__atomic_add_fetch(&a->bytes_sent, sent0, __ATOMIC_RELAXED);
	return rc;
}

typedef struct hz_slot {
	hz_attack *a;
	int src;
	uint64_t until;
	pthread_t th;
} hz_slot;

static inline void *hz_conn_thread(void *arg)
{
	hz_slot *s = arg;
	hz_attack *a = s->a;
	while (hz_ms() < s->until) {
		int fd = hz_connect(a->port, s->src);
		if (fd < 0) {
			usleep(100 * 1000);
			continue;
		}
		__atomic_add_fetch(&a->opened, 1, __ATOMIC_RELAXED);
		if (hz_run_conn(a, fd, s->until))
			__atomic_add_fetch(&a->closed, 1, __ATOMIC_RELAXED);
		close(fd);
		if (hz_ms() < s->until)
			usleep((useconds_t)a->pause_ms * 1000);
	}
	return NULL;
}

/* Half-open connections: one thread holds them all with poll, half of them
 * having sent five bytes of a greeting, and re-opens those closed. */
static inline void hz_halfopen(hz_attack *a, uint64_t until)
{
	struct pollfd *pf = calloc((size_t)a->conns, sizeof *pf);
	if (!pf)
		return;
	for (int i = 0; i < a->conns; i++)
		pf[i].fd = -1;
	while (hz_ms() < until) {
		for (int i = 0; i < a->conns; i++) {
			if (pf[i].fd >= 0)
				continue;
			long sent = 0;
			pf[i].fd = hz_connect(a->port, a->nsrc ? a->src0 + i % a->nsrc : -1);
			pf[i].events = POLLIN;
			if (pf[i].fd < 0)
				continue;
			a->opened++;
			if ((i & 1) && hz_write(pf[i].fd, "\xff\0\0\0\0", 5, 100, &sent)) {
				close(pf[i].fd);
				pf[i].fd = -1;
				a->closed++;
			}
			a->bytes_sent += sent;
		}
		if (poll(pf, (nfds_t)a->conns, 200) > 0)
			for (int i = 0; i < a->conns; i++)
				if (pf[i].fd >= 0 &&
				    (pf[i].revents & (POLLIN | POLLHUP | POLLERR)) &&
				    hz_peer_closed(pf[i].fd)) {
					close(pf[i].fd);
					pf[i].fd = -1;
					a->closed++;
				}
		if (a->pause_ms)
			usleep((useconds_t)a->pause_ms * 1000);
	}
	for (int i = 0; i < a->conns; i++)
		if (pf[i].fd >= 0)
			close(pf[i].fd);
	free(pf);
}

/* Runs an attack until its deadline: half-open connections from one
 * thread; the others with one small thread per connection. */
static inline void *hz_main(void *arg)
{
	hz_attack *a = arg;
	uint64_t until = hz_ms() + (uint64_t)a->seconds * 1000u;
	if (a->kind == HZ_HALFOPEN) {
		hz_halfopen(a, until);
		return NULL;
	}
	a->big = calloc(1, 256 * 1024);
	hz_slot *sl = a->big ? calloc((size_t)a->conns, sizeof *sl) : NULL;
	int n = 0;
	for (int i = 0; sl && i < a->conns; i++) {
		sl[i].a = a;
		sl[i].src = a->nsrc ? a->src0 + i % a->nsrc : -1;
		sl[i].until = until;
		pthread_attr_t at;
		pthread_attr_init(&at);
		pthread_attr_setstacksize(&at, 512 * 1024);
		if (pthread_create(&sl[i].th, &at, hz_conn_thread, &sl[i]) == 0)
			n = i + 1;
		pthread_attr_destroy(&at);
		if (n != i + 1)
			break;
	}
	for (int i = 0; i < n; i++)
		pthread_join(sl[i].th, NULL);
	free(sl);
	free(a->big);
	a->big = NULL;
	return NULL;
}

static inline int hz_start(hz_attack *a)
{
	return pthread_create(&a->th, NULL, hz_main, a);
}

static inline void hz_join(hz_attack *a)
{
	pthread_join(a->th, NULL);
}

#endif
