/*
 * hello.elf: prints "HELLO <cmdline>" and exits with status 0 (debug-exit 0).
 * With the bare token `info` it first prints boot details (INFO/MEMMAP lines).
 * fault=ud|gp|pf|de|bp: after the HELLO line, raise that exception in ring 3
 * (tests the "FAIL exception ..." path; exit status 7).
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
	char f[8];
	if (arg_str("fault", f, sizeof(f))) {
		if (!strcmp(f, "ud"))
			__asm__ __volatile__("ud2");
		else if (!strcmp(f, "gp"))
			__asm__ __volatile__("cli; hlt"); /* privileged in ring 3 */
		else if (!strcmp(f, "pf"))
			*(volatile u64 *)0x8000000000UL = 1; /* 512 GiB: not mapped */
		else if (!strcmp(f, "de")) {
			u32 a = 1, d = 0, z = 0;
			__asm__ __volatile__("divl %2" : "+a"(a), "+d"(d) : "r"(z));
		} else if (!strcmp(f, "bp"))
			__asm__ __volatile__("int3");
		fail_config("fault=%s did not fault", f);
	}
	return EXIT_PASS;
}
