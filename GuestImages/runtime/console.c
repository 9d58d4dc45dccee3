/* 16550 UART at 0x3f8 (polled) and the debug-exit port 0xf4. Ring 3 (IOPL=3). */
#include "rt.h"

#define COM1 0x3f8
#define DEBUG_EXIT_PORT 0xf4

static spinlock_t console;
volatile int rt_console_at_bol = 1;

void serial_init(void)
{
	outb(COM1 + 1, 0x00); /* IER: no interrupts */
	outb(COM1 + 3, 0x03); /* LCR: 8N1, DLAB off */
	outb(COM1 + 4, 0x03); /* MCR: DTR, RTS (OUT2 off: no IRQ) */
}

static void putc_raw(char c)
{
	/* Wait for THR empty (LSR bit 5), bounded so a missing UART cannot hang us. */
	for (int i = 0; i < 100000 && !(inb(COM1 + 5) & 0x20); i++)
		cpu_relax();
	outb(COM1, (u8)c);
}

void serial_write(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		putc_raw(s[i]);
		rt_console_at_bol = s[i] == '\n';
	}
}

void console_lock(void) { spin_lock(&console); }
void console_unlock(void) { spin_unlock(&console); }

int printf(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 1)
		n = sizeof(buf) - 1;
	console_lock();
	serial_write(buf, n);
	console_unlock();
	return n;
}

NORETURN void rt_exit(int value)
{
	outl(DEBUG_EXIT_PORT, (u32)value);
	/* No debug-exit device? Try the i8042 reset line, then spin. */
	outb(0x64, 0xfe);
	for (;;)
		cpu_relax();
}

static NORETURN void vfail(int code, const char *fmt, va_list ap)
{
	char buf[400];
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	if (n > (int)sizeof(buf) - 1)
		n = sizeof(buf) - 1;
	/* Don't deadlock if the lock holder is gone: bounded wait. */
	bool locked = false;
	for (u64 i = 0; i < 100000000UL && !(locked = spin_trylock(&console)); i++)
		cpu_relax();
	if (!rt_console_at_bol)
		serial_write("\n", 1);
	serial_write("FAIL ", 5);
	serial_write(buf, n);
	serial_write("\n", 1);
	rt_exit(code);
	(void)locked;
}

NORETURN void fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfail(EXIT_FAIL, fmt, ap);
}

NORETURN void fail_config(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfail(EXIT_CONFIG, fmt, ap);
}
