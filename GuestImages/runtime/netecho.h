/*
 * The netecho responder (netecho.elf, soak.elf): a polled virtio-net driver in ring 3 that
 * answers ARP requests for our address, ICMP echo requests to it and UDP datagrams to the echo
 * port (README.md, "netecho.elf"). Call net_echo_args(), net_echo_start(), then net_echo_poll()
 * from the program's loop.
 */
#ifndef NETECHO_H
#define NETECHO_H
#include "rt.h"
#include "virtio.h"

#define VIRTIO_NET_F_MAC 5
#define NET_HDR_LEN 12 /* virtio_net_hdr with num_buffers (VERSION_1) */
#define NET_RXQ 0
#define NET_TXQ 1
#define NET_NBUF 64
#define NET_BUFSZ 2048

static struct virtio_dev net_dev;
static struct virtq net_rxq, net_txq;
static u64 net_rxbuf, net_txbuf;
static u8 net_mac[6];
static u32 net_ip;
static u16 net_port;
static bool net_quiet;
static u32 net_tx_next;
static u64 net_echoed; /* UDP datagrams echoed */
static u64 net_pings;  /* ICMP echo requests answered */

static u16 net_be16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }
static u32 net_be32(const u8 *p) { return (u32)p[0] << 24 | (u32)p[1] << 16 | (u32)p[2] << 8 | p[3]; }
static void net_put16(u8 *p, u16 v) { p[0] = v >> 8; p[1] = (u8)v; }
static void net_put32(u8 *p, u32 v) { p[0] = v >> 24; p[1] = (u8)(v >> 16); p[2] = (u8)(v >> 8); p[3] = (u8)v; }

static u32 net_csum_add(u32 sum, const u8 *p, u32 len)
{
	for (u32 i = 0; i + 1 < len; i += 2)
		sum += net_be16(p + i);
	if (len & 1)
		sum += (u32)p[len - 1] << 8;
	return sum;
}
static u16 net_csum_fold(u32 sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (u16)~sum;
}

static void net_fmt_ip(char *b, u32 ip)
{
	snprintf(b, 16, "%u.%u.%u.%u", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255);
}

static void net_post_rx(u32 i)
{
	struct vbuf b = { net_rxbuf + (u64)i * NET_BUFSZ, NET_BUFSZ, true };
	if (virtq_submit(&net_rxq, &b, 1, false) < 0)
		fail("rx queue full");
}

static void net_reap_tx(void)
{
	while (virtq_poll(&net_txq, NULL, NULL, 0))
		;
}

/* frame: ethernet frame of len bytes to send (copied) */
static void net_send_frame(const u8 *frame, u32 len)
{
	net_reap_tx();
	for (u64 t0 = rdtsc(); net_txq.num_free == 0; net_reap_tx())
		if (rdtsc() - t0 > 5000 * tsc_khz())
			fail("tx queue stuck");
	u8 *b = (u8 *)(net_txbuf + (u64)(net_tx_next++ % NET_NBUF) * NET_BUFSZ);
	memset(b, 0, NET_HDR_LEN);
	if (len < 60) { /* pad to the Ethernet minimum */
		memset(b + NET_HDR_LEN + len, 0, 60 - len);
		len = 60;
	}
	memcpy(b + NET_HDR_LEN, frame, len);
	struct vbuf v = { (u64)b, NET_HDR_LEN + len, false };
	if (virtq_submit(&net_txq, &v, 1, true) < 0)
		fail("tx submit");
}

static void net_send_arp(u16 op, const u8 *tha, u32 tip, const u8 *dst)
{
	u8 f[42];
	memcpy(f, dst, 6);
	memcpy(f + 6, net_mac, 6);
	net_put16(f + 12, 0x0806);
	net_put16(f + 14, 1);      /* htype ethernet */
	net_put16(f + 16, 0x0800); /* ptype ipv4 */
	f[18] = 6;
	f[19] = 4;
	net_put16(f + 20, op);
	memcpy(f + 22, net_mac, 6);
	net_put32(f + 28, net_ip);
	memcpy(f + 32, tha, 6);
	net_put32(f + 38, tip);
	net_send_frame(f, sizeof(f));
}

static void net_handle_arp(u8 *f, u32 len)
{
	if (len < 42 || net_be16(f + 20) != 1 || net_be32(f + 38) != net_ip)
		return;
	u32 sip = net_be32(f + 28);
	u8 sha[6];
	memcpy(sha, f + 22, 6);
	net_send_arp(2, sha, sip, sha);
	if (!net_quiet) {
		char ipb[16];
		net_fmt_ip(ipb, sip);
		printf("ARP reply to=%s\n", ipb);
	}
}

/* Turns an ICMP echo request or a UDP datagram to our port into its answer in place; false
 * for anything else. */
static bool net_answer_l4(u8 proto, u8 *l4, u32 l4len, u32 src)
{
	char ipb[16];
	if (proto == 1 && l4len >= 8 && l4[0] == 8) { /* ICMP echo request */
		l4[0] = 0;
		net_put16(l4 + 2, 0);
		net_put16(l4 + 2, net_csum_fold(net_csum_add(0, l4, l4len)));
		net_pings++;
		if (!net_quiet) {
			net_fmt_ip(ipb, src);
			printf("ICMP echo from=%s id=%u seq=%u\n", ipb, net_be16(l4 + 4), net_be16(l4 + 6));
		}
		return true;
	}
	if (proto != 17 || l4len < 8 || net_be16(l4 + 2) != net_port)
		return false;
	u16 sport = net_be16(l4), ulen = net_be16(l4 + 4);
	if (ulen < 8 || ulen > l4len)
		return false;
	net_put16(l4, net_port);
	net_put16(l4 + 2, sport);
	net_put16(l4 + 6, 0);
	u32 s = net_csum_add(0, l4, ulen);
	s += (net_ip >> 16) + (net_ip & 0xffff) + (src >> 16) + (src & 0xffff) + 17 + ulen;
	u16 c = net_csum_fold(s);
	net_put16(l4 + 6, c ? c : 0xffff);
	net_echoed++;
	if (!net_quiet) {
		net_fmt_ip(ipb, src);
		printf("UDP echo from=%s:%u len=%u\n", ipb, sport, ulen - 8);
	}
	return true;
}

static void net_handle(u8 *f, u32 len)
{
	if (len < 14)
		return;
	u16 type = net_be16(f + 12);
	if (type == 0x0806) {
		net_handle_arp(f, len);
		return;
	}
	if (type != 0x0800 || len < 34)
		return;
	u8 *ip = f + 14;
	u32 ihl = (ip[0] & 15) * 4, tot = net_be16(ip + 2);
	if ((ip[0] >> 4) != 4 || ihl < 20 || tot < ihl || 14 + tot > len || net_be32(ip + 16) != net_ip)
		return;
	if (net_be16(ip + 6) & 0x3fff) /* fragments: not handled */
		return;
	u32 src = net_be32(ip + 12);
	if (!net_answer_l4(ip[9], ip + ihl, tot - ihl, src))
		return;
	/* swap addresses, fresh TTL, header checksum */
	net_put32(ip + 12, net_ip);
	net_put32(ip + 16, src);
	ip[8] = 64;
	net_put16(ip + 10, 0);
	net_put16(ip + 10, net_csum_fold(net_csum_add(0, ip, ihl)));
	memcpy(f, f + 6, 6);
	memcpy(f + 6, net_mac, 6);
	net_send_frame(f, 14 + tot);
}

static bool net_parse_mac(const char *s, u8 *m)
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

/* ip=, port=, quiet from the command line (mac= is read by net_echo_start). */
static void net_echo_args(void)
{
	char tmp[64];
	if (!arg_str("ip", tmp, sizeof(tmp)))
		memcpy(tmp, "10.0.2.15", 10);
	if (!parse_ipv4(tmp, &net_ip))
		fail_config("bad ip=%s", tmp);
	net_port = (u16)arg_u64("port", 7);
	net_quiet = arg_flag("quiet");
}

/* Finds and starts the device, posts the receive buffers, prints "NET UP <ip> <mac>" and sends
 * one gratuitous ARP. */
static void net_echo_start(void)
{
	char tmp[64];
	virtio_find_or_fail(VIRTIO_ID_NET, &net_dev);
	u64 offered;
	if (!virtio_init(&net_dev, 1UL << VIRTIO_NET_F_MAC, &offered))
		fail("virtio-net feature negotiation failed (offered 0x%lx)", offered);
	if (net_dev.features & (1UL << VIRTIO_NET_F_MAC)) {
		for (int i = 0; i < 6; i++)
			net_mac[i] = vm_cfg8(&net_dev, i);
	} else {
		if (!arg_str("mac", tmp, sizeof(tmp)))
			memcpy(tmp, "52:54:00:12:34:56", 18);
		if (!net_parse_mac(tmp, net_mac))
			fail_config("bad mac=%s", tmp);
	}
	if (!virtq_setup(&net_dev, &net_rxq, NET_RXQ, NET_NBUF) || !virtq_setup(&net_dev, &net_txq, NET_TXQ, NET_NBUF))
		fail("virtio-net queue setup failed");
	net_rxbuf = rt_alloc(NET_NBUF * NET_BUFSZ, PAGE_SIZE);
	net_txbuf = rt_alloc(NET_NBUF * NET_BUFSZ, PAGE_SIZE);
	if (!net_rxbuf || !net_txbuf)
		fail_config("no memory for buffers");
	for (u32 i = 0; i < net_rxq.num; i++)
		net_post_rx(i);
	virtio_driver_ok(&net_dev);
	virtq_notify(&net_rxq);
	net_fmt_ip(tmp, net_ip);
	printf("NET UP %s %02x:%02x:%02x:%02x:%02x:%02x\n", tmp, net_mac[0], net_mac[1], net_mac[2], net_mac[3],
	       net_mac[4], net_mac[5]);
	static const u8 bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	static const u8 zero[6];
	net_send_arp(1, zero, net_ip, bcast); /* gratuitous ARP */
}

/* Answers one received frame and gives its buffer back (true), or reaps finished transmissions
 * when nothing has arrived (false). */
static bool net_echo_poll(void)
{
	u32 id, len;
	if (!virtq_poll(&net_rxq, &id, &len, 0)) {
		net_reap_tx();
		return false;
	}
	if (id < net_rxq.num && len > NET_HDR_LEN && len <= NET_BUFSZ)
		net_handle((u8 *)(net_rxbuf + (u64)id * NET_BUFSZ + NET_HDR_LEN), len - NET_HDR_LEN);
	net_post_rx(id);
	virtq_notify(&net_rxq);
	return true;
}

/* Waits (at most a second) until every frame handed to the device has left. */
static void net_echo_drain_tx(void)
{
	net_reap_tx();
	for (u64 t0 = rdtsc(); net_txq.num_free != net_txq.num && rdtsc() - t0 < 1000 * tsc_khz(); net_reap_tx())
		cpu_relax();
}
#endif
