/* clock — monotonic and wall time in one place.
 *
 * Monotonic time is for deadlines and durations; wall time is only for logs
 * and for deadlines that cross the wire (Unix milliseconds). Thread-safe. */
#ifndef FL_CLOCK_H
#define FL_CLOCK_H
#include <stdint.h>

uint64_t clk_mono_ns(void);     /* CLOCK_MONOTONIC in nanoseconds */
uint64_t clk_mono_ms(void);     /* CLOCK_MONOTONIC in milliseconds */
uint64_t clk_wall_ms(void);     /* CLOCK_REALTIME, Unix epoch milliseconds */
double clk_seconds(void);       /* monotonic seconds as a double, for timing */
void clk_sleep_ms(uint64_t ms); /* sleeps, resuming after signals */

#endif
