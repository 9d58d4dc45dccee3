/*
 * memtouch.elf — migration workload (runs in ring 3).
 *   size=N       region size (default: the largest free RAM range)
 *   passes=N     stop after N passes with "PASS passes=N" (default: run forever)
 *   heartbeat=N  print "HEARTBEAT <pass>" every N passes (0: never)
 *   heartbeat-ms=M  ... or after the first pass ending >= M ms after the previous
 *                heartbeat (default when no heartbeat= is given: 1000 ms)
 *   write=random every pass rewrites whole pages with fresh pseudo-random words, each word of
 *                the previous pass verified first (runtime/memtouch.h)
 */
#include "rt.h"
#include "memtouch.h"

int main(void)
{
	u64 size = arg_u64("size", 0);
	u64 passes = arg_u64("passes", 0);
	u64 hb_passes, hb_cycles;
	memtouch_heartbeat_args(&hb_passes, &hb_cycles, 1000);
	struct mem_range r[64];
	u32 n = rt_free_ranges(r, ARRAY_SIZE(r));
	u64 base = 0, len = 0;
	if (size) {
		size = ALIGN_UP(size, PAGE_SIZE);
		for (u32 i = 0; i < n && !base; i++)
			if (r[i].end - r[i].start >= size)
				base = r[i].start, len = size;
		if (!base)
			fail_config("size=0x%lx does not fit in free RAM", size);
	} else {
		for (u32 i = 0; i < n; i++)
			if (r[i].end - r[i].start > len)
				base = r[i].start, len = r[i].end - r[i].start;
		if (!len)
			fail_config("no free RAM");
	}
	u64 pages = len / PAGE_SIZE;
	printf("MEMTOUCH start=0x%lx pages=%lu\n", base, pages);
	char mode[16];
	bool idle = arg_flag("idle");
	bool fill = arg_str("fill", mode, sizeof(mode)) && mode[0] == 'r';
	if (idle || fill) {
		u64 words = len / 8;
		volatile u64 *w = (volatile u64 *)base;
		if (fill) {
			u64 x = 0x9e3779b97f4a7c15ull;
			for (u64 i = 0; i < words; i++) {
				x ^= x << 13; x ^= x >> 7; x ^= x << 17;
				w[i] = x;
			}
			printf("FILLED pages=%lu\n", pages);
		}
		u64 cycles = hb_cycles ? hb_cycles : 1000 * tsc_khz();
		u64 last = rdtsc();
		for (u64 n = 1; passes == 0 || n <= passes; ) {
			if (rdtsc() - last < cycles) { cpu_relax(); continue; }
			last = rdtsc();
			if (fill) {
				u64 x = 0x9e3779b97f4a7c15ull;
				for (u64 i = 0; i < words; i++) {
					x ^= x << 13; x ^= x >> 7; x ^= x << 17;
					if (unlikely(w[i] != x))
						fail("page=%lu word=%lu expected=0x%lx got=0x%lx", i / 512, i % 512, x, w[i]);
				}
				printf("HEARTBEAT %lu verified\n", n);
			} else {
				printf("HEARTBEAT %lu\n", n);
			}
			n++;
		}
		printf("PASS passes=%lu\n", passes);
		return EXIT_PASS;
	}
	if (arg_str("write", mode, sizeof(mode)) && mode[0] == 'r') {
		memtouch_random_run(base, pages, passes, hb_passes, hb_cycles, arg_u64("corrupt-after", 0));
		printf("PASS passes=%lu\n", passes);
		return EXIT_PASS;
	}
	u64 corrupt = arg_u64("corrupt-after", 0);
	if (corrupt && (passes == 0 || corrupt < passes)) {
		memtouch_run(-1, base, pages, 1, corrupt, hb_passes, hb_cycles);
		*(volatile u64 *)(base + (pages - 1) * PAGE_SIZE) = 0xdead;
		memtouch_run(-1, base, pages, corrupt + 1, passes, hb_passes, hb_cycles);
	} else {
		memtouch_run(-1, base, pages, 1, passes, hb_passes, hb_cycles);
	}
	printf("PASS passes=%lu\n", passes);
	return EXIT_PASS;
}
