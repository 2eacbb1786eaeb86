/* fedlora-coordinator — the federation server: registry, rounds,
 * aggregation, state, metrics. Subcommands are registered in the table below
 * as they become real. */
#include "cli.h"

#include <stddef.h>

static const cli_cmd coord_cmds[] = {
    {NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
	int n = (int)(sizeof coord_cmds / sizeof coord_cmds[0]) - 1;
	return cli_dispatch("fedlora-coordinator", "federated LoRA coordinator", coord_cmds, n,
	                    argc, argv);
}
