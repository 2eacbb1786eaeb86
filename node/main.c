/* fedlora-node — the edge binary: model engine, local training, federation
 * client, export tools. Subcommands are registered in the table below as
 * they become real. */
#include "cli.h"
#include "cmd_eval.h"
#include "cmd_export.h"
#include "cmd_fingerprint.h"
#include "cmd_generate.h"
#include "cmd_init_model.h"
#include "cmd_tokenize.h"
#include "cmd_train.h"
#include "datagen.h"
#include "partition.h"
#include "run.h"

#include <stddef.h>

static const cli_cmd node_cmds[] = {
    {"run", "join a federation: train locally, upload quantized deltas", nrun_main},
    {"partition", "split a corpus into node shards (iid, dirichlet, by-key)", part_main},
    {"init-model", "write a randomly initialised Llama-family GGUF model", cmd_init_model},
    {"eval", "perplexity of a GGUF model over a text file", cmd_eval},
    {"generate", "continue a prompt with a GGUF model", cmd_generate},
    {"train", "LoRA / QLoRA fine-tuning (or --full training) on a local data file", cmd_train},
    {"export", "adapter as GGUF LoRA / PEFT, or the merged model (F32..Q4_0, GPTQ)", cmd_export},
    {"gen-data", "synthetic predictive-maintenance logs of one site (non-IID demo data)",
     dgen_main},
    {"fingerprint", "print the base-model fingerprint of a GGUF file", cmd_fingerprint},
    {"tokenize", "print the token ids a GGUF model's tokenizer gives a text", cmd_tokenize},
    {NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
	int n = (int)(sizeof node_cmds / sizeof node_cmds[0]) - 1;
	return cli_dispatch("fedlora-node", "federated LoRA fine-tuning on an edge device",
	                    node_cmds, n, argc, argv);
}
