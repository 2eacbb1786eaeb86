/* secagg — secure aggregation (SecAgg+, Bell et al. CCS 2020, on the base
 * protocol of Bonawitz et al. CCS 2017): nodes mask their integer vectors
 * so that the coordinator learns only their sum modulo 2^m.
 *
 * Pure library: no I/O, no protobuf, no threads. The caller moves the
 * values below between nodes and coordinator (the coordinator only
 * relays). Crypto is OpenSSL 3: X25519 key agreement, HKDF-SHA256,
 * AES-256-GCM for shares, AES-256-CTR as PRG, ECDSA (the TLS certificate's
 * key) for signatures; Shamir sharing over GF(2^61 - 1) is in shamir.h.
 * Layouts of the signed bytes, share plaintexts and packed vectors are in
 * docs/FORMATS.md; the parameters and their reasons in docs/PRIVACY.md.
 *
 * One round, participants indexed 0..n-1 (the sampled node ids, sorted):
 *   1. advertise: sa_client_advertise -> sa_keys, sent to the server;
 *      sa_server_add_keys for each.
 *   2. share: sa_server_roster(i) -> the neighbours' keys for node i;
 *      sa_client_share checks them (certificate against the federation
 *      CA, CN = node id, signature) and encrypts Shamir shares to each
 *      accepted neighbour -> sa_share[]; sa_server_add_shares.
 *   3. mask: sa_server_route(i) -> the shares for node i;
 *      sa_client_receive; sa_client_mask -> packed masked vector;
 *      sa_server_add_masked.
 *   4. unmask: sa_server_unmask_request(i) -> survivors / dropped for i;
 *      sa_client_reveal -> sa_reveal[]; sa_server_add_reveals;
 *      sa_server_finish -> the exact sum mod 2^m of the survivors' inputs.
 * A node may vanish at any point; the round completes while every needed
 * secret keeps >= t shares, and fails cleanly otherwise.
 *
 * Threads: an sa_client / sa_server belongs to one thread at a time.
 * Ownership: every pointer handed out by a client or server (keys, shares,
 * packed vectors, reveals, request lists) points into that object and
 * stays valid until the next call that produces the same kind of output
 * or until its _free; inputs are only read during the call (copied when
 * kept). Errors: int 0 or FL_E* (err.h); functions with (why, whylen)
 * write a sentence naming what is wrong. */
#ifndef FL_SECAGG_H
#define FL_SECAGG_H
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

/* ---- sizes and caps (everything from outside is checked against them) ---- */
#define SA_KEY_LEN      32           /* X25519 public / private key, seeds */
#define SA_SHARE_LEN    64           /* one Shamir share of a 32-byte secret: 8 x u64 LE < p */
#define SA_SHARE_PT_LEN 128          /* share plaintext: share of b || share of mask_sk */
#define SA_SHARE_CT_LEN 144          /* AES-256-GCM ciphertext + 16-byte tag (nonce is implicit) */
#define SA_MAX_N        65536        /* participants per round */
#define SA_MAX_DIM      (1ull << 28) /* masked elements per node */
#define SA_MAX_NODE_ID  64           /* node id = certificate CN, tlsctx_valid_name rules */
#define SA_MAX_SIG      512          /* DER signature bytes (ECDSA P-256: <= 72) */
#define SA_MAX_CERT     16384        /* DER certificate bytes */
#define SA_MAX_MOD_BITS 32
#define SA_MAX_EDGES    (1u << 21) /* n * degree: bounds the server's state */

/* Public per-round parameters, the same at every node and the server. */
typedef struct sa_round {
	uint64_t round_id;
	uint32_t n;             /* participants, 3..SA_MAX_N */
	uint32_t k;             /* neighbours: even and < n-1, or >= n-1 for the complete graph */
	uint32_t t;             /* Shamir threshold: deg/2 < t <= deg, deg = min(k, n-1) */
	uint32_t mod_bits;      /* m, 1..32: sums are taken mod 2^m */
	uint64_t dim;           /* masked elements per node, 1..SA_MAX_DIM */
	uint8_t graph_seed[32]; /* public, fresh per round (e.g. from the round's RNG) */
} sa_round;

/* 0 when r is valid (ranges above, and n * degree <= SA_MAX_EDGES), else
 * FL_EINVAL naming the field. The
 * rule 2t > deg keeps a coordinator that tells half of u's neighbours
 * "u dropped" and the other half "u survived" from collecting t shares of
 * both of u's secrets. */
int sa_round_check(const sa_round *r, char *why, size_t whylen);

/* m = level_bits + ceil(log2(n * w_max)) + 1: enough bits for the sum of n
 * values w * level with |level| <= 2^(level_bits-1) - 1 and w <= w_max to
 * be read back as a signed integer. 0 when an argument is 0 or m > 32. */
uint32_t sa_mod_bits(uint32_t level_bits, uint32_t n, uint32_t w_max);

/* Suggested k and t for n participants (docs/PRIVACY.md gives the reason):
 * k = 2 * ceil(1.5 * log2 n) + 2 (SecAgg+'s O(log n)), the complete graph
 * when that is >= n - 1; t = ceil(2 * deg / 3), so 2t > deg and a third of
 * a node's neighbours may drop. n < 3 -> k = t = 0. */
void sa_params_default(uint32_t n, uint32_t *k, uint32_t *t);

/* A graph seed the nodes can recompute: SHA-256 of "fedlora-secagg-v1 graph"
 * || round_id u64 LE || for each participant id in index order: len u32 LE
 * || id. A coordinator that picks graph_seed freely could try seeds until a
 * target's neighbours are nodes it controls; with this seed (checked by
 * the nodes) the graph follows from the round id and the participant list.
 * ids[i] NUL-terminated, at most SA_MAX_NODE_ID chars; 0, FL_EINVAL or
 * FL_ECRYPTO. */
int sa_graph_seed(uint64_t round_id, const char *const *ids, uint32_t n, uint8_t out[32]);

/* Degree of every node: min(k, n - 1). */
uint32_t sa_degree(const sa_round *r);

/* Neighbours of i in the round's graph, sorted ascending, into out (room for
 * sa_degree(r) entries); *count = sa_degree(r). The graph is a random
 * permutation of 0..n-1 drawn from graph_seed (AES-256-CTR keystream,
 * rejection sampling, no modulo bias); i's neighbours are the k/2 before and
 * the k/2 after it on the permuted cycle. Symmetric: j in N(i) <=> i in N(j).
 * FL_EINVAL for a bad round or i >= n; FL_ENOMEM. */
int sa_neighbours(const sa_round *r, uint32_t i, uint32_t *out, uint32_t *count);

/* Bytes of a packed masked vector: ceil(dim * m / 8). */
size_t sa_packed_len(const sa_round *r);
/* Packs dim values (each < 2^m) at m bits each, little-endian bit order
 * (element e occupies bits e*m .. e*m+m-1 of the byte string, bit j of the
 * string = bit j%8 of byte j/8); unused high bits of the last byte are 0.
 * out has sa_packed_len bytes. Values >= 2^m are truncated: check first. */
void sa_pack(const uint32_t *x, uint64_t dim, uint32_t m, uint8_t *out);
/* Inverse of sa_pack. FL_EPROTO if the unused bits of the last byte are
 * not 0 (a non-canonical encoding). */
int sa_unpack(const uint8_t *in, uint64_t dim, uint32_t m, uint32_t *x);

/* ---- the primitives, exposed for known-answer tests and the benchmark ---- */

/* X25519(sk, pk) (RFC 7748). FL_ECRYPTO when OpenSSL refuses, e.g. for a
 * small-order pk whose result would be all zero. */
int sa_x25519(const uint8_t sk[SA_KEY_LEN], const uint8_t pk[SA_KEY_LEN], uint8_t out[SA_KEY_LEN]);
/* HKDF-SHA256 (RFC 5869) extract-and-expand; salt may be NULL (no salt).
 * outlen <= 255 * 32. */
int sa_hkdf_sha256(const uint8_t *salt, size_t saltlen, const uint8_t *ikm, size_t ikmlen,
                   const uint8_t *info, size_t infolen, uint8_t *out, size_t outlen);
/* AES-256-GCM with a 12-byte nonce: seal writes len bytes of ciphertext
 * then the 16-byte tag to out; open checks the tag of in (len + 16 bytes)
 * and writes len bytes (FL_EAUTH when the tag does not verify). */
int sa_gcm_seal(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad, size_t aadlen,
                const uint8_t *pt, size_t len, uint8_t *out);
int sa_gcm_open(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad, size_t aadlen,
                const uint8_t *in, size_t len, uint8_t *out);
/* AES-256-CTR (128-bit big-endian counter block starting at iv): out = in
 * XOR keystream. */
int sa_ctr_xor(const uint8_t key[32], const uint8_t iv[16], const uint8_t *in, uint8_t *out,
               size_t len);
/* The PRG: n 32-bit words, word w = bytes 4w..4w+3 (little-endian) of the
 * AES-256-CTR keystream under key seed with an all-zero IV. Masks use the
 * low m bits of each word (uniform mod 2^m since 2^m divides 2^32). */
int sa_prg(const uint8_t seed[SA_KEY_LEN], uint32_t *out, uint64_t n);

/* ---- values that travel ---- */

/* Phase 1: a node's advertised keys. As input (sa_server_add_keys, a roster
 * entry) the pointers are views valid during the call; as output they point
 * into the client. */
typedef struct sa_keys {
	uint32_t index;
	const char *node_id; /* NUL-terminated, 1..SA_MAX_NODE_ID chars */
	uint8_t enc_pk[SA_KEY_LEN];
	uint8_t mask_pk[SA_KEY_LEN];
	const uint8_t *sig;      /* signature over sa_signed_bytes (docs/FORMATS.md) */
	size_t sig_len;          /* 1..SA_MAX_SIG */
	const uint8_t *cert_der; /* the node's TLS certificate, DER */
	size_t cert_len;         /* 1..SA_MAX_CERT */
} sa_keys;

/* The canonical signed bytes: "fedlora-secagg-v1" || round_id u64 LE ||
 * index u32 LE || len(node_id) u32 LE || node_id || enc_pk || mask_pk.
 * Writes up to cap bytes into out, returns the full length (so that
 * sa_signed_bytes(..., NULL, 0) sizes it); node_id longer than
 * SA_MAX_NODE_ID is truncated to it (and fails verification elsewhere). */
size_t sa_signed_bytes(uint64_t round_id, const sa_keys *k, uint8_t *out, size_t cap);

/* Phase 2: one encrypted share pair from `from` to `to`. ct is
 * SA_SHARE_CT_LEN bytes: AES-256-GCM(key = HKDF(X25519(enc keys)), nonce =
 * from u32 LE || to u32 LE || 0 u32, AAD = round_id u64 LE || from || to)
 * of SA_SHARE_PT_LEN bytes, then the tag. */
typedef struct sa_share {
	uint32_t from, to;
	const uint8_t *ct;
	size_t ct_len;
} sa_share;

/* Phase 4: node `from`'s share of owner's self-mask seed (is_mask_key = 0)
 * or of owner's mask private key (is_mask_key = 1). Share x-coordinate =
 * from + 1; share = 8 field elements u64 LE, each < 2^61 - 1. */
typedef struct sa_reveal {
	uint32_t from, owner;
	uint32_t is_mask_key;
	uint8_t share[SA_SHARE_LEN];
} sa_reveal;

/* A neighbour a client refused, or a message the server refused. */
typedef struct sa_refusal {
	uint32_t index; /* the node at fault */
	char reason[160];
} sa_refusal;

/* ---- node side ---- */
typedef struct sa_client sa_client;

/* A client for node `index` (node_id = its certificate CN) in round r.
 * FL_EINVAL naming the bad argument; FL_ENOMEM. */
int sa_client_new(const sa_round *r, uint32_t index, const char *node_id, sa_client **out,
                  char *why, size_t whylen);
void sa_client_free(sa_client *c); /* wipes secrets; NULL ok */

/* Phase 1. Makes two fresh X25519 pairs (enc, mask) and the self-mask seed,
 * signs sa_signed_bytes with sign_key (the TLS certificate's private key;
 * ECDSA/RSA over SHA-256) and keeps cert's DER. *out's pointers are into c.
 * Once per client (FL_ESTATE after). FL_EINVAL if cert's public key is not
 * sign_key's; FL_ECRYPTO on an OpenSSL failure (its message in why). */
int sa_client_advertise(sa_client *c, EVP_PKEY *sign_key, X509 *cert, sa_keys *out, char *why,
                        size_t whylen);

/* Phase 2. roster: the advertised keys of (at least) c's neighbours as the
 * server relays them; entries of non-neighbours and of c itself are
 * ignored. A neighbour is accepted when its certificate verifies against
 * ca (no extra untrusted chain), has extended key usage clientAuth (a node
 * certificate, not the coordinator's), exactly one CN equal to its roster
 * node_id, that id is valid and unique among c and its neighbours, its
 * public keys give a nonzero X25519 secret, and sig verifies over
 * sa_signed_bytes(r->round_id, entry). A neighbour absent from the
 * roster or refused is listed in *refused (with the reason; the caller
 * logs it) and gets no shares. Then b and mask_sk are split (threshold t,
 * holders' x = index + 1) and encrypted to every accepted neighbour:
 * *out = one sa_share per accepted neighbour, ascending `to`.
 * Errors: FL_ESTATE (not advertised / already succeeded; a call that
 * failed may be repeated with another roster), FL_EPROTO (two roster
 * entries with one index), FL_EAUTH when fewer than t neighbours are
 * accepted (the client must abort the round; why names the count), and
 * FL_ECRYPTO / FL_ENOMEM. Outputs are written only on success, except
 * *refused / *nrefused which are also set on FL_EAUTH. */
int sa_client_share(sa_client *c, const sa_keys *roster, uint32_t nroster, X509_STORE *ca,
                    const sa_share **out, uint32_t *nout, const sa_refusal **refused,
                    uint32_t *nrefused, char *why, size_t whylen);

/* Phase 3a. shares: the ciphertexts the server routed to c (call once).
 * A share is accepted when to == c's index, from is a neighbour that c
 * accepted in phase 2, from is not repeated, ct_len == SA_SHARE_CT_LEN and
 * the GCM tag verifies; else it is listed in *bad with the reason. Every
 * routed sender that c accepted in phase 2 — its share valid or not —
 * counts as a masking partner (the server computes the same set: pairs
 * that sent shares both ways); a sender whose share failed is simply one
 * whose secrets c cannot help reconstruct. FL_ESTATE out of order. */
int sa_client_receive(sa_client *c, const sa_share *shares, uint32_t n, const sa_refusal **bad,
                      uint32_t *nbad, char *why, size_t whylen);

/* Phase 3b. x: dim values, each < 2^m (FL_EINVAL naming the first that is
 * not). Writes y = x + PRG(b) + sum_j (i < j ? +PRG(s_ij) : -PRG(s_ij))
 * mod 2^m over the masking partners j, packed (sa_pack): *packed points
 * into c, *len = sa_packed_len. FL_EAUTH if c has fewer than t masking
 * partners (abort the round); FL_ESTATE out of order. */
int sa_client_mask(sa_client *c, const uint32_t *x, const uint8_t **packed, size_t *len, char *why,
                   size_t whylen);
/* The same, writing the packed vector to the caller's out (len must be
 * sa_packed_len; FL_EINVAL otherwise), e.g. straight into a message buffer.
 * The client keeps no dim-sized state after either call. */
int sa_client_mask_into(sa_client *c, const uint32_t *x, uint8_t *out, size_t len, char *why,
                        size_t whylen);

/* Phase 4. survivors / dropped: the server's request for c (each a list of
 * node indices). Refused (FL_EPROTO, naming the index) when an index is out
 * of range, repeated, in both lists, not c's neighbour, or not one of c's
 * masking partners (the server's request only names partners); refused
 * (FL_EAUTH) when fewer than t of c's partners are survivors. Then *out holds, for each listed
 * node whose share c holds, the share of b (survivor) or of mask_sk
 * (dropped). A client reveals once (FL_ESTATE after), so it never gives
 * both secrets of one node. */
int sa_client_reveal(sa_client *c, const uint32_t *survivors, uint32_t ns, const uint32_t *dropped,
                     uint32_t nd, const sa_reveal **out, uint32_t *nout, char *why, size_t whylen);

/* ---- coordinator side ---- */
typedef struct sa_server sa_server;

int sa_server_new(const sa_round *r, sa_server **out, char *why, size_t whylen);
void sa_server_free(sa_server *s); /* NULL ok */

/* Phase 1: keys of one node (copied). Checks only what the server can:
 * index < n and not seen before, lengths within the caps, node_id valid.
 * FL_EPROTO / FL_EINVAL naming the fault; FL_ESTATE after the phase closed. */
int sa_server_add_keys(sa_server *s, const sa_keys *k, char *why, size_t whylen);

/* Phase 2: the keys of i's neighbours that advertised (pointers into s),
 * for relaying to i. The first call closes phase 1. FL_ENOENT if i did not
 * advertise. */
int sa_server_roster(sa_server *s, uint32_t i, const sa_keys **out, uint32_t *n);

/* Phase 2: the shares node `from` sent (copied). Refused whole (FL_EPROTO
 * naming the fault) when from did not advertise or already sent, or a share
 * has another from, a `to` that is not from's neighbour or did not
 * advertise, a repeated to, or ct_len != SA_SHARE_CT_LEN. FL_ESTATE after
 * the phase closed. */
int sa_server_add_shares(sa_server *s, uint32_t from, const sa_share *sh, uint32_t n, char *why,
                         size_t whylen);

/* Phase 3: the shares for node i (pointers into s): those from j to i for
 * which j -> i and i -> j were both sent (masking pairs must be agreed by
 * both ends). The first call closes phase 2. Empty (n = 0) for a node that
 * sent no shares. */
int sa_server_route(sa_server *s, uint32_t i, const sa_share **out, uint32_t *n);

/* Phase 3: node i's packed masked vector. Accepted when i has at least one
 * masking pair, has not sent before and len == sa_packed_len exactly (and
 * the padding bits are 0); added to the running sum at once (the server
 * keeps no individual vector). FL_EPROTO naming the fault; FL_ESTATE. */
int sa_server_add_masked(sa_server *s, uint32_t i, const uint8_t *packed, size_t len, char *why,
                         size_t whylen);

/* Phase 4: the unmask request for survivor i (pointers into s):
 * survivors = i's masking partners that sent a masked vector, dropped = i's
 * masking partners that did not. The first call closes phase 3.
 * FL_ENOENT if i sent no masked vector. */
int sa_server_unmask_request(sa_server *s, uint32_t i, const uint32_t **survivors, uint32_t *ns,
                             const uint32_t **dropped, uint32_t *nd);

/* Phase 4: the reveals of survivor `from` (copied). Refused whole
 * (FL_EPROTO naming the fault) when from is not a survivor or already
 * revealed, or a reveal has another from, an owner not in from's request,
 * the wrong kind for that owner (b for survivors, mask key for dropped),
 * a repeated owner, or a field element >= 2^61 - 1. */
int sa_server_add_reveals(sa_server *s, uint32_t from, const sa_reveal *rv, uint32_t n, char *why,
                          size_t whylen);

/* Reconstructs b_u for every survivor and mask_sk_u for every dropped node
 * that has a masking pair with a survivor, removes the masks and writes the
 * exact sum mod 2^m of the survivors' inputs into sum (dim values).
 * Shares are checked: a reconstructed mask key must match the advertised
 * mask_pk, and with more than t shares every share must lie on the
 * polynomial; an inconsistent set is decoded by finding the polynomial
 * that most shares agree with (unique when at most (shares - t) / 2 are
 * wrong) and the holders of the others are named as liars, their reveals
 * ignored (sa_server_liars). Fails (FL_ESTATE, why names the node and the
 * counts) when fewer than t survivors remain or a needed secret has fewer
 * than t usable shares: the round is abandoned. FL_EPROTO when shares are
 * inconsistent and no liar can be singled out. Once (FL_ESTATE after). */
int sa_server_finish(sa_server *s, uint32_t *sum, char *why, size_t whylen);

/* Nodes named as liars by sa_server_finish (pointer into s, ascending). */
void sa_server_liars(const sa_server *s, const uint32_t **idx, uint32_t *n);

/* Indices that sent a masked vector (the survivors whose inputs the sum
 * holds), ascending; valid after the first sa_server_unmask_request. */
void sa_server_survivors(const sa_server *s, const uint32_t **idx, uint32_t *n);

#endif
