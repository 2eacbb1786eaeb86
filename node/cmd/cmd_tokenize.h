/* cmd_tokenize — `fedlora-node tokenize --model M.gguf`: prints the token
 * ids the model's own tokenizer (node/model/tokenizer.h) gives a text, to
 * check what a model sees, and for the tokenizer parity tests. */
#ifndef FL_CMD_TOKENIZE_H
#define FL_CMD_TOKENIZE_H

int cmd_tokenize(int argc, char **argv);

#endif
