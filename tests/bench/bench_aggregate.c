/* bench_aggregate — aggregation throughput of the coordinator.
 *
 * For adapters of 1 M, 4 M and 16 M parameters (rank-16 LoRA pairs of
 * 2048-wide projections), U q4 updates (default 100) go through the path
 * the coordinator runs per update — agg_add_payload: validate every
 * QTensor (qt_view_proto), measure the norm, clip, accumulate (FedAvg,
 * streaming) or decode into the buffer (trimmed mean) — then agg_finish.
 * The reference measured in the same process is memcpy of the same update
 * bytes (the q4 payload) and of the f32 accumulator. Each configuration
 * runs in its own child process so its peak RSS is its own. Figures are
 * medians over --reps repetitions.
 *
 * Usage: bench_aggregate [--sizes 1,4,16] [--updates 100] [--reps 3]
 *                        [--distinct 8] [--max-buffer-mb 7000] */
#include "agg.h"
#include "clock.h"
#include "err.h"
#include "fedlora.pb-c.h"
#include "log.h"
#include "quant.h"
#include "bench_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#define RANK  16
#define WIDTH 2048

typedef struct result {
	double per_update_ms, finish_ms, total_s;
	double memcpy_update_ms, memcpy_acc_ms;
	double update_bytes;
	int ok;
} result;

static tset *layout(size_t mparams)
{
	tset *s;
	if (tset_new(&s))
		abort();
	size_t pairs = mparams * (1u << 20) / (2 * RANK * WIDTH);
	for (size_t p = 0; p < pairs; p++) {
		char na[64], nb[64];
		snprintf(na, sizeof na, "blk.%zu.attn_q.lora_a", p);
		snprintf(nb, sizeof nb, "blk.%zu.attn_q.lora_b", p);
		uint64_t sa[2] = {RANK, WIDTH}, sb[2] = {WIDTH, RANK};
		if (tset_insert(s, na, 2, sa, NULL, NULL) || tset_insert(s, nb, 2, sb, NULL, NULL))
			abort();
	}
	return s;
}

typedef struct upd {
	qtensor *q;
	Fedlora__QTensor *qm;
	Fedlora__QTensor **qp;
	Fedlora__AdapterPayload pl;
	size_t bytes;
} upd;

static void mk_update(upd *u, const tset *lay, uint64_t seed)
{
	size_t n = tset_count(lay);
	u->q = calloc(n, sizeof *u->q);
	u->qm = calloc(n, sizeof *u->qm);
	u->qp = calloc(n, sizeof *u->qp);
	u->bytes = 0;
	quant_params p = {.fmt = QT_Q4, .block = 32};
	float *x = malloc(RANK * WIDTH * sizeof(float));
	for (size_t i = 0; i < n; i++) {
		const tensor *t = tset_at(lay, i);
		for (size_t k = 0; k < t->n; k++) {
			seed = seed * 6364136223846793005ull + 1442695040888963407ull;
			x[k] = (float)((double)(seed >> 11) * 0x1p-53 - 0.5) * 0.01f;
		}
		qt_init(&u->q[i]);
		if (quant_encode(&p, t->name, x, t->ndim, t->shape, &u->q[i]))
			abort();
		qt_to_proto(&u->q[i], &u->qm[i]);
		u->qp[i] = &u->qm[i];
		u->bytes += u->q[i].scales_len + u->q[i].data_len;
	}
	free(x);
	fedlora__adapter_payload__init(&u->pl);
	u->pl.kind = FEDLORA__ADAPTER_PAYLOAD__KIND__KIND_DELTA;
	u->pl.n_tensors = n;
	u->pl.tensors = u->qp;
}

/* memcpy of the update's bytes (tensor by tensor, as they sit in memory) */
static void copy_update(const upd *u, uint8_t *dst)
{
	size_t off = 0;
	for (size_t i = 0; i < u->pl.n_tensors; i++) {
		memcpy(dst + off, u->q[i].scales, u->q[i].scales_len);
		off += u->q[i].scales_len;
		memcpy(dst + off, u->q[i].data, u->q[i].data_len);
		off += u->q[i].data_len;
	}
}

static result run(size_t mparams, enum agg_strategy strat, int updates, int reps, int distinct)
{
	result r;
	memset(&r, 0, sizeof r);
	tset *lay = layout(mparams);
	agg_opts o;
	agg_opts_default(&o);
	o.strategy = strat;
	o.clip_norm = 1e6; /* the norm pass always runs; clipping is a no-op here */
	o.max_buffer_bytes = (size_t)1 << 40;
	agg *a;
	if (agg_new(&o, lay, &a))
		abort();
	upd *u = calloc((size_t)distinct, sizeof *u);
	for (int i = 0; i < distinct; i++)
		mk_update(&u[i], lay, 1000 + (uint64_t)i);
	r.update_bytes = (double)u[0].bytes;
	tset *step;
	if (tset_zeros_like(agg_layout(a), &step))
		abort();
	double *pu = calloc((size_t)reps, sizeof(double));
	double *fi = calloc((size_t)reps, sizeof(double));
	double *tt = calloc((size_t)reps, sizeof(double));
	double *mu = calloc((size_t)reps, sizeof(double));
	double *ma = calloc((size_t)reps, sizeof(double));
	uint8_t *dst = malloc(u[0].bytes + 64);
	size_t accb = tset_numel(lay) * sizeof(float);
	float *acc1 = malloc(accb), *acc2 = malloc(accb);
	memset(acc1, 1, accb);
	memset(acc2, 0, accb);
	for (int rep = 0; rep < reps; rep++) {
		agg_begin(a);
		double t0 = clk_seconds();
		for (int i = 0; i < updates; i++) {
			agg_result res;
			if (agg_add_payload(a, &u[i % distinct].pl, 10, &res) ||
			    res.verdict != AGG_ACCEPTED) {
				fprintf(stderr, "update refused: %s\n", res.why);
				abort();
			}
		}
		double t1 = clk_seconds();
		if (agg_finish(a, step))
			abort();
		double t2 = clk_seconds();
		pu[rep] = (t1 - t0) / updates * 1e3;
		fi[rep] = (t2 - t1) * 1e3;
		tt[rep] = t2 - t0;
		/* reference: the same bytes with memcpy, same count */
		t0 = clk_seconds();
		for (int i = 0; i < updates; i++)
			copy_update(&u[i % distinct], dst);
		t1 = clk_seconds();
		mu[rep] = (t1 - t0) / updates * 1e3;
		t0 = clk_seconds();
		for (int i = 0; i < updates; i++) {
			memcpy(acc2, acc1, accb);
			acc1[i % 7] += acc2[(i * 13) % 11]; /* keep the copies observable */
		}
		t1 = clk_seconds();
		ma[rep] = (t1 - t0) / updates * 1e3;
	}
	r.per_update_ms = bench_median(pu, reps);
	r.finish_ms = bench_median(fi, reps);
	r.total_s = bench_median(tt, reps);
	r.memcpy_update_ms = bench_median(mu, reps);
	r.memcpy_acc_ms = bench_median(ma, reps);
	r.ok = tset_all_finite(step, NULL);
	volatile float sink = acc1[3] + (float)dst[0]; /* the copies are used */
	(void)sink;
	free(pu);
	free(fi);
	free(tt);
	free(mu);
	free(ma);
	free(dst);
	free(acc1);
	free(acc2);
	for (int i = 0; i < distinct; i++) {
		for (size_t k = 0; k < u[i].pl.n_tensors; k++)
			qt_fini(&u[i].q[k]);
		free(u[i].q);
		free(u[i].qm);
		free(u[i].qp);
	}
	free(u);
	tset_free(step);
	agg_free(a);
	tset_free(lay);
	return r;
}

int main(int argc, char **argv)
{
	const char *sizes = "1,4,16";
	int updates = 100, reps = 3, distinct = 8;
	double max_buf_mb = 7000;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--sizes") && i + 1 < argc)
			sizes = argv[++i];
		else if (!strcmp(argv[i], "--updates") && i + 1 < argc)
			updates = (int)strtol(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
			reps = (int)strtol(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--distinct") && i + 1 < argc)
			distinct = (int)strtol(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--max-buffer-mb") && i + 1 < argc)
			max_buf_mb = strtod(argv[++i], NULL);
		else {
			fprintf(stderr,
			        "usage: %s [--sizes 1,4,16] [--updates N] [--reps N] "
			        "[--distinct N] [--max-buffer-mb MB]\n",
			        argv[0]);
			return 2;
		}
	}
	if (updates < 1 || reps < 1 || distinct < 1) {
		fprintf(stderr, "updates, reps and distinct must be >= 1\n");
		return 2;
	}
	log_set_level(LOG_LVL_WARN);
	printf("aggregation of %d q4 updates (block 32) per round, median of %d reps; quant impl "
	       "%s; OMP threads from the environment\n",
	       updates, reps, quant_impl_active() == QUANT_IMPL_AVX2 ? "avx2" : "scalar");
	printf("%-6s %-13s %10s %10s %9s %11s %7s %11s %7s %9s\n", "params", "strategy", "upd ms",
	       "finish ms", "total s", "memcpy(upd)", "ratio", "memcpy(f32)", "ratio", "peak MB");
	const char *p = sizes;
	while (*p) {
		char *end;
		long m = strtol(p, &end, 10);
		if (end == p || m <= 0)
			break;
		p = *end == ',' ? end + 1 : end;
		enum agg_strategy strats[2] = {AGG_FEDAVG, AGG_TRIMMED_MEAN};
		for (int s = 0; s < 2; s++) {
			double need_mb = (double)m * 1048576.0 * 4 * updates / 1e6;
			if (strats[s] == AGG_TRIMMED_MEAN && need_mb > max_buf_mb) {
				printf("%-6s %-13s skipped: buffering needs %.0f MB (> "
				       "--max-buffer-mb)\n",
				       "", agg_strategy_name(strats[s]), need_mb);
				continue;
			}
			int fd[2];
			if (pipe(fd))
				return 1;
			pid_t pid = fork();
			if (pid == 0) {
				close(fd[0]);
				result r = run((size_t)m, strats[s], updates, reps, distinct);
				if (write(fd[1], &r, sizeof r) != (ssize_t)sizeof r)
					_exit(1);
				_exit(0);
			}
			close(fd[1]);
			result r;
			memset(&r, 0, sizeof r);
			ssize_t got = read(fd[0], &r, sizeof r);
			close(fd[0]);
			int status;
			struct rusage ru;
			wait4(pid, &status, 0, &ru);
			if (got != (ssize_t)sizeof r || !r.ok) {
				printf("%ldM %s: failed\n", m, agg_strategy_name(strats[s]));
				continue;
			}
			char ps[32];
			snprintf(ps, sizeof ps, "%ldM", m);
			printf(
			    "%-6s %-13s %10.2f %10.1f %9.2f %9.3fms %6.1fx %9.3fms %6.1fx %9.0f\n",
			    ps, agg_strategy_name(strats[s]), r.per_update_ms, r.finish_ms,
			    r.total_s, r.memcpy_update_ms, r.per_update_ms / r.memcpy_update_ms,
			    r.memcpy_acc_ms, r.per_update_ms / r.memcpy_acc_ms,
			    (double)ru.ru_maxrss / 1024.0);
			fflush(stdout);
		}
	}
	printf("upd ms: agg_add_payload per update (validate + norm + clip + accumulate or "
	       "buffer); finish: agg_finish once per round.\nmemcpy(upd): copying the update's q4 "
	       "bytes; memcpy(f32): copying an f32 adapter-sized buffer; ratios = upd ms / "
	       "reference.\n");
	return 0;
}
