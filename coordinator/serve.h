/* serve — `fedlora-coordinator serve`: glues the federation state machine
 * (fed) to the secure channel (chan), the state directory (store), the
 * metrics endpoint and the signals.
 *
 * One event loop over zmq_poll (channel sockets, the aggregation worker's
 * inproc socket, a signal self-pipe) runs every fed_* call; one worker thread runs
 * the CPU-heavy jobs (decode + accumulate an update, aggregate + commit a
 * version), receiving job pointers over an inproc PAIR socket, so a long
 * aggregation never stalls heartbeats or handshakes. SIGTERM/SIGINT: the
 * current round is abandoned (a commit in progress is finished and
 * written), nodes get Bye, the process exits 0; a second one exits at
 * once. SIGHUP: the channel reloads certificates, CRL and allow-list.
 *
 * Test hooks (environment): FEDLORA_TEST_COMMIT_PAUSE_MS pauses the commit
 * job at each stage ("commit stage <name>" is logged first);
 * FEDLORA_TEST_RENAME_PAUSE_MS pauses every atomic file write between fsync
 * and rename ("about to rename <tmp>" is logged first). */
#ifndef FL_SERVE_H
#define FL_SERVE_H

#include "cconf.h"

/* Runs until stopped. Returns 0 after a clean stop (signal or max_rounds),
 * 1 on a runtime failure (state directory, bind, certificates). */
int serve_run(const cconf *cc);

#endif
