/*
 * Minimal virtio-mmio (VIRTIO 1.x, transport version 2) driver: split virtqueues,
 * polled completions, all in ring 3 (MMIO windows are mapped user-accessible).
 */
#ifndef VIRTIO_H
#define VIRTIO_H
#include "rt.h"

#define VIRTIO_MMIO_MAGIC 0x74726976
/* registers */
#define VMMIO_MAGIC 0x000
#define VMMIO_VERSION 0x004
#define VMMIO_DEVICE_ID 0x008
#define VMMIO_VENDOR_ID 0x00c
#define VMMIO_DEVICE_FEATURES 0x010
#define VMMIO_DEVICE_FEATURES_SEL 0x014
#define VMMIO_DRIVER_FEATURES 0x020
#define VMMIO_DRIVER_FEATURES_SEL 0x024
#define VMMIO_QUEUE_SEL 0x030
#define VMMIO_QUEUE_NUM_MAX 0x034
#define VMMIO_QUEUE_NUM 0x038
#define VMMIO_QUEUE_READY 0x044
#define VMMIO_QUEUE_NOTIFY 0x050
#define VMMIO_INTERRUPT_STATUS 0x060
#define VMMIO_INTERRUPT_ACK 0x064
#define VMMIO_STATUS 0x070
#define VMMIO_QUEUE_DESC_LOW 0x080
#define VMMIO_QUEUE_DESC_HIGH 0x084
#define VMMIO_QUEUE_DRIVER_LOW 0x090
#define VMMIO_QUEUE_DRIVER_HIGH 0x094
#define VMMIO_QUEUE_DEVICE_LOW 0x0a0
#define VMMIO_QUEUE_DEVICE_HIGH 0x0a4
#define VMMIO_CONFIG_GENERATION 0x0fc
#define VMMIO_CONFIG 0x100

/* status bits */
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 64
#define VIRTIO_STATUS_FAILED 128

#define VIRTIO_F_VERSION_1 32

#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLOCK 2

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2

struct vring_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};
struct vring_avail {
	u16 flags;
	u16 idx;
	u16 ring[];
};
struct vring_used_elem {
	u32 id;
	u32 len;
};
struct vring_used {
	u16 flags;
	u16 idx;
	struct vring_used_elem ring[];
};

struct virtio_dev {
	u64 base;
	u64 size;
	u32 irq;
	u32 version;
	u32 device_id;
	u32 vendor_id;
	u64 features; /* negotiated */
};

struct virtq {
	struct virtio_dev *dev;
	u16 index, num;
	volatile struct vring_desc *desc;
	volatile struct vring_avail *avail;
	volatile struct vring_used *used;
	u16 free_head, num_free, last_used, avail_idx;
	u16 chain_len[1024]; /* descriptors per in-flight head */
};

struct vbuf {
	u64 addr;
	u32 len;
	bool write; /* device-writable */
};

static inline u32 vm_read(struct virtio_dev *d, u32 reg) { return mmio_read32(d->base + reg); }
static inline void vm_write(struct virtio_dev *d, u32 reg, u32 v) { mmio_write32(d->base + reg, v); }
static inline u8 vm_cfg8(struct virtio_dev *d, u32 off) { return mmio_read8(d->base + VMMIO_CONFIG + off); }
static inline u16 vm_cfg16(struct virtio_dev *d, u32 off) { return mmio_read16(d->base + VMMIO_CONFIG + off); }
static inline u32 vm_cfg32(struct virtio_dev *d, u32 off) { return mmio_read32(d->base + VMMIO_CONFIG + off); }
u64 vm_cfg64(struct virtio_dev *d, u32 off); /* generation-checked */

/* Devices named by `virtio_mmio.device=<size>@<base>:<irq>` tokens, plus (with the
 * `probe` flag) the QEMU microvm windows 0xfeb00000 + n*0x200. Prints one
 * "VIRTIO base=0x.. id=<device id> version=<v> irq=<irq>" line per device found
 * (unless quiet). Returns the count. */
u32 virtio_discover(struct virtio_dev *out, u32 max, bool quiet);
/* First device of the given type (fail_config if none). */
void virtio_find_or_fail(u32 device_id, struct virtio_dev *out);
/* Reset, ACK, DRIVER, negotiate (VERSION_1 | wanted & offered), FEATURES_OK. */
bool virtio_init(struct virtio_dev *d, u64 wanted, u64 *offered);
void virtio_reset(struct virtio_dev *d);
/* Allocate and register queue `index` with min(num, max) entries (power of two). */
bool virtq_setup(struct virtio_dev *d, struct virtq *q, u16 index, u16 num);
void virtio_driver_ok(struct virtio_dev *d);
/* Post a chain; returns the head descriptor id, or -1 if no room. Notifies the device. */
int virtq_submit(struct virtq *q, const struct vbuf *bufs, u32 n, bool notify);
void virtq_notify(struct virtq *q);
/* Poll for one used element; false on timeout (timeout_ms 0: don't wait). */
bool virtq_poll(struct virtq *q, u32 *id, u32 *len, u64 timeout_ms);
/* Synchronous helper: submit + wait for that chain. */
bool virtq_call(struct virtq *q, const struct vbuf *bufs, u32 n, u32 *len, u64 timeout_ms);
#endif
