/* nrank — see nrank.h. */
#include "nrank.h"

#include "err.h"

#include <fnmatch.h>
#include <stdio.h>
#include <string.h>

#define WHY(...)                                                                                   \
	do {                                                                                       \
		if (why && whylen)                                                                 \
			snprintf(why, whylen, __VA_ARGS__);                                        \
	} while (0)

static int is_sep(char c)
{
	return c == ',' || c == ' ' || c == '\t';
}

/* One entry "PATTERN:RANK[:FORMAT]" of length n. */
static int parse_entry(const char *e, size_t n, nrank_group *g, char *why, size_t whylen)
{
	const char *c1 = memchr(e, ':', n);
	if (!c1 || c1 == e) {
		WHY("rank.groups: entry '%.*s' is not PATTERN:RANK[:FORMAT]",
		    (int)(n > 80 ? 80 : n), e);
		return FL_EINVAL;
	}
	size_t pl = (size_t)(c1 - e);
	if (pl > NRANK_PATTERN_MAX) {
		WHY("rank.groups: pattern '%.40s...' is longer than %d characters", e,
		    NRANK_PATTERN_MAX);
		return FL_EINVAL;
	}
	memcpy(g->pattern, e, pl);
	g->pattern[pl] = 0;
	const char *r = c1 + 1, *end = e + n;
	const char *c2 = memchr(r, ':', (size_t)(end - r));
	const char *rend = c2 ? c2 : end;
	uint64_t v = 0;
	if (r == rend) {
		WHY("rank.groups: entry '%s' has no rank", g->pattern);
		return FL_EINVAL;
	}
	for (const char *p = r; p < rend; p++) {
		if (*p < '0' || *p > '9' || v > 100000) {
			WHY("rank.groups: rank '%.*s' of '%s' is not a number", (int)(rend - r), r,
			    g->pattern);
			return FL_EINVAL;
		}
		v = v * 10 + (uint64_t)(*p - '0');
	}
	if (v == 0) {
		WHY("rank.groups: rank of '%s' must be >= 1", g->pattern);
		return FL_EINVAL;
	}
	g->rank = (uint32_t)v;
	g->fmt = 0;
	if (c2) {
		char f[16];
		size_t fl = (size_t)(end - c2 - 1);
		if (fl == 0 || fl >= sizeof f) {
			WHY("rank.groups: format of '%s' must be f32, f16, q8, q4 or q2",
			    g->pattern);
			return FL_EINVAL;
		}
		memcpy(f, c2 + 1, fl);
		f[fl] = 0;
		if (qt_fmt_parse(f, &g->fmt) != 0) {
			WHY("rank.groups: format '%s' of '%s' is not f32, f16, q8, q4 or q2", f,
			    g->pattern);
			return FL_EINVAL;
		}
	}
	return 0;
}

int nrank_parse(const char *groups, nrank_opts *o, char *why, size_t whylen)
{
	o->ng = 0;
	if (!groups)
		return 0;
	const char *p = groups;
	while (*p) {
		while (*p && is_sep(*p))
			p++;
		if (!*p)
			break;
		const char *e = p;
		while (*p && !is_sep(*p))
			p++;
		if (o->ng == NRANK_MAX_GROUPS) {
			WHY("rank.groups: more than %d groups", NRANK_MAX_GROUPS);
			return FL_EINVAL;
		}
		int rc = parse_entry(e, (size_t)(p - e), &o->g[o->ng], why, whylen);
		if (rc)
			return rc;
		o->ng++;
	}
	return 0;
}

int nrank_check(const nrank_opts *o, uint32_t R, char *why, size_t whylen)
{
	if (o->def_rank > R) {
		WHY("rank.default (%u) exceeds the federation's lora.rank (%u)", o->def_rank, R);
		return FL_EINVAL;
	}
	for (size_t i = 0; i < o->ng; i++)
		if (o->g[i].rank > R) {
			WHY("rank.groups: rank %u of '%s' exceeds the federation's lora.rank (%u)",
			    o->g[i].rank, o->g[i].pattern, R);
			return FL_EINVAL;
		}
	return 0;
}

int nrank_mixed(const nrank_opts *o, uint32_t R)
{
	if (o->def_rank && o->def_rank < R)
		return 1;
	for (size_t i = 0; i < o->ng; i++)
		if (o->g[i].rank < R)
			return 1;
	return 0;
}

int nrank_assign_node(const nrank_opts *o, uint32_t R, enum qt_fmt def_fmt, uint32_t def_block,
                      const char *cn, uint32_t max_rank, const int *formats, size_t nformats,
                      nrank_assign *out, char *why, size_t whylen)
{
	int gi = -1;
	for (size_t i = 0; i < o->ng && gi < 0; i++)
		if (fnmatch(o->g[i].pattern, cn, 0) == 0)
			gi = (int)i;
	/* a node that announces no max_rank trains every slot */
	uint32_t can = max_rank && max_rank < R ? max_rank : R;
	nrank_assign a = {.rank = R, .fmt = def_fmt, .block = def_block, .group = gi};
	if (gi >= 0) {
		const nrank_group *g = &o->g[gi];
		if (can < g->rank) {
			WHY("node %s announces node.max_rank %u, below rank %u that its group '%s' "
			    "requires (rank.groups)",
			    cn, can, g->rank, g->pattern);
			return FL_EINVAL;
		}
		/* a node that cannot train slices (max_rank 0) trains them all */
		a.rank = max_rank ? g->rank : R;
		if (g->fmt)
			a.fmt = g->fmt;
	} else {
		uint32_t want = o->def_rank ? o->def_rank : R;
		a.rank = max_rank ? (want < can ? want : can) : R;
	}
	if (a.fmt != def_fmt || !a.block)
		a.block = a.fmt == QT_F32 || a.fmt == QT_F16 ? 0 : (def_block ? def_block : 32);
	if (nformats) {
		int ok = 0;
		for (size_t i = 0; i < nformats && !ok; i++)
			ok = formats[i] == (int)a.fmt;
		if (!ok) {
			WHY("node %s cannot upload %s (node.upload_formats), the format %s assigns "
			    "it",
			    cn, qt_fmt_name(a.fmt),
			    gi >= 0 && o->g[gi].fmt ? "its group in rank.groups"
			                            : "train.uplink_format");
			return FL_EINVAL;
		}
	}
	*out = a;
	return 0;
}
