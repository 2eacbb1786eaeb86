/* cmd_init_model — the `fedlora-node init-model` subcommand (random Llama
 * GGUF of a given shape). */
#ifndef FL_CMD_INIT_MODEL_H
#define FL_CMD_INIT_MODEL_H

int cmd_init_model(int argc, char **argv);

#endif
