/* cmd_train — the `fedlora-node train` subcommand (LoRA / QLoRA fine-tuning
 * or full training of a GGUF model on a local data file). */
#ifndef FL_CMD_TRAIN_H
#define FL_CMD_TRAIN_H

int cmd_train(int argc, char **argv);

#endif
