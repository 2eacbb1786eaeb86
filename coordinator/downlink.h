/* downlink — the global adapter on the downlink grid
 * (aggregation.downlink_mode = grid, docs/COORDINATOR.md "Exact global
 * versions and the downlink").
 *
 * Every version is a vector of the downlink format's grid: with the step s
 * of a round and the server residual r (zero at the start),
 *   x = g[v] + s + r,  q = Q(x),  g[v+1] = deq(q),  r' = x - deq(q)
 * (quant_encode_ef, round to nearest), for every tensor of the adapter
 * (tensors that are not exchanged, FFA's lora_a, have s = 0 and so stay
 * where v0 put them). The encoded q of a version is therefore a complete,
 * exact snapshot as small as one quantized step: every node gets the same
 * bytes whatever version it holds, and the residual keeps what rounding
 * dropped for the next version, so nothing is lost on average.
 *
 * The residual travels with the optimiser state in the state directory
 * (tensors named "down.r.<tensor>", store_commit's opt set), so a
 * coordinator restarted between rounds resumes with it.
 *
 * Threads: one down is used by one thread at a time (the commit job runs
 * down_next on the aggregation worker while the event loop leaves it
 * alone; everything else on the event loop). */
#ifndef FL_DOWNLINK_H
#define FL_DOWNLINK_H
#include <stddef.h>
#include <stdint.h>

#include "qtensor.h"
#include "tensor.h"

typedef struct down down;

/* Prefix of the residual's tensor names in an optimiser state set. */
#define DOWN_STATE_PREFIX "down.r."

/* A grid for adapters shaped like layout (names, shapes and order are
 * copied), format fmt/block (q8/q4/q2 with block 32/64/128, or f16), zero
 * residual. FL_EINVAL for an unusable format, FL_ENOMEM. */
int down_new(enum qt_fmt fmt, uint32_t block, const tset *layout, down **out);
void down_free(down *d); /* NULL ok */

/* The next version: *out = deq(Q(g + step + r)) as a new set shaped like
 * the layout (g must be; step holds a subset of its tensors by name, or is
 * NULL), the pending residual x - deq(q), and the grid encoding of *out
 * (down_grid). r itself changes only with down_commit, so a failed commit
 * leaves it as it was. FL_EMISMATCH for a shape that does not fit,
 * FL_ENUMERIC when x is not finite or exceeds the format, FL_ENOMEM. */
int down_next(down *d, const tset *g, const tset *step, tset **out);
/* The pending residual of the last down_next becomes the residual. */
void down_commit(down *d);

/* The encoding of the current version, one qtensor per layout tensor in
 * layout order, or NULL (*n = 0) when there is none (before any
 * down_next, or after down_reencode found g off the grid). */
const qtensor *down_grid(const down *d, size_t *n);

/* After a restart: encodes g, which should already lie on the grid, and
 * checks that deq(Q(g)) reproduces it bit for bit. 0 and down_grid is
 * set; FL_EMISMATCH when g is not on the grid (down_grid is then NULL: the
 * caller sends an f32 snapshot until the next version puts it on); other
 * FL_E* as down_next. */
int down_reencode(down *d, const tset *g);

/* Adds the residual (the pending one when pending and a down_next has
 * not been committed, else the committed one) to st as DOWN_STATE_PREFIX
 * tensors. FL_EINVAL when a name would be too long, FL_ENOMEM. */
int down_state_export(const down *d, int pending, tset *st);
/* Takes the DOWN_STATE_PREFIX tensors of st as the residual and returns
 * the other tensors in *rest (a new set, for agg_state_import). A missing
 * or misshapen residual tensor, or one not finite, leaves that tensor's
 * residual at zero and is counted in *bad (the version itself stays
 * exact; only the rounding carried forward is lost). FL_ENOMEM. */
int down_state_import(down *d, const tset *st, tset **rest, size_t *bad);

#endif
