/* virtio-mmio modern transport + split virtqueues, polled, ring 3. */
#include "virtio.h"

u64 vm_cfg64(struct virtio_dev *d, u32 off)
{
	for (;;) {
		u32 g = vm_read(d, VMMIO_CONFIG_GENERATION);
		u64 v = vm_cfg32(d, off) | ((u64)vm_cfg32(d, off + 4) << 32);
		if (vm_read(d, VMMIO_CONFIG_GENERATION) == g)
			return v;
	}
}

static bool add_dev(struct virtio_dev *out, u32 *n, u32 max, u64 base, u64 size, u32 irq)
{
	for (u32 i = 0; i < *n; i++)
		if (out[i].base == base)
			return true; /* named twice */
	if (*n >= max)
		return false;
	if (mmio_read32(base + VMMIO_MAGIC) != VIRTIO_MMIO_MAGIC)
		return false;
	u32 id = mmio_read32(base + VMMIO_DEVICE_ID);
	if (id == 0) /* placeholder window */
		return false;
	struct virtio_dev *d = &out[(*n)++];
	memset(d, 0, sizeof(*d));
	d->base = base;
	d->size = size;
	d->irq = irq;
	d->device_id = id;
	d->version = mmio_read32(base + VMMIO_VERSION);
	d->vendor_id = mmio_read32(base + VMMIO_VENDOR_ID);
	return true;
}

u32 virtio_discover(struct virtio_dev *out, u32 max, bool quiet)
{
	u32 n = 0;
	size_t pos = 0;
	char tok[96];
	while (arg_next("virtio_mmio.device", &pos, tok, sizeof(tok))) {
		/* <size>@<base>:<irq>[:<id>] */
		u64 size, base, irq = 0;
		const char *p = tok, *end;
		if (!parse_u64(p, &size, &end) || *end != '@')
			fail_config("bad virtio_mmio.device=%s", tok);
		p = end + 1;
		if (!parse_u64(p, &base, &end))
			fail_config("bad virtio_mmio.device=%s", tok);
		if (*end == ':' && !parse_u64(end + 1, &irq, &end))
			fail_config("bad virtio_mmio.device=%s", tok);
		if (base < 0x100000000UL * 512 && !add_dev(out, &n, max, base, size, (u32)irq) && !quiet)
			printf("VIRTIO base=0x%lx no device\n", base);
	}
	if (arg_flag("probe"))
		for (u32 i = 0; i < 24; i++)
			add_dev(out, &n, max, 0xfeb00000UL + i * 0x200, 0x200, 0); /* irq unknown */
	if (!quiet)
		for (u32 i = 0; i < n; i++)
			printf("VIRTIO base=0x%lx id=%u version=%u irq=%u\n", out[i].base, out[i].device_id,
			       out[i].version, out[i].irq);
	return n;
}

void virtio_find_or_fail(u32 device_id, struct virtio_dev *out)
{
	struct virtio_dev devs[32];
	u32 n = virtio_discover(devs, ARRAY_SIZE(devs), false);
	for (u32 i = 0; i < n; i++)
		if (devs[i].device_id == device_id) {
			*out = devs[i];
			if (out->version != 2)
				fail_config("virtio device at 0x%lx is legacy (version %u); need version 2 "
					    "(QEMU: -global virtio-mmio.force-legacy=false)",
					    out->base, out->version);
			return;
		}
	fail_config("no virtio device with id %u (use virtio_mmio.device=<size>@<base>:<irq> or probe)",
		    device_id);
}

void virtio_reset(struct virtio_dev *d)
{
	vm_write(d, VMMIO_STATUS, 0);
	for (u64 t0 = rdtsc(); vm_read(d, VMMIO_STATUS) != 0;)
		if (rdtsc() - t0 > 1000 * tsc_khz())
			fail("virtio device at 0x%lx does not reset", d->base);
}

bool virtio_init(struct virtio_dev *d, u64 wanted, u64 *offered)
{
	virtio_reset(d);
	vm_write(d, VMMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
	vm_write(d, VMMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	vm_write(d, VMMIO_DEVICE_FEATURES_SEL, 0);
	u64 f = vm_read(d, VMMIO_DEVICE_FEATURES);
	vm_write(d, VMMIO_DEVICE_FEATURES_SEL, 1);
	f |= (u64)vm_read(d, VMMIO_DEVICE_FEATURES) << 32;
	if (offered)
		*offered = f;
	if (!(f & (1UL << VIRTIO_F_VERSION_1)))
		return false;
	u64 use = (wanted | (1UL << VIRTIO_F_VERSION_1)) & f;
	vm_write(d, VMMIO_DRIVER_FEATURES_SEL, 0);
	vm_write(d, VMMIO_DRIVER_FEATURES, (u32)use);
	vm_write(d, VMMIO_DRIVER_FEATURES_SEL, 1);
	vm_write(d, VMMIO_DRIVER_FEATURES, (u32)(use >> 32));
	vm_write(d, VMMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
	if (!(vm_read(d, VMMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK))
		return false;
	d->features = use;
	return true;
}

void virtio_driver_ok(struct virtio_dev *d)
{
	vm_write(d, VMMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK |
					  VIRTIO_STATUS_DRIVER_OK);
}

bool virtq_setup(struct virtio_dev *d, struct virtq *q, u16 index, u16 num)
{
	vm_write(d, VMMIO_QUEUE_SEL, index);
	if (vm_read(d, VMMIO_QUEUE_READY))
		return false;
	u32 max = vm_read(d, VMMIO_QUEUE_NUM_MAX);
	if (max == 0)
		return false;
	if (num > max)
		num = (u16)max;
	if (num > ARRAY_SIZE(q->chain_len))
		num = ARRAY_SIZE(q->chain_len);
	/* power of two (not required for split queues with version 1, but safe) */
	while (num & (num - 1))
		num &= num - 1;
	u64 dsz = 16UL * num, asz = 6 + 2UL * num, usz = 6 + 8UL * num;
	u64 total = ALIGN_UP(dsz + asz, 4) + usz;
	u64 mem = rt_alloc(total, PAGE_SIZE);
	if (!mem)
		fail_config("no memory for virtqueue");
	memset((void *)mem, 0, ALIGN_UP(total, PAGE_SIZE));
	memset(q, 0, sizeof(*q));
	q->dev = d;
	q->index = index;
	q->num = num;
	q->desc = (void *)mem;
	q->avail = (void *)(mem + dsz);
	q->used = (void *)(mem + ALIGN_UP(dsz + asz, 4));
	for (u16 i = 0; i < num; i++)
		q->desc[i].next = (u16)(i + 1);
	q->free_head = 0;
	q->num_free = num;
	vm_write(d, VMMIO_QUEUE_NUM, num);
	vm_write(d, VMMIO_QUEUE_DESC_LOW, (u32)(u64)q->desc);
	vm_write(d, VMMIO_QUEUE_DESC_HIGH, (u32)((u64)q->desc >> 32));
	vm_write(d, VMMIO_QUEUE_DRIVER_LOW, (u32)(u64)q->avail);
	vm_write(d, VMMIO_QUEUE_DRIVER_HIGH, (u32)((u64)q->avail >> 32));
	vm_write(d, VMMIO_QUEUE_DEVICE_LOW, (u32)(u64)q->used);
	vm_write(d, VMMIO_QUEUE_DEVICE_HIGH, (u32)((u64)q->used >> 32));
	vm_write(d, VMMIO_QUEUE_READY, 1);
	return true;
}

void virtq_notify(struct virtq *q)
{
	mb();
	vm_write(q->dev, VMMIO_QUEUE_NOTIFY, q->index);
}

int virtq_submit(struct virtq *q, const struct vbuf *bufs, u32 n, bool notify)
{
	if (n == 0 || n > q->num_free)
		return -1;
	u16 head = q->free_head, i = head, last = head;
	for (u32 k = 0; k < n; k++) {
		q->desc[i].addr = bufs[k].addr;
		q->desc[i].len = bufs[k].len;
		u16 fl = bufs[k].write ? VRING_DESC_F_WRITE : 0;
		last = i;
		if (k + 1 < n)
			fl |= VRING_DESC_F_NEXT;
		q->desc[i].flags = fl;
		i = q->desc[i].next;
	}
	q->free_head = i;
	q->num_free -= (u16)n;
	q->chain_len[head] = (u16)n;
	(void)last;
	q->avail->ring[q->avail_idx % q->num] = head;
	barrier(); /* x86: stores are ordered; keep the compiler from reordering */
	q->avail_idx++;
	q->avail->idx = q->avail_idx;
	if (notify)
		virtq_notify(q);
	return head;
}

bool virtq_poll(struct virtq *q, u32 *id, u32 *len, u64 timeout_ms)
{
	u64 t0 = 0, lim = 0;
	while (q->used->idx == q->last_used) {
		if (!timeout_ms)
			return false;
		if (!t0) {
			t0 = rdtsc();
			lim = timeout_ms * tsc_khz();
		} else if (rdtsc() - t0 > lim) {
			return false;
		}
		cpu_relax();
	}
	barrier();
	volatile struct vring_used_elem *e = &q->used->ring[q->last_used % q->num];
	u32 h = e->id, l = e->len;
	q->last_used++;
	if (h < q->num && q->chain_len[h]) {
		/* return the chain to the free list: walk it by count */
		u16 n = q->chain_len[h], i = (u16)h;
		for (u16 k = 1; k < n; k++)
			i = q->desc[i].next;
		q->desc[i].next = q->free_head;
		q->free_head = (u16)h;
		q->num_free += n;
		q->chain_len[h] = 0;
	}
	if (id)
		*id = h;
	if (len)
		*len = l;
	return true;
}

bool virtq_call(struct virtq *q, const struct vbuf *bufs, u32 n, u32 *len, u64 timeout_ms)
{
	int head = virtq_submit(q, bufs, n, true);
	if (head < 0)
		return false;
	u32 id;
	for (;;) {
		if (!virtq_poll(q, &id, len, timeout_ms))
			return false;
		if (id == (u32)head)
			return true;
	}
}
