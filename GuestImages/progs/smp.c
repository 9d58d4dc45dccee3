/*
 * smp.elf — bring up every vCPU, run memtouch on each (ring 3), disjoint regions.
 *   cpus=N        CPU count (default: MP table, then ACPI MADT, then 1)
 *   size=N        region per CPU (default 16M)
 *   passes=N      passes per CPU (default 200; 0 = forever)
 *   heartbeat=N / heartbeat-ms=M   per-CPU "HEARTBEAT <pass> cpu=<c>" (default off)
 *   ap-timeout-ms=M   how long to wait for each AP (default 10000)
 * Output: "SMP cpus=N source=<cmdline|mptable|madt|default> bsp=<apic id> size=0x.. passes=P",
 *         "CPU <c> up" per AP, "CPU <c> done" per CPU, "PASS cpus=N".
 */
#include "rt.h"
#include "memtouch.h"

static u64 region[MAX_CPUS], pages, passes, hb_passes, hb_cycles;
static volatile u32 done[MAX_CPUS];

static void work(u32 cpu)
{
	memtouch_run((int)cpu, region[cpu], pages, 1, passes, hb_passes, hb_cycles);
	printf("CPU %u done\n", cpu);
	__atomic_store_n(&done[cpu], 1, __ATOMIC_RELEASE);
}

int main(void)
{
	u8 ids[MAX_CPUS];
	const char *src;
	u32 n = smp_detect(ids, MAX_CPUS, &src);
	u64 size = ALIGN_UP(arg_u64("size", 16UL << 20), PAGE_SIZE);
	passes = arg_u64("passes", 200);
	memtouch_heartbeat_args(&hb_passes, &hb_cycles, 0);
	u64 timeout = arg_u64("ap-timeout-ms", 10000);
	u32 bsp = lapic_id();
	pages = size / PAGE_SIZE;
	if (!pages)
		fail_config("size=0");
	for (u32 c = 0; c < n; c++)
		if (!(region[c] = rt_alloc(size, PAGE_SIZE)))
			fail_config("no memory for cpu %u region (size=0x%lx)", c, size);
	printf("SMP cpus=%u source=%s bsp=%u size=0x%lx passes=%lu\n", n, src, bsp, size, passes);
	u32 cpu = 1;
	for (u32 i = 0; i < n; i++) {
		if (ids[i] == bsp)
			continue;
		if (cpu >= n)
			fail_config("BSP apic id %u is not in the CPU list", bsp);
		if (!smp_start_ap(cpu, ids[i], work, timeout))
			fail("cpu %u (apic %u) did not start", cpu, ids[i]);
		cpu++;
	}
	work(0);
	for (u32 c = 0; c < n; c++)
		while (!__atomic_load_n(&done[c], __ATOMIC_ACQUIRE))
			cpu_relax();
	printf("PASS cpus=%u\n", n);
	return EXIT_PASS;
}
