/* TSC frequency: PIT channel 2 calibration (ring 3, port I/O), CPUID fallbacks. */
#include "rt.h"

static u64 khz;

/* Latch and read PIT channel 0's count. */
static u32 pit_read0(void)
{
	outb(0x43, 0x00);
	u32 lo = inb(0x40);
	return lo | ((u32)inb(0x40) << 8);
}

/*
 * Calibrate against PIT channel 0 (1.193182 MHz). Channel 2 is not usable on
 * machines without a PC speaker port (QEMU microvm; its gate stays low).
 * One-shot mode 0 from 0xffff: at most one IRQ0 edge, no periodic interrupts.
 */
static u64 pit_calibrate(void)
{
	const u32 ticks = 1193182 / 50; /* 20 ms */
	outb(0x43, 0x30); /* channel 0, lobyte/hibyte, mode 0, binary */
	outb(0x40, 0xff);
	outb(0x40, 0xff);
	u32 c0 = pit_read0(), c;
	u64 t0 = rdtsc();
	for (u32 polls = 0;; polls++) {
		c = pit_read0();
		if (c0 - c >= ticks && c < c0)
			break;
		if (c > c0 || polls > 20000) /* wrapped early, or no PIT */
			return 0;
	}
	u64 t1 = rdtsc();
	u64 k = (t1 - t0) * 1193182 / ((u64)(c0 - c) * 1000);
	if (k < 100000 || k > 10000000) /* outside 100 MHz .. 10 GHz: don't trust */
		return 0;
	return k;
}

u64 tsc_khz(void)
{
	if (khz)
		return khz;
	u32 a, b, c, d;
	cpuid(1, 0, &a, &b, &c, &d);
	bool hv = c & (1u << 31);
	cpuid(0x40000000, 0, &a, &b, &c, &d);
	if (hv && a >= 0x40000010 && a < 0x40010000) { /* hypervisor timing leaf (QEMU/VMware): EAX = TSC kHz */
		cpuid(0x40000010, 0, &a, &b, &c, &d);
		if (a)
			return khz = a;
	}
	if ((khz = pit_calibrate()))
		return khz;
	cpuid(0, 0, &a, &b, &c, &d);
	if (a >= 0x16) {
		cpuid(0x16, 0, &a, &b, &c, &d);
		if (a & 0xffff)
			return khz = (u64)(a & 0xffff) * 1000;
	}
	return khz = 2000000; /* guess 2 GHz */
}
