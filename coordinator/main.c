/* fedlora-coordinator — the federation server: registry, rounds,
 * aggregation, state, metrics. Subcommands: serve, status, export,
 * check-config. Exit codes: 0 ok, 1 runtime failure, 2 usage or
 * configuration error. */
#include "cconf.h"
#include "cli.h"
#include "dp.h"
#include "dpdist.h"
#include "err.h"
#include "gtype.h"
#include "journal.h"
#include "log.h"
#include "lora.h"
#include "lora_fmt.h"
#include "peft.h"
#include "modelfp.h"
#include "serve.h"
#include "sha.h"
#include "store.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* ---- small argument helpers ---- */

/* "--name VALUE" or "--name=VALUE" at argv[*i]; advances *i (cli_opt). */
static int opt_val(int argc, char **argv, int *i, const char *name, const char **out)
{
	int r = cli_opt(argc, argv, i, name, out);
	if (r < 0)
		fprintf(stderr, "%s needs a value\n", name);
	return r;
}

static int setup_log(const char *level, const char *format)
{
	enum log_level lv;
	enum log_format lf;
	if (level && log_parse_level(level, &lv)) {
		fprintf(stderr, "unknown log level '%s' (debug|info|warn|error)\n", level);
		return CLI_USAGE;
	}
	if (format && log_parse_format(format, &lf)) {
		fprintf(stderr, "unknown log format '%s' (text|json)\n", format);
		return CLI_USAGE;
	}
	if (level)
		log_set_level(lv);
	if (format)
		log_set_format(lf);
	return 0;
}

/* Common parsing of serve/check-config: --config, --log-*, --print-config
 * and --section.key=value. */
typedef struct cfg_args {
	const char *config;
	const char *log_level, *log_format;
	int print;
} cfg_args;

static int parse_cfg_args(const char *cmd, int *argc, char **argv, cfg_args *a)
{
	memset(a, 0, sizeof *a);
	int k = 1;
	for (int i = 1; i < *argc; i++) {
		const char *v;
		int r;
		if ((r = opt_val(*argc, argv, &i, "--config", &v)) != 0) {
			if (r < 0)
				return CLI_USAGE;
			a->config = v;
		} else if ((r = opt_val(*argc, argv, &i, "--log-level", &v)) != 0) {
			if (r < 0)
				return CLI_USAGE;
			a->log_level = v;
		} else if ((r = opt_val(*argc, argv, &i, "--log-format", &v)) != 0) {
			if (r < 0)
				return CLI_USAGE;
			a->log_format = v;
		} else if (strcmp(argv[i], "--print-config") == 0) {
			a->print = 1;
		} else if (strncmp(argv[i], "--", 2) == 0 && strchr(argv[i], '.')) {
			argv[k++] = argv[i]; /* --section.key=value: for cfg_load_args */
		} else {
			fprintf(stderr, "%s: unexpected argument '%s' (try --help)\n", cmd,
			        argv[i]);
			return CLI_USAGE;
		}
	}
	*argc = k;
	argv[k] = NULL;
	return 0;
}

static int load_conf(const char *cmd, int argc, char **argv, cfg **c, cconf *cc, cfg_args *a)
{
	int rc = parse_cfg_args(cmd, &argc, argv, a);
	if (rc)
		return rc;
	if (setup_log(a->log_level, a->log_format))
		return CLI_USAGE;
	char why[600];
	if (cconf_load(a->config, &argc, argv, environ, c, why, sizeof why)) {
		fprintf(stderr, "%s: configuration error: %s\n", cmd, why);
		return CLI_USAGE;
	}
	/* the config's log settings, unless flags gave them */
	if (setup_log(a->log_level ? a->log_level : cfg_str(*c, "log.level"),
	              a->log_format ? a->log_format : cfg_str(*c, "log.format"))) {
		cfg_free(*c);
		return CLI_USAGE;
	}
	rc = cconf_build(*c, cc, why, sizeof why);
	if (rc) {
		fprintf(stderr, "%s: configuration error: %s\n", cmd, why);
		cfg_free(*c);
		return rc == FL_ECONFIG || rc == FL_ENOENT ? CLI_USAGE : CLI_FAIL;
	}
	return 0;
}

/* ---- serve ---- */

static void serve_help(void)
{
	printf("Usage: fedlora-coordinator serve --config FILE [--section.key=value ...]\n"
	       "                                 [--log-level L] [--log-format text|json]\n"
	       "                                 [--print-config]\n\n"
	       "Runs the federation: admits nodes by certificate, runs rounds, aggregates,\n"
	       "keeps the global adapter in state.dir, serves metrics. SIGTERM/SIGINT stop\n"
	       "cleanly (the open round is abandoned, a commit in progress is finished);\n"
	       "SIGHUP reloads the certificates, CRL and allow-list.\n\n"
	       "Every key can also be set as FEDLORA_<SECTION>_<KEY> in the environment;\n"
	       "precedence: defaults < file < environment < flags.\n\nKeys:");
	cfg_help(cconf_schema, cconf_nkeys, stdout);
}

static int cmd_serve(int argc, char **argv)
{
	if (cli_wants_help(argc, argv)) {
		serve_help();
		return CLI_OK;
	}
	log_set_name("coord");
	cfg *c = NULL;
	cconf cc;
	cfg_args a;
	int rc = load_conf("serve", argc, argv, &c, &cc, &a);
	if (rc)
		return rc;
	if (a.print)
		cfg_dump(c, stdout);
	if (!cc.cert || !cc.key || !cc.ca) {
		fprintf(stderr, "serve: configuration error: server.cert, server.key and server.ca "
		                "are required\n");
		cfg_free(c);
		return CLI_USAGE;
	}
	rc = serve_run(&cc) ? CLI_FAIL : CLI_OK;
	cfg_free(c);
	return rc;
}

/* ---- check-config ---- */

static int cmd_check(int argc, char **argv)
{
	if (cli_wants_help(argc, argv)) {
		printf(
		    "Usage: fedlora-coordinator check-config --config FILE [--section.key=value "
		    "...] [--print-config]\n\n"
		    "Loads the configuration exactly as serve would (file, environment, flags),\n"
		    "reads the base GGUF header if configured, checks every key, prints a\n"
		    "summary and exits 0; on a problem prints the key at fault and exits 2.\n");
		return CLI_OK;
	}
	log_set_level(LOG_LVL_WARN);
	cfg *c = NULL;
	cconf cc;
	cfg_args a;
	int rc = load_conf("check-config", argc, argv, &c, &cc, &a);
	if (rc)
		return rc;
	if (a.print)
		cfg_dump(c, stdout);
	tset *lay = NULL;
	if (lora_layout(&cc.fed.spec, &cc.fed.arch, &lay)) {
		fprintf(stderr, "check-config: the LoRA spec does not fit the adapter shapes\n");
		cfg_free(c);
		return CLI_USAGE;
	}
	char tg[128], bh[65];
	lora_targets_format(cc.fed.spec.targets, tg, sizeof tg);
	hex_encode(cc.fed.base_sha, 32, bh);
	printf("configuration ok\n");
	printf("  adapter: %u layers, rank %u, targets %s%s: %zu tensors, %zu parameters\n",
	       cc.fed.arch.n_layers, cc.fed.spec.rank, tg, cc.fed.spec.ffa ? " (FFA-LoRA)" : "",
	       tset_count(lay), tset_numel(lay));
	printf("  base fingerprint: %s\n", bh);
	printf("  rounds: min_nodes %u, %s%u sampled, min_updates %u, deadline %u ms\n",
	       cc.fed.min_nodes, cc.fed.nodes_per_round ? "" : "fraction-based, at least ",
	       cc.fed.nodes_per_round ? cc.fed.nodes_per_round : 1, cc.fed.min_updates,
	       cc.fed.round_timeout_ms);
	printf("  aggregation: %s; uplink %s, downlink %s\n",
	       agg_strategy_name(cc.fed.agg.strategy), qt_fmt_name(cc.fed.train.uplink_fmt),
	       qt_fmt_name(cc.fed.down_fmt));
	if (cc.fed.priv.mode == DP_CENTRAL) {
		const dp_opts *po = &cc.fed.priv;
		double q = (double)cc.fed.nodes_per_round / (double)po->population;
		/* rounds the budget allows at these settings (capped for the search) */
		uint64_t r = 0;
		while (r < 100000 && dp_epsilon_for(q, po->z, r + 1, po->delta) <= po->target_eps)
			r++;
		printf("  privacy: central, clip %g, noise multiplier %g, q = %u/%" PRIu64
		       " = %.4g (Poisson), delta %g: target epsilon %g allows %s%" PRIu64
		       " rounds\n",
		       po->clip, po->z, cc.fed.nodes_per_round, po->population, q, po->delta,
		       po->target_eps, r == 100000 ? "at least " : "", r);
	}
	printf("  server: %s; state: %s; metrics: %s\n", cc.listen, cc.state_dir,
	       cc.metrics_listen && *cc.metrics_listen ? cc.metrics_listen : "off");
	if (!cc.cert || !cc.key || !cc.ca)
		printf("  note: server.cert, server.key and server.ca must be set to serve\n");
	tset_free(lay);
	cfg_free(c);
	return CLI_OK;
}

/* ---- status ---- */

typedef struct stat_acc {
	uint64_t committed, abandoned, restarted, starts;
	uint64_t accepted, rejected;
	cJSON *rej; /* reason -> count */
	double bytes_in, bytes_out;
	double last_eval, last_train;
	int has_eval, has_train;
	uint64_t eval_round;
	cJSON *last; /* array of the last N round_end records */
	int keep;
	uint64_t outages, lost; /* store_recovered records; journal_gap drops */
	double outage_ms;
	cJSON *final; /* the last "final" record (the final version's evaluations) */
} stat_acc;

static double num(const cJSON *o, const char *k, double def)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsNumber(v) ? v->valuedouble : def;
}

static int status_cb(const cJSON *o, void *ud)
{
	stat_acc *s = ud;
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type");
	if (!cJSON_IsString(t))
		return 0;
	if (strcmp(t->valuestring, "start") == 0) {
		s->starts++;
	} else if (strcmp(t->valuestring, "store_recovered") == 0) {
		s->outages++;
		s->outage_ms += num(o, "outage_ms", 0);
	} else if (strcmp(t->valuestring, "journal_gap") == 0) {
		s->lost += (uint64_t)num(o, "dropped", 0);
	} else if (strcmp(t->valuestring, "round_restart") == 0) {
		s->restarted++;
	} else if (strcmp(t->valuestring, "final") == 0) {
		cJSON_Delete(s->final);
		s->final = cJSON_Duplicate(o, 1);
	} else if (strcmp(t->valuestring, "round_end") == 0) {
		int com = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "committed"));
		if (com)
			s->committed++;
		else
			s->abandoned++;
		const cJSON *ac = cJSON_GetObjectItemCaseSensitive(o, "accepted");
		s->accepted += (uint64_t)(cJSON_IsArray(ac) ? cJSON_GetArraySize(ac) : 0);
		const cJSON *rj = cJSON_GetObjectItemCaseSensitive(o, "rejected");
		const cJSON *e;
		cJSON_ArrayForEach(e, rj)
		{
			if (!cJSON_IsNumber(e) || !e->string)
				continue;
			s->rejected += (uint64_t)e->valuedouble;
			cJSON *cur = cJSON_GetObjectItemCaseSensitive(s->rej, e->string);
			if (cur)
				cJSON_SetNumberValue(cur, cur->valuedouble + e->valuedouble);
			else
				cJSON_AddNumberToObject(s->rej, e->string, e->valuedouble);
		}
		s->bytes_in += num(o, "bytes_in", 0);
		s->bytes_out += num(o, "bytes_out", 0);
		const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "metrics");
		if (com && cJSON_GetObjectItemCaseSensitive(m, "eval_loss")) {
			s->last_eval = num(m, "eval_loss", 0);
			s->has_eval = 1;
			s->eval_round = (uint64_t)num(o, "round", 0);
		}
		if (com && cJSON_GetObjectItemCaseSensitive(m, "train_loss")) {
			s->last_train = num(m, "train_loss", 0);
			s->has_train = 1;
		}
		cJSON_AddItemToArray(s->last, cJSON_Duplicate(o, 1));
		while (cJSON_GetArraySize(s->last) > s->keep)
			cJSON_DeleteItemFromArray(s->last, 0);
	}
	return 0;
}

static void human_bytes(double b, char *out, size_t cap)
{
	const char *u[] = {"B", "KB", "MB", "GB", "TB"};
	int i = 0;
	while (b >= 1000 && i < 4) {
		b /= 1000;
		i++;
	}
	snprintf(out, cap, i ? "%.1f %s" : "%.0f %s", b, u[i]);
}

static int cmd_status(int argc, char **argv)
{
	if (cli_wants_help(argc, argv)) {
		printf("Usage: fedlora-coordinator status --state-dir DIR [--rounds N] [--json]\n\n"
		       "Prints the current global version (verified against its fingerprint),\n"
		       "the last N rounds (default 10) and totals from the round journal. Safe to\n"
		       "run while the coordinator is serving.\n");
		return CLI_OK;
	}
	const char *dir = NULL, *nr = "10";
	int json = 0;
	for (int i = 1; i < argc; i++) {
		int r;
		if ((r = opt_val(argc, argv, &i, "--state-dir", &dir)) != 0 ||
		    (r = opt_val(argc, argv, &i, "--rounds", &nr)) != 0) {
			if (r < 0)
				return CLI_USAGE;
		} else if (strcmp(argv[i], "--json") == 0) {
			json = 1;
		} else {
			fprintf(stderr, "status: unexpected argument '%s' (try --help)\n", argv[i]);
			return CLI_USAGE;
		}
	}
	int64_t keep;
	if (!dir) {
		fprintf(stderr, "status: --state-dir is required\n");
		return CLI_USAGE;
	}
	if (cfg_parse_int(nr, &keep) || keep < 0 || keep > 100000) {
		fprintf(stderr, "status: --rounds must be a number 0..100000\n");
		return CLI_USAGE;
	}
	log_set_level(LOG_LVL_ERROR);
	uint64_t *vs = NULL;
	size_t nv = 0;
	char jpath[4096];
	snprintf(jpath, sizeof jpath, "%s/journal.jsonl", dir);
	if (store_list_versions(dir, &vs, &nv) || (nv == 0 && access(jpath, R_OK) != 0)) {
		fprintf(stderr,
		        "status: %s is not a coordinator state directory (no versions, no "
		        "journal)\n",
		        dir);
		free(vs);
		return CLI_FAIL;
	}
	tset *g = NULL;
	store_info in;
	int have = 0;
	char why[400] = "";
	for (size_t i = nv; i-- > 0;) {
		if (store_read_version(dir, vs[i], &g, &in, why, sizeof why) == 0) {
			have = 1;
			break;
		}
		fprintf(stderr, "status: warning: version %" PRIu64 " does not verify: %s\n", vs[i],
		        why);
	}
	stat_acc s;
	memset(&s, 0, sizeof s);
	s.rej = cJSON_CreateObject();
	s.last = cJSON_CreateArray();
	s.keep = (int)keep;
	size_t nl = 0, nb = 0;
	journal_read(jpath, status_cb, &s, &nl, &nb);
	int rc = have ? CLI_OK : CLI_FAIL;
	/* privacy ledger (central DP): present only when privacy was on */
	dp_ledger led;
	char lwhy[300] = "";
	int lrc = dp_ledger_load(dir, &led, lwhy, sizeof lwhy);
	if (lrc && lrc != FL_ENOENT) {
		fprintf(stderr, "status: privacy ledger: %s\n", lwhy);
		rc = CLI_FAIL;
	}
	char sha[65] = "";
	if (have)
		hex_encode(in.sha, 32, sha);
	if (json) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "state_dir", dir);
		if (have) {
			cJSON_AddNumberToObject(o, "version", (double)in.version);
			cJSON_AddStringToObject(o, "sha256", sha);
			cJSON_AddNumberToObject(o, "round", (double)in.round);
			cJSON_AddNumberToObject(o, "parameters", (double)tset_numel(g));
			cJSON_AddNumberToObject(o, "committed_ms", (double)in.wall_ms);
		}
		cJSON *va = cJSON_AddArrayToObject(o, "versions_kept");
		for (size_t i = 0; i < nv; i++)
			cJSON_AddItemToArray(va, cJSON_CreateNumber((double)vs[i]));
		cJSON_AddNumberToObject(o, "rounds_committed", (double)s.committed);
		cJSON_AddNumberToObject(o, "rounds_abandoned", (double)s.abandoned);
		cJSON_AddNumberToObject(o, "rounds_restarted", (double)s.restarted);
		cJSON_AddNumberToObject(o, "updates_accepted", (double)s.accepted);
		cJSON_AddItemToObject(o, "updates_rejected", s.rej);
		s.rej = NULL;
		cJSON_AddNumberToObject(o, "bytes_in", s.bytes_in);
		cJSON_AddNumberToObject(o, "bytes_out", s.bytes_out);
		if (s.has_eval)
			cJSON_AddNumberToObject(o, "global_loss", s.last_eval);
		if (s.has_train)
			cJSON_AddNumberToObject(o, "train_loss", s.last_train);
		cJSON_AddItemToObject(o, "last_rounds", s.last);
		s.last = NULL;
		if (lrc == 0) {
			cJSON *pj = cJSON_AddObjectToObject(o, "privacy");
			cJSON_AddNumberToObject(pj, "epsilon", led.epsilon);
			cJSON_AddNumberToObject(pj, "delta", led.delta);
			cJSON_AddNumberToObject(pj, "rounds_charged", (double)led.rounds);
			cJSON_AddNumberToObject(pj, "last_round", (double)led.last_round);
			cJSON_AddNumberToObject(pj, "sampling_rate", led.last_q);
			cJSON_AddNumberToObject(pj, "noise_multiplier", led.last_z);
		}
		if (s.final) {
			cJSON_AddItemToObject(o, "final", s.final);
			s.final = NULL;
		}
		cJSON_AddNumberToObject(o, "journal_bad_lines", (double)nb);
		cJSON_AddNumberToObject(o, "state_write_outages", (double)s.outages);
		cJSON_AddNumberToObject(o, "state_write_outage_ms", s.outage_ms);
		cJSON_AddNumberToObject(o, "journal_records_lost", (double)s.lost);
		char *t = cJSON_Print(o);
		if (t)
			printf("%s\n", t);
		free(t);
		cJSON_Delete(o);
	} else {
		printf("state directory: %s\n", dir);
		if (have) {
			char when[64] = "?";
			time_t tt = (time_t)(in.wall_ms / 1000);
			struct tm tmv;
			if (in.wall_ms && gmtime_r(&tt, &tmv))
				strftime(when, sizeof when, "%Y-%m-%d %H:%M:%SZ", &tmv);
			printf("current version: %" PRIu64
			       " (sha256 %.16s..., verified), round %" PRIu64
			       ", committed %s, %zu parameters\n",
			       in.version, sha, in.round, when, tset_numel(g));
		} else {
			printf("current version: none verifies\n");
		}
		printf("versions kept: %zu", nv);
		if (nv)
			printf(" (%" PRIu64 "..%" PRIu64 ")", vs[0], vs[nv - 1]);
		printf("\nrounds: %" PRIu64 " committed, %" PRIu64 " abandoned, %" PRIu64
		       " restarted after a crash\n",
		       s.committed, s.abandoned, s.restarted);
		printf("updates: %" PRIu64 " accepted, %" PRIu64 " rejected", s.accepted,
		       s.rejected);
		const cJSON *e;
		int first = 1;
		cJSON_ArrayForEach(e, s.rej)
		{
			printf("%s%s %.0f", first ? " (" : ", ", e->string, e->valuedouble);
			first = 0;
		}
		printf("%s\n", first ? "" : ")");
		char bi[32], bo[32];
		human_bytes(s.bytes_in, bi, sizeof bi);
		human_bytes(s.bytes_out, bo, sizeof bo);
		printf("bytes: %s in, %s out\n", bi, bo);
		if (s.has_eval)
			printf("global loss: %.4f (round %" PRIu64 ")\n", s.last_eval,
			       s.eval_round);
		if (s.has_train)
			printf("train loss: %.4f\n", s.last_train);
		if (s.final) {
			printf(
			    "final version: %.0f sent to %.0f nodes, %.0f answered, %.0f evaluated",
			    num(s.final, "version", 0), num(s.final, "nodes", 0),
			    num(s.final, "answered", 0), num(s.final, "evaluated", 0));
			if (cJSON_GetObjectItemCaseSensitive(s.final, "mean_eval_loss"))
				printf(", mean held-out loss %.4f",
				       num(s.final, "mean_eval_loss", 0));
			printf("\n");
		}
		if (lrc == 0)
			printf("privacy: epsilon %.4g spent at delta %g over %" PRIu64
			       " rounds (last round %" PRIu64 ", q %.4g, noise multiplier %g)\n",
			       led.epsilon, led.delta, led.rounds, led.last_round, led.last_q,
			       led.last_z);
		if (cJSON_GetArraySize(s.last)) {
			printf("\n%7s %-10s %8s %9s %10s %10s %10s %9s\n", "round", "outcome",
			       "version", "accepted", "bytes_in", "bytes_out", "train_loss",
			       "round_ms");
			cJSON_ArrayForEach(e, s.last)
			{
				const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "metrics");
				const cJSON *tm = cJSON_GetObjectItemCaseSensitive(e, "timings");
				const cJSON *ac = cJSON_GetObjectItemCaseSensitive(e, "accepted");
				const cJSON *pa =
				    cJSON_GetObjectItemCaseSensitive(e, "participants");
				int com =
				    cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "committed"));
				char acc[32], b1[32], b2[32], tl[32] = "-";
				snprintf(acc, sizeof acc, "%d/%d",
				         cJSON_IsArray(ac) ? cJSON_GetArraySize(ac) : 0,
				         cJSON_IsArray(pa) ? cJSON_GetArraySize(pa) : 0);
				human_bytes(num(e, "bytes_in", 0), b1, sizeof b1);
				human_bytes(num(e, "bytes_out", 0), b2, sizeof b2);
				if (cJSON_GetObjectItemCaseSensitive(m, "train_loss"))
					snprintf(tl, sizeof tl, "%.4f", num(m, "train_loss", 0));
				printf("%7.0f %-10s %8.0f %9s %10s %10s %10s %9.0f\n",
				       num(e, "round", 0),
				       com ? "committed"
				           : (cJSON_IsTrue(
				                  cJSON_GetObjectItemCaseSensitive(e, "recovered"))
				                  ? "recovered"
				                  : "abandoned"),
				       num(e, "version", 0), acc, b1, b2, tl,
				       num(tm, "round_ms", 0));
				const cJSON *d = cJSON_GetObjectItemCaseSensitive(e, "detail");
				if (!com && cJSON_IsString(d))
					printf("        %s\n", d->valuestring);
			}
		}
		if (s.outages)
			printf("\nstate directory not writable %" PRIu64 " time(s), %.1f s in all "
			       "(journal records held in memory and written after)\n",
			       s.outages, s.outage_ms / 1e3);
		if (s.lost)
			printf("journal: %" PRIu64 " record(s) lost while the disk was full\n",
			       s.lost);
		if (nb)
			printf("\njournal: %zu unreadable line(s) skipped\n", nb);
	}
	cJSON_Delete(s.rej);
	cJSON_Delete(s.last);
	cJSON_Delete(s.final);
	tset_free(g);
	free(vs);
	return rc;
}

/* ---- export ---- */

static void export_help(void)
{
	printf("Usage: fedlora-coordinator export --state-dir DIR --version V|latest --out OUT\n"
	       "                                  [--format peft|gguf-lora] [--base BASE.gguf]\n"
	       "                                  [--type f32|f16]\n"
	       "                                  [--n-head N] [--n-head-kv N] [--no-unpermute]\n"
	       "                                  [--base-name NAME]\n\n"
	       "Writes a committed version (its fingerprint verified first) as an adapter:\n\n"
	       "  --format peft       (default) OUT/adapter_model.safetensors\n"
	       "                      (base_model.model.model.layers.N.<module>.lora_A/B.weight)\n"
	       "                      and OUT/adapter_config.json\n"
	       "  --format gguf-lora  OUT is a llama.cpp GGUF LoRA adapter (--lora in llama.cpp);\n"
	       "                      needs --base\n"
	       "  --base BASE.gguf    the federation's base model. Its fingerprint must equal the\n"
	       "                      one recorded with the version and the adapter must fit its\n"
	       "                      tensors; architecture, head counts and general.name come\n"
	       "                      from its header, and the file is written by the same code\n"
	       "                      as `fedlora-node export` (identical layout)\n"
	       "  --type T            gguf-lora tensors: f32 (default) or f16\n\n"
	       "Without --base (peft only) the q/k lora_B rows are put back into Hugging Face\n"
	       "order using the head counts recorded with the version (or --n-head/--n-head-kv);\n"
	       "--no-unpermute keeps GGUF order (non-llama bases). With --base these come\n"
	       "from the base's header. --base-name sets base_model_name_or_path (give the\n"
	       "base's Hugging Face id); by default it is the id the base GGUF records, or\n"
	       "its general.name.\n\n"
	       "The scale is the federation's: alpha and rank (and rsLoRA) recorded with the\n"
	       "version.\n\n"
	       "A merged model needs the model engine, which is in fedlora-node:\n"
	       "  fedlora-coordinator export --state-dir DIR --version V --format gguf-lora \\\n"
	       "      --base BASE.gguf --out a.gguf\n"
	       "  fedlora-node export --model BASE.gguf --adapter a.gguf --format merged \\\n"
	       "      --out merged.gguf [--type f16|q8_0|q4_0 | --quantize ...]\n");
}

typedef struct export_args {
	const char *dir, *ver, *out, *nh, *nhkv, *base_name, *format, *base, *type;
	int unpermute;
	enum lfmt_format fmt;
	uint32_t gtype;
	uint64_t version; /* when ver is not "latest" */
} export_args;

static int export_parse(int argc, char **argv, export_args *a)
{
	memset(a, 0, sizeof *a);
	a->unpermute = 1;
	for (int i = 1; i < argc; i++) {
		int r;
		if ((r = opt_val(argc, argv, &i, "--state-dir", &a->dir)) != 0 ||
		    (r = opt_val(argc, argv, &i, "--version", &a->ver)) != 0 ||
		    (r = opt_val(argc, argv, &i, "--out", &a->out)) != 0 ||
		    (r = opt_val(argc, argv, &i, "--n-head-kv", &a->nhkv)) != 0 ||
		    (r = opt_val(argc, argv, &i, "--n-head", &a->nh)) != 0 ||
		    (r = opt_val(argc, argv, &i, "--base-name", &a->base_name)) != 0 ||
		    (r = opt_val(argc, argv, &i, "--format", &a->format)) != 0 ||
		    (r = opt_val(argc, argv, &i, "--base", &a->base)) != 0 ||
		    (r = opt_val(argc, argv, &i, "--type", &a->type)) != 0) {
			if (r < 0)
				return CLI_USAGE;
		} else if (strcmp(argv[i], "--no-unpermute") == 0) {
			a->unpermute = 0;
		} else {
			fprintf(stderr, "export: unexpected argument '%s' (try --help)\n", argv[i]);
			return CLI_USAGE;
		}
	}
	const char *f = a->format ? a->format : "peft";
	if (strcmp(f, "merged") == 0) {
		/* the engine that folds W + s*B*A lives in node/; the binaries
		 * never include each other (DESIGN.md) */
		fprintf(stderr,
		        "export: --format merged is done by fedlora-node (it needs the model "
		        "engine); export in two steps:\n"
		        "  fedlora-coordinator export --state-dir %s --version %s --format "
		        "gguf-lora --base %s --out a.gguf\n"
		        "  fedlora-node export --model %s --adapter a.gguf --format merged --out "
		        "%s [--type ... | --quantize ...]\n",
		        a->dir ? a->dir : "DIR", a->ver ? a->ver : "V",
		        a->base ? a->base : "BASE.gguf", a->base ? a->base : "BASE.gguf",
		        a->out ? a->out : "merged.gguf");
		return CLI_USAGE;
	}
	if (strcmp(f, "peft") == 0) {
		a->fmt = LFMT_PEFT;
	} else if (strcmp(f, "gguf-lora") == 0) {
		a->fmt = LFMT_GGUF_LORA;
	} else {
		fprintf(stderr, "export: --format: expected peft or gguf-lora, got '%s'\n", f);
		return CLI_USAGE;
	}
	if (!a->dir || !a->ver || !a->out) {
		fprintf(stderr, "export: --state-dir, --version and --out are required\n");
		return CLI_USAGE;
	}
	if (strcmp(a->ver, "latest") != 0) {
		int64_t x;
		if (cfg_parse_int(a->ver, &x) || x < 0) {
			fprintf(stderr, "export: --version must be a number or 'latest'\n");
			return CLI_USAGE;
		}
		a->version = (uint64_t)x;
	}
	a->gtype = GTYPE_F32;
	if (a->type) {
		if (a->fmt != LFMT_GGUF_LORA) {
			fprintf(stderr,
			        "export: --type applies to --format gguf-lora only (PEFT is "
			        "written in f32)\n");
			return CLI_USAGE;
		}
		if (strcmp(a->type, "f16") == 0) {
			a->gtype = GTYPE_F16;
		} else if (strcmp(a->type, "f32") != 0) {
			fprintf(stderr, "export: --type: expected f32 or f16, got '%s'\n", a->type);
			return CLI_USAGE;
		}
	}
	if (a->fmt == LFMT_GGUF_LORA && !a->base) {
		fprintf(stderr,
		        "export: --format gguf-lora needs --base BASE.gguf (the federation's "
		        "base model: the adapter takes its architecture and "
		        "hyper-parameters)\n");
		return CLI_USAGE;
	}
	if (a->base && (a->nh || a->nhkv || !a->unpermute)) {
		fprintf(stderr,
		        "export: --n-head, --n-head-kv and --no-unpermute are for exports "
		        "without --base; with --base they come from %s\n",
		        a->base);
		return CLI_USAGE;
	}
	return 0;
}

/* The PEFT path without a base: head counts recorded with the version (or
 * given), common/peft's writer (the one `fedlora-node export` uses). */
static int export_peft_nobase(const export_args *a, const tset *g, const store_info *in)
{
	int64_t h = 0, hkv = 0;
	if ((a->nh && (cfg_parse_int(a->nh, &h) || h < 1 || h > 1048576)) ||
	    (a->nhkv && (cfg_parse_int(a->nhkv, &hkv) || hkv < 1 || hkv > 1048576))) {
		fprintf(stderr, "export: --n-head/--n-head-kv must be positive numbers\n");
		return CLI_USAGE;
	}
	char why[400];
	lora_spec sp;
	memset(&sp, 0, sizeof sp);
	sp.rank = in->rank;
	sp.alpha = in->alpha;
	sp.rslora = in->rslora;
	sp.ffa = in->ffa;
	sp.init_seed = in->init_seed;
	if (!in->targets[0] || lora_targets_parse(in->targets, &sp.targets, why, sizeof why))
		sp.targets = 0; /* the writer derives them from the tensor names */
	if (!sp.rank && tset_count(g))
		sp.rank = (uint32_t)tset_at(g, 0)->shape[0];
	if (sp.alpha <= 0)
		sp.alpha = (float)sp.rank;
	peft_base pb = {.n_head = h ? (uint32_t)h : in->n_head,
	                .unpermute = a->unpermute,
	                .name = a->base_name};
	pb.n_head_kv = hkv ? (uint32_t)hkv : (in->n_head_kv ? in->n_head_kv : pb.n_head);
	int rc = peft_write(g, &sp, &pb, a->out, why, sizeof why);
	if (rc) {
		fprintf(stderr, "export: %s%s\n", why,
		        rc == FL_EINVAL ? " (--n-head / --n-head-kv, or --no-unpermute)" : "");
		/* no head count, or one that does not divide the rows: usage */
		return rc == FL_EINVAL || rc == FL_EMISMATCH ? CLI_USAGE : CLI_FAIL;
	}
	return CLI_OK;
}

static int all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return 0;
	return 1;
}

/* With --base: the base must be the one the federation trained on (the
 * fingerprint recorded with the version, when there is one), then
 * common/lora_fmt writes the file, the same writer as `fedlora-node export`. */
static int export_with_base(const export_args *a, const tset *g, const store_info *in)
{
	uint8_t fp[MFP_LEN];
	char have[2 * MFP_LEN + 1], want[2 * MFP_LEN + 1];
	int rc = mfp_compute(a->base, fp);
	if (rc) {
		fprintf(stderr, "export: --base %s: cannot read the base model (%s)\n", a->base,
		        fl_strerror(rc));
		return CLI_FAIL;
	}
	hex_encode(fp, MFP_LEN, have);
	int recorded = in->has_base && !all_zero(in->base_sha, sizeof in->base_sha);
	if (recorded) {
		hex_encode(in->base_sha, MFP_LEN, want);
		if (memcmp(fp, in->base_sha, MFP_LEN) != 0) {
			fprintf(stderr,
			        "export: --base %s is not the federation's base model: its "
			        "fingerprint is %.16s..., version %" PRIu64
			        " was trained on base %.16s...\n",
			        a->base, have, in->version, want);
			return CLI_FAIL;
		}
	} else {
		fprintf(stderr,
		        "export: warning: version %" PRIu64 " records no base fingerprint; "
		        "%s (%.16s...) is checked by its tensor shapes only\n",
		        in->version, a->base, have);
	}
	/* the federation's scale: s = alpha / r, or alpha / sqrt(r) with rsLoRA,
	 * the same definition as lora_scale (fed.c records all three) */
	if (!(in->alpha > 0) || !isfinite(in->alpha)) {
		fprintf(stderr,
		        "export: version %" PRIu64 " records no usable LoRA alpha "
		        "(fedlora.lora_alpha); the adapter's scale is unknown\n",
		        in->version);
		return CLI_FAIL;
	}
	lora_spec p = {.alpha = in->alpha, .rank = in->rank, .rslora = in->rslora != 0};
	char why[1024] = "";
	rc = lfmt_export(g, a->base, &p, a->fmt, a->gtype, a->base_name, a->out, why, sizeof why);
	if (rc == FL_EMISMATCH) {
		fprintf(stderr, "export: version %" PRIu64 " does not fit --base %s: %s\n",
		        in->version, a->base, why);
		return CLI_FAIL;
	}
	if (rc) {
		fprintf(stderr, "export: %s\n", why);
		return CLI_FAIL;
	}
	printf("base %s: fingerprint %.16s...%s\n", a->base, have,
	       recorded ? " (matches the version's)" : "");
	return CLI_OK;
}

static int cmd_export(int argc, char **argv)
{
	if (cli_wants_help(argc, argv)) {
		export_help();
		return CLI_OK;
	}
	export_args a;
	int rc = export_parse(argc, argv, &a);
	if (rc)
		return rc;
	log_set_level(LOG_LVL_WARN);
	uint64_t *vs = NULL;
	size_t nv = 0;
	if (store_list_versions(a.dir, &vs, &nv) || nv == 0) {
		fprintf(stderr, "export: no versions in %s/versions\n", a.dir);
		free(vs);
		return CLI_FAIL;
	}
	uint64_t v = strcmp(a.ver, "latest") == 0 ? vs[nv - 1] : a.version;
	free(vs);
	tset *g = NULL;
	store_info in;
	char why[400];
	if (store_read_version(a.dir, v, &g, &in, why, sizeof why)) {
		fprintf(stderr, "export: version %" PRIu64 ": %s\n", v, why);
		return CLI_FAIL;
	}
	rc = a.base ? export_with_base(&a, g, &in) : export_peft_nobase(&a, g, &in);
	tset_free(g);
	if (rc)
		return rc;
	char sha[65];
	hex_encode(in.sha, 32, sha);
	printf("exported version %" PRIu64 " (sha256 %.16s...) as %s%s to %s\n", v, sha,
	       a.fmt == LFMT_GGUF_LORA ? "gguf-lora" : "peft",
	       a.fmt != LFMT_GGUF_LORA ? "" : (a.gtype == GTYPE_F16 ? " (f16)" : " (f32)"), a.out);
	return CLI_OK;
}

/* ---- dp-plan ---- */

static int cmd_dp_plan(int argc, char **argv)
{
	if (cli_wants_help(argc, argv)) {
		printf(
		    "Usage: fedlora-coordinator dp-plan --population N --per-round K --rounds R\n"
		    "         (--epsilon E | --noise-multiplier Z) [--delta D]\n\n"
		    "Plans central differential privacy (docs/PRIVACY.md) with the accountant\n"
		    "the coordinator uses: every node is sampled with probability q = K / N\n"
		    "(Poisson), R rounds. With --epsilon it prints the smallest noise\n"
		    "multiplier z that keeps epsilon <= E at delta D (default 1e-5); with\n"
		    "--noise-multiplier it prints the epsilon spent after R rounds at z.\n\n"
		    "--mode distributed [--dim D] [--bits B] [--range X] [--shares T]: the\n"
		    "distributed mode's accountant (discrete Gaussian noise from the nodes):\n"
		    "D exchanged elements (required), B level bits of the uplink (8, 4, 2;\n"
		    "default 4), X = aggregation.secure_range (default 4), T =\n"
		    "privacy.noise_shares (default ceil(0.8 K)).\n");
		return CLI_OK;
	}
	const char *sn = NULL, *sk = NULL, *sr = NULL, *se = NULL, *sz = NULL, *sd = "1e-5";
	const char *sm = "central", *sdim = NULL, *sb = "4", *sx = "4", *st = "0";
	for (int i = 1; i < argc; i++) {
		int r;
		if ((r = opt_val(argc, argv, &i, "--population", &sn)) != 0 ||
		    (r = opt_val(argc, argv, &i, "--per-round", &sk)) != 0 ||
		    (r = opt_val(argc, argv, &i, "--rounds", &sr)) != 0 ||
		    (r = opt_val(argc, argv, &i, "--epsilon", &se)) != 0 ||
		    (r = opt_val(argc, argv, &i, "--noise-multiplier", &sz)) != 0 ||
		    (r = opt_val(argc, argv, &i, "--delta", &sd)) != 0 ||
		    (r = opt_val(argc, argv, &i, "--mode", &sm)) != 0 ||
		    (r = opt_val(argc, argv, &i, "--dim", &sdim)) != 0 ||
		    (r = opt_val(argc, argv, &i, "--bits", &sb)) != 0 ||
		    (r = opt_val(argc, argv, &i, "--range", &sx)) != 0 ||
		    (r = opt_val(argc, argv, &i, "--shares", &st)) != 0) {
			if (r < 0)
				return CLI_USAGE;
		} else {
			fprintf(stderr, "dp-plan: unexpected argument '%s' (try --help)\n",
			        argv[i]);
			return CLI_USAGE;
		}
	}
	int64_t n, k, r;
	double e = 0, z = 0, d;
	if (!sn || !sk || !sr || cfg_parse_int(sn, &n) || cfg_parse_int(sk, &k) ||
	    cfg_parse_int(sr, &r) || n < 1 || k < 1 || k > n || r < 1 || r > 100000000) {
		fprintf(stderr, "dp-plan: --population N >= 1, --per-round K in 1..N and --rounds "
		                "R in 1..1e8 are required\n");
		return CLI_USAGE;
	}
	if (cfg_parse_double(sd, &d) || !(d > 0 && d < 0.1)) {
		fprintf(stderr, "dp-plan: --delta must be in (0, 0.1)\n");
		return CLI_USAGE;
	}
	if (!!se == !!sz || (se && (cfg_parse_double(se, &e) || !(e > 0 && e <= 1000))) ||
	    (sz && (cfg_parse_double(sz, &z) || !(z >= 0.1 && z <= 1e4)))) {
		fprintf(stderr, "dp-plan: give one of --epsilon E in (0, 1000] or "
		                "--noise-multiplier Z in [0.1, 10000]\n");
		return CLI_USAGE;
	}
	if (strcmp(sm, "distributed") == 0)
		return dpd_plan(n, k, r, d, se ? e : 0, z, sdim, sb, sx, st);
	if (strcmp(sm, "central") != 0) {
		fprintf(stderr, "dp-plan: --mode must be central or distributed, not '%s'\n", sm);
		return CLI_USAGE;
	}
	double q = (double)k / (double)n;
	printf("sampling rate q = %" PRId64 "/%" PRId64 " = %.6g (Poisson), %" PRId64
	       " rounds, delta %g\n",
	       k, n, q, r, d);
	if (se) {
		z = dp_z_for(q, (uint64_t)r, d, e);
		if (z < 0) {
			printf("epsilon %g is out of reach even with noise multiplier 10000\n", e);
			return CLI_FAIL;
		}
		printf("noise multiplier z = %.4f gives epsilon %.4f <= %g\n", z,
		       dp_epsilon_for(q, z, (uint64_t)r, d), e);
	} else {
		double rdp[DP_NORDERS] = {0};
		dp_rdp_compose(rdp, q, z, (uint64_t)r);
		int b;
		double eps = dp_epsilon(rdp, d, &b);
		printf("noise multiplier z = %g gives epsilon %.4f (RDP order %g)\n", z, eps,
		       dp_orders[b]);
	}
	return CLI_OK;
}

static const cli_cmd coord_cmds[] = {
    {"serve", "run the federation server", cmd_serve},
    {"status", "current version, last rounds and totals from a state directory", cmd_status},
    {"export", "write a committed version as a PEFT or llama.cpp GGUF LoRA adapter", cmd_export},
    {"check-config", "check a configuration file and print what it sets up", cmd_check},
    {"dp-plan", "noise multiplier for a privacy budget, or the budget a noise multiplier spends",
     cmd_dp_plan},
    {NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
	int n = (int)(sizeof coord_cmds / sizeof coord_cmds[0]) - 1;
	return cli_dispatch("fedlora-coordinator", "federated LoRA coordinator", coord_cmds, n,
	                    argc, argv);
}
