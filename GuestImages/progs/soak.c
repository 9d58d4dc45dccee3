/*
 * soak.elf — the soak workload (Tools/soak): memtouch, a blktest-style writer and netecho at
 * once, on one CPU in ring 3, everything polled. Each turn of the loop checks a slice of the
 * memtouch region, answers what arrived on the network and moves the disk writer on.
 *   size=N          memtouch region (default 16M), in the first free RAM range it fits
 *   slice=N         pages checked per turn (default 256)
 *   blocks=N        the writer's blocks (default 64, from block 0); needs a virtio-blk disk
 *   write-ms=M      at least M ms between the starts of two writes (default 5; 0: back to back)
 *   flush-every=N   a FLUSH after every N-th write, before its SEQ line (default 8; 0: none)
 *   ip=, port=, mac=, quiet   as netecho.elf; needs a virtio-net device
 *   heartbeat-ms=M  "HEARTBEAT <n> pass=<p> seq=<s> pings=<i> echoed=<u>" every M ms (default 200)
 *   beats=N         stop after N heartbeats: "PASS beats=N" (default 0: run until stopped)
 * Lines: MEMTOUCH, BLK, NET UP (as the single programs), "SEQ <s>" once write s (to block
 * s mod blocks, blktest's block format) and its FLUSH are acknowledged, HEARTBEAT, PASS, FAIL.
 */
#include "rt.h"
#include "memtouch.h"
#include "netecho.h"
#include "virtio_blk.h"

#define BLK_TIMEOUT_MS 30000

enum writer_state { W_IDLE, W_WRITE, W_FLUSH };

static struct virtio_dev blk_dev;
static struct virtq blk_vq;
static struct virtio_blk_req_hdr *blk_hdr;
static volatile u8 *blk_status;
static u64 blk_buf, blk_blocks, blk_flush_every, blk_gap, blk_started, blk_seq = 1;
static bool blk_has_flush;
static enum writer_state blk_state = W_IDLE;

static void blk_start(void)
{
	virtio_find_or_fail(VIRTIO_ID_BLOCK, &blk_dev);
	u64 offered;
	if (!virtio_init(&blk_dev, 1UL << VIRTIO_BLK_F_FLUSH, &offered))
		fail("virtio-blk feature negotiation failed (offered 0x%lx)", offered);
	if (!virtq_setup(&blk_dev, &blk_vq, 0, 16))
		fail("virtio-blk queue 0 setup failed");
	virtio_driver_ok(&blk_dev);
	u64 cap = vm_cfg64(&blk_dev, 0);
	blk_has_flush = blk_dev.features & (1UL << VIRTIO_BLK_F_FLUSH);
	blk_blocks = arg_u64("blocks", 64);
	blk_flush_every = arg_u64("flush-every", 8);
	blk_gap = arg_u64("write-ms", 5) * tsc_khz();
	if (blk_blocks == 0 || blk_blocks > cap / 8)
		fail_config("blocks=%lu but the disk has %lu", blk_blocks, cap / 8);
	blk_hdr = (void *)rt_alloc(PAGE_SIZE, PAGE_SIZE);
	blk_buf = rt_alloc(PAGE_SIZE, PAGE_SIZE);
	if (!blk_hdr || !blk_buf)
		fail_config("no memory for buffers");
	blk_status = (volatile u8 *)blk_hdr + 64;
	printf("BLK capacity=%lu flush=%d bs=4096 blocks=%lu features=0x%lx\n", cap, blk_has_flush, blk_blocks,
	       blk_dev.features);
}

/* Posts one request: a write of blk_buf to block b, or a FLUSH (b ignored). */
static void blk_submit(u32 type, u64 b)
{
	blk_hdr->type = type;
	blk_hdr->reserved = 0;
	blk_hdr->sector = type == VIRTIO_BLK_T_OUT ? b * 8 : 0;
	*blk_status = 0xff;
	struct vbuf v[3];
	u32 n = 0;
	v[n++] = (struct vbuf){ (u64)blk_hdr, sizeof(*blk_hdr), false };
	if (type == VIRTIO_BLK_T_OUT)
		v[n++] = (struct vbuf){ blk_buf, PAGE_SIZE, false };
	v[n++] = (struct vbuf){ (u64)blk_status, 1, true };
	if (virtq_submit(&blk_vq, v, n, true) < 0)
		fail("virtio-blk queue full");
}

/* One step of the writer: start the next write when it is due, or take the completion of the
 * request in flight. A write counts (SEQ line) once it and its FLUSH are done. */
static void blk_step(void)
{
	u64 now = rdtsc();
	if (blk_state == W_IDLE) {
		if (now - blk_started < blk_gap)
			return;
		blk_started = now;
		tb_fill((void *)blk_buf, blk_seq % blk_blocks, blk_seq, PAGE_SIZE);
		blk_submit(VIRTIO_BLK_T_OUT, blk_seq % blk_blocks);
		blk_state = W_WRITE;
		return;
	}
	if (!virtq_poll(&blk_vq, NULL, NULL, 0)) {
		if (now - blk_started > BLK_TIMEOUT_MS * tsc_khz())
			fail("virtio-blk request (seq=%lu) timed out", blk_seq);
		return;
	}
	u8 s = *blk_status;
	if (s != VIRTIO_BLK_S_OK)
		fail("%s block=%lu seq=%lu status=%u", blk_state == W_WRITE ? "write" : "flush", blk_seq % blk_blocks,
		     blk_seq, s);
	if (blk_state == W_WRITE && blk_has_flush && blk_flush_every && blk_seq % blk_flush_every == 0) {
		blk_submit(VIRTIO_BLK_T_FLUSH, 0);
		blk_state = W_FLUSH;
		return;
	}
	printf("SEQ %lu\n", blk_seq);
	blk_seq++;
	blk_state = W_IDLE;
}

/* The memtouch region: `size` bytes in the first free RAM range that holds them. */
static void region(u64 size, u64 *base)
{
	struct mem_range r[64];
	u32 n = rt_free_ranges(r, ARRAY_SIZE(r));
	for (u32 i = 0; i < n; i++)
		if (r[i].end - r[i].start >= size) {
			*base = r[i].start;
			return;
		}
	fail_config("size=0x%lx does not fit in free RAM", size);
}

int main(void)
{
	u64 size = ALIGN_UP(arg_u64("size", 16UL << 20), PAGE_SIZE);
	u64 slice = arg_u64("slice", 256), beats = arg_u64("beats", 0);
	u64 hb = arg_u64("heartbeat-ms", 200) * tsc_khz();
	if (size == 0 || slice == 0 || hb == 0)
		fail_config("size=, slice= and heartbeat-ms= must not be 0");
	net_echo_args();
	net_echo_start();
	blk_start();
	u64 base; /* after every allocation, so that none lands in the region */
	region(size, &base);
	static struct memtouch m;
	memtouch_init(&m, base, size / PAGE_SIZE);
	printf("MEMTOUCH start=0x%lx pages=%lu\n", base, m.pages);
	u64 beat = 0;
	for (u64 last = rdtsc();;) {
		memtouch_step(&m, slice);
		while (net_echo_poll())
			;
		blk_step();
		if (rdtsc() - last < hb)
			continue;
		last = rdtsc();
		printf("HEARTBEAT %lu pass=%lu seq=%lu pings=%lu echoed=%lu\n", ++beat, m.pass, blk_seq - 1, net_pings,
		       net_echoed);
		if (beats && beat >= beats)
			break;
	}
	while (blk_state != W_IDLE)
		blk_step();
	net_echo_drain_tx();
	printf("PASS beats=%lu\n", beats);
	return EXIT_PASS;
}
