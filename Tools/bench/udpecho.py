#!/usr/bin/env python3
"""UDP echo client for the `net` benchmark (stdlib only).

Sends one datagram at a time to HOST:PORT and waits for its echo (one request in flight),
for --seconds, and prints one JSON object: round trips per second and RTT percentiles.
The benchmark runs it inside its own network namespace (`ip netns exec NS python3 udpecho.py`),
so it only ever talks to the guest on the namespace's TAP.
"""
import argparse
import json
import socket
import struct
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--size", type=int, default=64, help="payload bytes (>= 8)")
    ap.add_argument("--timeout", type=float, default=0.5, help="per-packet timeout, s")
    ap.add_argument("--warmup-s", type=float, default=10.0, help="time allowed for the first echo (ARP)")
    ap.add_argument("--max-packets", type=int, default=5_000_000, help="hard bound on packets sent")
    a = ap.parse_args()

    size = max(8, a.size)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((a.host, a.port))
    pad = bytes(size - 8)

    def once(seq: int, timeout: float):
        s.settimeout(timeout)
        payload = struct.pack("<Q", seq) + pad
        t0 = time.perf_counter_ns()
        s.send(payload)
        deadline = t0 + int(timeout * 1e9)
        while True:
            left = (deadline - time.perf_counter_ns()) / 1e9
            if left <= 0:
                return None
            s.settimeout(left)
            try:
                data = s.recv(65536)
            except socket.timeout:
                return None
            except ConnectionRefusedError:
                return None
            if len(data) == size and struct.unpack_from("<Q", data)[0] == seq:
                return time.perf_counter_ns() - t0

    # Warm-up: the first echo needs ARP; retry until the guest answers.
    seq = 0
    start = time.monotonic()
    ok = False
    while time.monotonic() - start < a.warmup_s:
        seq += 1
        if once(seq, 0.25) is not None:
            ok = True
            break
    if not ok:
        print(json.dumps({"error": f"no UDP echo from {a.host}:{a.port} within {a.warmup_s:g} s"}))
        return 1
    for _ in range(50):  # settle
        seq += 1
        once(seq, a.timeout)

    rtts = []
    lost = 0
    sent = 0
    t0 = time.monotonic()
    end = t0 + a.seconds
    while time.monotonic() < end and sent < a.max_packets:
        seq += 1
        sent += 1
        r = once(seq, a.timeout)
        if r is None:
            lost += 1
        else:
            rtts.append(r)
    elapsed = time.monotonic() - t0
    rtts.sort()

    def pct(p):
        if not rtts:
            return None
        return rtts[min(len(rtts) - 1, int(p / 100 * len(rtts)))] / 1000.0

    print(json.dumps({
        "sent": sent, "received": len(rtts), "lost": lost, "seconds": round(elapsed, 3),
        "round_trips_per_s": round(len(rtts) / elapsed, 1) if elapsed > 0 else 0,
        "rtt_us_median": pct(50), "rtt_us_p99": pct(99), "payload_bytes": size,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
