/* config — typed configuration from INI files, environment and flags.
 *
 * A program declares its keys in a schema (section, key, type, default,
 * range, help). Values come from, in increasing precedence: the schema
 * default, an INI file (libinih), environment variables
 * FEDLORA_<SECTION>_<KEY> (upper case, '.' and '-' as '_'), and command-line
 * flags --section.key=value. Precedence does not depend on call order.
 * Every error names the key and where the bad value came from (file:line,
 * variable or flag); cfg_error() returns that text. Not thread-safe: load at
 * start-up, then read from any thread. */
#ifndef FL_CONFIG_H
#define FL_CONFIG_H
#include <stdint.h>
#include <stdio.h>

typedef enum cfg_type {
	CFG_STR,    /* any string */
	CFG_INT,    /* signed 64-bit integer, optional [min, max] */
	CFG_DOUBLE, /* finite double, optional [min, max] */
	CFG_BOOL,   /* true/false/yes/no/on/off/1/0 */
	CFG_SIZE,   /* byte count with optional K/M/G/KiB/MiB/GiB suffix */
	CFG_ENUM,   /* one of `choices` ("a|b|c") */
} cfg_type;

typedef struct cfg_key {
	const char *section;
	const char *key;
	cfg_type type;
	const char *def;     /* default as text; NULL = unset (cfg_is_set false) */
	double min, max;     /* range for INT/DOUBLE/SIZE, used when min < max */
	const char *choices; /* CFG_ENUM: "a|b|c" */
	const char *help;    /* one line */
} cfg_key;

typedef struct cfg cfg;

/* The schema array must outlive the cfg. */
int cfg_new(const cfg_key *schema, int nkeys, cfg **out);
void cfg_free(cfg *c);

/* INI file. Unknown sections/keys, bad values and unreadable files are
 * errors (FL_ECONFIG / FL_ENOENT) with file:line in cfg_error(). */
int cfg_load_file(cfg *c, const char *path);
/* FEDLORA_* variables of envp (NULL-terminated, e.g. environ). A variable
 * whose name starts with a known section but names no key is an error;
 * variables of unknown sections are ignored (they belong to others). */
int cfg_load_env(cfg *c, char **envp);
/* Consumes every --section.key=value of argv[1..*argc) (removing it from
 * argv and updating *argc). A --x.y flag naming no key is an error. */
int cfg_load_args(cfg *c, int *argc, char **argv);
/* Sets "section.key" from text with the given source label (flag priority). */
int cfg_set(cfg *c, const char *name, const char *value, const char *source);

/* Text of the last error ("" if none); valid until the next call. */
const char *cfg_error(const cfg *c);

/* Getters by "section.key". Asking for an undeclared key or with the wrong
 * type is a programmer error (abort with a message). */
int cfg_is_set(const cfg *c, const char *name);
const char *cfg_str(const cfg *c, const char *name); /* NULL when unset */
int64_t cfg_int(const cfg *c, const char *name);
double cfg_double(const cfg *c, const char *name);
int cfg_bool(const cfg *c, const char *name);
uint64_t cfg_size(const cfg *c, const char *name);
/* Where the value came from: "default", "file:LINE", "env VAR", "flag". */
const char *cfg_source(const cfg *c, const char *name);

/* Prints every key: "section.key = value  # source" (for --print-config). */
void cfg_dump(const cfg *c, FILE *f);
/* Prints the schema with defaults and help (for --help). */
void cfg_help(const cfg_key *schema, int nkeys, FILE *f);

/* Parsers shared with other modules; 0 or FL_EINVAL. */
int cfg_parse_int(const char *s, int64_t *out);
int cfg_parse_double(const char *s, double *out);
int cfg_parse_bool(const char *s, int *out);
int cfg_parse_size(const char *s, uint64_t *out);

#endif
