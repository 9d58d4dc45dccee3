/*
 * hello.elf: prints "HELLO <cmdline>" and exits with status 0 (debug-exit 0).
 * With the bare token `info` it first prints boot details (INFO/MEMMAP lines).
 */
#include "rt.h"

int main(void)
{
	if (arg_flag("info")) {
		struct hvm_start_info *si = rt_start_info;
		printf("INFO start_info=0x%lx magic=0x%x version=%u cmdline=0x%lx memmap=0x%lx entries=%u rsdp=0x%lx modules=%u\n",
		       (u64)si, si->magic, si->version, si->cmdline_paddr, si->version >= 1 ? si->memmap_paddr : 0,
		       si->version >= 1 ? si->memmap_entries : 0, si->rsdp_paddr, si->nr_modules);
		for (u32 i = 0; i < rt_memmap_count; i++)
			printf("MEMMAP addr=0x%lx size=0x%lx type=%u\n", rt_memmap[i].addr, rt_memmap[i].size,
			       rt_memmap[i].type);
		u32 a, b, c, d;
		cpuid(1, 0, &a, &b, &c, &d);
		printf("INFO lapic_id=%u pages1g=%d tsc_khz=%lu cpuid1.ecx=0x%x\n", lapic_id(), rt_use_1g_pages,
		       tsc_khz(), c);
	}
	printf("HELLO %s\n", rt_cmdline);
	return EXIT_PASS;
}
