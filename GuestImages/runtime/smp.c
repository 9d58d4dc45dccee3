/* CPU discovery (cmdline / MP table / ACPI MADT) and AP start-up from ring 3. */
#include "rt.h"

#define LAPIC_BASE 0xfee00000UL
#define LAPIC_ID 0x20
#define LAPIC_SVR 0xf0
#define LAPIC_ESR 0x280
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310

u32 rt_ncpus_boot = 1;
static u64 lapic_base = LAPIC_BASE;

static u32 lapic_read(u32 reg) { return mmio_read32(lapic_base + reg); }
static void lapic_write(u32 reg, u32 v) { mmio_write32(lapic_base + reg, v); }

u32 lapic_id(void) { return lapic_read(LAPIC_ID) >> 24; }

void delay_cycles(u64 cycles)
{
	u64 t0 = rdtsc();
	while (rdtsc() - t0 < cycles)
		cpu_relax();
}

static u8 checksum(const void *p, size_t n)
{
	const u8 *b = p;
	u8 s = 0;
	while (n--)
		s += *b++;
	return s;
}

/* ---- Intel MP table ---- */
static const u8 *mp_scan(u64 start, u64 len)
{
	for (u64 a = start; a + 16 <= start + len; a += 16) {
		const u8 *p = (const u8 *)a;
		if (p[0] == '_' && p[1] == 'M' && p[2] == 'P' && p[3] == '_' && checksum(p, 16) == 0)
			return p;
	}
	return NULL;
}

static u32 mp_cpus(u8 *ids, u32 max)
{
	const u8 *fp = NULL;
	u16 ebda = *(volatile u16 *)0x40e;
	if (ebda && (u64)ebda << 4 < 0xa0000 && ((u64)ebda << 4) >= 0x80000)
		fp = mp_scan((u64)ebda << 4, 1024);
	if (!fp)
		fp = mp_scan(0x9fc00, 0x400);
	if (!fp)
		fp = mp_scan(0xf0000, 0x10000);
	if (!fp)
		return 0;
	u32 cfg = *(const u32 *)(fp + 4);
	if (!cfg)
		return 0; /* default configuration: not supported */
	const u8 *t = (const u8 *)(u64)cfg;
	if (t[0] != 'P' || t[1] != 'C' || t[2] != 'M' || t[3] != 'P')
		return 0;
	u16 count = *(const u16 *)(t + 34);
	u32 lapic = *(const u32 *)(t + 36);
	if (lapic)
		lapic_base = lapic;
	const u8 *e = t + 44;
	u32 n = 0;
	for (u16 i = 0; i < count; i++) {
		if (e[0] == 0) { /* processor */
			if ((e[3] & 1) && n < max)
				ids[n++] = e[1];
			e += 20;
		} else {
			e += 8;
		}
	}
	return n;
}

/* ---- ACPI MADT ---- */
static const u8 *acpi_find_rsdp(void)
{
	if (rt_start_info && rt_start_info->magic == HVM_START_MAGIC && rt_start_info->rsdp_paddr)
		return (const u8 *)rt_start_info->rsdp_paddr;
	for (u64 a = 0xe0000; a < 0x100000; a += 16)
		if (!memcmp((const void *)a, "RSD PTR ", 8) && checksum((const void *)a, 20) == 0)
			return (const u8 *)a;
	return NULL;
}

static u32 madt_cpus(u8 *ids, u32 max)
{
	const u8 *rsdp = acpi_find_rsdp();
	if (!rsdp || memcmp(rsdp, "RSD PTR ", 8))
		return 0;
	u64 root;
	int esz;
	if (rsdp[15] >= 2 && *(const u64 *)(rsdp + 24)) {
		root = *(const u64 *)(rsdp + 24);
		esz = 8;
	} else {
		root = *(const u32 *)(rsdp + 16);
		esz = 4;
	}
	if (!root)
		return 0;
	const u8 *h = (const u8 *)root;
	u32 len = *(const u32 *)(h + 4);
	for (u32 off = 36; off + esz <= len; off += esz) {
		u64 a = esz == 8 ? *(const u64 *)(h + off) : *(const u32 *)(h + off);
		const u8 *s = (const u8 *)a;
		if (memcmp(s, "APIC", 4))
			continue;
		u32 slen = *(const u32 *)(s + 4);
		u32 lapic = *(const u32 *)(s + 36);
		if (lapic)
			lapic_base = lapic;
		u32 n = 0;
		for (u32 o = 44; o + 2 <= slen;) {
			u8 type = s[o], elen = s[o + 1];
			if (elen < 2)
				break;
			if (type == 0 && (*(const u32 *)(s + o + 4) & 3) && n < max)
				ids[n++] = s[o + 3];
			if (type == 9 && (*(const u32 *)(s + o + 8) & 3) && n < max &&
			    *(const u32 *)(s + o + 4) < 256)
				ids[n++] = (u8) * (const u32 *)(s + o + 4);
			o += elen;
		}
		return n;
	}
	return 0;
}

u32 smp_detect(u8 *ids, u32 max, const char **source)
{
	u32 n = (u32)arg_u64("cpus", 0);
	if (n) {
		if (n > max)
			fail_config("cpus=%u exceeds %u", n, max);
		for (u32 i = 0; i < n; i++)
			ids[i] = (u8)i;
		*source = "cmdline";
	} else {
		/* MP table first; ACPI MADT if it lists more (SeaBIOS's MP table can list
		 * fewer CPUs than QEMU's MADT). */
		u8 ids2[MAX_CPUS];
		u64 base = lapic_base;
		n = mp_cpus(ids, max);
		*source = "mptable";
		u64 mp_lapic = lapic_base;
		lapic_base = base;
		u32 m = madt_cpus(ids2, max < MAX_CPUS ? max : MAX_CPUS);
		if (m > n) {
			memcpy(ids, ids2, m);
			n = m;
			*source = "madt";
		} else {
			lapic_base = mp_lapic;
		}
	}
	if (!n) {
		ids[0] = (u8)lapic_id();
		n = 1;
		*source = "default";
	}
	rt_ncpus_boot = n;
	return n;
}

/* ---- AP start ---- */
extern volatile u64 ap_boot_kstack, ap_boot_ustack;
extern volatile u32 ap_boot_cpu;
extern volatile u64 ap_boot_tss;
extern const u64 rt_tss_size;
extern char ap_tramp_start[], ap_tramp_end[];

static struct {
	void (*fn)(u32 cpu);
	volatile u32 started;
} ap_info[MAX_CPUS];
static u64 tramp_page;

#define KSTACK_SIZE (16 * 1024)
#define USTACK_SIZE (64 * 1024)
static u64 ms_cycles(u64 ms) { return ms * tsc_khz(); }

static void icr_wait(void)
{
	for (u64 t0 = rdtsc(); lapic_read(LAPIC_ICR_LO) & (1 << 12);)
		if (rdtsc() - t0 > ms_cycles(1000))
			fail("lapic ICR stuck busy");
}

static void send_ipi(u8 apic, u32 lo)
{
	icr_wait();
	lapic_write(LAPIC_ICR_HI, (u32)apic << 24);
	lapic_write(LAPIC_ICR_LO, lo);
	icr_wait();
}

bool smp_start_ap(u32 cpu, u8 apic, void (*fn)(u32 cpu), u64 timeout_ms)
{
	if (cpu == 0 || cpu >= MAX_CPUS)
		fail_config("bad cpu index %u", cpu);
	if (!tramp_page) {
		tramp_page = rt_low_page();
		if (!tramp_page)
			fail_config("no free page below 1 MiB for the AP trampoline");
		memcpy((void *)tramp_page, ap_tramp_start, ap_tramp_end - ap_tramp_start);
		lapic_write(LAPIC_SVR, lapic_read(LAPIC_SVR) | 0x100 | 0xff); /* enable LAPIC */
	}
	u64 ks = rt_alloc(KSTACK_SIZE, PAGE_SIZE), us = rt_alloc(USTACK_SIZE, PAGE_SIZE);
	u64 tss = rt_alloc(rt_tss_size, PAGE_SIZE);
	if (!ks || !us || !tss)
		fail_config("no memory for cpu %u stacks", cpu);
	memset((void *)tss, 0, rt_tss_size);
	ap_info[cpu].fn = fn;
	ap_info[cpu].started = 0;
	ap_boot_cpu = cpu;
	ap_boot_kstack = ks + KSTACK_SIZE;
	ap_boot_ustack = us + USTACK_SIZE;
	ap_boot_tss = tss;
	mb();

	u32 vec = (u32)(tramp_page >> 12);
	lapic_write(LAPIC_ESR, 0);
	send_ipi(apic, 0x4500);              /* INIT, level assert */
	delay_cycles(ms_cycles(10));
	send_ipi(apic, 0x4600 | vec);        /* SIPI */
	delay_cycles(ms_cycles(1) / 5);      /* 200 us */
	if (!ap_info[cpu].started)
		send_ipi(apic, 0x4600 | vec); /* second SIPI (ignored if already running) */
	for (u64 t0 = rdtsc(); !ap_info[cpu].started;) {
		if (rdtsc() - t0 > ms_cycles(timeout_ms))
			return false;
		cpu_relax();
	}
	return true;
}

/* Ring-3 entry of an AP (from boot_ap via iretq). */
NORETURN void rt_user_start_ap(u64 cpu)
{
	printf("CPU %lu up\n", cpu);
	void (*fn)(u32) = ap_info[cpu].fn;
	__atomic_store_n(&ap_info[cpu].started, 1, __ATOMIC_RELEASE);
	fn((u32)cpu);
	for (;;)
		cpu_relax();
}
