/* cmd_fingerprint — see cmd_fingerprint.h. */
#include "cmd_fingerprint.h"

#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "err.h"
#include "gguf.h"
#include "modelfp.h"
#include "sha.h"

int cmd_fingerprint(int argc, char **argv)
{
	const char *model = NULL;
	if (cli_wants_help(argc, argv)) {
		printf(
		    "usage: fedlora-node fingerprint --model M.gguf\n\n"
		    "Prints the base-model fingerprint (SHA-256 over the architecture and every\n"
		    "tensor's name, type, shape and data, in name order) as 64 hex digits: the\n"
		    "value nodes send in Join and the coordinator must be configured with.\n");
		return CLI_OK;
	}
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--model") == 0 && i + 1 < argc)
			model = argv[++i];
		else if (strncmp(argv[i], "--model=", 8) == 0)
			model = argv[i] + 8;
		else {
			fprintf(stderr, "fingerprint: unknown argument '%s'\n", argv[i]);
			return CLI_USAGE;
		}
	}
	if (!model) {
		fprintf(stderr, "fingerprint: --model M.gguf is required\n");
		return CLI_USAGE;
	}
	/* opened here first so that a bad file is reported once, in this
	 * command's words (mfp_compute would log the reason, then fail) */
	char err[512];
	gguf *g = NULL;
	int rc = gguf_open(model, &g, err, sizeof err);
	if (rc) {
		fprintf(stderr, "fingerprint: %s: %s\n", model, err);
		return CLI_FAIL;
	}
	gguf_free(g);
	uint8_t fp[MFP_LEN];
	rc = mfp_compute(model, fp);
	if (rc) {
		fprintf(stderr, "fingerprint: %s: %s\n", model, fl_strerror(rc));
		return CLI_FAIL;
	}
	char hex[2 * MFP_LEN + 1];
	hex_encode(fp, MFP_LEN, hex);
	printf("%s\n", hex);
	return CLI_OK;
}
