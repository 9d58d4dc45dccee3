/* Command-line parsing: space-separated tokens, `key=value` or bare flags. */
#include "rt.h"

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* Find the next token at or after *pos; returns its start and sets *len. */
static const char *next_token(size_t *pos, size_t *len)
{
	const char *c = rt_cmdline;
	size_t p = *pos;
	while (c[p] && is_space(c[p]))
		p++;
	if (!c[p])
		return NULL;
	size_t s = p;
	while (c[p] && !is_space(c[p]))
		p++;
	*len = p - s;
	*pos = p;
	return c + s;
}

bool arg_next(const char *key, size_t *pos, char *buf, size_t bufsz)
{
	size_t klen = strlen(key), len;
	const char *t;
	while ((t = next_token(pos, &len))) {
		if (len > klen && t[klen] == '=' && !strncmp(t, key, klen)) {
			size_t vlen = len - klen - 1;
			if (bufsz) {
				if (vlen > bufsz - 1)
					vlen = bufsz - 1;
				memcpy(buf, t + klen + 1, vlen);
				buf[vlen] = 0;
			}
			return true;
		}
	}
	return false;
}

bool arg_str(const char *key, char *buf, size_t bufsz)
{
	size_t pos = 0;
	return arg_next(key, &pos, buf, bufsz);
}

bool arg_flag(const char *name)
{
	size_t pos = 0, len, nlen = strlen(name);
	const char *t;
	while ((t = next_token(&pos, &len)))
		if (len == nlen && !strncmp(t, name, nlen))
			return true;
	char v[16];
	if (arg_str(name, v, sizeof(v)))
		return !strcmp(v, "1") || !strcmp(v, "yes") || !strcmp(v, "on") || !strcmp(v, "true");
	return false;
}

bool parse_u64(const char *s, u64 *out, const char **end)
{
	u64 v = 0;
	int base = 10, digits = 0;
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
	}
	for (;; s++) {
		int d;
		if (*s >= '0' && *s <= '9')
			d = *s - '0';
		else if (base == 16 && *s >= 'a' && *s <= 'f')
			d = *s - 'a' + 10;
		else if (base == 16 && *s >= 'A' && *s <= 'F')
			d = *s - 'A' + 10;
		else
			break;
		v = v * base + d;
		digits++;
	}
	if (!digits)
		return false;
	switch (*s) {
	case 'k': case 'K': v <<= 10; s++; break;
	case 'm': case 'M': v <<= 20; s++; break;
	case 'g': case 'G': v <<= 30; s++; break;
	case 't': case 'T': v <<= 40; s++; break;
	}
	if (end)
		*end = s;
	*out = v;
	return true;
}

u64 arg_u64(const char *key, u64 def)
{
	char buf[64];
	if (!arg_str(key, buf, sizeof(buf)))
		return def;
	u64 v;
	const char *end;
	if (!parse_u64(buf, &v, &end) || *end)
		fail_config("bad value %s=%s", key, buf);
	return v;
}

bool parse_ipv4(const char *s, u32 *out)
{
	u32 ip = 0;
	for (int i = 0; i < 4; i++) {
		u64 v;
		const char *end;
		if (!parse_u64(s, &v, &end) || v > 255 || end == s)
			return false;
		ip = (ip << 8) | (u32)v;
		s = end;
		if (i < 3) {
			if (*s != '.')
				return false;
			s++;
		}
	}
	if (*s)
		return false;
	*out = ip;
	return true;
}
