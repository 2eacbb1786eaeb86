/* cmd_util — the fedlora-node subcommands' layer over common/cli.h
 * (cmd_*.c): their shared start (help, OpenMP policy, parse, threads),
 * `--opt value` and `--opt=value` forms, typed values with range checks,
 * and usage errors that name the option at fault.
 *
 * Every parser prints its own message to stderr ("<cmd>: --dim: ...") and
 * returns CLI_USAGE (2) on a bad value, so a subcommand can simply
 * `return rc;`. */
#ifndef FL_CMD_UTIL_H
#define FL_CMD_UTIL_H
#include <stdint.h>
#include <stdio.h>

/* gguf.h, model/model.h, model/tokenizer.h, train.h (struct tags only, so
 * that including this header does not bring their names into scope) */
struct gguf;
struct model;
struct tok;
struct trn_adapter;

/* If argv[*i] is the option `name` ("--dim"), sets *val to its value (the
 * next argument, or the text after '=') and advances *i past it; returns 1.
 * Returns 0 when argv[*i] is another option. A missing value prints an error
 * and returns -1. */
int cmdu_opt(const char *cmd, int argc, char **argv, int *i, const char *name, const char **val);

/* Integer / unsigned / float in [lo, hi]; 0 or CLI_USAGE. */
int cmdu_int(const char *cmd, const char *opt, const char *s, long long lo, long long hi, int *out);
int cmdu_u64(const char *cmd, const char *opt, const char *s, uint64_t *out);
int cmdu_float(const char *cmd, const char *opt, const char *s, double lo, double hi, float *out);

/* Prints "<cmd>: <message>\nRun 'fedlora-node <cmd> --help' for usage." and
 * returns CLI_USAGE. */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
int cmdu_usage(const char *cmd, const char *fmt, ...);

/* The start every model subcommand shares: with --help or -h anywhere,
 * usage(stdout) and CLI_OK; else the passive-OpenMP re-exec (below), then
 * parse(argc, argv, opts) (which prints its own errors), then *threads (a
 * field parse filled) applied to the kernels. Returns -1 when the command
 * goes on, else its exit code (CLI_OK after --help, parse's code). */
int cmdu_begin(int argc, char **argv, void (*usage)(FILE *f),
               int (*parse)(int argc, char **argv, void *opts), void *opts, const int *threads);

/* Opens the model at path and, when adapter_path is set, the adapter on it
 * (scale alpha), printing "fedlora-node <cmd>: <why>" on failure and
 * "adapter <path>: <description>" on success. 0 or the error code; on
 * failure *m and *ad are left as they were (the caller frees what it has).
 * ad may be NULL when adapter_path is NULL. */
int cmdu_open_model(const char *cmd, const char *path, const char *adapter_path, float alpha,
                    struct model **m, struct trn_adapter **ad);

/* The tokenizer stored in g (the GGUF of model_path), printing
 * "fedlora-node <cmd>: <model_path>: tokenizer: <why>" on failure. */
int cmdu_open_tok(const char *cmd, const char *model_path, const struct gguf *g, struct tok **tk);

/* Applies --threads (0 = leave the OpenMP default) to the model kernels. */
void cmdu_threads(int n);

/* Model subcommands want OpenMP threads that sleep rather than spin at
 * barriers (OMP_WAIT_POLICY=passive): on a device shared with other busy
 * processes, a spinning team whose partner was descheduled runs an order of
 * magnitude slower, and passive costs nothing measurable on an idle machine.
 * The policy is read only when the OpenMP runtime loads, so when the
 * environment does not set it this re-executes the program (/proc/self/exe)
 * with it set. argv is the subcommand's argv as cli_dispatch passed it (the
 * program's argv + 1). Returns only when no re-exec happened. */
void cmdu_passive_openmp(char **argv);

#endif
