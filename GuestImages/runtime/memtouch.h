/* The memtouch workload, shared by memtouch.elf and smp.elf. */
#ifndef MEMTOUCH_H
#define MEMTOUCH_H
#include "rt.h"

/*
 * Passes p = first, first+1, ... passes: for every page i in address order, check that the
 * 64-bit counter at the start of page i holds p-1, then store p.
 * Strict: any other value -> "FAIL [cpu=<c> ]page=<i> expected=<p-1> got=<v> addr=0x..."
 * and debug-exit EXIT_FAIL. passes = 0 means forever.
 * Heartbeat "HEARTBEAT <p>[ cpu=<c>]": every hb_passes passes if hb_passes != 0,
 * else at the end of the first pass that ends >= hb_cycles TSC cycles after the
 * previous heartbeat (hb_cycles 0: never).
 */
static inline void memtouch_run(int cpu, u64 base, u64 pages, u64 first, u64 passes, u64 hb_passes,
				u64 hb_cycles)
{
	u64 last = rdtsc();
	for (u64 p = first; passes == 0 || p <= passes; p++) {
		const u64 expect = p - 1;
		volatile u64 *q = (volatile u64 *)base;
		volatile u64 *end = q + pages * (PAGE_SIZE / 8);
		for (; q != end; q += PAGE_SIZE / 8) {
			u64 v = *q;
			if (unlikely(v != expect)) {
				u64 i = ((u64)q - base) / PAGE_SIZE;
				if (cpu >= 0)
					fail("cpu=%d page=%lu expected=%lu got=%lu addr=0x%lx", cpu, i, expect, v, (u64)q);
				fail("page=%lu expected=%lu got=%lu addr=0x%lx", i, expect, v, (u64)q);
			}
			*q = p;
		}
		bool beat;
		if (hb_passes) {
			beat = p % hb_passes == 0;
		} else if (hb_cycles) {
			u64 now = rdtsc();
			beat = now - last >= hb_cycles;
			if (beat)
				last = now;
		} else {
			beat = false;
		}
		if (unlikely(beat)) {
			if (cpu >= 0)
				printf("HEARTBEAT %lu cpu=%d\n", p, cpu);
			else
				printf("HEARTBEAT %lu\n", p);
		}
	}
}

/*
 * Random mode: pass p = 1, 2, ... rewrites every word of every page with a fresh xorshift64
 * sequence seeded by (p, page), after checking each word against the sequence of pass p-1
 * (pass 0: zero, as fresh RAM is). The data is incompressible, and a page that is stale (an
 * older pass) or torn (some words of one pass, some of another) fails:
 * "FAIL page=<i> word=<w> pass=<p> expected=0x.. got=0x..". Heartbeats as memtouch_run.
 */
static inline u64 memtouch_seed(u64 pass, u64 page)
{
	if (pass == 0)
		return 0;
	u64 z = (pass << 40) ^ page ^ 0x9e3779b97f4a7c15ull;	/* splitmix64 */
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return (z ^ (z >> 31)) | 1;
}

static inline u64 memtouch_next(u64 x)
{
	if (x == 0)
		return 0; /* pass 0: every word zero */
	x ^= x << 13; x ^= x >> 7; x ^= x << 17;
	return x;
}

static inline void memtouch_random_run(u64 base, u64 pages, u64 passes, u64 hb_passes, u64 hb_cycles,
				       u64 corrupt_after)
{
	u64 last = rdtsc();
	for (u64 p = 1; passes == 0 || p <= passes; p++) {
		for (u64 i = 0; i < pages; i++) {
			volatile u64 *q = (volatile u64 *)(base + i * PAGE_SIZE);
			u64 old = memtouch_seed(p - 1, i), new = memtouch_seed(p, i);
			for (u64 w = 0; w < PAGE_SIZE / 8; w++) {
				old = memtouch_next(old);
				new = memtouch_next(new);
				u64 v = q[w];
				if (unlikely(v != old))
					fail("page=%lu word=%lu pass=%lu expected=0x%lx got=0x%lx", i, w, p, old, v);
				q[w] = new;
			}
		}
		if (unlikely(p == corrupt_after)) /* self-test: tear the last page in the middle */
			*(volatile u64 *)(base + (pages - 1) * PAGE_SIZE + PAGE_SIZE / 2) ^= 1;
		bool beat = false;
		if (hb_passes) {
			beat = p % hb_passes == 0;
		} else if (hb_cycles && rdtsc() - last >= hb_cycles) {
			beat = true;
			last = rdtsc();
		}
		if (unlikely(beat))
			printf("HEARTBEAT %lu\n", p);
	}
}

/* Heartbeat settings from the command line: heartbeat=N (passes, 0 = off) or
 * heartbeat-ms=M (time, default 1000 ms when neither key is given). */
static inline void memtouch_heartbeat_args(u64 *hb_passes, u64 *hb_cycles, u64 def_ms)
{
	*hb_passes = 0;
	*hb_cycles = 0;
	char tmp[32];
	if (arg_str("heartbeat", tmp, sizeof(tmp))) {
		*hb_passes = arg_u64("heartbeat", 0);
		return;
	}
	u64 ms = arg_u64("heartbeat-ms", def_ms);
	if (ms)
		*hb_cycles = ms * tsc_khz();
}
/*
 * The same check, a slice at a time, for programs that do other work between slices (soak.elf):
 * memtouch_step() checks and stores up to n pages of the current pass and returns true when
 * that pass has ended. One CPU only (its failures carry no cpu=).
 */
struct memtouch {
	u64 base, pages;
	u64 pass; /* the pass under way, from 1 */
	u64 next; /* its next page */
};

static inline void memtouch_init(struct memtouch *m, u64 base, u64 pages)
{
	m->base = base;
	m->pages = pages;
	m->pass = 1;
	m->next = 0;
}

static inline bool memtouch_step(struct memtouch *m, u64 n)
{
	const u64 expect = m->pass - 1;
	u64 end = m->pages - m->next < n ? m->pages : m->next + n;
	for (u64 i = m->next; i < end; i++) {
		volatile u64 *q = (volatile u64 *)(m->base + i * PAGE_SIZE);
		u64 v = *q;
		if (unlikely(v != expect))
			fail("page=%lu expected=%lu got=%lu addr=0x%lx", i, expect, v, (u64)q);
		*q = m->pass;
	}
	m->next = end;
	if (end < m->pages)
		return false;
	m->next = 0;
	m->pass++;
	return true;
}
#endif
