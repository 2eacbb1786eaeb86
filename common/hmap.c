/* hmap — see hmap.h. */
#include "hmap.h"

#include "buf.h"
#include "clock.h"
#include "err.h"

#include <openssl/rand.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* ---- SipHash-2-4 (Aumasson & Bernstein), keyed once per process ---- */

static uint64_t g_k0, g_k1;
static pthread_once_t g_key_once = PTHREAD_ONCE_INIT;

static void init_key(void)
{
	uint8_t k[16];
	if (RAND_bytes(k, sizeof k) != 1) {
		/* Still a working hash, only predictable. */
		uint64_t t = clk_mono_ns();
		memcpy(k, &t, 8);
		memcpy(k + 8, &t, 8);
	}
	g_k0 = ld_u64le(k);
	g_k1 = ld_u64le(k + 8);
}

void hmap_test_set_key(uint64_t k0, uint64_t k1)
{
	pthread_once(&g_key_once, init_key);
	g_k0 = k0;
	g_k1 = k1;
}

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
	do {                                                                                       \
		v[0] += v[1];                                                                      \
		v[1] = ROTL(v[1], 13);                                                             \
		v[1] ^= v[0];                                                                      \
		v[0] = ROTL(v[0], 32);                                                             \
		v[2] += v[3];                                                                      \
		v[3] = ROTL(v[3], 16);                                                             \
		v[3] ^= v[2];                                                                      \
		v[0] += v[3];                                                                      \
		v[3] = ROTL(v[3], 21);                                                             \
		v[3] ^= v[0];                                                                      \
		v[2] += v[1];                                                                      \
		v[1] = ROTL(v[1], 17);                                                             \
		v[1] ^= v[2];                                                                      \
		v[2] = ROTL(v[2], 32);                                                             \
	} while (0)

/* A SipHash over bytes given in pieces: the message is their concatenation. */
typedef struct sip {
	uint64_t v[4];
	uint64_t tail; /* bytes not yet in a full word, little-endian */
	size_t len;    /* bytes fed so far */
} sip;

static void sip_begin(sip *s)
{
	pthread_once(&g_key_once, init_key);
	s->v[0] = 0x736f6d6570736575ull ^ g_k0;
	s->v[1] = 0x646f72616e646f6dull ^ g_k1;
	s->v[2] = 0x6c7967656e657261ull ^ g_k0;
	s->v[3] = 0x7465646279746573ull ^ g_k1;
	s->tail = 0;
	s->len = 0;
}

static inline void sip_word(sip *s, uint64_t m)
{
	uint64_t *v = s->v;
	v[3] ^= m;
	SIPROUND;
	SIPROUND;
	v[0] ^= m;
}

static void sip_feed(sip *s, const void *data, size_t n)
{
	const uint8_t *p = data;
	size_t i = 0;
	/* complete a partial word first */
	while ((s->len & 7) && i < n) {
		s->tail |= (uint64_t)p[i++] << (8 * (s->len & 7));
		if ((++s->len & 7) == 0) {
			sip_word(s, s->tail);
			s->tail = 0;
		}
	}
	for (; i + 8 <= n; i += 8) {
		sip_word(s, ld_u64le(p + i));
		s->len += 8;
	}
	for (; i < n; i++, s->len++)
		s->tail |= (uint64_t)p[i] << (8 * (s->len & 7));
}

static uint64_t sip_end(sip *s)
{
	uint64_t *v = s->v;
	uint64_t b = ((uint64_t)s->len << 56) | s->tail;
	v[3] ^= b;
	SIPROUND;
	SIPROUND;
	v[0] ^= b;
	v[2] ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v[0] ^ v[1] ^ v[2] ^ v[3];
}

uint64_t hmap_hash(const void *p, size_t n)
{
	sip s;
	sip_begin(&s);
	sip_feed(&s, p, n);
	return sip_end(&s);
}

uint64_t hmap_hash2(const void *a, size_t an, const void *b, size_t bn)
{
	uint8_t pre[8];
	st_u64le(pre, (uint64_t)an); /* the split point makes the pair unambiguous */
	sip s;
	sip_begin(&s);
	sip_feed(&s, pre, sizeof pre);
	sip_feed(&s, a, an);
	sip_feed(&s, b, bn);
	return sip_end(&s);
}

/* ---- intrusive chained map ---- */

#define LINK(m, it) ((void **)((char *)(it) + (m)->link_off))

void hmap_init(hmap *m, size_t link_off, hmap_key_fn key)
{
	memset(m, 0, sizeof *m);
	m->link_off = link_off;
	m->key = key;
}

void hmap_fini(hmap *m)
{
	free(m->slots);
	m->slots = NULL;
	m->nslots = m->n = 0;
}

static size_t slot_of(const hmap *m, const void *k, size_t kn)
{
	return (size_t)(hmap_hash(k, kn) & (m->nslots - 1));
}

int hmap_reserve(hmap *m, size_t n)
{
	if (m->slots)
		return 0;
	size_t ns = 16;
	while (ns < n && ns < ((size_t)1 << 30))
		ns *= 2;
	m->slots = calloc(ns, sizeof *m->slots);
	if (!m->slots)
		return FL_ENOMEM;
	m->nslots = ns;
	return 0;
}

void *hmap_get(const hmap *m, const void *k, size_t kn)
{
	if (!m->slots)
		return NULL;
	for (void *it = m->slots[slot_of(m, k, kn)]; it; it = *LINK(m, it)) {
		const uint8_t *ik;
		size_t ikn;
		m->key(it, &ik, &ikn);
		if (ikn == kn && memcmp(ik, k, kn) == 0)
			return it;
	}
	return NULL;
}

static void grow(hmap *m)
{
	size_t nn = m->nslots * 2;
	void **ns = calloc(nn, sizeof *ns);
	if (!ns)
		return; /* stays correct, only slower */
	void **old = m->slots;
	size_t on = m->nslots;
	m->slots = ns;
	m->nslots = nn;
	for (size_t i = 0; i < on; i++) {
		void *it = old[i];
		while (it) {
			void *next = *LINK(m, it);
			const uint8_t *k;
			size_t kn;
			m->key(it, &k, &kn);
			size_t s = slot_of(m, k, kn);
			*LINK(m, it) = ns[s];
			ns[s] = it;
			it = next;
		}
	}
	free(old);
}

int hmap_put(hmap *m, void *item)
{
	int rc = hmap_reserve(m, 64);
	if (rc)
		return rc;
	const uint8_t *k;
	size_t kn;
	if (m->n >= m->nslots)
		grow(m);
	m->key(item, &k, &kn);
	size_t s = slot_of(m, k, kn);
	*LINK(m, item) = m->slots[s];
	m->slots[s] = item;
	m->n++;
	return 0;
}

void hmap_del(hmap *m, void *item)
{
	if (!m->slots)
		return;
	const uint8_t *k;
	size_t kn;
	m->key(item, &k, &kn);
	void **pp = &m->slots[slot_of(m, k, kn)];
	while (*pp) {
		if (*pp == item) {
			*pp = *LINK(m, item);
			*LINK(m, item) = NULL;
			m->n--;
			return;
		}
		pp = LINK(m, *pp);
	}
}

/* ---- open-addressing index ---- */

void hidx_init(hidx *h)
{
	memset(h, 0, sizeof *h);
}

void hidx_fini(hidx *h)
{
	free(h->slot);
	memset(h, 0, sizeof *h);
}

int hidx_reserve(hidx *h, size_t count, hidx_hash_fn hash_of, const void *ctx)
{
	if (count >= UINT32_MAX || count > SIZE_MAX / 4 / sizeof *h->slot)
		return FL_ENOMEM;
	size_t cap = 16;
	while (cap < 2 * count)
		cap *= 2;
	if (cap <= h->cap)
		return 0;
	uint32_t *ns = calloc(cap, sizeof *ns);
	if (!ns)
		return FL_ENOMEM;
	for (size_t i = 0; i < h->cap; i++) {
		uint32_t v = h->slot[i];
		if (!v)
			continue;
		size_t k = (size_t)hash_of(ctx, v - 1) & (cap - 1);
		while (ns[k])
			k = (k + 1) & (cap - 1);
		ns[k] = v;
	}
	free(h->slot);
	h->slot = ns;
	h->cap = cap;
	return 0;
}

uint32_t *hidx_slot(const hidx *h, uint64_t hash, hidx_eq_fn eq, const void *ctx, const void *key)
{
	size_t m = h->cap - 1;
	for (size_t i = (size_t)hash & m;; i = (i + 1) & m) {
		uint32_t v = h->slot[i];
		if (v == 0 || eq(ctx, v - 1, key))
			return &h->slot[i];
	}
}
