/*
 * swiftvmm guest runtime — shared declarations.
 *
 * Execution model (see README.md): the PVH entry (32-bit, ring 0) builds page
 * tables and enters long mode, a little ring-0 C code installs GDT/TSS/IDT, then
 * every program's main() runs in ring 3 with RFLAGS.IOPL=3 and IF=0, so it does
 * port I/O (serial, debug-exit) itself at native speed. All memory, including
 * MMIO windows, is mapped user-accessible.
 */
#ifndef RT_H
#define RT_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef signed long i64;
typedef unsigned long size_t;
typedef unsigned long uintptr_t;
typedef _Bool bool;
#define true 1
#define false 0
#define NULL ((void *)0)

typedef __builtin_va_list va_list;
#define va_start(ap, last) __builtin_va_start(ap, last)
#define va_arg(ap, t) __builtin_va_arg(ap, t)
#define va_end(ap) __builtin_va_end(ap)

#define PAGE_SIZE 4096UL
#define ALIGN_UP(x, a) (((x) + (a) - 1) & ~((u64)(a) - 1))
#define ALIGN_DOWN(x, a) ((x) & ~((u64)(a) - 1))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define barrier() __asm__ __volatile__("" ::: "memory")
#define unlikely(x) __builtin_expect(!!(x), 0)
#define likely(x) __builtin_expect(!!(x), 1)
#define NORETURN __attribute__((noreturn))

#define MAX_CPUS 64

/* Debug-exit values (QEMU isa-debug-exit: process exit status = (v << 1) | 1). */
#define EXIT_PASS 0      /* status 1 */
#define EXIT_FAIL 1      /* status 3: the test detected a failure           */
#define EXIT_CONFIG 2    /* status 5: bad command line / missing device / no memory */
#define EXIT_EXCEPTION 3 /* status 7: CPU exception (FAIL exception ...)   */

/* ---- port I/O (allowed in ring 3: IOPL=3) ---- */
static inline void outb(u16 port, u8 v) { __asm__ __volatile__("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ __volatile__("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ __volatile__("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ __volatile__("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ __volatile__("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}
static inline void cpu_relax(void) { __asm__ __volatile__("pause" ::: "memory"); }
static inline void cpuid(u32 leaf, u32 sub, u32 *a, u32 *b, u32 *c, u32 *d)
{
	__asm__ __volatile__("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}
static inline void mb(void) { __asm__ __volatile__("mfence" ::: "memory"); }

/* MMIO accessors (volatile; each is exactly one access of that width). */
static inline u8 mmio_read8(u64 a) { return *(volatile u8 *)a; }
static inline u16 mmio_read16(u64 a) { return *(volatile u16 *)a; }
static inline u32 mmio_read32(u64 a) { return *(volatile u32 *)a; }
static inline void mmio_write8(u64 a, u8 v) { *(volatile u8 *)a = v; }
static inline void mmio_write16(u64 a, u16 v) { *(volatile u16 *)a = v; }
static inline void mmio_write32(u64 a, u32 v) { *(volatile u32 *)a = v; }

/* ---- PVH start info ---- */
struct hvm_start_info {
	u32 magic; /* 0x336ec578 */
	u32 version;
	u32 flags;
	u32 nr_modules;
	u64 modlist_paddr;
	u64 cmdline_paddr;
	u64 rsdp_paddr;
	u64 memmap_paddr;    /* version >= 1 */
	u32 memmap_entries;  /* version >= 1 */
	u32 reserved;
};
struct hvm_modlist_entry {
	u64 paddr, size, cmdline_paddr, reserved;
};
struct hvm_memmap_table_entry {
	u64 addr, size;
	u32 type, reserved;
};
#define HVM_START_MAGIC 0x336ec578
#define E820_RAM 1

/* ---- libc-ish ---- */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);

/* ---- serial console + formatting ---- */
void serial_init(void);
void serial_write(const char *s, size_t n); /* no lock */
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* printf: formats the whole output, then writes it under the console lock. */
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void console_lock(void);
void console_unlock(void);

/* ---- exit ---- */
NORETURN void rt_exit(int value);
/* Print "FAIL <msg>" and exit with EXIT_FAIL / EXIT_CONFIG. */
NORETURN void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
NORETURN void fail_config(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- spinlock (ring 3, xchg) ---- */
typedef struct { volatile u32 v; } spinlock_t;
static inline void spin_lock(spinlock_t *l)
{
	while (__atomic_exchange_n(&l->v, 1, __ATOMIC_ACQUIRE))
		while (l->v)
			cpu_relax();
}
static inline bool spin_trylock(spinlock_t *l) { return __atomic_exchange_n(&l->v, 1, __ATOMIC_ACQUIRE) == 0; }
static inline void spin_unlock(spinlock_t *l) { __atomic_store_n(&l->v, 0, __ATOMIC_RELEASE); }

/* ---- command line ---- */
extern char rt_cmdline[]; /* copy of the command line (NUL-terminated) */
/* Value of the first `key=value` token, NUL-terminated copy into buf; true if present. */
bool arg_str(const char *key, char *buf, size_t bufsz);
/* Iterate all values of `key=`: pass *pos = 0 first; returns false at the end. */
bool arg_next(const char *key, size_t *pos, char *buf, size_t bufsz);
/* Number with optional 0x prefix and K/M/G/T suffix (binary). */
u64 arg_u64(const char *key, u64 def);
bool arg_flag(const char *name); /* bare token present (or name=1/yes/on) */
/* Parse a number with size suffix; returns false on junk. *end set to first unparsed char. */
bool parse_u64(const char *s, u64 *out, const char **end);
bool parse_ipv4(const char *s, u32 *out);

/* ---- memory map / allocation ---- */
struct mem_range { u64 start, end; }; /* [start, end) */
extern struct hvm_start_info *rt_start_info;
extern struct hvm_memmap_table_entry rt_memmap[];
extern u32 rt_memmap_count;
extern bool rt_memmap_from_boot; /* false: fabricated (no memmap in start info) */
/* Bump allocator for page-granular memory after the image (page aligned, not zeroed).
 * Returns 0 if there is no room. */
u64 rt_alloc(u64 size, u64 align);
/* Free RAM (>= 1 MiB, not used by image/allocations/boot structures), sorted. */
u32 rt_free_ranges(struct mem_range *out, u32 max);
/* Total RAM in the memmap. */
u64 rt_ram_total(void);
u64 rt_low_page(void);

/* ---- SMP ---- */
extern u32 rt_ncpus_boot;    /* set by smp_detect() */
u32 smp_detect(u8 *apic_ids, u32 max, const char **source);
/* Start application processor `cpu` (index >= 1; stacks and TSS allocated here) with
 * LAPIC id `apic_id` by INIT-SIPI-SIPI. The AP prints "CPU <cpu> up" in ring 3 and then
 * runs fn(cpu) there. Returns once the AP printed that line, false after timeout_ms. */
bool smp_start_ap(u32 cpu, u8 apic_id, void (*fn)(u32 cpu), u64 timeout_ms);
u32 lapic_id(void);
void delay_cycles(u64 cycles);
u64 tsc_khz(void); /* cached; first call calibrates (~10 ms) */

/* ---- program hooks ---- */
int main(void);

/* ---- ring-0 side (boot.c) ---- */
extern volatile u64 pvh_start_info;
extern int rt_use_1g_pages;
#endif
