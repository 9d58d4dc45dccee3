#!/usr/bin/env python3
"""Reference checker for blktest.elf's on-disk block format (see ../README.md).

usage: blkverify.py IMAGE [--bs 4096] [--blocks N] [--seq S] [--loop-last N]
  default: every block 0..N-1 must be a valid test block with seq S (default 1)
  --loop-last N: image written by `blktest loop`; blocks are empty (all zero) or valid with
                 seq % blocks == block; the block holding the last acknowledged seq N must have
                 seq >= N, and every valid seq must be <= N + 1 (one write may be unacknowledged).
"""
import argparse, struct, sys

MAGIC = 0x314B4C424D565753
MUL_BLOCK, MUL_SEQ = 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F
M64 = (1 << 64) - 1

def checksum(words):
    h = 0xCBF29CE484222325
    for w in words:
        h = ((h ^ w) * 0x100000001B3) & M64
    return h

def check(buf, block, bs):
    n = bs // 8
    w = struct.unpack("<%dQ" % n, buf)
    if w[0] != MAGIC: return None, "magic"
    if w[1] != block: return w[2], "blockno"
    if w[3] != bs: return w[2], "blocksize"
    if w[n - 1] != checksum(w[: n - 1]): return w[2], "checksum"
    base = ((block * MUL_BLOCK) ^ (w[2] * MUL_SEQ)) & M64
    if any(w[k] != base ^ k for k in range(4, n - 1)): return w[2], "pattern"
    return w[2], None

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("image"); ap.add_argument("--bs", type=int, default=4096)
    ap.add_argument("--blocks", type=int); ap.add_argument("--seq", type=int, default=1)
    ap.add_argument("--loop-last", type=int)
    a = ap.parse_args()
    data = open(a.image, "rb").read()
    blocks = a.blocks or min(len(data) // a.bs, 16384)
    bad = 0
    for b in range(blocks):
        buf = data[b * a.bs:(b + 1) * a.bs]
        seq, why = check(buf, b, a.bs)
        if a.loop_last is not None:
            if why == "magic" and buf == bytes(a.bs):
                continue
            if why or seq % blocks != b or seq > a.loop_last + 1:
                print("BAD block=%d seq=%s %s" % (b, seq, why or "seq")); bad += 1
        elif why or seq != a.seq:
            print("BAD block=%d seq=%s %s" % (b, seq, why or "seq")); bad += 1
    if a.loop_last is not None:
        b = a.loop_last % blocks
        seq, why = check(data[b * a.bs:(b + 1) * a.bs], b, a.bs)
        if why or seq < a.loop_last:
            print("BAD last acknowledged seq %d not on disk (block %d has %s %s)" % (a.loop_last, b, seq, why)); bad += 1
    print("OK" if not bad else "FAILED %d" % bad)
    sys.exit(1 if bad else 0)

if __name__ == "__main__":
    main()
