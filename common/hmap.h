/* hmap — the tree's one keyed hash and the two tables built on it.
 *
 * hmap_hash is SipHash-2-4 under a 128-bit key drawn once per process from
 * the system's cryptographic generator: keys that come from outside (routing
 * ids, certificate names, tensor names in a peer's file, a tokenizer's
 * vocabulary) cannot be chosen to collide, so no input makes a lookup slower
 * than the table's load says. Hashes differ from run to run: never store or
 * send one, never let one decide an order that is observed.
 *
 * hmap: an intrusive chained map for items that live elsewhere (the item
 *   embeds one `void *` link and knows its key); what the channel uses for
 *   its sessions, connections and addresses.
 * hidx: an open-addressing index over an array the caller keeps (slots hold
 *   index + 1); for tables of names looked up by text (tensor sets, GGUF
 *   keys, token texts).
 *
 * Neither locks: a table belongs to the thread of its owner. `_init` never
 * allocates; tables allocate on first use and `_fini` frees. */
#ifndef FL_HMAP_H
#define FL_HMAP_H
#include <stddef.h>
#include <stdint.h>

/* Keyed SipHash-2-4 of p[0..n). Thread-safe (the key is drawn once). */
uint64_t hmap_hash(const void *p, size_t n);
/* The hash of a pair (a, b), unambiguous: ("ab", "c") and ("a", "bc")
 * differ. Thread-safe. */
uint64_t hmap_hash2(const void *a, size_t an, const void *b, size_t bn);

/* Tests only: replaces the process's key (k0, k1 as SipHash reads them,
 * little-endian from the 16 key bytes), to check published test vectors.
 * Call before any table is used: present tables would be corrupted. */
void hmap_test_set_key(uint64_t k0, uint64_t k1);

/* ---- intrusive chained map ---- */

/* Writes the key of item (a view into the item, valid while it lives). */
typedef void (*hmap_key_fn)(const void *item, const uint8_t **k, size_t *kn);

typedef struct hmap {
	void **slots;
	size_t nslots, n;
	size_t link_off; /* offset of the item's `void *` link */
	hmap_key_fn key;
} hmap;

/* An empty map of items whose link is at link_off; allocates nothing. */
void hmap_init(hmap *m, size_t link_off, hmap_key_fn key);
/* Frees the table (not the items: the map never owns them). */
void hmap_fini(hmap *m);
/* The item with key k, or NULL. */
void *hmap_get(const hmap *m, const void *k, size_t kn);
/* Allocates the first table, with room for about n items before it grows
 * (n is rounded up to a power of two, at least 16). 0 or FL_ENOMEM; a no-op
 * once a table exists. */
int hmap_reserve(hmap *m, size_t n);
/* Adds item, whose key must not be present. 0, or FL_ENOMEM when there is
 * no table yet and none can be allocated (item not added): after a
 * successful hmap_reserve it cannot fail. A failed growth keeps the map
 * correct, only with longer chains. */
int hmap_put(hmap *m, void *item);
/* Removes item if it is in the map (found by identity, not by key). */
void hmap_del(hmap *m, void *item);
static inline size_t hmap_count(const hmap *m)
{
	return m->n;
}

/* ---- open-addressing index ---- */

typedef struct hidx {
	uint32_t *slot; /* index + 1, 0 = empty */
	size_t cap;     /* a power of two, at least twice n (never full) */
	size_t n;
} hidx;

/* 1 if entry idx of the caller's array has the key being looked up. */
typedef int (*hidx_eq_fn)(const void *ctx, uint32_t idx, const void *key);
/* The hash of entry idx (for rehashing on growth). */
typedef uint64_t (*hidx_hash_fn)(const void *ctx, uint32_t idx);

/* An empty index; allocates nothing. */
void hidx_init(hidx *h);
void hidx_fini(hidx *h);
/* Makes room for count entries in all (count < UINT32_MAX), rehashing the
 * present ones with hash_of (may be NULL while the index is empty).
 * 0 or FL_ENOMEM (the index is unchanged). */
int hidx_reserve(hidx *h, size_t count, hidx_hash_fn hash_of, const void *ctx);
/* The slot for a key with hash `hash`: the one holding the entry eq accepts,
 * or the empty one where it would go (*slot == 0). The index must have been
 * reserved (cap > 0). */
uint32_t *hidx_slot(const hidx *h, uint64_t hash, hidx_eq_fn eq, const void *ctx, const void *key);
/* Fills an empty slot returned by hidx_slot with idx; the caller reserved
 * room for it. */
static inline void hidx_fill(hidx *h, uint32_t *slot, uint32_t idx)
{
	*slot = idx + 1;
	h->n++;
}

#endif
