/* clock — see clock.h. */
#include "clock.h"

#include <errno.h>
#include <time.h>

static uint64_t ts_ns(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t clk_mono_ns(void)
{
	return ts_ns(CLOCK_MONOTONIC);
}
uint64_t clk_mono_ms(void)
{
	return ts_ns(CLOCK_MONOTONIC) / 1000000ull;
}
uint64_t clk_wall_ms(void)
{
	return ts_ns(CLOCK_REALTIME) / 1000000ull;
}
double clk_seconds(void)
{
	return (double)ts_ns(CLOCK_MONOTONIC) * 1e-9;
}

void clk_sleep_ms(uint64_t ms)
{
	struct timespec req = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
	struct timespec rem;
	while (nanosleep(&req, &rem) != 0 && errno == EINTR)
		req = rem;
}
