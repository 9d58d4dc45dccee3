/* Freestanding string functions and the printf formatter. */
#include "rt.h"

void *memset(void *d, int c, size_t n)
{
	void *r = d;
	__asm__ __volatile__("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return r;
}
void *memcpy(void *d, const void *s, size_t n)
{
	void *r = d;
	__asm__ __volatile__("rep movsb" : "+D"(d), "+S"(s), "+c"(n)::"memory");
	return r;
}
void *memmove(void *d, const void *s, size_t n)
{
	u8 *dd = d;
	const u8 *ss = s;
	if (dd == ss || n == 0)
		return d;
	if (dd < ss || dd >= ss + n)
		return memcpy(d, s, n);
	while (n--)
		dd[n] = ss[n];
	return d;
}
int memcmp(const void *a, const void *b, size_t n)
{
	const u8 *x = a, *y = b;
	for (size_t i = 0; i < n; i++)
		if (x[i] != y[i])
			return x[i] < y[i] ? -1 : 1;
	return 0;
}
size_t strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}
int strcmp(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return (u8)*a - (u8)*b;
}
int strncmp(const char *a, const char *b, size_t n)
{
	for (; n; n--, a++, b++) {
		if (*a != *b)
			return (u8)*a - (u8)*b;
		if (!*a)
			return 0;
	}
	return 0;
}

/* ---- formatter: %[-0][width][l|ll|z]{d,i,u,x,X,p,s,c,%} ---- */
struct out {
	char *buf;
	size_t size, len;
};
static void put(struct out *o, char c)
{
	if (o->len + 1 < o->size)
		o->buf[o->len] = c;
	o->len++;
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
	struct out o = { buf, size, 0 };
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			put(&o, *fmt);
			continue;
		}
		fmt++;
		bool left = false, zero = false;
		for (;; fmt++) {
			if (*fmt == '-')
				left = true;
			else if (*fmt == '0')
				zero = true;
			else
				break;
		}
		int width = 0;
		if (*fmt == '*') {
			width = va_arg(ap, int);
			fmt++;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		int lng = 0;
		while (*fmt == 'l' || *fmt == 'z') {
			lng++;
			fmt++;
		}
		char tmp[24];
		const char *s = tmp;
		int n = 0;
		bool neg = false;
		u64 v;
		switch (*fmt) {
		case 'd':
		case 'i': {
			i64 x = lng ? va_arg(ap, i64) : va_arg(ap, int);
			neg = x < 0;
			v = neg ? -(u64)x : (u64)x;
			goto num10;
		}
		case 'u':
			v = lng ? va_arg(ap, u64) : va_arg(ap, unsigned int);
		num10:
			do {
				tmp[sizeof(tmp) - 1 - n++] = '0' + v % 10;
				v /= 10;
			} while (v);
			s = tmp + sizeof(tmp) - n;
			break;
		case 'p':
			lng = 1;
			/* fall through */
		case 'x':
		case 'X': {
			const char *dig = *fmt == 'X' ? "0123456789ABCDEF" : "0123456789abcdef";
			v = lng ? va_arg(ap, u64) : va_arg(ap, unsigned int);
			do {
				tmp[sizeof(tmp) - 1 - n++] = dig[v & 15];
				v >>= 4;
			} while (v);
			s = tmp + sizeof(tmp) - n;
			break;
		}
		case 's':
			s = va_arg(ap, const char *);
			if (!s)
				s = "(null)";
			n = strlen(s);
			zero = false;
			break;
		case 'c':
			tmp[0] = (char)va_arg(ap, int);
			n = 1;
			zero = false;
			break;
		case '%':
			tmp[0] = '%';
			n = 1;
			break;
		case 0:
			fmt--;
			continue;
		default:
			tmp[0] = '%';
			tmp[1] = *fmt;
			n = 2;
			break;
		}
		int pad = width - n - (neg ? 1 : 0);
		if (!left && !zero)
			for (; pad > 0; pad--)
				put(&o, ' ');
		if (neg)
			put(&o, '-');
		if (!left && zero)
			for (; pad > 0; pad--)
				put(&o, '0');
		for (int i = 0; i < n; i++)
			put(&o, s[i]);
		if (left)
			for (; pad > 0; pad--)
				put(&o, ' ');
	}
	if (o.size)
		o.buf[o.len < o.size ? o.len : o.size - 1] = 0;
	return (int)o.len;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return n;
}
