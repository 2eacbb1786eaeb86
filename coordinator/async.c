/* async — see async.h. */
#include "async.h"

#include "err.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define WHY(...)                                                                                   \
	do {                                                                                       \
		if (why && whylen)                                                                 \
			snprintf(why, whylen, __VA_ARGS__);                                        \
	} while (0)

void fa_opts_default(fa_opts *o)
{
	memset(o, 0, sizeof *o);
	o->buffer_size = 4;
	o->fn = FA_POLYNOMIAL;
	o->a = 0.5;
	o->hinge_b = 4;
	o->max_staleness = 16;
}

static const char *const stale_names[] = {"constant", "polynomial", "hinge"};

const char *fa_stale_name(enum fa_stale f)
{
	return (unsigned)f < 3 ? stale_names[f] : "?";
}

int fa_stale_parse(const char *s, enum fa_stale *out)
{
	for (int i = 0; s && i < 3; i++)
		if (strcmp(s, stale_names[i]) == 0) {
			*out = (enum fa_stale)i;
			return 0;
		}
	return FL_EINVAL;
}

int fa_opts_check(const fa_opts *o, char *why, size_t whylen)
{
	if (!o->on)
		return 0;
	if (o->buffer_size < 1) {
		WHY("aggregation.buffer_size must be >= 1");
		return FL_EINVAL;
	}
	if (o->max_staleness > 1000000) {
		WHY("aggregation.max_staleness must be at most 1000000");
		return FL_EINVAL;
	}
	if ((unsigned)o->fn > FA_HINGE) {
		WHY("aggregation.staleness: unknown function %d", (int)o->fn);
		return FL_EINVAL;
	}
	if (!(o->a >= 0 && o->a <= 10)) {
		WHY("aggregation.staleness_exponent must be in [0, 10], not %g", o->a);
		return FL_EINVAL;
	}
	return 0;
}

uint64_t fa_staleness(uint64_t current, uint64_t base)
{
	return current > base ? current - base : 0;
}

int fa_too_stale(const fa_opts *o, uint64_t s)
{
	return s > o->max_staleness;
}

double fa_weight(const fa_opts *o, uint64_t s)
{
	double x = (double)s;
	switch (o->fn) {
	case FA_POLYNOMIAL:
		return pow(1.0 + x, -o->a);
	case FA_HINGE:
		return s <= o->hinge_b ? 1.0 : 1.0 / (1.0 + o->a * (x - (double)o->hinge_b));
	case FA_CONSTANT:
		break;
	}
	return 1.0;
}
