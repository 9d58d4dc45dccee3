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

int main(void)
{
	virtio_find_or_fail(VIRTIO_ID_BLOCK, &dev);
	u64 offered;
	u64 want = (1UL << VIRTIO_BLK_F_RO) | (1UL << VIRTIO_BLK_F_BLK_SIZE) | (1UL << VIRTIO_BLK_F_FLUSH) |
		   (1UL << VIRTIO_BLK_F_SEG_MAX) | (1UL << VIRTIO_BLK_F_SIZE_MAX);
	if (!virtio_init(&dev, want, &offered))
		fail("virtio-blk feature negotiation failed (offered 0x%lx)", offered);
	if (!virtq_setup(&dev, &vq, 0, 128))
		fail("virtio-blk queue 0 setup failed");
	virtio_driver_ok(&dev);
	u64 cap = vm_cfg64(&dev, 0);
	bool ro = dev.features & (1UL << VIRTIO_BLK_F_RO);
	bool has_flush = dev.features & (1UL << VIRTIO_BLK_F_FLUSH);
	u64 size_max = (dev.features & (1UL << VIRTIO_BLK_F_SIZE_MAX)) ? vm_cfg32(&dev, 8) : 0;

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

	hdr = (void *)rt_alloc(PAGE_SIZE, PAGE_SIZE);
	status = (volatile u8 *)hdr + 64;
	u64 buf = rt_alloc(chunk * bs, PAGE_SIZE);
	if (!hdr || !buf)
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
