/* fedlora-node — the edge binary: model engine, local training, federation
 * client, export tools. Subcommands are registered in the table below as
 * they become real. */
#include "cli.h"
#include "cmd_eval.h"
#include "cmd_generate.h"
#include "cmd_init_model.h"
#include "partition.h"

#include <stddef.h>

static const cli_cmd node_cmds[] = {
    {"partition", "split a corpus into node shards (iid, dirichlet, by-key)", part_main},
    {"init-model", "write a randomly initialised Llama-family GGUF model", cmd_init_model},
    {"eval", "perplexity of a GGUF model over a text file", cmd_eval},
    {"generate", "continue a prompt with a GGUF model", cmd_generate},
    {NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
	int n = (int)(sizeof node_cmds / sizeof node_cmds[0]) - 1;
	return cli_dispatch("fedlora-node", "federated LoRA fine-tuning on an edge device",
	                    node_cmds, n, argc, argv);
}
