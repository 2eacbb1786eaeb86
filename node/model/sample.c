/* sample — see sample.h. */
#include "sample.h"

#include <math.h>
#include <string.h>

void sample_seed(sample_rng *r, uint64_t seed)
{
	r->s = seed;
}

uint64_t sample_u64(sample_rng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

double sample_uniform(sample_rng *r)
{
	return (double)(sample_u64(r) >> 11) * (1.0 / 9007199254740992.0);
}

double sample_normal(sample_rng *r)
{
	double u1 = sample_uniform(r), u2 = sample_uniform(r);
	if (u1 < 1e-300)
		u1 = 1e-300;
	return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Candidates live in work as (value, id) pairs: vals[0..k), ids (as floats
 * would lose precision past 2^24, so ids are stored bitwise in the second
 * half as uint32). */
typedef struct cand {
	float *v;
	uint32_t *id;
} cand;

/* a ranks before b: larger value, then lower id. */
static int before(float va, uint32_t ia, float vb, uint32_t ib)
{
	return va > vb || (va == vb && ia < ib);
}

/* Min-heap (worst candidate at the root) of size n. */
static void sift_down(cand *c, int n, int i)
{
	for (;;) {
		int l = 2 * i + 1, r = l + 1, w = i;
		if (l < n && before(c->v[w], c->id[w], c->v[l], c->id[l]))
			w = l;
		if (r < n && before(c->v[w], c->id[w], c->v[r], c->id[r]))
			w = r;
		if (w == i)
			return;
		float tv = c->v[i];
		uint32_t ti = c->id[i];
		c->v[i] = c->v[w];
		c->id[i] = c->id[w];
		c->v[w] = tv;
		c->id[w] = ti;
		i = w;
	}
}

int sample_token(const float *logits, int V, float temp, int top_k, sample_rng *r, float *work)
{
	if (V <= 0)
		return -1;
	for (int i = 0; i < V; i++)
		if (isnan(logits[i]))
			return -1;
	if (!(temp > 0.0f)) {
		int best = 0;
		for (int i = 1; i < V; i++)
			if (logits[i] > logits[best])
				best = i;
		return best;
	}
	int k = top_k <= 0 || top_k >= V ? V : top_k;
	cand c = {work, (uint32_t *)(void *)(work + V)};
	int n = 0;
	if (k == V) {
		for (int i = 0; i < V; i++) {
			c.v[i] = logits[i];
			c.id[i] = (uint32_t)i;
		}
		n = V;
	} else {
		for (int i = 0; i < V; i++) {
			if (n < k) {
				c.v[n] = logits[i];
				c.id[n] = (uint32_t)i;
				n++;
				if (n == k)
					for (int j = k / 2 - 1; j >= 0; j--)
						sift_down(&c, k, j);
			} else if (before(logits[i], (uint32_t)i, c.v[0], c.id[0])) {
				c.v[0] = logits[i];
				c.id[0] = (uint32_t)i;
				sift_down(&c, k, 0);
			}
		}
	}
	float mx = c.v[0];
	for (int i = 1; i < n; i++)
		mx = c.v[i] > mx ? c.v[i] : mx;
	double sum = 0.0;
	for (int i = 0; i < n; i++)
		sum += exp(((double)c.v[i] - mx) / temp);
	/* The candidate order is a deterministic function of the logits, so the
	 * draw is reproducible for a given seed. */
	double u = sample_uniform(r) * sum, acc = 0.0;
	for (int i = 0; i < n; i++) {
		acc += exp(((double)c.v[i] - mx) / temp);
		if (acc > u)
			return (int)c.id[i];
	}
	return (int)c.id[n - 1]; /* u rounded up to the total */
}
