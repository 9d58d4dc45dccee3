/* virtio-blk helpers and the on-disk test block format (README.md "Block format"). */
#ifndef VIRTIO_BLK_H
#define VIRTIO_BLK_H
#include "virtio.h"

#define VIRTIO_BLK_F_SIZE_MAX 1
#define VIRTIO_BLK_F_SEG_MAX 2
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_BLK_SIZE 6
#define VIRTIO_BLK_F_FLUSH 9

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8

#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2

struct virtio_blk_req_hdr {
	u32 type;
	u32 reserved;
	u64 sector;
};

/* ---- test block format ---- */
#define TB_MAGIC 0x314b4c424d565753UL /* "SWVMBLK1" little-endian */
#define TB_MUL_BLOCK 0x9E3779B97F4A7C15UL
#define TB_MUL_SEQ 0xC2B2AE3D27D4EB4FUL
#define FNV64_OFFSET 0xcbf29ce484222325UL
#define FNV64_PRIME 0x100000001b3UL

/* word-wise FNV-1a: h = (h ^ w) * prime over little-endian u64 words */
static inline u64 tb_checksum(const u64 *w, u64 nwords)
{
	u64 h = FNV64_OFFSET;
	for (u64 i = 0; i < nwords; i++)
		h = (h ^ w[i]) * FNV64_PRIME;
	return h;
}

static inline void tb_fill(void *buf, u64 block, u64 seq, u32 bs)
{
	u64 *w = buf, n = bs / 8;
	w[0] = TB_MAGIC;
	w[1] = block;
	w[2] = seq;
	w[3] = bs; /* u32 block size, u32 reserved 0 */
	u64 base = (block * TB_MUL_BLOCK) ^ (seq * TB_MUL_SEQ);
	for (u64 k = 4; k < n - 1; k++)
		w[k] = base ^ k;
	w[n - 1] = tb_checksum(w, n - 1);
}

/* 0 if fine, else a static reason; *seq gets the stored seq. */
static inline const char *tb_check(const void *buf, u64 block, u32 bs, u64 *seq)
{
	const u64 *w = buf, n = bs / 8;
	*seq = w[2];
	if (w[0] != TB_MAGIC)
		return "magic";
	if (w[1] != block)
		return "blockno";
	if (w[3] != bs)
		return "blocksize";
	if (w[n - 1] != tb_checksum(w, n - 1))
		return "checksum";
	u64 base = (block * TB_MUL_BLOCK) ^ (w[2] * TB_MUL_SEQ);
	for (u64 k = 4; k < n - 1; k++)
		if (w[k] != (base ^ k))
			return "pattern";
	return NULL;
}
#endif
