/* cconf — see cconf.h. */
#include "cconf.h"

#include "err.h"
#include "modelfp.h"
#include "sha.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

const cfg_key cconf_schema[] = {
    /* server */
    {"server", "listen", CFG_STR, "tcp://0.0.0.0:7777", 0, 0, NULL,
     "ZeroMQ endpoint the coordinator binds"},
    {"server", "cert", CFG_STR, NULL, 0, 0, NULL, "coordinator certificate (PEM)"},
    {"server", "key", CFG_STR, NULL, 0, 0, NULL, "coordinator private key (PEM)"},
    {"server", "ca", CFG_STR, NULL, 0, 0, NULL, "federation CA certificate (PEM)"},
    {"server", "crl", CFG_STR, NULL, 0, 0, NULL, "optional CRL (re-read on SIGHUP)"},
    {"server", "allow_list", CFG_STR, NULL, 0, 0, NULL,
     "optional file of allowed node ids (re-read on SIGHUP)"},
    {"server", "ip_allow", CFG_STR, NULL, 0, 0, NULL,
     "optional comma-separated IPs/CIDRs allowed to connect"},
    {"server", "ip_deny", CFG_STR, NULL, 0, 0, NULL, "optional comma-separated IPs/CIDRs refused"},
    {"server", "endpoint_file", CFG_STR, NULL, 0, 0, NULL,
     "optional file where the bound endpoint is written"},
    {"server", "max_nodes", CFG_INT, "10000", 1, 1000000, NULL, "joined nodes at most"},
    {"server", "max_message", CFG_SIZE, "256MiB", 4096, 4294967295.0, NULL,
     "largest inbound message"},
    {"server", "heartbeat_ms", CFG_INT, "5000", 100, 3600000, NULL,
     "heartbeat interval announced to nodes"},
    {"server", "handshake_timeout_ms", CFG_INT, "10000", 100, 600000, NULL,
     "time from connecting to authenticated; a connection still unauthenticated is closed"},
    {"server", "max_pending", CFG_INT, "256", 1, 100000, NULL,
     "unauthenticated connections at most; past it the least advanced, oldest is closed"},
    {"server", "max_pending_per_addr", CFG_INT, "32", 1, 100000, NULL,
     "unauthenticated connections from one IP address at most (same eviction)"},
    {"server", "idle_timeout_ms", CFG_INT, "30000", 1000, 3600000, NULL,
     "session dropped after this long without traffic"},
    /* chunked transfers (common/xfer.h) */
    XFER_CFG_KEYS,
    /* federation */
    {"federation", "base_gguf", CFG_STR, NULL, 0, 0, NULL,
     "base model GGUF: shapes and fingerprint (common/modelfp.h)"},
    {"federation", "base_sha256", CFG_STR, NULL, 0, 0, NULL,
     "base-model fingerprint as 64 hex digits (when base_gguf is not given)"},
    {"federation", "base_name", CFG_STR, "", 0, 0, NULL,
     "base model name written into exported PEFT configs"},
    {"federation", "seed", CFG_INT, "1", 0, 9.2e18, NULL, "seed of sampling and round seeds"},
    /* lora */
    LORA_CFG_KEYS,
    /* adapter shapes without a GGUF */
    {"adapter", "layers", CFG_INT, "0", 0, 4096, NULL,
     "transformer blocks (explicit shapes, no base_gguf)"},
    {"adapter", "dims", CFG_STR, "", 0, 0, NULL,
     "explicit shapes: target=OUTxIN,... for every target"},
    {"adapter", "n_head", CFG_INT, "0", 0, 1048576, NULL,
     "attention heads (PEFT export un-permutes q)"},
    {"adapter", "n_head_kv", CFG_INT, "0", 0, 1048576, NULL,
     "key/value heads (PEFT export un-permutes k); 0 = n_head"},
    /* rounds */
    {"rounds", "min_nodes", CFG_INT, "2", 1, 1000000, NULL,
     "joined nodes needed before a round starts"},
    {"rounds", "nodes_per_round", CFG_INT, "0", 0, 1000000, NULL,
     "nodes sampled per round; 0 = use fraction"},
    {"rounds", "fraction", CFG_DOUBLE, "1.0", 1e-9, 1, NULL,
     "fraction of connected nodes sampled when nodes_per_round = 0"},
    {"rounds", "sampling", CFG_ENUM, "uniform", 0, 0, "uniform|weighted",
     "uniform, or weighted by the nodes' sample counts"},
    {"rounds", "min_updates", CFG_INT, "1", 1, 1000000, NULL,
     "accepted updates needed to commit a round"},
    {"rounds", "deadline_ms", CFG_INT, "60000", 1, 86400000, NULL,
     "round deadline after RoundStart"},
    {"rounds", "start_delay_ms", CFG_INT, "1000", 0, 3600000, NULL,
     "wait after min_nodes is reached before starting"},
    {"rounds", "gap_ms", CFG_INT, "0", 0, 86400000, NULL, "pause between rounds"},
    {"rounds", "gone_grace_ms", CFG_INT, "5000", 0, 86400000, NULL,
     "stop waiting for a disconnected participant after this"},
    {"rounds", "max_rounds", CFG_INT, "0", 0, 9.2e18, NULL,
     "stop after this many committed rounds; 0 = never"},
    /* train */
    {"train", "local_steps", CFG_INT, "10", 1, 1000000, NULL, "optimiser steps per round"},
    {"train", "lr", CFG_DOUBLE, "1e-4", 0, 10, NULL, "local learning rate"},
    {"train", "batch_size", CFG_INT, "4", 1, 65536, NULL, "sequences per step"},
    {"train", "ctx", CFG_INT, "256", 1, 1048576, NULL, "tokens per sequence"},
    {"train", "weight_decay", CFG_DOUBLE, "0", 0, 10, NULL, "AdamW weight decay"},
    {"train", "max_grad_norm", CFG_DOUBLE, "1.0", 0, 1e9, NULL, "gradient clip (0 = off)"},
    {"train", "fedprox_mu", CFG_DOUBLE, "0", 0, 1e6, NULL, "FedProx proximal term (0 = off)"},
    {"train", "uplink_format", CFG_ENUM, "q4", 0, 0, "f32|f16|q8|q4|q2",
     "format of the nodes' deltas"},
    {"train", "uplink_block", CFG_INT, "32", 0, 128, NULL,
     "block size of uplink_format (32/64/128; 0 for f32/f16)"},
    {"train", "stochastic_rounding", CFG_BOOL, "false", 0, 0, NULL,
     "nodes quantize with stochastic rounding"},
    {"train", "error_feedback", CFG_BOOL, "true", 0, 0, NULL,
     "nodes keep and re-add their quantization residual"},
    /* aggregation */
    {"aggregation", "strategy", CFG_ENUM, "fedavg", 0, 0,
     "fedavg|fedavgm|fedadam|fedyogi|trimmed_mean|median", "aggregation strategy"},
    {"aggregation", "weighting", CFG_ENUM, "samples", 0, 0, "samples|uniform",
     "FedAvg-family update weights"},
    {"aggregation", "clip_norm", CFG_DOUBLE, "0", 0, 1e30, NULL,
     "per-update L2 bound; larger updates are scaled down (0 = off)"},
    {"aggregation", "reject_norm", CFG_DOUBLE, "0", 0, 1e30, NULL,
     "per-update L2 norm above which updates are refused (0 = off)"},
    {"aggregation", "server_lr", CFG_DOUBLE, "1.0", 1e-12, 1e6, NULL, "server learning rate"},
    {"aggregation", "momentum", CFG_DOUBLE, "0.9", 0, 0.999999, NULL, "FedAvgM momentum"},
    {"aggregation", "beta1", CFG_DOUBLE, "0.9", 0, 0.999999, NULL, "FedAdam/FedYogi beta1"},
    {"aggregation", "beta2", CFG_DOUBLE, "0.99", 0, 0.999999, NULL, "FedAdam/FedYogi beta2"},
    {"aggregation", "tau", CFG_DOUBLE, "1e-3", 1e-12, 1e6, NULL, "FedAdam/FedYogi adaptivity"},
    {"aggregation", "trim", CFG_DOUBLE, "0.1", 0, 0.499999, NULL,
     "trimmed mean: fraction cut at each end"},
    {"aggregation", "max_weight", CFG_INT, "4294967296", 1, 9.2e18, NULL,
     "cap on one update's sample weight"},
    {"aggregation", "max_buffer", CFG_SIZE, "4GiB", 0, 0, NULL,
     "trimmed mean/median: cap on buffered updates"},
    {"aggregation", "downlink_format", CFG_ENUM, "q8", 0, 0, "f32|f16|q8|q4|q2",
     "format of the global delta sent to nodes"},
    {"aggregation", "downlink_block", CFG_INT, "32", 0, 128, NULL,
     "block size of downlink_format (32/64/128; 0 for f32/f16)"},
    {"rounds", "final_timeout_ms", CFG_INT, "30000", 0, 3600000, NULL,
     "when the federation ends: wait this long for the nodes to verify and evaluate the "
     "last version (0: say Bye at once)"},
    {"aggregation", "downlink_mode", CFG_ENUM, "delta", 0, 0, "delta|grid",
     "grid: every version on the downlink_format grid (server error feedback), one "
     "snapshot as small as a delta for every node; delta: the step, f32 snapshots"},
    /* secure aggregation (docs/PRIVACY.md, "Secure aggregation") */
    {"aggregation", "secure", CFG_BOOL, "false", 0, 0, NULL,
     "secure aggregation (SecAgg+): the coordinator learns only the sum of the updates"},
    {"aggregation", "secure_neighbours", CFG_INT, "0", 0, 65536, NULL,
     "secure: neighbours k of each node (even; 0 = 2 ceil(1.5 log2 n) + 2, at most n - 1)"},
    {"aggregation", "secure_threshold", CFG_DOUBLE, "0", 0, 65536, NULL,
     "secure: Shamir threshold t; 0 = ceil(2 deg / 3); below 1 a fraction of the degree "
     "(t = ceil(x deg)), else a count; 2 t > deg is required"},
    {"aggregation", "secure_clip", CFG_DOUBLE, "1.0", 1e-12, 1e9, NULL,
     "secure: C, the L2 bound nodes clip their update (+ residual) to"},
    {"aggregation", "secure_w_max", CFG_INT, "0", 0, 127, NULL,
     "secure: integer weights are in [1, w_max], w_max <= the uplink format's largest level "
     "(q8 127, q4 7, q2 1); 0 = that level"},
    {"aggregation", "secure_range", CFG_DOUBLE, "4.0", 0.01, 1e6, NULL,
     "secure: the grid spans +-range x the previous mean update's RMS per tensor"},
    {"aggregation", "secure_phase_ms", CFG_INT, "30000", 1, 86400000, NULL,
     "secure: deadline of each key, share and unmask phase"},
    /* asynchronous buffered aggregation (docs/COORDINATOR.md) */
    {"aggregation", "mode", CFG_ENUM, "sync", 0, 0, "sync|async",
     "sync: rounds; async: FedBuff, a version every buffer_size updates, no round barrier"},
    {"aggregation", "buffer_size", CFG_INT, "4", 1, 1000000, NULL,
     "async: accepted updates per committed version (K)"},
    {"aggregation", "staleness", CFG_ENUM, "polynomial", 0, 0, "constant|polynomial|hinge",
     "async: weight of an update s versions behind: 1, (1+s)^-a, or 1 up to b then "
     "1/(1+a(s-b))"},
    {"aggregation", "staleness_exponent", CFG_DOUBLE, "0.5", 0, 10, NULL,
     "async: a of the polynomial and hinge staleness functions"},
    {"aggregation", "staleness_hinge", CFG_INT, "4", 0, 1000000, NULL,
     "async: b of the hinge staleness function"},
    {"aggregation", "max_staleness", CFG_INT, "16", 0, 1000000, NULL,
     "async: updates more versions behind than this are refused (too_stale)"},
    {"aggregation", "max_concurrent", CFG_INT, "0", 0, 1000000, NULL,
     "async: tasks out at once (training or uploading); 0 = every connected node"},
    /* privacy (docs/PRIVACY.md) */
    {"privacy", "mode", CFG_ENUM, "off", 0, 0, "off|central|distributed",
     "differential privacy: off, central (noise added by the coordinator), distributed "
     "(discrete Gaussian noise added by the nodes; needs aggregation.secure = true)"},
    {"privacy", "noise_multiplier", CFG_DOUBLE, "1.0", 0, 1e4, NULL,
     "z: noise standard deviation on the sum is z * privacy.clip"},
    {"privacy", "clip", CFG_DOUBLE, "0", 0, 1e6, NULL,
     "C: L2 bound on one node's update (nodes clip, the coordinator enforces)"},
    {"privacy", "delta", CFG_DOUBLE, "1e-5", 0, 0.1, NULL, "delta of (epsilon, delta)"},
    {"privacy", "target_epsilon", CFG_DOUBLE, "0", 0, 1000, NULL,
     "budget: no round starts that would take epsilon past it"},
    {"privacy", "population", CFG_INT, "0", 0, 1e12, NULL,
     "N: nodes sampling draws from; each is sampled with q = rounds.nodes_per_round / N"},
    {"privacy", "noise_shares", CFG_INT, "0", 0, 1e6, NULL,
     "distributed: t, each node adds 1/t of the noise variance and a round with fewer "
     "than t masked inputs is abandoned; 0 = ceil(0.8 x rounds.nodes_per_round)"},
    /* per-node rank and upload precision (docs/COORDINATOR.md) */
    {"rank", "groups", CFG_STR, "", 0, 0, NULL,
     "node groups \"PATTERN:RANK[:FORMAT] ...\": nodes whose id matches the glob train rank "
     "slots 0..RANK-1 and upload FORMAT (first match wins)"},
    {"rank", "default", CFG_INT, "0", 0, 4096, NULL,
     "rank of nodes in no group, capped by their node.max_rank (0 = lora.rank)"},
    /* state */
    {"state", "dir", CFG_STR, "./fedlora-state", 0, 0, NULL, "state directory"},
    {"state", "keep_versions", CFG_INT, "5", 1, 1000000, NULL, "committed versions kept"},
    /* metrics */
    {"metrics", "listen", CFG_STR, "", 0, 0, NULL,
     "HOST:PORT of the Prometheus endpoint (empty = off)"},
    /* log */
    {"log", "level", CFG_ENUM, "info", 0, 0, "debug|info|warn|error", "log level"},
    {"log", "format", CFG_ENUM, "text", 0, 0, "text|json", "log line format"},
    /* coordinator tiers (docs/COORDINATOR.md, "Tiers") */
    UPSTREAM_CFG_KEYS,
};
const int cconf_nkeys = (int)(sizeof cconf_schema / sizeof cconf_schema[0]);

#define WHY(...)                                                                                   \
	do {                                                                                       \
		if (why && whylen)                                                                 \
			snprintf(why, whylen, __VA_ARGS__);                                        \
	} while (0)

int cconf_load(const char *path, int *argc, char **argv, char **envp, cfg **out, char *why,
               size_t whylen)
{
	cfg *c = NULL;
	int rc = cfg_new(cconf_schema, cconf_nkeys, &c);
	if (rc) {
		WHY("out of memory");
		return rc;
	}
	if (path)
		rc = cfg_load_file(c, path);
	if (!rc && envp)
		rc = cfg_load_env(c, envp);
	if (!rc && argc)
		rc = cfg_load_args(c, argc, argv);
	if (rc) {
		WHY("%s", cfg_error(c));
		cfg_free(c);
		return rc;
	}
	*out = c;
	return 0;
}

static int fmt_of(const cfg *c, const char *key, enum qt_fmt *f)
{
	return qt_fmt_parse(cfg_str(c, key), f);
}

int cconf_build(const cfg *c, cconf *o, char *why, size_t whylen)
{
	memset(o, 0, sizeof *o);
	fed_opts *f = &o->fed;
	fed_opts_default(f);
	char w2[300];
	/* server */
	o->listen = cfg_str(c, "server.listen");
	o->cert = cfg_str(c, "server.cert");
	o->key = cfg_str(c, "server.key");
	o->ca = cfg_str(c, "server.ca");
	o->crl = cfg_str(c, "server.crl");
	o->allow = cfg_str(c, "server.allow_list");
	o->ip_allow = cfg_str(c, "server.ip_allow");
	o->ip_deny = cfg_str(c, "server.ip_deny");
	o->endpoint_file = cfg_str(c, "server.endpoint_file");
	o->max_message = (size_t)cfg_size(c, "server.max_message");
	o->max_pending = (int)cfg_int(c, "server.max_pending");
	o->max_pending_per_addr = (int)cfg_int(c, "server.max_pending_per_addr");
	o->max_sessions = (int)cfg_int(c, "server.max_nodes") + o->max_pending;
	o->handshake_timeout_ms = (int)cfg_int(c, "server.handshake_timeout_ms");
	o->idle_timeout_ms = (int)cfg_int(c, "server.idle_timeout_ms");
	f->max_nodes = (uint32_t)cfg_int(c, "server.max_nodes");
	f->heartbeat_ms = (uint32_t)cfg_int(c, "server.heartbeat_ms");
	f->max_msg = o->max_message;
	xfer_opts_from_cfg(c, &o->xfer);
	/* lora */
	if (lora_spec_from_cfg(c, &f->spec, why, whylen) != 0)
		return FL_ECONFIG;
	/* base model and shapes */
	const char *gg = cfg_str(c, "federation.base_gguf");
	const char *bs = cfg_str(c, "federation.base_sha256");
	o->base_name = cfg_str(c, "federation.base_name");
	uint8_t hex_sha[32];
	int have_hex = 0;
	if (bs && *bs) {
		if (strlen(bs) != 64 || hex_decode(bs, hex_sha, 32)) {
			WHY("federation.base_sha256 must be 64 hex digits");
			return FL_ECONFIG;
		}
		have_hex = 1;
	}
	if (gg && *gg) {
		int rc = lora_arch_from_gguf(gg, f->spec.targets, &f->arch, w2, sizeof w2);
		if (rc) {
			WHY("federation.base_gguf: %s", w2);
			return rc == FL_ENOENT ? FL_ENOENT : FL_ECONFIG;
		}
		rc = mfp_compute(gg, f->base_sha); /* the nodes' definition */
		if (rc) {
			WHY("federation.base_gguf: cannot read %s", gg);
			return rc;
		}
		if (have_hex && memcmp(hex_sha, f->base_sha, 32)) {
			WHY("federation.base_sha256 does not match the fingerprint of %s", gg);
			return FL_ECONFIG;
		}
		/* explicit head counts override the GGUF's if given */
		if (cfg_int(c, "adapter.n_head"))
			f->arch.n_head = (uint32_t)cfg_int(c, "adapter.n_head");
		if (cfg_int(c, "adapter.n_head_kv"))
			f->arch.n_head_kv = (uint32_t)cfg_int(c, "adapter.n_head_kv");
	} else {
		if (!have_hex) {
			WHY("set federation.base_gguf (the base model) or federation.base_sha256 "
			    "with adapter.layers and adapter.dims");
			return FL_ECONFIG;
		}
		memcpy(f->base_sha, hex_sha, 32);
		if (lora_arch_parse((uint32_t)cfg_int(c, "adapter.layers"),
		                    cfg_str(c, "adapter.dims"),
		                    (uint32_t)cfg_int(c, "adapter.n_head"),
		                    (uint32_t)cfg_int(c, "adapter.n_head_kv"), f->spec.targets,
		                    &f->arch, w2, sizeof w2)) {
			WHY("adapter.layers/adapter.dims: %s", w2);
			return FL_ECONFIG;
		}
	}
	f->seed = (uint64_t)cfg_int(c, "federation.seed");
	/* rounds */
	f->min_nodes = (uint32_t)cfg_int(c, "rounds.min_nodes");
	f->nodes_per_round = (uint32_t)cfg_int(c, "rounds.nodes_per_round");
	f->fraction = cfg_double(c, "rounds.fraction");
	f->sampling_weighted = strcmp(cfg_str(c, "rounds.sampling"), "weighted") == 0;
	f->min_updates = (uint32_t)cfg_int(c, "rounds.min_updates");
	f->round_timeout_ms = (uint32_t)cfg_int(c, "rounds.deadline_ms");
	f->start_delay_ms = (uint32_t)cfg_int(c, "rounds.start_delay_ms");
	f->round_gap_ms = (uint32_t)cfg_int(c, "rounds.gap_ms");
	f->gone_grace_ms = (uint32_t)cfg_int(c, "rounds.gone_grace_ms");
	f->max_rounds = (uint64_t)cfg_int(c, "rounds.max_rounds");
	/* train */
	f->train.local_steps = (uint32_t)cfg_int(c, "train.local_steps");
	f->train.lr = (float)cfg_double(c, "train.lr");
	f->train.batch_size = (uint32_t)cfg_int(c, "train.batch_size");
	f->train.ctx = (uint32_t)cfg_int(c, "train.ctx");
	f->train.weight_decay = (float)cfg_double(c, "train.weight_decay");
	f->train.max_grad_norm = (float)cfg_double(c, "train.max_grad_norm");
	f->train.fedprox_mu = (float)cfg_double(c, "train.fedprox_mu");
	fmt_of(c, "train.uplink_format", &f->train.uplink_fmt);
	f->train.uplink_block = (uint32_t)cfg_int(c, "train.uplink_block");
	f->train.stochastic_rounding = cfg_bool(c, "train.stochastic_rounding");
	f->train.error_feedback = cfg_bool(c, "train.error_feedback");
	/* aggregation */
	agg_strategy_parse(cfg_str(c, "aggregation.strategy"), &f->agg.strategy);
	f->agg.weighting = strcmp(cfg_str(c, "aggregation.weighting"), "uniform") == 0
	                       ? AGG_W_UNIFORM
	                       : AGG_W_SAMPLES;
	f->agg.clip_norm = cfg_double(c, "aggregation.clip_norm");
	f->agg.reject_norm = cfg_double(c, "aggregation.reject_norm");
	f->agg.server_lr = cfg_double(c, "aggregation.server_lr");
	f->agg.momentum = cfg_double(c, "aggregation.momentum");
	f->agg.beta1 = cfg_double(c, "aggregation.beta1");
	f->agg.beta2 = cfg_double(c, "aggregation.beta2");
	f->agg.tau = cfg_double(c, "aggregation.tau");
	f->agg.trim = cfg_double(c, "aggregation.trim");
	f->agg.max_weight = (uint64_t)cfg_int(c, "aggregation.max_weight");
	f->agg.max_buffer_bytes = (size_t)cfg_size(c, "aggregation.max_buffer");
	f->agg.ffa = f->spec.ffa;
	f->secure.on = cfg_bool(c, "aggregation.secure");
	f->secure.k = (uint32_t)cfg_int(c, "aggregation.secure_neighbours");
	f->secure.threshold = cfg_double(c, "aggregation.secure_threshold");
	f->secure.clip = cfg_double(c, "aggregation.secure_clip");
	f->secure.w_max = (uint32_t)cfg_int(c, "aggregation.secure_w_max");
	f->secure.range = cfg_double(c, "aggregation.secure_range");
	f->secure.phase_ms = (uint32_t)cfg_int(c, "aggregation.secure_phase_ms");
	f->async.on = strcmp(cfg_str(c, "aggregation.mode"), "async") == 0;
	f->async.buffer_size = (uint32_t)cfg_int(c, "aggregation.buffer_size");
	fa_stale_parse(cfg_str(c, "aggregation.staleness"), &f->async.fn);
	f->async.a = cfg_double(c, "aggregation.staleness_exponent");
	f->async.hinge_b = (uint32_t)cfg_int(c, "aggregation.staleness_hinge");
	f->async.max_staleness = (uint32_t)cfg_int(c, "aggregation.max_staleness");
	f->async.max_concurrent = (uint32_t)cfg_int(c, "aggregation.max_concurrent");
	fmt_of(c, "aggregation.downlink_format", &f->down_fmt);
	f->down_block = (uint32_t)cfg_int(c, "aggregation.downlink_block");
	f->down_grid = strcmp(cfg_str(c, "aggregation.downlink_mode"), "grid") == 0;
	f->final_timeout_ms = (uint32_t)cfg_int(c, "rounds.final_timeout_ms");
	/* privacy */
	const char *pm = cfg_str(c, "privacy.mode");
	f->priv.mode = strcmp(pm, "central") == 0       ? DP_CENTRAL
	               : strcmp(pm, "distributed") == 0 ? DP_DISTRIBUTED
	                                                : DP_OFF;
	f->priv.z = cfg_double(c, "privacy.noise_multiplier");
	f->priv.clip = cfg_double(c, "privacy.clip");
	f->priv.delta = cfg_double(c, "privacy.delta");
	f->priv.target_eps = cfg_double(c, "privacy.target_epsilon");
	f->priv.population = (uint64_t)cfg_int(c, "privacy.population");
	f->priv.shares = (uint32_t)cfg_int(c, "privacy.noise_shares");
	/* per-node rank */
	f->rank.def_rank = (uint32_t)cfg_int(c, "rank.default");
	if (nrank_parse(cfg_str(c, "rank.groups"), &f->rank, why, whylen))
		return FL_ECONFIG;
	/* state, metrics, log */
	o->state_dir = cfg_str(c, "state.dir");
	f->keep_versions = (unsigned)cfg_int(c, "state.keep_versions");
	o->metrics_listen = cfg_str(c, "metrics.listen");
	o->log_level = cfg_str(c, "log.level");
	o->log_format = cfg_str(c, "log.format");
	if (!o->state_dir || !*o->state_dir) {
		WHY("state.dir must not be empty");
		return FL_ECONFIG;
	}
	/* the formats' block sizes, named by their keys */
	if (qt_check_fmt_block(f->train.uplink_fmt, f->train.uplink_block)) {
		WHY("train.uplink_block %u does not fit train.uplink_format %s (q8/q4/q2: 32, 64 "
		    "or 128; f32/f16: 0)",
		    f->train.uplink_block, qt_fmt_name(f->train.uplink_fmt));
		return FL_ECONFIG;
	}
	if (qt_check_fmt_block(f->down_fmt, f->down_block)) {
		WHY("aggregation.downlink_block %u does not fit aggregation.downlink_format %s "
		    "(q8/q4/q2: 32, 64 or 128; f32/f16: 0)",
		    f->down_block, qt_fmt_name(f->down_fmt));
		return FL_ECONFIG;
	}
	/* first: what does not compose with a region, naming both keys */
	if (upstream_from_cfg(c, f, &o->up, why, whylen))
		return FL_ECONFIG;
	if (fed_opts_check(f, w2, sizeof w2)) {
		WHY("%s", w2);
		return FL_ECONFIG;
	}
	return 0;
}
