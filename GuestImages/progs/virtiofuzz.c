/*
 * virtiofuzz.elf — posts hostile descriptor chains to a virtio-blk device.
 *   virtio_mmio.device=... | probe      where the device is
 *   wait-ms=N   how long to wait for a reaction per case (default 1000)
 * Per case: "FUZZ <case> used=<0|1> id=<id> len=<len> status=<status byte|none>
 *            needs_reset=<0|1> device_status=0x<status register>"
 * then the device is reset and re-initialised. Cases: loop, long-chain,
 * next-out-of-range, head-out-of-range, bad-addr, huge-len, ro-buffer.
 * FAIL if the device wrote into the device-readable buffer of ro-buffer, if the
 * device does not reset, or if the final well-formed read fails; else "PASS fuzz".
 */
#include "rt.h"
#include "virtio_blk.h"

#define QN 8
static struct virtio_dev dev;
static struct virtq q;
static struct virtio_blk_req_hdr *hdr;
static volatile u8 *status;
static u64 buf, wait_ms;

static void bring_up(void)
{
	if (!virtio_init(&dev, 0, NULL))
		fail("virtio-blk init failed");
	if (!virtq_setup(&dev, &q, 0, QN))
		fail("queue setup failed");
	virtio_driver_ok(&dev);
}

static void req_hdr(u32 type)
{
	hdr->type = type;
	hdr->reserved = 0;
	hdr->sector = 0;
	*status = 0xff;
}

static void set_desc(u16 i, u64 addr, u32 len, u16 flags, u16 next)
{
	q.desc[i].addr = addr;
	q.desc[i].len = len;
	q.desc[i].flags = flags;
	q.desc[i].next = next;
}

/* publish head, notify, observe, print, reset */
static void run_case(const char *name, u16 head)
{
	u16 used0 = q.used->idx;
	q.avail->ring[q.avail_idx % q.num] = head;
	barrier();
	q.avail->idx = ++q.avail_idx;
	virtq_notify(&q);
	bool used = false;
	u32 id = 0, len = 0;
	u32 st;
	for (u64 t0 = rdtsc(); rdtsc() - t0 < wait_ms * tsc_khz(); cpu_relax()) {
		if (q.used->idx != used0) {
			used = true;
			break;
		}
		if (vm_read(&dev, VMMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET)
			break;
	}
	if (used) {
		id = q.used->ring[used0 % q.num].id;
		len = q.used->ring[used0 % q.num].len;
	}
	st = vm_read(&dev, VMMIO_STATUS);
	char sb[8];
	if (*status == 0xff)
		memcpy(sb, "none", 5);
	else
		snprintf(sb, sizeof(sb), "%u", *status);
	printf("FUZZ %s used=%d id=%u len=%u status=%s needs_reset=%d device_status=0x%x\n", name, used, id, len, sb,
	       !!(st & VIRTIO_STATUS_NEEDS_RESET), st);
	virtio_reset(&dev);
}

int main(void)
{
	wait_ms = arg_u64("wait-ms", 1000);
	virtio_find_or_fail(VIRTIO_ID_BLOCK, &dev);
	hdr = (void *)rt_alloc(PAGE_SIZE, PAGE_SIZE);
	status = (volatile u8 *)hdr + 64;
	buf = rt_alloc(3 * PAGE_SIZE, PAGE_SIZE); /* buffer, canary page, spare */
	if (!hdr || !buf)
		fail_config("no memory");
	const u16 R = 0, W = VRING_DESC_F_WRITE, N = VRING_DESC_F_NEXT;

	/* 1. descriptor loop: hdr -> data -> status -> data -> ... */
	bring_up();
	req_hdr(VIRTIO_BLK_T_IN);
	set_desc(0, (u64)hdr, 16, R | N, 1);
	set_desc(1, buf, 512, W | N, 2);
	set_desc(2, (u64)status, 1, W | N, 1);
	run_case("loop", 0);

	/* 2. chain longer than the queue: all QN descriptors chained, the last links back to 1 */
	bring_up();
	req_hdr(VIRTIO_BLK_T_IN);
	set_desc(0, (u64)hdr, 16, R | N, 1);
	for (u16 i = 1; i < QN - 1; i++)
		set_desc(i, buf + 512 * (i - 1), 512, W | N, (u16)(i + 1));
	set_desc(QN - 1, (u64)status, 1, W | N, 1);
	run_case("long-chain", 0);

	/* 3. next index out of range */
	bring_up();
	req_hdr(VIRTIO_BLK_T_IN);
	set_desc(0, (u64)hdr, 16, R | N, 1);
	set_desc(1, buf, 512, W | N, QN + 5);
	set_desc(2, (u64)status, 1, W, 0);
	run_case("next-out-of-range", 0);

	/* 4. head index out of range in the available ring */
	bring_up();
	req_hdr(VIRTIO_BLK_T_IN);
	run_case("head-out-of-range", QN + 100);

	/* 5. data buffer outside guest RAM (1 TiB) */
	bring_up();
	req_hdr(VIRTIO_BLK_T_IN);
	set_desc(0, (u64)hdr, 16, R | N, 1);
	set_desc(1, 0x10000000000UL, 512, W | N, 2);
	set_desc(2, (u64)status, 1, W, 0);
	run_case("bad-addr", 0);

	/* 6. oversized length (almost 4 GiB) */
	bring_up();
	req_hdr(VIRTIO_BLK_T_IN);
	set_desc(0, (u64)hdr, 16, R | N, 1);
	set_desc(1, buf, 0xfffff000u, W | N, 2);
	set_desc(2, (u64)status, 1, W, 0);
	run_case("huge-len", 0);

	/* 7. read request whose data buffer is device-readable (no WRITE flag) */
	bring_up();
	req_hdr(VIRTIO_BLK_T_IN);
	memset((void *)buf, 0x5a, 2 * PAGE_SIZE);
	set_desc(0, (u64)hdr, 16, R | N, 1);
	set_desc(1, buf, 512, R | N, 2);
	set_desc(2, (u64)status, 1, W, 0);
	run_case("ro-buffer", 0);
	for (u64 i = 0; i < 2 * PAGE_SIZE; i++)
		if (((volatile u8 *)buf)[i] != 0x5a)
			fail("ro-buffer: device wrote into a device-readable buffer (offset %lu)", i);

	/* well-formed read must work after reset */
	bring_up();
	req_hdr(VIRTIO_BLK_T_IN);
	struct vbuf b[3] = { { (u64)hdr, 16, false }, { buf, 512, true }, { (u64)status, 1, true } };
	u32 len;
	if (!virtq_call(&q, b, 3, &len, 10000))
		fail("well-formed read after reset timed out");
	if (*status != VIRTIO_BLK_S_OK)
		fail("well-formed read after reset: status=%u", *status);
	printf("PASS fuzz\n");
	return EXIT_PASS;
}
