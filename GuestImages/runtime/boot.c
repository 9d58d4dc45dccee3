/*
 * Ring-0 part of the runtime: GDT TSS descriptors, IDT, page tables above
 * 4 GiB, exception reporting, and the jump to ring 3.
 * Runs emulated (~1 us per instruction) on the project's machine, so it does
 * as little as possible; everything else happens in ring 3 (rt.c).
 */
#include "rt.h"

struct tss64 {
	u32 rsv0;
	u64 rsp0, rsp1, rsp2;
	u64 rsv1;
	u64 ist[7];
	u64 rsv2;
	u16 rsv3;
	u16 iomap_base;
	u8 iomap[8192 + 1];
} __attribute__((packed, aligned(16)));

struct idt_entry {
	u16 off0, sel;
	u8 ist, type;
	u16 off1;
	u32 off2, rsv;
} __attribute__((packed));

extern u64 gdt[];
extern u64 gdt_tss[];
extern u64 pml4[], pdpt[], pd0[];
extern char bsp_kstack_top[], bsp_ustack_top[];
extern char exc_stubs[];
NORETURN void enter_user(u64 rip, u64 rsp, u64 arg);
void rt_user_start_bsp(u64 cpu);
void rt_user_start_ap(u64 cpu);

static struct tss64 bsp_tss;
static struct idt_entry idt[32] __attribute__((aligned(16)));

/* AP hand-over, written by the BSP (ring 3) before each SIPI. */
volatile u64 ap_boot_kstack;
volatile u64 ap_boot_ustack;
volatile u32 ap_boot_cpu;
volatile u64 ap_boot_tss; /* zeroed memory, >= sizeof(struct tss64) */
const u64 rt_tss_size = sizeof(struct tss64);

static inline void ltr(u16 sel) { __asm__ __volatile__("ltr %0" ::"r"(sel)); }

static void load_idt(void)
{
	struct {
		u16 limit;
		u64 base;
	} __attribute__((packed)) p = { sizeof(idt) - 1, (u64)idt };
	__asm__ __volatile__("lidt %0" ::"m"(p));
}

/*
 * The TSS carries a full I/O permission bitmap (all ports allowed): under the
 * project's PVM host ring-3 port I/O is checked against the bitmap only, IOPL=3
 * alone is not enough (measured). With both, ring 3 may do port I/O everywhere.
 */
static void setup_tss(u32 cpu, struct tss64 *t, u64 kstack_top)
{
	u64 base = (u64)t, limit = sizeof(*t) - 1;
	t->rsp0 = kstack_top;
	t->iomap_base = __builtin_offsetof(struct tss64, iomap);
	t->iomap[8192] = 0xff;
	gdt_tss[2 * cpu] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89UL << 40) |
			   (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);
	gdt_tss[2 * cpu + 1] = base >> 32;
	ltr(0x30 + 16 * cpu);
}

/* Map RAM above 4 GiB (identity, user-accessible). The first 4 GiB were mapped by entry.S. */
static void map_high(struct hvm_start_info *si)
{
	if (si->magic != HVM_START_MAGIC || si->version < 1 || !si->memmap_paddr)
		return;
	struct hvm_memmap_table_entry *m = (void *)si->memmap_paddr;
	u64 top = 0;
	for (u32 i = 0; i < si->memmap_entries; i++)
		if (m[i].type == E820_RAM && m[i].addr + m[i].size > top)
			top = m[i].addr + m[i].size;
	u64 gib = (top + (1UL << 30) - 1) >> 30;
	if (gib > 512)
		gib = 512; /* one PDPT: 512 GiB is plenty for a test guest */
	if (gib <= 4)
		return;
	if (rt_use_1g_pages) {
		for (u64 g = 4; g < gib; g++)
			pdpt[g] = (g << 30) | 0x87;
		return;
	}
	/* 2 MiB pages: page directories go right after the image (the ring-3
	 * allocator starts above them: rt_alloc skips [_end, high_pd_end)). */
	extern char _end[];
	extern u64 rt_high_pd_end;
	u64 pd = ALIGN_UP((u64)_end, PAGE_SIZE);
	for (u64 g = 4; g < gib; g++, pd += PAGE_SIZE) {
		u64 *e = (u64 *)pd;
		u64 a = (g << 30) | 0x87;
		for (int i = 0; i < 512; i++, a += 0x200000)
			e[i] = a;
		pdpt[g] = pd | 0x07;
	}
	rt_high_pd_end = pd;
}

static void setup_idt(void)
{
	for (int v = 0; v < 32; v++) {
		u64 h = (u64)exc_stubs + 16 * v;
		idt[v].off0 = h & 0xffff;
		idt[v].sel = 0x18;
		idt[v].ist = 0;
		idt[v].type = 0x8e; /* present, DPL 0, 64-bit interrupt gate */
		idt[v].off1 = (h >> 16) & 0xffff;
		idt[v].off2 = h >> 32;
	}
}

/* Programs may do a little extra ring-0 set-up (e.g. timecheck's kvmclock MSR). */
__attribute__((weak)) void rt_ring0_setup(void) {}

NORETURN void boot_bsp(void)
{
	map_high((struct hvm_start_info *)pvh_start_info);
	setup_idt();
	load_idt();
	setup_tss(0, &bsp_tss, (u64)bsp_kstack_top);
	rt_ring0_setup();
	enter_user((u64)rt_user_start_bsp, (u64)bsp_ustack_top - 8, 0);
}

NORETURN void boot_ap(void)
{
	u32 cpu = ap_boot_cpu;
	u64 ustack = ap_boot_ustack;
	load_idt();
	setup_tss(cpu, (struct tss64 *)ap_boot_tss, ap_boot_kstack);
	enter_user((u64)rt_user_start_ap, ustack - 8, cpu);
}

/* frame: vec, err, rip, cs, rflags, rsp, ss */
extern volatile int rt_console_at_bol;
NORETURN void exception_handler(u64 *f)
{
	u64 cr2;
	__asm__ __volatile__("mov %%cr2, %0" : "=r"(cr2));
	char buf[200];
	int n = snprintf(buf, sizeof(buf), "%sFAIL exception vec=%lu rip=0x%lx err=0x%lx cs=0x%lx rsp=0x%lx cr2=0x%lx\n",
			 rt_console_at_bol ? "" : "\n", f[0], f[2], f[1], f[3], f[5], cr2);
	serial_write(buf, n);
	outl(0xf4, EXIT_EXCEPTION);
	for (;;)
		__asm__ __volatile__("cli; hlt");
}
