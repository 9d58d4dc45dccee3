/* Ring-3 runtime start-up: command line, memory map, allocator. */
#include "rt.h"

#define CMDLINE_MAX 4096
#define MEMMAP_MAX 128

char rt_cmdline[CMDLINE_MAX];
struct hvm_start_info *rt_start_info;
struct hvm_memmap_table_entry rt_memmap[MEMMAP_MAX];
u32 rt_memmap_count;
bool rt_memmap_from_boot;
u64 rt_high_pd_end; /* set in ring 0 by map_high() when it used memory after _end */

extern char _start_image[], _end[];

static u64 alloc_ptr;
/* Boot-provided structures that must not be handed out: [start, end). */
static struct mem_range reserved[8 + MEMMAP_MAX];
static u32 nreserved;

static void reserve(u64 start, u64 len)
{
	if (len && nreserved < ARRAY_SIZE(reserved)) {
		reserved[nreserved].start = ALIGN_DOWN(start, PAGE_SIZE);
		reserved[nreserved].end = ALIGN_UP(start + len, PAGE_SIZE);
		nreserved++;
	}
}

static void setup_boot_info(void)
{
	struct hvm_start_info *si = (void *)pvh_start_info;
	rt_start_info = si;
	if (si && si->magic == HVM_START_MAGIC) {
		reserve((u64)si, sizeof(*si));
		if (si->cmdline_paddr) {
			const char *c = (const char *)si->cmdline_paddr;
			size_t n = 0;
			while (n < CMDLINE_MAX - 1 && c[n])
				n++;
			memcpy(rt_cmdline, c, n);
			rt_cmdline[n] = 0;
			reserve(si->cmdline_paddr, n + 1);
		}
		if (si->version >= 1 && si->memmap_paddr && si->memmap_entries) {
			u32 n = si->memmap_entries < MEMMAP_MAX ? si->memmap_entries : MEMMAP_MAX;
			memcpy(rt_memmap, (void *)si->memmap_paddr, n * sizeof(rt_memmap[0]));
			rt_memmap_count = n;
			rt_memmap_from_boot = true;
			reserve(si->memmap_paddr, si->memmap_entries * sizeof(rt_memmap[0]));
		}
		if (si->nr_modules && si->modlist_paddr) {
			struct hvm_modlist_entry *m = (void *)si->modlist_paddr;
			reserve(si->modlist_paddr, si->nr_modules * sizeof(*m));
			for (u32 i = 0; i < si->nr_modules && i < 4; i++) {
				reserve(m[i].paddr, m[i].size);
				if (m[i].cmdline_paddr)
					reserve(m[i].cmdline_paddr, strlen((char *)m[i].cmdline_paddr) + 1);
			}
		}
	}
	if (!rt_memmap_count) {
		/* No memory map: assume 0-640K and 1M-64M, the least any test VM has. */
		rt_memmap[0] = (struct hvm_memmap_table_entry){ 0, 0x9fc00, E820_RAM, 0 };
		rt_memmap[1] = (struct hvm_memmap_table_entry){ 0x100000, 63UL << 20, E820_RAM, 0 };
		rt_memmap_count = 2;
	}
	/* The image itself and anything ring 0 put after it. */
	u64 end = ALIGN_UP((u64)_end, PAGE_SIZE);
	if (rt_high_pd_end > end)
		end = rt_high_pd_end;
	reserve((u64)_start_image, end - (u64)_start_image);
	alloc_ptr = end;
}

static bool in_ram(u64 start, u64 end)
{
	for (u32 i = 0; i < rt_memmap_count; i++)
		if (rt_memmap[i].type == E820_RAM && start >= rt_memmap[i].addr &&
		    end <= rt_memmap[i].addr + rt_memmap[i].size)
			return true;
	return false;
}

u64 rt_alloc(u64 size, u64 align)
{
	if (align < PAGE_SIZE)
		align = PAGE_SIZE;
	size = ALIGN_UP(size, PAGE_SIZE);
	u64 p = ALIGN_UP(alloc_ptr, align);
	for (int tries = 0; tries < 64; tries++) {
		bool moved = false;
		for (u32 i = 0; i < nreserved; i++)
			if (p < reserved[i].end && p + size > reserved[i].start) {
				p = ALIGN_UP(reserved[i].end, align);
				moved = true;
			}
		if (!moved)
			break;
	}
	if (!in_ram(p, p + size))
		return 0;
	alloc_ptr = p + size;
	reserve(p, size);
	return p;
}

u64 rt_ram_total(void)
{
	u64 t = 0;
	for (u32 i = 0; i < rt_memmap_count; i++)
		if (rt_memmap[i].type == E820_RAM)
			t += rt_memmap[i].size;
	return t;
}

/* Subtract reserved intervals from RAM (>= 1 MiB), page aligned, sorted by address. */
u32 rt_free_ranges(struct mem_range *out, u32 max)
{
	u32 n = 0;
	for (u32 i = 0; i < rt_memmap_count; i++) {
		if (rt_memmap[i].type != E820_RAM)
			continue;
		u64 s = ALIGN_UP(rt_memmap[i].addr, PAGE_SIZE);
		u64 e = ALIGN_DOWN(rt_memmap[i].addr + rt_memmap[i].size, PAGE_SIZE);
		if (s < 0x100000)
			s = 0x100000;
		if (e > (512UL << 30))
			e = 512UL << 30; /* page tables map at most 512 GiB */
		while (s < e && n < max) {
			bool inside = false;
			for (u32 r = 0; r < nreserved; r++)
				if (reserved[r].start <= s && reserved[r].end > s) {
					s = reserved[r].end;
					inside = true;
				}
			if (inside)
				continue;
			u64 cut = e;
			for (u32 r = 0; r < nreserved; r++)
				if (reserved[r].start > s && reserved[r].start < cut)
					cut = reserved[r].start;
			out[n].start = s;
			out[n].end = cut;
			n++;
			s = cut;
		}
	}
	/* sort (insertion) */
	for (u32 i = 1; i < n; i++)
		for (u32 j = i; j > 0 && out[j].start < out[j - 1].start; j--) {
			struct mem_range t = out[j];
			out[j] = out[j - 1];
			out[j - 1] = t;
		}
	return n;
}

/* Ring-3 entry of the BSP (from boot_bsp via iretq). */
NORETURN void rt_user_start_bsp(u64 cpu)
{
	(void)cpu;
	serial_init();
	setup_boot_info();
	rt_exit(main());
}

/* A free RAM page below 1 MiB (for the AP trampoline), or 0. */
u64 rt_low_page(void)
{
	static const u64 order[] = { 0x8000, 0x9000, 0xa000, 0xb000, 0xc000, 0xd000, 0xe000, 0xf000,
				     0x10000, 0x20000, 0x30000, 0x40000, 0x50000, 0x60000, 0x70000,
				     0x80000, 0x90000, 0x7000, 0x6000, 0x5000, 0x4000, 0x3000, 0x2000, 0x1000 };
	for (u32 k = 0; k < ARRAY_SIZE(order); k++) {
		u64 p = order[k];
		bool busy = !in_ram(p, p + PAGE_SIZE);
		for (u32 i = 0; i < nreserved && !busy; i++)
			if (p < reserved[i].end && p + PAGE_SIZE > reserved[i].start)
				busy = true;
		if (!busy) {
			reserve(p, PAGE_SIZE);
			return p;
		}
	}
	return 0;
}
