/* cmd_tokenize — see cmd_tokenize.h. */
#include "cmd_tokenize.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cmd_util.h"
#include "err.h"
#include "gguf.h"
#include "model/tokenizer.h"

#define CMD           "tokenize"
#define TOK_STDIN_MAX ((size_t)64 << 20) /* bytes of text read from stdin */

static void usage(void)
{
	printf("usage: fedlora-node tokenize --model M.gguf [--text T | --jsonl]\n"
	       "                             [--no-add-special] [--parse-special]\n\n"
	       "Prints the token ids of a text under the tokenizer.* metadata of M.gguf\n"
	       "(a full model or a vocabulary-only file), space-separated on one line.\n"
	       "  --text T           the text (default: all of standard input)\n"
	       "  --jsonl            standard input holds one JSON string per line; one line\n"
	       "                     of ids is printed per input line (strings must not\n"
	       "                     contain U+0000)\n"
	       "  --no-add-special   no BOS/EOS (default: as add_bos_token/add_eos_token say)\n"
	       "  --parse-special    control tokens written in the text (\"<|im_start|>\")\n"
	       "                     become their ids (default: only user-defined tokens do)\n"
	       "Text larger than 64 MiB is refused.\n");
}

/* Encodes n bytes of s and prints the ids on one line. */
static int print_ids(const tok *t, const char *s, size_t n, int flags)
{
	size_t cap = tok_encode_bound(n), got = 0;
	int32_t *ids = cap == SIZE_MAX ? NULL : malloc(sizeof *ids * (cap ? cap : 1));
	if (!ids)
		return FL_ENOMEM;
	int rc = tok_encode(t, s, n, flags, ids, cap, &got);
	if (rc == 0) {
		for (size_t i = 0; i < got; i++)
			printf(i ? " %d" : "%d", (int)ids[i]);
		putchar('\n');
	}
	free(ids);
	return rc;
}

/* Reads all of f into *out (NUL-terminated), at most max bytes. */
static int read_stream(FILE *f, size_t max, char **out, size_t *len)
{
	size_t cap = 1 << 16, n = 0;
	char *b = malloc(cap + 1);
	if (!b)
		return FL_ENOMEM;
	for (;;) {
		if (n == cap) {
			if (cap >= max) {
				free(b);
				return FL_ETOOBIG;
			}
			cap = cap * 2 > max ? max : cap * 2;
			char *nb = realloc(b, cap + 1);
			if (!nb) {
				free(b);
				return FL_ENOMEM;
			}
			b = nb;
		}
		size_t r = fread(b + n, 1, cap - n, f);
		n += r;
		if (r == 0)
			break;
	}
	if (ferror(f)) {
		free(b);
		return FL_EIO;
	}
	b[n] = 0;
	*out = b;
	*len = n;
	return 0;
}

static int run_jsonl(const tok *t, int flags)
{
	char *line = NULL;
	size_t lcap = 0;
	ssize_t ln;
	long lineno = 0;
	int ret = CLI_OK;
	while ((ln = getline(&line, &lcap, stdin)) >= 0) {
		lineno++;
		if ((size_t)ln > TOK_STDIN_MAX) {
			fprintf(stderr, CMD ": line %ld: longer than 64 MiB\n", lineno);
			ret = CLI_FAIL;
			break;
		}
		cJSON *j = cJSON_ParseWithLength(line, (size_t)ln);
		if (!j || !cJSON_IsString(j)) {
			fprintf(stderr, CMD ": line %ld: not a JSON string\n", lineno);
			cJSON_Delete(j);
			ret = CLI_FAIL;
			break;
		}
		int rc = print_ids(t, j->valuestring, strlen(j->valuestring), flags);
		cJSON_Delete(j);
		if (rc) {
			fprintf(stderr, CMD ": line %ld: %s\n", lineno, fl_strerror(rc));
			ret = CLI_FAIL;
			break;
		}
	}
	free(line);
	return ret;
}

int cmd_tokenize(int argc, char **argv)
{
	const char *model = NULL, *text = NULL, *v;
	int jsonl = 0, flags = TOK_ADD_SPECIAL, rc, ret = CLI_FAIL;
	if (cli_wants_help(argc, argv)) {
		usage();
		return CLI_OK;
	}
	for (int i = 1; i < argc; i++) {
		if ((rc = cmdu_opt(CMD, argc, argv, &i, "--model", &v)) != 0) {
			if (rc < 0)
				return CLI_USAGE;
			model = v;
		} else if ((rc = cmdu_opt(CMD, argc, argv, &i, "--text", &v)) != 0) {
			if (rc < 0)
				return CLI_USAGE;
			text = v;
		} else if (strcmp(argv[i], "--jsonl") == 0) {
			jsonl = 1;
		} else if (strcmp(argv[i], "--no-add-special") == 0) {
			flags &= ~TOK_ADD_SPECIAL;
		} else if (strcmp(argv[i], "--parse-special") == 0) {
			flags |= TOK_PARSE_SPECIAL;
		} else {
			return cmdu_usage(CMD, "unknown argument '%s'", argv[i]);
		}
	}
	if (!model)
		return cmdu_usage(CMD, "--model M.gguf is required");
	if (text && jsonl)
		return cmdu_usage(CMD, "--text and --jsonl exclude each other");

	gguf *g = NULL;
	tok *t = NULL;
	char err[300], *in = NULL;
	size_t n = 0;
	if ((rc = gguf_open(model, &g, err, sizeof err)) != 0) {
		fprintf(stderr, CMD ": %s: %s\n", model, err);
		goto out;
	}
	if ((rc = tok_from_gguf(g, &t, err, sizeof err)) != 0) {
		fprintf(stderr, CMD ": %s: tokenizer: %s\n", model, err);
		goto out;
	}
	if (jsonl) {
		ret = run_jsonl(t, flags);
		goto out;
	}
	if (!text) {
		if ((rc = read_stream(stdin, TOK_STDIN_MAX, &in, &n)) != 0) {
			fprintf(stderr, CMD ": standard input: %s\n", fl_strerror(rc));
			goto out;
		}
		text = in;
	} else {
		n = strlen(text);
	}
	if ((rc = print_ids(t, text, n, flags)) != 0) {
		fprintf(stderr, CMD ": %s\n", fl_strerror(rc));
		goto out;
	}
	ret = CLI_OK;
out:
	free(in);
	tok_free(t);
	gguf_free(g);
	return ret;
}
