/* cmd_eval — the `fedlora-node eval` subcommand. */
#ifndef FL_CMD_EVAL_H
#define FL_CMD_EVAL_H

int cmd_eval(int argc, char **argv);

#endif
