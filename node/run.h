/* run — `fedlora-node run --config node.conf`: a federation node.
 *
 * Two threads. The network thread owns the secure channel (chan_client),
 * the protocol state machine (node/client.h) and the state_dir
 * (node/state.h); it polls the channel, an inproc:// PAIR socket to the
 * training thread and a signal pipe, so heartbeats keep flowing while a
 * long local step runs. The training thread owns the trainer
 * (node/trainer_iface.h) and its own end of the PAIR socket; jobs and
 * results cross as messages that hand over ownership of heap objects
 * (ZeroMQ sockets never cross threads). Cancelling is an atomic "cancel
 * every job up to id N" watermark the trainer's progress callback reads
 * between steps.
 *
 * Signals: SIGTERM/SIGINT stop cleanly — training is cancelled at the next
 * step boundary, an update awaiting its ack gets node.stop_grace_ms, the
 * state is written, a Bye is sent (flushed within reconnect.linger_ms); a
 * second signal skips the grace. Exit status: 0 after a requested stop,
 * 1 on a runtime failure (e.g. refused by the coordinator for a base-model
 * mismatch), 2 for a usage or configuration error. */
#ifndef FL_NODE_RUN_H
#define FL_NODE_RUN_H

#include "config.h"

/* The configuration schema (documented key by key in deploy/node.conf). */
const cfg_key *nrun_schema(int *n);

/* `fedlora-node run ...`; argv starts at "run". */
int nrun_main(int argc, char **argv);

#endif
