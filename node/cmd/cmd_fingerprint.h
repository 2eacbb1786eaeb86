/* cmd_fingerprint — `fedlora-node fingerprint --model M.gguf`: prints the
 * base-model fingerprint (common/modelfp.h) a node sends in Join, so an
 * operator can put it in the coordinator's configuration. */
#ifndef FL_CMD_FINGERPRINT_H
#define FL_CMD_FINGERPRINT_H

int cmd_fingerprint(int argc, char **argv);

#endif
