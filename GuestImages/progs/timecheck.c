/*
 * timecheck.elf — the guest's clocks must never go backwards (e.g. across migration).
 *   seconds=N   stop after N seconds of TSC time with "PASS time" (default: run forever)
 *   ticks=N     ... or after N ticks
 *   tick-ms=M   print "TICK <n>" every M ms (default 1000)
 *   gap-ms=M    report a forward jump larger than M ms between two consecutive reads
 *               as "GAP tsc_ms=<ms>[ kvmclock_ms=<ms>]" (default 100; 0 = off)
 * Reads rdtsc in a tight loop (ring 3) and, when the hypervisor offers kvmclock
 * (KVM CPUID leaf, CLOCKSOURCE2), also the kvmclock time (MSR set up in ring 0).
 * Output: "TIME tsc_khz=<k> kvmclock=<0|1>", "TICK <n> tsc=<t>[ kvmclock_ns=<ns>]",
 *         "FAIL tsc went backwards prev=<a> now=<b>" / "FAIL kvmclock went backwards ...",
 *         "PASS time ticks=<n>".
 */
#include "rt.h"

struct pvclock {
	volatile u32 version;
	u32 pad0;
	volatile u64 tsc_timestamp;
	volatile u64 system_time;
	volatile u32 tsc_to_system_mul;
	volatile signed char tsc_shift;
	volatile u8 flags;
	u8 pad[2];
};

static struct pvclock pvc __attribute__((aligned(64)));
static int kvmclock_on;

#define MSR_KVM_SYSTEM_TIME_NEW 0x4b564d01
#define KVM_FEATURE_CLOCKSOURCE2 3

/* Ring 0, before main: register the kvmclock page if the hypervisor is KVM. */
void rt_ring0_setup(void)
{
	u32 a, b, c, d;
	cpuid(0x40000000, 0, &a, &b, &c, &d);
	if (b != 0x4b4d564b || c != 0x564b4d56 || d != 0x4d || a < 0x40000001) /* "KVMKVMKVM\0\0\0" */
		return;
	cpuid(0x40000001, 0, &a, &b, &c, &d);
	if (!(a & (1u << KVM_FEATURE_CLOCKSOURCE2)))
		return;
	u64 v = (u64)&pvc | 1;
	__asm__ __volatile__("wrmsr" ::"c"(MSR_KVM_SYSTEM_TIME_NEW), "a"((u32)v), "d"((u32)(v >> 32)));
	kvmclock_on = 1;
}

/* kvmclock ns and the TSC value it was computed from */
static u64 kvmclock_read(u64 *tsc_out)
{
	u32 v;
	u64 ns, tsc;
	do {
		v = pvc.version;
		barrier();
		u64 ts = pvc.tsc_timestamp, st = pvc.system_time;
		u32 mul = pvc.tsc_to_system_mul;
		signed char sh = pvc.tsc_shift;
		tsc = rdtsc();
		u64 delta = tsc - ts;
		if (sh < 0)
			delta >>= -sh;
		else
			delta <<= sh;
		ns = st + (u64)(((unsigned __int128)delta * mul) >> 32);
		barrier();
	} while ((v & 1) || v != pvc.version);
	*tsc_out = tsc;
	return ns;
}

int main(void)
{
	u64 khz = tsc_khz();
	u64 seconds = arg_u64("seconds", 0), ticks = arg_u64("ticks", 0);
	u64 tick_cyc = arg_u64("tick-ms", 1000) * khz;
	u64 gap_cyc = arg_u64("gap-ms", 100) * khz;
	if (!tick_cyc)
		fail_config("tick-ms=0");
	if (kvmclock_on && pvc.version == 0)
		kvmclock_on = 0; /* MSR accepted but never filled in */
	printf("TIME tsc_khz=%lu kvmclock=%d\n", khz, kvmclock_on);
	u64 start = rdtsc(), prev = start, next_tick = start + tick_cyc, n = 0, kprev = 0, tmp;
	if (kvmclock_on)
		kprev = kvmclock_read(&tmp);
	for (;;) {
		/* inner: TSC only, tight */
		u64 now;
		for (int i = 0; i < 4096; i++) {
			now = rdtsc();
			if (unlikely(now < prev))
				fail("tsc went backwards prev=%lu now=%lu", prev, now);
			if (unlikely(gap_cyc && now - prev > gap_cyc)) {
				if (kvmclock_on) {
					u64 k = kvmclock_read(&tmp);
					printf("GAP tsc_ms=%lu kvmclock_ms=%lu\n", (now - prev) / khz, (k - kprev) / 1000000);
				} else {
					printf("GAP tsc_ms=%lu\n", (now - prev) / khz);
				}
				now = rdtsc();
			}
			prev = now;
		}
		if (kvmclock_on) {
			u64 k = kvmclock_read(&tmp);
			if (unlikely(k < kprev))
				fail("kvmclock went backwards prev=%lu now=%lu", kprev, k);
			kprev = k;
		}
		if (now >= next_tick) {
			n++;
			next_tick += tick_cyc;
			if (next_tick < now) /* after a long pause: don't print a burst */
				next_tick = now + tick_cyc;
			if (kvmclock_on)
				printf("TICK %lu tsc=%lu kvmclock_ns=%lu\n", n, now, kprev);
			else
				printf("TICK %lu tsc=%lu\n", n, now);
			prev = rdtsc(); /* printing took a while: not a gap */
			if ((ticks && n >= ticks) || (seconds && (now - start) / khz >= seconds * 1000)) {
				printf("PASS time ticks=%lu\n", n);
				return EXIT_PASS;
			}
		}
	}
}
