"""Plots for the swiftvmm benchmark suite (matplotlib; used by Tools/plot-report)."""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SWIFT_COLOR = "#1f6fb4"
QEMU_COLOR = "#d9822b"
DIRTY_COLOR = "#b22222"


def swift_rounds(report):
    """[(round, MB on the wire, dirty pages/s, duration ms, throttle %)] from a `send --report`."""
    out = []
    rounds = report.get("rounds", [])
    for i, r in enumerate(rounds):
        label = str(r.get("round", i))
        if i == len(rounds) - 1 and i > 0:
            label += "\nfinal"     # the stop-and-copy round (its dirty rate is not measured)
        out.append((label, r.get("bytes_on_wire", 0) / 1e6, r.get("dirty_pages_per_s", 0),
                    r.get("duration_ms", 0), r.get("throttle_percent", 0)))
    return out


def qemu_rounds(samples):
    """Rebuilds per-iteration figures from `query-migrate` samples taken every ~50 ms.

    An iteration is the span of samples with the same `dirty-sync-count`; its bytes are the
    growth of `ram.transferred` until the next iteration's first sample (or the end), its dirty
    rate QEMU's own `dirty-pages-rate` at that point (QEMU updates it at most once a second).
    Returns [(sync count, MB, dirty pages/s, duration ms, throttle %)].
    """
    pts = [s for s in samples if s.get("transferred") is not None]
    if not pts:
        return []
    groups = []
    for s in pts:
        k = s.get("dirty-sync-count") or 0
        if not groups or groups[-1][0] != k:
            groups.append([k, []])
        groups[-1][1].append(s)
    out = []
    prev_end = 0
    prev_t = 0.0
    for gi, (k, ss) in enumerate(groups):
        end_sample = groups[gi + 1][1][0] if gi + 1 < len(groups) else ss[-1]
        end = end_sample["transferred"]
        t_end = end_sample["t_ms"]
        out.append((k, max(0, end - prev_end) / 1e6, end_sample.get("dirty-pages-rate") or 0,
                    t_end - prev_t, end_sample.get("cpu-throttle-percentage") or 0))
        prev_end, prev_t = end, t_end
    return out


def _panel(ax, rows, title, color, xlabel):
    if not rows:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=9)
        return
    xs = list(range(len(rows)))
    mb = [r[1] for r in rows]
    dirty = [r[2] for r in rows]
    ax.bar(xs, mb, color=color, alpha=0.85, label="MB on the wire")
    ax.set_xticks(xs)
    ax.set_xticklabels([str(r[0]) for r in rows], fontsize=7)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("MB sent in round", fontsize=8, color=color)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_ylim(0, max(mb) * 1.15 if max(mb) > 0 else 1)
    if len(xs) <= 12:
        for x, m in zip(xs, mb):
            ax.annotate(f"{m:.3g}", (x, m), xytext=(0, 1), textcoords="offset points", ha="center",
                        va="bottom", fontsize=6)
    ax2 = ax.twinx()
    k = [d / 1000 for d in dirty]
    ax2.plot(xs, k, color=DIRTY_COLOR, marker="o", markersize=3, linewidth=1.2, label="dirty pages/s")
    ax2.set_ylabel("dirty rate, thousand pages/s", fontsize=8, color=DIRTY_COLOR)
    ax2.tick_params(axis="y", labelsize=7)
    ax2.set_ylim(bottom=0)
    ax2.ticklabel_format(axis="y", style="plain", useOffset=False)
    # One outlier (e.g. a rate computed over too short an interval) would flatten the rest:
    # clip the axis and print the outlier's value instead.
    ordered = sorted(k, reverse=True)
    if len(ordered) >= 3 and ordered[1] > 0 and ordered[0] > 5 * ordered[1]:
        top = ordered[1] * 1.6
        ax2.set_ylim(0, top)
        i = k.index(ordered[0])
        ax2.annotate(f"↑ {ordered[0]:,.0f}k (off scale)", (xs[i], top), xytext=(4, -22), textcoords="offset points",
                     ha="left", fontsize=6, color=DIRTY_COLOR,
                     bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.8))
    # Throttle: a label where it changes.
    prev = 0
    for x, r in zip(xs, rows):
        t = r[4]
        if t != prev:
            ax.annotate(f"throttle {t}%", (x, 0), xytext=(0, 3), textcoords="offset points", ha="center",
                        fontsize=6, rotation=90, va="bottom", color="black")
            prev = t
    if len(xs) > 16:
        step = (len(xs) + 15) // 16
        ax.set_xticks(xs[::step])
        ax.set_xticklabels([str(r[0]) for r in rows][::step], fontsize=7)
    ax.set_title(title, fontsize=9)


def plot_rounds(swift_report, qemu_samples, out, title):
    """Per-round bytes and dirty rate; swiftvmm left, QEMU (reconstructed) right if given."""
    n = 2 if qemu_samples is not None else 1
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.2), dpi=80, squeeze=False)
    s = swift_rounds(swift_report) if swift_report else []
    sub = ""
    if swift_report:
        sub = (f"total {swift_report.get('total_ms', 0):.0f} ms, downtime {swift_report.get('downtime_ms', 0):.1f} ms, "
               f"{swift_report.get('bytes_on_wire', 0) / 1e6:.1f} MB")
    _panel(axes[0][0], s, f"swiftvmm: {sub}", SWIFT_COLOR, "round")
    if n == 2:
        q = qemu_rounds(qemu_samples)
        last = qemu_samples[-1] if qemu_samples else {}
        qsub = f"{last.get('transferred', 0) / 1e6:.1f} MB, {len(q)} syncs" if last else ""
        _panel(axes[0][1], q, f"QEMU (from query-migrate every 50 ms): {qsub}", QEMU_COLOR,
               "dirty-bitmap sync count")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def plot_ratios(results, out):
    """Horizontal bars: swiftvmm median / QEMU median per figure (log scale)."""
    rows = []
    for name, sc in results.get("scenarios", {}).items():
        spec = {m["key"]: m for m in sc.get("metrics_spec", [])}
        for key, r in sc.get("ratio", {}).items():
            if r is None or r <= 0 or key == "converged":
                continue
            m = spec.get(key, {"label": key, "better": "lower"})
            good = (r < 1) if m["better"] == "lower" else (r > 1)
            rows.append((f"{name}: {m['label']}", r, good))
    if not rows:
        return False
    rows.reverse()
    fig, ax = plt.subplots(figsize=(7.5, 0.28 * len(rows) + 1.2), dpi=80)
    ys = range(len(rows))
    ax.barh(list(ys), [math.log10(r[1]) for r in rows], color=["#3a9d5d" if r[2] else "#c0504d" for r in rows])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(list(ys))
    ax.set_yticklabels([r[0] for r in rows], fontsize=7)
    lo = min(-1, math.floor(min(math.log10(r[1]) for r in rows)))
    hi = max(1, math.ceil(max(math.log10(r[1]) for r in rows)))
    ticks = list(range(lo, hi + 1))
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{10 ** t:g}×" for t in ticks], fontsize=7)
    ax.set_xlim(lo - 0.7, hi + 0.3)   # room for the value labels
    for y, r in zip(ys, rows):
        x = math.log10(r[1])
        ax.text(x + (0.05 if x >= 0 else -0.05), y, f"{r[1]:.3g}", va="center", ha="left" if x >= 0 else "right",
                fontsize=6)
    ax.set_xlabel("swiftvmm / QEMU (ratio of medians, log scale); green = swiftvmm better", fontsize=8)
    ax.set_title(f"swiftvmm vs QEMU — {results.get('date', '')} ({results.get('mode', '')})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return True
