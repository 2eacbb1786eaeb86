/* datagen — synthetic predictive-maintenance logs for demos and tests
 * (`fedlora-node gen-data`), so a federation can run on data the project
 * makes itself.
 *
 * Every site runs its own kind of machines with their own sensor ranges,
 * degradation patterns and alarm texts (harbor pumps losing pressure before
 * a seal leak, foundry furnaces overheating, mill conveyors whose vibration
 * rises before bearing wear, plant compressors drawing too much current),
 * written in one shared log format:
 *   "07:45 harbor P3 temp=51 pres=4.1 vib=0.3 ok"
 *   "07:50 harbor P3 temp=52 pres=3.4 vib=0.3 warn pres low"
 *   "07:55 harbor P3 ALERT seal leak - stop pump P3, replace seal"
 *   "08:40 harbor P3 MAINT seal replaced, pressure 4.2 bar"
 * so the shards are non-IID (each node sees one site) while sharing
 * structure the federation can learn together. Site "depot" mixes generic
 * machines and messages: the pretraining corpus of the quickstart's base
 * model. Output is deterministic for a (site, seed, lines) triple. */
#ifndef FL_DATAGEN_H
#define FL_DATAGEN_H
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

enum { DGEN_SITES = 4, DGEN_DEPOT = 4 };

/* Name of site i (0..DGEN_SITES-1 the federation's sites, DGEN_DEPOT the
 * generic one); NULL out of range. */
const char *dgen_site_name(int site);
/* Site index by name or by number ("harbor", "2"); -1 when unknown. */
int dgen_site_parse(const char *s);

/* Appends `lines` log lines of `site` to out (newline-terminated). */
int dgen_generate(int site, uint64_t seed, size_t lines, buf *out);

/* `fedlora-node gen-data --site S --out DIR [--lines N] [--eval-lines N]
 * [--seed S]`: writes DIR/train.txt and DIR/eval.txt (held out: the same
 * site, another stream). */
int dgen_main(int argc, char **argv);

#endif
