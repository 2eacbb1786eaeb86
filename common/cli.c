/* cli — see cli.h. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

int cli_wants_help(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
			return 1;
	return 0;
}

int cli_opt(int argc, char **argv, int *i, const char *name, const char **val)
{
	const char *a = argv[*i];
	size_t n = strlen(name);
	if (strncmp(a, name, n) != 0)
		return 0;
	if (a[n] == '=') {
		*val = a + n + 1;
		return 1;
	}
	if (a[n] != 0)
		return 0;
	if (*i + 1 >= argc) {
		*val = NULL;
		return -1;
	}
	*val = argv[++*i];
	return 1;
}

static void usage(FILE *f, const char *prog, const char *about, const cli_cmd *cmds, int ncmds)
{
	fprintf(f, "%s %s — %s\n\nUsage: %s COMMAND [options]\n       %s --help | --version\n\n",
	        prog, FEDLORA_VERSION, about, prog, prog);
	if (ncmds == 0) {
		fprintf(f, "No subcommands are available in this build yet.\n");
		return;
	}
	fprintf(f, "Commands:\n");
	for (int i = 0; i < ncmds; i++)
		fprintf(f, "  %-14s %s\n", cmds[i].name, cmds[i].summary);
	fprintf(f, "\nRun '%s COMMAND --help' for a command's options.\n", prog);
}

int cli_dispatch(const char *prog, const char *about, const cli_cmd *cmds, int ncmds, int argc,
                 char **argv)
{
	if (argc < 2) {
		usage(stderr, prog, about, cmds, ncmds);
		return CLI_USAGE;
	}
	const char *c = argv[1];
	if (strcmp(c, "--help") == 0 || strcmp(c, "-h") == 0 || strcmp(c, "help") == 0) {
		usage(stdout, prog, about, cmds, ncmds);
		return CLI_OK;
	}
	if (strcmp(c, "--version") == 0 || strcmp(c, "version") == 0) {
		printf("%s %s\n", prog, FEDLORA_VERSION);
		return CLI_OK;
	}
	for (int i = 0; i < ncmds; i++)
		if (strcmp(c, cmds[i].name) == 0)
			return cmds[i].run(argc - 1, argv + 1);
	fprintf(stderr, "%s: unknown command '%s'\n\n", prog, c);
	usage(stderr, prog, about, cmds, ncmds);
	return CLI_USAGE;
}
