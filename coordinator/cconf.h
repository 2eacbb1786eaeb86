/* cconf — the coordinator's configuration: the key schema (INI sections,
 * FEDLORA_* variables, --section.key=value flags; deploy/coordinator.conf
 * documents every key) and its translation into the options of the
 * federation (fed_opts), the channel and the process.
 *
 * Loading reads the base GGUF's header (shapes) and computes its base-model
 * fingerprint (common/modelfp.h, the definition nodes use) when
 * federation.base_gguf is set. Start-up only; not thread-safe. */
#ifndef FL_CCONF_H
#define FL_CCONF_H
#include <stddef.h>

#include "config.h"
#include "fed.h"
#include "upstream.h"
#include "xfer.h"

extern const cfg_key cconf_schema[];
extern const int cconf_nkeys;

typedef struct cconf {
	fed_opts fed;
	/* server (channel); strings point into the cfg */
	const char *listen;
	const char *cert, *key, *ca, *crl, *allow;
	const char *endpoint_file; /* where the bound endpoint is written (optional) */
	size_t max_message;
	int max_sessions; /* connections: max_nodes + max_pending */
	int max_pending, max_pending_per_addr;
	int handshake_timeout_ms, idle_timeout_ms;
	const char *ip_allow, *ip_deny;
	/* state and operations */
	const char *state_dir;
	const char *metrics_listen; /* NULL or "" = off */
	const char *log_level, *log_format;
	const char *base_name; /* for the PEFT export's base_model_name_or_path */
	upstream_opts up;      /* [upstream]: a regional coordinator (tiers) */
	xfer_opts xfer;        /* transport.*: chunked transfers (dir, max_msg set by serve) */
} cconf;

/* Builds a cfg from the file (may be NULL), the environment and argv's
 * --section.key=value flags (consumed from argv). On error returns
 * FL_ECONFIG/FL_ENOENT with the message in why. */
int cconf_load(const char *path, int *argc, char **argv, char **envp, cfg **out, char *why,
               size_t whylen);
/* Translates and checks everything (reads the base GGUF if configured).
 * why names the key at fault. out's strings point into c. */
int cconf_build(const cfg *c, cconf *out, char *why, size_t whylen);

#endif
