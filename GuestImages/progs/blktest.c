/*
 * blktest.elf — virtio-blk test (see README.md for the block format).
 *   virtio_mmio.device=<size>@<base>:<irq> | probe     where the device is
 *   bs=4096|512   test block size (default 4096)
 *   blocks=N      blocks to test (default: capacity, at most 16384)
 *   seq=N         sequence number written into the blocks (default 1)
 *   chunk=N       blocks per request (default 32)
 *   verify-only   skip the write phase: read back and check blocks with seq=
 *   loop          write block (s mod blocks) with seq s = seq, seq+1, ...; print "SEQ s"
 *                 after the device acknowledged it; count=N stops after N writes
 *                 ("PASS seq=<last>"); flush-every=N sends a FLUSH every N writes
 *   readonly-check  expect a write to fail with VIRTIO_BLK_S_IOERR -> "PASS readonly"
 *   bench=seqwrite|randread   benchmark (README.md "Benchmark mode"): bs= is then the request
 *                 size, size=/count=/depth=/seed= as documented there; prints
 *                 "BENCH <name> bytes=<n> ops=<n> ns=<n>" and "PASS bench"
 */
#include "rt.h"
#include "virtio_blk.h"

static struct virtio_dev dev;
static struct virtq vq;
static struct virtio_blk_req_hdr *hdr;
static volatile u8 *status;
#define TIMEOUT_MS 30000

static u8 blk_rw(u32 type, u64 sector, u64 buf, u32 len)
{
	hdr->type = type;
	hdr->reserved = 0;
	hdr->sector = sector;
	*status = 0xff;
	struct vbuf b[3];
	u32 n = 0;
	b[n++] = (struct vbuf){ (u64)hdr, sizeof(*hdr), false };
	if (len)
		b[n++] = (struct vbuf){ buf, len, type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID };
	b[n++] = (struct vbuf){ (u64)status, 1, true };
	if (!virtq_call(&vq, b, n, NULL, TIMEOUT_MS))
		fail("virtio-blk request type=%u sector=%lu timed out", type, sector);
	return *status;
}

/* ---------------------------------------------------------------------------------------
 * Benchmark mode (bench=seqwrite|randread). Several requests in flight (depth=), each a
 * chain header + data segments (at most size_max bytes each) + status byte; completions
 * are polled, notifications batched (and skipped while the device says VRING_USED_F_NO_NOTIFY),
 * interrupts suppressed (VRING_AVAIL_F_NO_INTERRUPT: we never take them). Time: TSC.
 */
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY 1
#define BENCH_MAX_DEPTH 64
#define BENCH_SLOT_STRIDE 32 /* header (16 bytes) + status byte per slot */

struct bench_slot {
	struct virtio_blk_req_hdr *hdr;
	volatile u8 *status;
	u64 buf;
	u64 sector;
};

static struct bench_slot slots[BENCH_MAX_DEPTH];
static u16 slot_of_head[1024];

static u64 xorshift64(u64 *s)
{
	u64 x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x * 0x2545F4914F6CDD1DUL;
}

/* TSC cycles -> ns without 128-bit arithmetic (no libgcc here). */
static u64 cycles_to_ns(u64 cycles, u64 khz)
{
	return cycles / khz * 1000000UL + (cycles % khz) * 1000000UL / khz;
}

static void bench_submit(struct bench_slot *sl, u32 slot, u32 type, u64 sector, u32 len, u64 seg_bytes)
{
	static struct vbuf b[2 + 256];
	u32 n = 0;
	sl->hdr->type = type;
	sl->hdr->reserved = 0;
	sl->hdr->sector = sector;
	sl->sector = sector;
	*sl->status = 0xff;
	b[n++] = (struct vbuf){ (u64)sl->hdr, sizeof(*sl->hdr), false };
	for (u64 off = 0; off < len; off += seg_bytes) {
		u64 l = len - off < seg_bytes ? len - off : seg_bytes;
		b[n++] = (struct vbuf){ sl->buf + off, (u32)l, type == VIRTIO_BLK_T_IN };
	}
	b[n++] = (struct vbuf){ (u64)sl->status, 1, true };
	int head = virtq_submit(&vq, b, n, false);
	if (head < 0)
		fail("bench: no room in the queue for %u descriptors (free %u)", n, vq.num_free);
	slot_of_head[head] = (u16)slot;
}

static void bench_kick(void)
{
	mb(); /* publish avail->idx before reading the device's used->flags */
	if (!(vq.used->flags & VRING_USED_F_NO_NOTIFY))
		vm_write(vq.dev, VMMIO_QUEUE_NOTIFY, vq.index);
}

static int bench(const char *name, u64 cap, bool has_flush, u64 size_max, u64 seg_max)
{
	bool seqwrite = !strcmp(name, "seqwrite");
	if (!seqwrite && strcmp(name, "randread"))
		fail_config("bench=%s: expected seqwrite or randread", name);
	u64 cap_bytes = cap * 512;
	u64 req_bs = arg_u64("bs", seqwrite ? 1UL << 20 : 4096);
	if (req_bs == 0 || req_bs % 512 || req_bs > 0x80000000UL)
		fail_config("bench bs=%lu: must be a non-zero multiple of 512 (at most 2G)", req_bs);
	u64 depth = arg_u64("depth", 8), req_depth = depth;
	if (depth == 0)
		fail_config("bench depth=0");
	if (depth > BENCH_MAX_DEPTH)
		depth = BENCH_MAX_DEPTH;

	/* Data segments: each at most size_max bytes (when offered); at most seg_max of them
	 * (when offered) and at most queue size - 2 (header and status take one each). */
	u64 seg_bytes = size_max ? ALIGN_DOWN(size_max, 512) : req_bs;
	if (seg_bytes == 0)
		seg_bytes = size_max; /* size_max < 512: odd, but honour it */
	u64 max_segs = vq.num - 2;
	if (seg_max && seg_max < max_segs)
		max_segs = seg_max;
	if (max_segs > 256)
		max_segs = 256; /* bench_submit's vbuf array */
	u64 bs = req_bs;
	if (bs > max_segs * seg_bytes)
		bs = ALIGN_DOWN(max_segs * seg_bytes, 512); /* the largest request the device accepts */
	if (bs == 0)
		fail_config("bench: the device accepts no request of 512 bytes (size_max=%lu seg_max=%lu)", size_max,
			    seg_max);
	u64 segs = (bs + seg_bytes - 1) / seg_bytes;
	if (depth > vq.num / (segs + 2))
		depth = vq.num / (segs + 2);

	u64 size, ops;
	if (seqwrite) {
		size = arg_u64("size", cap_bytes < (64UL << 20) ? cap_bytes : 64UL << 20);
		if (size == 0 || size % 512 || size > cap_bytes)
			fail_config("bench size=%lu: must be a non-zero multiple of 512 and at most the disk (%lu bytes)",
				    size, cap_bytes);
		ops = (size + bs - 1) / bs;
	} else {
		u64 def = cap_bytes < (1UL << 30) ? cap_bytes : 1UL << 30;
		size = arg_u64("size", def);
		if (size > cap_bytes)
			fail_config("bench size=%lu: larger than the disk (%lu bytes)", size, cap_bytes);
		if (size < bs)
			fail_config("bench size=%lu: smaller than one request (bs=%lu)", size, bs);
		ops = arg_u64("count", 20000);
		if (ops == 0)
			fail_config("bench count=0");
	}
	u64 seed = arg_u64("seed", 1);
	if (seed == 0)
		seed = 1;

	printf("BLKBENCH bench=%s bs=%lu requested-bs=%lu segs=%lu seg-bytes=%lu depth=%lu requested-depth=%lu "
	       "size=%lu ops=%lu capacity=%lu size_max=%lu seg_max=%lu queue=%u flush=%d\n",
	       name, bs, req_bs, segs, seg_bytes, depth, req_depth, size, ops, cap, size_max, seg_max, vq.num,
	       seqwrite && has_flush);
	if (bs != req_bs)
		printf("BLKBENCH note: bs=%lu is more than the device accepts in one request (size_max=%lu x "
		       "seg_max=%lu, queue %u); using bs=%lu\n",
		       req_bs, size_max, seg_max, vq.num, bs);

	/* Slots: headers and status bytes in one page, one buffer of bs bytes each. */
	u64 meta = rt_alloc(PAGE_SIZE, PAGE_SIZE);
	u64 bufs = rt_alloc(depth * bs, PAGE_SIZE);
	if (!meta || !bufs)
		fail_config("no memory for %lu bench buffers of %lu bytes", depth, bs);
	u64 pat = 0x9E3779B97F4A7C15UL;
	for (u32 i = 0; i < depth; i++) {
		slots[i].hdr = (void *)(meta + i * BENCH_SLOT_STRIDE);
		slots[i].status = (volatile u8 *)(meta + i * BENCH_SLOT_STRIDE + 16);
		slots[i].buf = bufs + i * bs;
		/* touch every page before the clock starts; writes carry incompressible data */
		u64 *w = (u64 *)slots[i].buf;
		for (u64 k = 0; k < bs / 8; k++)
			w[k] = seqwrite ? xorshift64(&pat) : 0;
	}
	memset(slot_of_head, 0xff, sizeof(slot_of_head));
	vq.avail->flags = VRING_AVAIL_F_NO_INTERRUPT; /* we poll; never interrupt us */

	u64 khz = tsc_khz(); /* calibrated (and cached) before the clock starts */
	u32 type = seqwrite ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN;
	u64 nblocks = size / bs; /* randread: bs-aligned offsets in [0, size) */
	u32 free_slots[BENCH_MAX_DEPTH], nfree = 0;
	for (u32 i = 0; i < depth; i++)
		free_slots[nfree++] = (u32)(depth - 1 - i);
	u64 submitted = 0, completed = 0, bytes = 0;

	u64 t0 = rdtsc();
	while (completed < ops) {
		bool any = false;
		while (nfree && submitted < ops) {
			u32 s = free_slots[--nfree];
			u64 off, len;
			if (seqwrite) {
				off = submitted * bs;
				len = size - off < bs ? size - off : bs;
			} else {
				off = xorshift64(&seed) % nblocks * bs;
				len = bs;
			}
			bench_submit(&slots[s], s, type, off / 512, (u32)len, seg_bytes);
			bytes += len;
			submitted++;
			any = true;
		}
		if (any)
			bench_kick();
		/* wait for one completion, then take whatever else is already there */
		u32 id, len;
		u64 wait = TIMEOUT_MS;
		while (virtq_poll(&vq, &id, &len, wait)) {
			wait = 0;
			if (id >= vq.num || slot_of_head[id] >= depth)
				fail("bench %s: device returned unknown head %u", name, id);
			u32 s = slot_of_head[id];
			slot_of_head[id] = 0xffff;
			u8 st = *slots[s].status;
			if (st != VIRTIO_BLK_S_OK)
				fail("bench %s: %s sector=%lu status=%u", name, seqwrite ? "write" : "read", slots[s].sector,
				     st);
			free_slots[nfree++] = s;
			completed++;
		}
		if (wait)
			fail("virtio-blk request (bench %s, %lu of %lu done) timed out", name, completed, ops);
	}
	if (seqwrite && has_flush) {
		u8 st = blk_rw(VIRTIO_BLK_T_FLUSH, 0, 0, 0);
		if (st != VIRTIO_BLK_S_OK)
			fail("bench %s: flush status=%u", name, st);
	}
	u64 t1 = rdtsc();

	printf("BENCH %s bytes=%lu ops=%lu ns=%lu\n", name, bytes, ops, cycles_to_ns(t1 - t0, khz));
	printf("PASS bench\n");
	return EXIT_PASS;
}

int main(void)
{
	virtio_find_or_fail(VIRTIO_ID_BLOCK, &dev);
	u64 offered;
	u64 want = (1UL << VIRTIO_BLK_F_RO) | (1UL << VIRTIO_BLK_F_BLK_SIZE) | (1UL << VIRTIO_BLK_F_FLUSH) |
		   (1UL << VIRTIO_BLK_F_SEG_MAX) | (1UL << VIRTIO_BLK_F_SIZE_MAX);
	if (!virtio_init(&dev, want, &offered))
		fail("virtio-blk feature negotiation failed (offered 0x%lx)", offered);
	char bench_name[16];
	bool benchmark = arg_str("bench", bench_name, sizeof(bench_name));
	if (!virtq_setup(&dev, &vq, 0, benchmark ? 256 : 128))
		fail("virtio-blk queue 0 setup failed");
	virtio_driver_ok(&dev);
	u64 cap = vm_cfg64(&dev, 0);
	bool ro = dev.features & (1UL << VIRTIO_BLK_F_RO);
	bool has_flush = dev.features & (1UL << VIRTIO_BLK_F_FLUSH);
	u64 size_max = (dev.features & (1UL << VIRTIO_BLK_F_SIZE_MAX)) ? vm_cfg32(&dev, 8) : 0;

	hdr = (void *)rt_alloc(PAGE_SIZE, PAGE_SIZE);
	status = (volatile u8 *)hdr + 64;
	if (!hdr)
		fail_config("no memory for buffers");
	if (benchmark) {
		u64 seg_max = (dev.features & (1UL << VIRTIO_BLK_F_SEG_MAX)) ? vm_cfg32(&dev, 12) : 0;
		return bench(bench_name, cap, has_flush, size_max, seg_max);
	}

	u32 bs = (u32)arg_u64("bs", 4096);
	if (bs != 512 && bs != 4096)
		fail_config("bs must be 512 or 4096");
	u64 spb = bs / 512; /* sectors per block */
	u64 disk_blocks = cap / spb;
	u64 blocks = arg_u64("blocks", disk_blocks < 16384 ? disk_blocks : 16384);
	u64 seq = arg_u64("seq", 1);
	u64 chunk = arg_u64("chunk", 32);
	if (chunk == 0)
		chunk = 1;
	if (size_max && chunk * bs > size_max)
		chunk = size_max / bs ? size_max / bs : 1;
	printf("BLK capacity=%lu ro=%d flush=%d bs=%u blocks=%lu features=0x%lx\n", cap, ro, has_flush, bs, blocks,
	       dev.features);

	u64 buf = rt_alloc(chunk * bs, PAGE_SIZE);
	if (!buf)
		fail_config("no memory for buffers");

	if (arg_flag("readonly-check")) {
		tb_fill((void *)buf, 0, seq, bs);
		u8 s = blk_rw(VIRTIO_BLK_T_OUT, 0, buf, bs);
		if (s == VIRTIO_BLK_S_IOERR) {
			printf("PASS readonly\n");
			return EXIT_PASS;
		}
		fail("readonly-check write status=%u (expected %u IOERR)", s, VIRTIO_BLK_S_IOERR);
	}
	if (blocks == 0 || blocks > disk_blocks)
		fail_config("blocks=%lu but the disk has %lu", blocks, disk_blocks);

	if (arg_flag("loop")) {
		u64 count = arg_u64("count", 0), flush_every = arg_u64("flush-every", 0);
		for (u64 i = 0; count == 0 || i < count; i++, seq++) {
			u64 b = seq % blocks;
			tb_fill((void *)buf, b, seq, bs);
			u8 s = blk_rw(VIRTIO_BLK_T_OUT, b * spb, buf, bs);
			if (s != VIRTIO_BLK_S_OK)
				fail("write block=%lu seq=%lu status=%u", b, seq, s);
			if (flush_every && has_flush && (i + 1) % flush_every == 0 &&
			    (s = blk_rw(VIRTIO_BLK_T_FLUSH, 0, 0, 0)) != VIRTIO_BLK_S_OK)
				fail("flush status=%u", s);
			printf("SEQ %lu\n", seq);
		}
		printf("PASS seq=%lu\n", seq - 1);
		return EXIT_PASS;
	}

	if (!arg_flag("verify-only")) {
		for (u64 b = 0; b < blocks; b += chunk) {
			u64 n = blocks - b < chunk ? blocks - b : chunk;
			for (u64 k = 0; k < n; k++)
				tb_fill((void *)(buf + k * bs), b + k, seq, bs);
			u8 s = blk_rw(VIRTIO_BLK_T_OUT, b * spb, buf, (u32)(n * bs));
			if (s != VIRTIO_BLK_S_OK)
				fail("write block=%lu status=%u", b, s);
		}
		if (has_flush) {
			u8 s = blk_rw(VIRTIO_BLK_T_FLUSH, 0, 0, 0);
			if (s != VIRTIO_BLK_S_OK)
				fail("flush status=%u", s);
		}
		/* scrub the buffer so a read that transfers nothing cannot pass */
		memset((void *)buf, 0xa5, chunk * bs);
	}
	for (u64 b = 0; b < blocks; b += chunk) {
		u64 n = blocks - b < chunk ? blocks - b : chunk;
		memset((void *)buf, 0xa5, n * bs);
		u8 s = blk_rw(VIRTIO_BLK_T_IN, b * spb, buf, (u32)(n * bs));
		if (s != VIRTIO_BLK_S_OK)
			fail("read block=%lu status=%u", b, s);
		for (u64 k = 0; k < n; k++) {
			u64 got;
			const char *why = tb_check((void *)(buf + k * bs), b + k, bs, &got);
			if (why)
				fail("block=%lu bad %s seq=%lu", b + k, why, got);
			if (got != seq)
				fail("block=%lu seq=%lu expected=%lu", b + k, got, seq);
		}
	}
	printf("PASS blocks=%lu\n", blocks);
	return EXIT_PASS;
}
