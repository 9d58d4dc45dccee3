/*
 * netecho.elf — virtio-net responder (ring 3, polled).
 *   virtio_mmio.device=... | probe   where the device is
 *   ip=A.B.C.D     our IPv4 address (default 10.0.2.15)
 *   port=N         UDP echo port (default 7)
 *   mac=xx:..      MAC if the device offers none (default 52:54:00:12:34:56)
 *   count=N        after N UDP echoes print "PASS echoed=N" and exit 0
 *   quiet          no per-packet lines
 * Output: "NET UP <ip> <mac>", then per packet "ARP reply to=<ip>",
 *         "ICMP echo from=<ip> id=<id> seq=<seq>", "UDP echo from=<ip>:<port> len=<n>".
 * Sends one gratuitous ARP at start.
 */
#include "rt.h"
#include "virtio.h"

#define VIRTIO_NET_F_MAC 5
#define NET_HDR_LEN 12 /* virtio_net_hdr with num_buffers (VERSION_1) */
#define RXQ 0
#define TXQ 1
#define NBUF 64
#define BUFSZ 2048

static struct virtio_dev dev;
static struct virtq rxq, txq;
static u64 rxbuf, txbuf;
static u8 mac[6];
static u32 myip;
static u16 port;
static bool quiet;
static u32 tx_next;

static u16 be16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }
static u32 be32(const u8 *p) { return (u32)p[0] << 24 | (u32)p[1] << 16 | (u32)p[2] << 8 | p[3]; }
static void put16(u8 *p, u16 v) { p[0] = v >> 8; p[1] = (u8)v; }
static void put32(u8 *p, u32 v) { p[0] = v >> 24; p[1] = (u8)(v >> 16); p[2] = (u8)(v >> 8); p[3] = (u8)v; }

static u32 csum_add(u32 sum, const u8 *p, u32 len)
{
	for (u32 i = 0; i + 1 < len; i += 2)
		sum += be16(p + i);
	if (len & 1)
		sum += (u32)p[len - 1] << 8;
	return sum;
}
static u16 csum_fold(u32 sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (u16)~sum;
}

static void fmt_ip(char *b, u32 ip)
{
	snprintf(b, 16, "%u.%u.%u.%u", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255);
}

static void post_rx(u32 i)
{
	struct vbuf b = { rxbuf + (u64)i * BUFSZ, BUFSZ, true };
	if (virtq_submit(&rxq, &b, 1, false) < 0)
		fail("rx queue full");
}

static void reap_tx(void)
{
	while (virtq_poll(&txq, NULL, NULL, 0))
		;
}

/* frame: ethernet frame of len bytes to send (copied) */
static void send_frame(const u8 *frame, u32 len)
{
	reap_tx();
	for (u64 t0 = rdtsc(); txq.num_free == 0; reap_tx())
		if (rdtsc() - t0 > 5000 * tsc_khz())
			fail("tx queue stuck");
	u8 *b = (u8 *)(txbuf + (u64)(tx_next++ % NBUF) * BUFSZ);
	memset(b, 0, NET_HDR_LEN);
	if (len < 60) { /* pad to the Ethernet minimum */
		memset(b + NET_HDR_LEN + len, 0, 60 - len);
		len = 60;
	}
	memcpy(b + NET_HDR_LEN, frame, len);
	struct vbuf v = { (u64)b, NET_HDR_LEN + len, false };
	if (virtq_submit(&txq, &v, 1, true) < 0)
		fail("tx submit");
}

static void send_arp(u16 op, const u8 *tha, u32 tip, const u8 *dst)
{
	u8 f[42];
	memcpy(f, dst, 6);
	memcpy(f + 6, mac, 6);
	put16(f + 12, 0x0806);
	put16(f + 14, 1);      /* htype ethernet */
	put16(f + 16, 0x0800); /* ptype ipv4 */
	f[18] = 6;
	f[19] = 4;
	put16(f + 20, op);
	memcpy(f + 22, mac, 6);
	put32(f + 28, myip);
	memcpy(f + 32, tha, 6);
	put32(f + 38, tip);
	send_frame(f, sizeof(f));
}

static u64 echoed;

static void handle(u8 *f, u32 len)
{
	char ipb[16];
	if (len < 14)
		return;
	u16 type = be16(f + 12);
	if (type == 0x0806 && len >= 42) {
		if (be16(f + 20) == 1 && be32(f + 38) == myip) {
			u32 sip = be32(f + 28);
			u8 sha[6];
			memcpy(sha, f + 22, 6);
			send_arp(2, sha, sip, sha);
			if (!quiet) {
				fmt_ip(ipb, sip);
				printf("ARP reply to=%s\n", ipb);
			}
		}
		return;
	}
	if (type != 0x0800 || len < 34)
		return;
	u8 *ip = f + 14;
	u32 ihl = (ip[0] & 15) * 4, tot = be16(ip + 2);
	if ((ip[0] >> 4) != 4 || ihl < 20 || tot < ihl || 14 + tot > len || be32(ip + 16) != myip)
		return;
	if (be16(ip + 6) & 0x3fff) /* fragments: not handled */
		return;
	u32 src = be32(ip + 12);
	u8 *l4 = ip + ihl;
	u32 l4len = tot - ihl;
	bool reply = false;
	if (ip[9] == 1 && l4len >= 8 && l4[0] == 8) { /* ICMP echo request */
		l4[0] = 0;
		put16(l4 + 2, 0);
		put16(l4 + 2, csum_fold(csum_add(0, l4, l4len)));
		reply = true;
		if (!quiet) {
			fmt_ip(ipb, src);
			printf("ICMP echo from=%s id=%u seq=%u\n", ipb, be16(l4 + 4), be16(l4 + 6));
		}
	} else if (ip[9] == 17 && l4len >= 8 && be16(l4 + 2) == port) {
		u16 sport = be16(l4), ulen = be16(l4 + 4);
		if (ulen < 8 || ulen > l4len)
			return;
		put16(l4, port);
		put16(l4 + 2, sport);
		put16(l4 + 6, 0);
		u32 s = csum_add(0, l4, ulen);
		s += (myip >> 16) + (myip & 0xffff) + (src >> 16) + (src & 0xffff) + 17 + ulen;
		u16 c = csum_fold(s);
		put16(l4 + 6, c ? c : 0xffff);
		reply = true;
		echoed++;
		if (!quiet) {
			fmt_ip(ipb, src);
			printf("UDP echo from=%s:%u len=%u\n", ipb, sport, ulen - 8);
		}
	}
	if (!reply)
		return;
	/* swap addresses, fresh TTL, header checksum */
	put32(ip + 12, myip);
	put32(ip + 16, src);
	ip[8] = 64;
	put16(ip + 10, 0);
	put16(ip + 10, csum_fold(csum_add(0, ip, ihl)));
	u8 tmp[6];
	memcpy(tmp, f, 6);
	memcpy(f, f + 6, 6);
	memcpy(f + 6, tmp, 6);
	memcpy(f + 6, mac, 6);
	send_frame(f, 14 + tot);
}

static bool parse_mac(const char *s, u8 *m)
{
	for (int i = 0; i < 6; i++) {
		u32 v = 0;
		for (int k = 0; k < 2; k++, s++) {
			char c = *s;
			int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
			if (d < 0)
				return false;
			v = v * 16 + (u32)d;
		}
		m[i] = (u8)v;
		if (i < 5 && *s++ != ':')
			return false;
	}
	return *s == 0;
}

int main(void)
{
	char tmp[64];
	if (!arg_str("ip", tmp, sizeof(tmp)))
		memcpy(tmp, "10.0.2.15", 10);
	if (!parse_ipv4(tmp, &myip))
		fail_config("bad ip=%s", tmp);
	port = (u16)arg_u64("port", 7);
	quiet = arg_flag("quiet");
	u64 count = arg_u64("count", 0);
	virtio_find_or_fail(VIRTIO_ID_NET, &dev);
	u64 offered;
	if (!virtio_init(&dev, 1UL << VIRTIO_NET_F_MAC, &offered))
		fail("virtio-net feature negotiation failed (offered 0x%lx)", offered);
	if (dev.features & (1UL << VIRTIO_NET_F_MAC)) {
		for (int i = 0; i < 6; i++)
			mac[i] = vm_cfg8(&dev, i);
	} else {
		if (!arg_str("mac", tmp, sizeof(tmp)))
			memcpy(tmp, "52:54:00:12:34:56", 18);
		if (!parse_mac(tmp, mac))
			fail_config("bad mac=%s", tmp);
	}
	if (!virtq_setup(&dev, &rxq, RXQ, NBUF) || !virtq_setup(&dev, &txq, TXQ, NBUF))
		fail("virtio-net queue setup failed");
	rxbuf = rt_alloc(NBUF * BUFSZ, PAGE_SIZE);
	txbuf = rt_alloc(NBUF * BUFSZ, PAGE_SIZE);
	if (!rxbuf || !txbuf)
		fail_config("no memory for buffers");
	for (u32 i = 0; i < rxq.num; i++)
		post_rx(i);
	virtio_driver_ok(&dev);
	virtq_notify(&rxq);
	char ipb[16];
	fmt_ip(ipb, myip);
	printf("NET UP %s %02x:%02x:%02x:%02x:%02x:%02x\n", ipb, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
	static const u8 bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	static const u8 zero[6];
	send_arp(1, zero, myip, bcast); /* gratuitous ARP */
	for (;;) {
		u32 id, len;
		if (!virtq_poll(&rxq, &id, &len, 0)) {
			reap_tx();
			cpu_relax();
			continue;
		}
		if (id < rxq.num && len > NET_HDR_LEN && len <= BUFSZ)
			handle((u8 *)(rxbuf + (u64)id * BUFSZ + NET_HDR_LEN), len - NET_HDR_LEN);
		post_rx(id);
		virtq_notify(&rxq);
		if (count && echoed >= count) {
			reap_tx();
			/* let the last reply leave before exiting */
			for (u64 t0 = rdtsc(); txq.num_free != txq.num && rdtsc() - t0 < 1000 * tsc_khz(); reap_tx())
				cpu_relax();
			printf("PASS echoed=%lu\n", echoed);
			return EXIT_PASS;
		}
	}
}
