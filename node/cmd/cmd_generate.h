/* cmd_generate — the `fedlora-node generate` subcommand. */
#ifndef FL_CMD_GENERATE_H
#define FL_CMD_GENERATE_H

int cmd_generate(int argc, char **argv);

#endif
