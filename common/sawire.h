/* sawire — secure-aggregation values (common/secagg.h) to and from their
 * protobuf messages (proto/fedlora.proto: SecAggKeys, SecAggShare), for
 * the coordinator and the node alike.
 *
 * Conversions are views: pointers in the results point into the input,
 * which must outlive them. Lengths are checked where a fixed size is
 * required; everything else is the library's to check. Thread-safe. */
#ifndef FL_SAWIRE_H
#define FL_SAWIRE_H
#include <stddef.h>
#include <stdint.h>

#include "fedlora.pb-c.h"
#include "secagg.h"

/* k as a SecAggKeys of round round_id (views into k). */
void saw_keys_to_proto(const sa_keys *k, uint64_t round_id, Fedlora__SecAggKeys *out);
/* m as sa_keys named node_id (views into m and node_id). FL_EPROTO when a
 * public key is not SA_KEY_LEN bytes. */
int saw_keys_from_proto(const Fedlora__SecAggKeys *m, const char *node_id, sa_keys *out);

/* n shares as SecAggShare messages: *items (n messages, views into sh) and
 * *ptrs (n pointers to them), both malloc'd; free both. FL_ENOMEM. */
int saw_shares_to_proto(const sa_share *sh, uint32_t n, Fedlora__SecAggShare **items,
                        Fedlora__SecAggShare ***ptrs);
/* n SecAggShare messages as sa_share (malloc'd array, views into ms; free
 * it). FL_ENOMEM. */
int saw_shares_from_proto(Fedlora__SecAggShare *const *ms, size_t n, sa_share **out);

#endif
