/* cli — subcommand dispatch, --help and --version, and option matching for
 * both binaries (node/cmd/cmd_util.h adds the node's typed values).
 *
 * Exit codes (DESIGN.md): 0 ok, 1 runtime failure, 2 usage or configuration
 * error. A subcommand's function receives argv starting at its own name. */
#ifndef FL_CLI_H
#define FL_CLI_H

enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

typedef struct cli_cmd {
	const char *name;
	const char *summary; /* one line for the binary's --help */
	int (*run)(int argc, char **argv);
} cli_cmd;

/* Handles `prog --help|-h|help`, `prog --version`, `prog CMD ...`; prints
 * usage to stderr and returns CLI_USAGE for an unknown or missing command. */
int cli_dispatch(const char *prog, const char *about, const cli_cmd *cmds, int ncmds, int argc,
                 char **argv);

/* True if argv[1..] contains --help or -h. */
int cli_wants_help(int argc, char **argv);

/* Matches option `name` ("--rounds") at argv[*i], in the forms
 * `--rounds 5` and `--rounds=5`: 1 with *val set and *i advanced past a
 * separate value; 0 when argv[*i] is something else (another option, or
 * `--roundsx`); -1 with *val = NULL when the value is missing. Prints
 * nothing: each binary words its own error. */
int cli_opt(int argc, char **argv, int *i, const char *name, const char **val);

#endif
