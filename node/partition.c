/* partition — see partition.h. */
#include "partition.h"

#include "cli.h"
#include "config.h"
#include "err.h"
#include "fileio.h"
#include "log.h"
#include "rng.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PART_MAX_INPUT (1ull << 30)
#define PART_MAX_NODES 100000

typedef struct rec {
	const char *p; /* bytes of the record, without the separator */
	size_t n;
	uint32_t key;   /* index into keys (0 when no key) */
	uint32_t shard; /* assignment */
	uint8_t eval;   /* held out */
} rec;

typedef struct keytab {
	char **names;
	uint32_t n, cap;
} keytab;

static int key_index(keytab *kt, const char *name, size_t len, uint32_t *out)
{
	/* Linear probing hash would be faster; corpora here have at most a few
	 * thousand keys, and this runs once. */
	for (uint32_t i = 0; i < kt->n; i++)
		if (strlen(kt->names[i]) == len && memcmp(kt->names[i], name, len) == 0) {
			*out = i;
			return 0;
		}
	if (kt->n == kt->cap) {
		uint32_t nc = kt->cap ? kt->cap * 2 : 64;
		char **nn = realloc(kt->names, nc * sizeof *nn);
		if (!nn)
			return FL_ENOMEM;
		kt->names = nn;
		kt->cap = nc;
	}
	char *s = malloc(len + 1);
	if (!s)
		return FL_ENOMEM;
	memcpy(s, name, len);
	s[len] = 0;
	kt->names[kt->n] = s;
	*out = kt->n++;
	return 0;
}

static void keytab_fini(keytab *kt)
{
	for (uint32_t i = 0; i < kt->n; i++)
		free(kt->names[i]);
	free(kt->names);
}

/* Text: paragraphs separated by one or more blank lines. */
static int split_text(const char *d, size_t n, const part_opts *o, keytab *kt, rec **out,
                      size_t *nout, const regex_t *re)
{
	size_t cap = 1024, cnt = 0;
	uint32_t doc = 0;
	rec *r = malloc(cap * sizeof *r);
	if (!r)
		return FL_ENOMEM;
	size_t i = 0;
	while (i < n) {
		while (i < n && d[i] == '\n') /* skip blank lines */
			i++;
		if (i >= n)
			break;
		size_t start = i;
		for (;;) { /* until "\n\n" or end */
			const char *nl = memchr(d + i, '\n', n - i);
			if (!nl) {
				i = n;
				break;
			}
			i = (size_t)(nl - d) + 1;
			if (i >= n || d[i] == '\n')
				break;
		}
		if (cnt == cap) {
			rec *nr = realloc(r, 2 * cap * sizeof *r);
			if (!nr) {
				free(r);
				return FL_ENOMEM;
			}
			r = nr;
			cap *= 2;
		}
		rec *x = &r[cnt++];
		memset(x, 0, sizeof *x);
		x->p = d + start;
		x->n = i - start;
		if (o->key && strcmp(o->key, "document") == 0) {
			const char *e = memchr(x->p, '\n', x->n);
			size_t l = e ? (size_t)(e - x->p) : x->n;
			int starts;
			if (re) {
				char line[512];
				size_t k = l < sizeof line - 1 ? l : sizeof line - 1;
				memcpy(line, x->p, k);
				line[k] = 0;
				starts = regexec(re, line, 0, NULL, 0) == 0;
			} else {
				starts =
				    (cnt - 1) % (size_t)(o->doc_size > 0 ? o->doc_size : 50) == 0;
			}
			if (starts && cnt > 1)
				doc++;
			char name[32];
			int m = snprintf(name, sizeof name, "doc-%u", doc);
			int rc = key_index(kt, name, (size_t)m, &x->key);
			if (rc) {
				free(r);
				return rc;
			}
		} else if (o->key) {
			const char *e = memchr(x->p, '\n', x->n);
			size_t l = e ? (size_t)(e - x->p) : x->n;
			if (l && x->p[l - 1] == ':')
				l--;
			int rc = key_index(kt, x->p, l, &x->key);
			if (rc) {
				free(r);
				return rc;
			}
		}
	}
	*out = r;
	*nout = cnt;
	return 0;
}

static int split_jsonl(const char *d, size_t n, const part_opts *o, keytab *kt, rec **out,
                       size_t *nout)
{
	size_t cap = 1024, cnt = 0, line = 0;
	rec *r = malloc(cap * sizeof *r);
	if (!r)
		return FL_ENOMEM;
	size_t i = 0;
	int rc = 0;
	while (i < n) {
		line++;
		const char *nl = memchr(d + i, '\n', n - i);
		size_t end = nl ? (size_t)(nl - d) : n;
		size_t len = end - i;
		const char *p = d + i;
		i = end + 1;
		if (len == 0 || (len == 1 && p[0] == '\r'))
			continue;
		if (cnt == cap) {
			rec *nr = realloc(r, 2 * cap * sizeof *r);
			if (!nr) {
				rc = FL_ENOMEM;
				goto out;
			}
			r = nr;
			cap *= 2;
		}
		rec *x = &r[cnt++];
		memset(x, 0, sizeof *x);
		x->p = p;
		x->n = len;
		cJSON *j = cJSON_ParseWithLength(p, len);
		if (!j || !cJSON_IsObject(j)) {
			LOGE("partition", "%s:%zu: not a JSON object", o->input, line);
			cJSON_Delete(j);
			rc = FL_EFORMAT;
			goto out;
		}
		if (o->key) {
			const cJSON *k = cJSON_GetObjectItemCaseSensitive(j, o->key);
			char num[64];
			const char *kv = NULL;
			if (cJSON_IsString(k)) {
				kv = k->valuestring;
			} else if (cJSON_IsNumber(k)) {
				snprintf(num, sizeof num, "%.17g", k->valuedouble);
				kv = num;
			}
			if (!kv) {
				LOGE("partition", "%s:%zu: no string or number field '%s'",
				     o->input, line, o->key);
				cJSON_Delete(j);
				rc = FL_EFORMAT;
				goto out;
			}
			rc = key_index(kt, kv, strlen(kv), &x->key);
		}
		cJSON_Delete(j);
		if (rc)
			goto out;
	}
out:
	if (rc) {
		free(r);
		return rc;
	}
	*out = r;
	*nout = cnt;
	return 0;
}

/* Splits cnt items into parts by proportions p[0..k) with largest
 * remainders; counts[] sums to cnt exactly. */
static void apportion(size_t cnt, const double *p, int k, size_t *counts, double *frac)
{
	size_t given = 0;
	for (int i = 0; i < k; i++) {
		double want = p[i] * (double)cnt;
		counts[i] = (size_t)want;
		frac[i] = want - (double)counts[i];
		given += counts[i];
	}
	while (given < cnt) {
		int best = 0;
		for (int i = 1; i < k; i++)
			if (frac[i] > frac[best])
				best = i;
		counts[best]++;
		frac[best] = -1.0;
		given++;
	}
}

static int assign_shards(rec *r, size_t cnt, uint32_t nkeys, const part_opts *o, rng *g)
{
	int N = o->nodes;
	uint32_t *idx = malloc((cnt ? cnt : 1) * sizeof *idx);
	size_t *counts = calloc((size_t)N, sizeof *counts);
	double *p = malloc((size_t)N * sizeof *p), *frac = malloc((size_t)N * sizeof *frac);
	int rc = 0;
	if (!idx || !counts || !p || !frac) {
		rc = FL_ENOMEM;
		goto out;
	}
	if (o->mode == PART_IID) {
		for (size_t i = 0; i < cnt; i++)
			idx[i] = (uint32_t)i;
		rng_shuffle_u32(g, idx, cnt);
		for (size_t i = 0; i < cnt; i++)
			r[idx[i]].shard = (uint32_t)(i % (size_t)N);
	} else if (o->mode == PART_BY_KEY) {
		if (nkeys < (uint32_t)N) {
			LOGE("partition", "by-key: %u distinct keys cannot fill %d shards", nkeys,
			     N);
			rc = FL_EINVAL;
			goto out;
		}
		uint32_t *kidx = malloc(nkeys * sizeof *kidx),
		         *kshard = malloc(nkeys * sizeof *kshard);
		if (!kidx || !kshard) {
			free(kidx);
			free(kshard);
			rc = FL_ENOMEM;
			goto out;
		}
		for (uint32_t i = 0; i < nkeys; i++)
			kidx[i] = i;
		rng_shuffle_u32(g, kidx, nkeys);
		/* The first N keys seed one shard each; the rest land uniformly at
		 * random, so shard sizes differ as real fleets do. */
		for (uint32_t i = 0; i < nkeys; i++)
			kshard[kidx[i]] = i < (uint32_t)N ? i : (uint32_t)rng_below(g, (uint64_t)N);
		for (size_t i = 0; i < cnt; i++)
			r[i].shard = kshard[r[i].key];
		free(kidx);
		free(kshard);
	} else {
		/* Dirichlet label skew: for each key, proportions over shards drawn
		 * from Dir(alpha); its records are dealt accordingly. */
		size_t *per_key = calloc(nkeys, sizeof *per_key);
		if (!per_key) {
			rc = FL_ENOMEM;
			goto out;
		}
		for (size_t i = 0; i < cnt; i++)
			idx[i] = (uint32_t)i;
		rng_shuffle_u32(g, idx, cnt);
		for (uint32_t k = 0; k < nkeys; k++) {
			double sum = 0;
			for (int s = 0; s < N; s++)
				sum += p[s] = rng_gamma(g, o->alpha);
			for (int s = 0; s < N; s++)
				p[s] = sum > 0 ? p[s] / sum : 1.0 / N;
			size_t nk = 0;
			for (size_t i = 0; i < cnt; i++)
				nk += r[idx[i]].key == k;
			apportion(nk, p, N, counts, frac);
			int s = 0;
			for (size_t i = 0; i < cnt; i++) {
				if (r[idx[i]].key != k)
					continue;
				while (counts[s] == 0)
					s++;
				r[idx[i]].shard = (uint32_t)s;
				counts[s]--;
			}
		}
		free(per_key);
	}
	/* No shard may be empty: move single records from the largest shards. */
	memset(counts, 0, (size_t)N * sizeof *counts);
	for (size_t i = 0; i < cnt; i++)
		counts[r[i].shard]++;
	for (int s = 0; s < N; s++) {
		if (counts[s])
			continue;
		if (o->mode == PART_BY_KEY || cnt < (size_t)N) {
			LOGE("partition", "shard %d would be empty (%zu records for %d shards)", s,
			     cnt, N);
			rc = FL_EINVAL;
			goto out;
		}
		int big = 0;
		for (int t = 1; t < N; t++)
			if (counts[t] > counts[big])
				big = t;
		for (size_t i = 0; i < cnt; i++)
			if (r[idx[i]].shard == (uint32_t)big) {
				r[idx[i]].shard = (uint32_t)s;
				counts[big]--;
				counts[s]++;
				break;
			}
	}
out:
	free(idx);
	free(counts);
	free(p);
	free(frac);
	return rc;
}

/* Holds out a seeded random fraction of each shard's records; with key
 * "document", the shard's last records in file order (its tail). */
static int pick_holdout(rec *r, size_t cnt, const part_opts *o, rng *g)
{
	const int tail = o->key && !o->jsonl && strcmp(o->key, "document") == 0;
	uint32_t *mine = malloc((cnt ? cnt : 1) * sizeof *mine);
	if (!mine)
		return FL_ENOMEM;
	for (int s = 0; s < o->nodes; s++) {
		size_t m = 0;
		for (size_t i = 0; i < cnt; i++)
			if (r[i].shard == (uint32_t)s)
				mine[m++] = (uint32_t)i;
		size_t h = (size_t)(o->holdout * (double)m + 0.5);
		if (o->holdout > 0 && h == 0 && m >= 2)
			h = 1;
		if (h >= m && m > 0)
			h = m - 1; /* keep at least one training record */
		if (tail) {
			for (size_t i = m - h; i < m; i++)
				r[mine[i]].eval = 1;
			continue;
		}
		rng_shuffle_u32(g, mine, m);
		for (size_t i = 0; i < h; i++)
			r[mine[i]].eval = 1;
	}
	free(mine);
	return 0;
}

static int write_shards(const rec *r, size_t cnt, uint32_t nkeys, const part_opts *o,
                        part_shard *sh)
{
	const char *ext = o->jsonl ? "jsonl" : "txt";
	uint8_t *seen = calloc(nkeys ? nkeys : 1, 1);
	if (!seen)
		return FL_ENOMEM;
	int rc = 0;
	for (int s = 0; s < o->nodes && !rc; s++) {
		char dir[PATH_MAX], path[PATH_MAX + 32];
		snprintf(dir, sizeof dir, "%s/node-%03d", o->out_dir, s);
		if ((rc = file_mkdirs(dir)))
			break;
		memset(seen, 0, nkeys ? nkeys : 1);
		for (int ev = 0; ev < 2 && !rc; ev++) {
			size_t pieces = 0;
			for (size_t i = 0; i < cnt; i++)
				pieces += r[i].shard == (uint32_t)s && r[i].eval == ev;
			file_piece *pv = malloc((2 * pieces + 1) * sizeof *pv);
			if (!pv) {
				rc = FL_ENOMEM;
				break;
			}
			size_t k = 0, bytes = 0;
			static const char sep_text[] = "\n", sep_line[] = "\n";
			for (size_t i = 0; i < cnt; i++) {
				if (r[i].shard != (uint32_t)s || r[i].eval != ev)
					continue;
				pv[k++] = (file_piece){r[i].p, r[i].n};
				/* Text records end with their own '\n'; one more makes the
				 * blank line that separates paragraphs. JSONL lines get '\n'. */
				pv[k++] = (file_piece){o->jsonl ? sep_line : sep_text, 1};
				bytes += r[i].n + 1;
				if (nkeys)
					seen[r[i].key] = 1;
			}
			snprintf(path, sizeof path, "%s/%s.%s", dir, ev ? "eval" : "train", ext);
			rc = file_write_atomic_v(path, pv, k);
			free(pv);
			if (ev) {
				sh[s].eval_records = k / 2;
				sh[s].eval_bytes = bytes;
			} else {
				sh[s].train_records = k / 2;
				sh[s].train_bytes = bytes;
			}
		}
		for (uint32_t q = 0; q < nkeys; q++)
			sh[s].keys += seen[q];
	}
	free(seen);
	return rc;
}

static int write_manifest(const part_opts *o, const part_shard *sh, size_t cnt, uint32_t nkeys)
{
	static const char *modes[] = {"iid", "dirichlet", "by-key"};
	cJSON *root = cJSON_CreateObject();
	cJSON *arr = cJSON_CreateArray();
	if (!root || !arr) {
		cJSON_Delete(root);
		cJSON_Delete(arr);
		return FL_ENOMEM;
	}
	cJSON_AddStringToObject(root, "input", o->input);
	cJSON_AddStringToObject(root, "mode", modes[o->mode]);
	cJSON_AddStringToObject(root, "key", o->key ? o->key : "");
	if (o->doc_start)
		cJSON_AddStringToObject(root, "doc_start", o->doc_start);
	if (o->key && strcmp(o->key, "document") == 0 && !o->doc_start)
		cJSON_AddNumberToObject(root, "doc_size", o->doc_size > 0 ? o->doc_size : 50);
	cJSON_AddNumberToObject(root, "alpha", o->alpha);
	cJSON_AddNumberToObject(root, "holdout", o->holdout);
	cJSON_AddNumberToObject(root, "seed", (double)o->seed);
	cJSON_AddNumberToObject(root, "records", (double)cnt);
	cJSON_AddNumberToObject(root, "keys", nkeys);
	for (int s = 0; s < o->nodes; s++) {
		cJSON *x = cJSON_CreateObject();
		if (!x)
			break;
		cJSON_AddNumberToObject(x, "shard", s);
		cJSON_AddNumberToObject(x, "train_records", (double)sh[s].train_records);
		cJSON_AddNumberToObject(x, "eval_records", (double)sh[s].eval_records);
		cJSON_AddNumberToObject(x, "train_bytes", (double)sh[s].train_bytes);
		cJSON_AddNumberToObject(x, "eval_bytes", (double)sh[s].eval_bytes);
		cJSON_AddNumberToObject(x, "keys", (double)sh[s].keys);
		cJSON_AddItemToArray(arr, x);
	}
	cJSON_AddItemToObject(root, "shards", arr);
	char *txt = cJSON_Print(root);
	cJSON_Delete(root);
	if (!txt)
		return FL_ENOMEM;
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/partition.json", o->out_dir);
	int rc = file_write_atomic(path, txt, strlen(txt));
	free(txt);
	return rc;
}

int part_run(const part_opts *o, part_shard **shards)
{
	if (o->nodes < 1 || o->nodes > PART_MAX_NODES) {
		LOGE("partition", "--nodes must be in 1..%d", PART_MAX_NODES);
		return FL_EINVAL;
	}
	if (o->holdout < 0 || o->holdout > 0.9) {
		LOGE("partition", "--holdout must be in [0, 0.9]");
		return FL_EINVAL;
	}
	if (o->mode != PART_IID && !o->key) {
		LOGE("partition",
		     "this mode needs --key (\"speaker\" for text, a field for JSONL)");
		return FL_EINVAL;
	}
	if (!o->jsonl && o->key && strcmp(o->key, "speaker") != 0 &&
	    strcmp(o->key, "document") != 0) {
		LOGE("partition", "text input supports --key speaker or --key document");
		return FL_EINVAL;
	}
	if ((o->doc_start || o->doc_size) && !(o->key && strcmp(o->key, "document") == 0)) {
		LOGE("partition", "--doc-start and --doc-size go with --key document");
		return FL_EINVAL;
	}
	regex_t re;
	int have_re = 0;
	if (o->doc_start) {
		int e = regcomp(&re, o->doc_start, REG_EXTENDED | REG_NOSUB);
		if (e) {
			char msg[128];
			regerror(e, &re, msg, sizeof msg);
			LOGE("partition", "--doc-start '%s': %s", o->doc_start, msg);
			return FL_EINVAL;
		}
		have_re = 1;
	}
	if (o->mode == PART_DIRICHLET && !(o->alpha > 0)) {
		LOGE("partition", "--alpha must be > 0");
		return FL_EINVAL;
	}
	uint8_t *data = NULL;
	size_t n = 0, cnt = 0;
	rec *r = NULL;
	keytab kt = {0};
	part_shard *sh = NULL;
	int rc = file_read_all(o->input, PART_MAX_INPUT, &data, &n);
	if (rc) {
		LOGE("partition", "cannot read %s: %s", o->input, file_why(o->input, rc));
		if (have_re)
			regfree(&re);
		return rc;
	}
	rc = o->jsonl ? split_jsonl((const char *)data, n, o, &kt, &r, &cnt)
	              : split_text((const char *)data, n, o, &kt, &r, &cnt, have_re ? &re : NULL);
	if (have_re)
		regfree(&re);
	if (rc)
		goto out;
	if (cnt < (size_t)o->nodes) {
		LOGE("partition", "%s has %zu records, fewer than %d shards", o->input, cnt,
		     o->nodes);
		rc = FL_EINVAL;
		goto out;
	}
	rng g;
	rng_seed(&g, o->seed);
	if ((rc = assign_shards(r, cnt, kt.n, o, &g)) || (rc = pick_holdout(r, cnt, o, &g)))
		goto out;
	sh = calloc((size_t)o->nodes, sizeof *sh);
	if (!sh) {
		rc = FL_ENOMEM;
		goto out;
	}
	if ((rc = file_mkdirs(o->out_dir)) || (rc = write_shards(r, cnt, kt.n, o, sh)) ||
	    (rc = write_manifest(o, sh, cnt, kt.n)))
		goto out;
	if (!o->quiet) {
		printf("%zu records, %u keys -> %d shards in %s\n", cnt, kt.n, o->nodes,
		       o->out_dir);
		printf("%6s %9s %11s %8s %10s %6s\n", "shard", "train_rec", "train_bytes",
		       "eval_rec", "eval_bytes", "keys");
		for (int s = 0; s < o->nodes; s++)
			printf("%6d %9zu %11zu %8zu %10zu %6zu\n", s, sh[s].train_records,
			       sh[s].train_bytes, sh[s].eval_records, sh[s].eval_bytes, sh[s].keys);
	}
	*shards = sh;
	sh = NULL;
out:
	free(sh);
	free(r);
	keytab_fini(&kt);
	free(data);
	return rc;
}

static void part_usage(FILE *f)
{
	fprintf(
	    f,
	    "Usage: fedlora-node partition --input FILE --out DIR --nodes N [options]\n\n"
	    "Splits a corpus into N node shards, each with train and eval files.\n\n"
	    "  --input FILE     text (paragraphs separated by blank lines) or .jsonl\n"
	    "  --out DIR        writes DIR/node-NNN/{train,eval}.{txt,jsonl}, DIR/partition.json\n"
	    "  --nodes N        number of shards\n"
	    "  --mode M         iid (default) | dirichlet | by-key\n"
	    "  --key K          text: 'speaker' (\"ROMEO:\" lines) or 'document' (prose:\n"
	    "                   whole documents go to shards, each shard's last records\n"
	    "                   are its held-out part); JSONL: a field name\n"
	    "  --doc-start RE   --key document: a paragraph whose first line matches RE\n"
	    "                   (POSIX extended) starts a document (e.g. '^CHAPTER ')\n"
	    "  --doc-size N     --key document without --doc-start: every N paragraphs\n"
	    "                   (default 50)\n"
	    "  --alpha A        Dirichlet concentration (default 0.5; large = close to IID)\n"
	    "  --holdout F      fraction of each shard held out (default 0.1)\n"
	    "  --seed S         seed (default 1)\n"
	    "  --format F       text | jsonl (default: by file extension)\n"
	    "  --quiet          no table\n");
}

int part_main(int argc, char **argv)
{
	part_opts o = {.nodes = 0, .mode = PART_IID, .alpha = 0.5, .holdout = 0.1, .seed = 1};
	const char *fmt = NULL;
	if (cli_wants_help(argc, argv)) {
		part_usage(stdout);
		return CLI_OK;
	}
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		int64_t iv;
		double dv;
		if (strcmp(a, "--quiet") == 0) {
			o.quiet = 1;
			continue;
		}
		if (!v) {
			fprintf(stderr, "partition: %s needs a value (or unknown option)\n", a);
			return CLI_USAGE;
		}
		i++;
		if (strcmp(a, "--input") == 0) {
			o.input = v;
		} else if (strcmp(a, "--out") == 0) {
			o.out_dir = v;
		} else if (strcmp(a, "--nodes") == 0) {
			if (cfg_parse_int(v, &iv) || iv < 1 || iv > PART_MAX_NODES) {
				fprintf(stderr, "partition: --nodes '%s' must be 1..%d\n", v,
				        PART_MAX_NODES);
				return CLI_USAGE;
			}
			o.nodes = (int)iv;
		} else if (strcmp(a, "--mode") == 0) {
			if (strcmp(v, "iid") == 0)
				o.mode = PART_IID;
			else if (strcmp(v, "dirichlet") == 0)
				o.mode = PART_DIRICHLET;
			else if (strcmp(v, "by-key") == 0)
				o.mode = PART_BY_KEY;
			else {
				fprintf(stderr,
				        "partition: --mode '%s' is not iid|dirichlet|by-key\n", v);
				return CLI_USAGE;
			}
		} else if (strcmp(a, "--key") == 0) {
			o.key = v;
		} else if (strcmp(a, "--doc-start") == 0) {
			o.doc_start = v;
		} else if (strcmp(a, "--doc-size") == 0) {
			if (cfg_parse_int(v, &iv) || iv < 1 || iv > 1000000) {
				fprintf(stderr,
				        "partition: --doc-size '%s' must be in 1..1000000\n", v);
				return CLI_USAGE;
			}
			o.doc_size = (int)iv;
		} else if (strcmp(a, "--alpha") == 0) {
			if (cfg_parse_double(v, &dv) || dv <= 0) {
				fprintf(stderr, "partition: --alpha '%s' must be a number > 0\n",
				        v);
				return CLI_USAGE;
			}
			o.alpha = dv;
		} else if (strcmp(a, "--holdout") == 0) {
			if (cfg_parse_double(v, &dv) || dv < 0 || dv > 0.9) {
				fprintf(stderr, "partition: --holdout '%s' must be in [0, 0.9]\n",
				        v);
				return CLI_USAGE;
			}
			o.holdout = dv;
		} else if (strcmp(a, "--seed") == 0) {
			if (cfg_parse_int(v, &iv) || iv < 0) {
				fprintf(stderr,
				        "partition: --seed '%s' must be a non-negative integer\n",
				        v);
				return CLI_USAGE;
			}
			o.seed = (uint64_t)iv;
		} else if (strcmp(a, "--format") == 0) {
			fmt = v;
		} else {
			fprintf(stderr, "partition: unknown option '%s'\n", a);
			part_usage(stderr);
			return CLI_USAGE;
		}
	}
	if (!o.input || !o.out_dir || !o.nodes) {
		fprintf(stderr, "partition: --input, --out and --nodes are required\n");
		part_usage(stderr);
		return CLI_USAGE;
	}
	if (fmt && strcmp(fmt, "jsonl") != 0 && strcmp(fmt, "text") != 0) {
		fprintf(stderr, "partition: --format '%s' is not text|jsonl\n", fmt);
		return CLI_USAGE;
	}
	size_t il = strlen(o.input);
	o.jsonl =
	    fmt ? strcmp(fmt, "jsonl") == 0 : (il > 6 && strcmp(o.input + il - 6, ".jsonl") == 0);
	part_shard *sh = NULL;
	int rc = part_run(&o, &sh);
	free(sh);
	if (rc == FL_EINVAL)
		return CLI_USAGE;
	return rc ? CLI_FAIL : CLI_OK;
}
