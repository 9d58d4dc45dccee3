/*
 * cpuid.elf: prints every CPUID leaf the guest's kernel would see, one line each:
 *   CPUID <leaf>.<sub> eax=0x… ebx=0x… ecx=0x… edx=0x…
 * (basic leaves up to leaf 0's maximum, the hypervisor leaves, extended leaves up to
 * 0x80000000's maximum; sub-leaves of 4, 7, 0xb and 0xd), then "CPUID done" and PASS.
 *
 * The leaves are read in ring 0, as a kernel reads them: on a host where ring-3 code runs
 * natively without CPUID faulting (PVM, see ENVIRONMENT.md), a ring-3 CPUID shows the real
 * processor rather than what the VMM configured. Lines "CPUID3 …" show leaf 1 and 7 as
 * ring 3 sees them, for comparison.
 */
#include "rt.h"

#define MAX_LEAVES 256

struct leaf { u32 leaf, sub, a, b, c, d; };
static struct leaf seen[MAX_LEAVES];
static u32 nseen;

static void take(u32 leaf, u32 sub)
{
	if (nseen >= MAX_LEAVES)
		return;
	struct leaf *l = &seen[nseen++];
	l->leaf = leaf;
	l->sub = sub;
	cpuid(leaf, sub, &l->a, &l->b, &l->c, &l->d);
}

static u32 subleaves(u32 leaf)
{
	u32 a, b, c, d;
	switch (leaf) {
	case 4:
	case 0xb:
		return 4;
	case 7:
		cpuid(7, 0, &a, &b, &c, &d);
		return a + 1 > 4 ? 4 : a + 1;
	case 0xd:
		return 20;
	default:
		return 1;
	}
}

static void range(u32 first, u32 last)
{
	if (last - first > 64)
		last = first + 64;
	for (u32 leaf = first; leaf <= last; leaf++)
		for (u32 sub = 0; sub < subleaves(leaf); sub++)
			take(leaf, sub);
}

void rt_ring0_setup(void)
{
	u32 a, b, c, d;
	cpuid(0, 0, &a, &b, &c, &d);
	range(0, a);
	cpuid(0x40000000, 0, &a, &b, &c, &d);
	range(0x40000000, a >= 0x40000000 && a < 0x40000100 ? a : 0x40000000);
	cpuid(0x80000000, 0, &a, &b, &c, &d);
	range(0x80000000, a >= 0x80000000 && a < 0x80000100 ? a : 0x80000000);
}

int main(void)
{
	for (u32 i = 0; i < nseen; i++)
		printf("CPUID 0x%x.%u eax=0x%x ebx=0x%x ecx=0x%x edx=0x%x\n", seen[i].leaf, seen[i].sub, seen[i].a,
		       seen[i].b, seen[i].c, seen[i].d);
	u32 a, b, c, d;
	cpuid(1, 0, &a, &b, &c, &d);
	printf("CPUID3 0x1.0 eax=0x%x ebx=0x%x ecx=0x%x edx=0x%x\n", a, b, c, d);
	cpuid(7, 0, &a, &b, &c, &d);
	printf("CPUID3 0x7.0 eax=0x%x ebx=0x%x ecx=0x%x edx=0x%x\n", a, b, c, d);
	printf("CPUID done\n");
	return EXIT_PASS;
}
