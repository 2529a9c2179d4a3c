#!/usr/bin/env python3
"""Plots the table that `cargo bench --bench compare` prints.

    cargo bench --bench compare | tee benches/results.md
    python3 benches/plot.py benches/results.md docs/performance.png

Every shmbus row that has a raw counterpart becomes a bar: its ratio to that counterpart
(round trips: lower is better; streams: higher is better), on a log scale, with the
issue's target for that row as a tick where there is one. The bar's colour is the
placement measured just before the row (fast / slow spin-flag round trip). Needs
matplotlib (`pip install matplotlib`); CI does not run it.
"""

import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# (scenario prefix, transport prefix, baseline) -> (op, bound)
TARGETS = [
    ("stream 64 B", "shmbus busy-poll", "seq ring spin", ">=", 0.5),
    ("stream 64 B", "shmbus default", "seq ring futex", ">=", 3.0),
    ("stream 64 B", "shmbus wake", "seq ring futex", ">=", 3.0),
    ("stream 64 B", "shmbus sysv shm busy-poll", "seq ring spin", ">=", 0.5),
    ("stream 64 B", "shmbus sysv shm default", "seq ring futex", ">=", 3.0),
    ("stream 1 MiB", "shmbus", "seq ring", ">=", 0.8),
    ("round trip 64 B", "shmbus default", "seq ring futex", "<=", 1.1),
    ("round trip 64 B", "shmbus wake", "seq ring futex", "<=", 1.1),
    ("stream 64 B", "shmbus pipe", "pipe", ">=", 0.85),
    ("stream 64 B", "shmbus fifo", "pipe", ">=", 0.85),
    ("stream 64 B", "shmbus unix", "unix socket", ">=", 0.85),
    ("stream 64 B", "shmbus abstract", "unix socket", ">=", 0.85),
    ("stream 64 B", "shmbus posix", "posix mq", ">=", 0.85),
    ("stream 64 B", "shmbus sysv mq", "sysv msg", ">=", 0.85),
    ("round trip", "shmbus pipe", "pipe", "<=", 1.15),
    ("round trip", "shmbus fifo", "pipe", "<=", 1.15),
    ("round trip", "shmbus unix", "unix socket", "<=", 1.15),
    ("round trip", "shmbus abstract", "unix socket", "<=", 1.15),
    ("round trip", "shmbus posix", "posix mq", "<=", 1.15),
    ("round trip", "shmbus sysv mq", "sysv msg", "<=", 1.15),
]


def target(scenario, transport, baseline):
    for s, t, b, op, bound in TARGETS:
        if scenario.startswith(s) and transport.startswith(t) and baseline.startswith(b):
            return op, bound
    return None


def rows(path):
    out = []
    for line in open(path, encoding="utf-8"):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 6 or not cells[0].startswith(("round trip", "stream")):
            continue
        scenario, transport, placement, _value, _p99, ratio = cells
        m = re.match(r"([0-9.]+)× (.+)", ratio)
        if not m:
            continue
        out.append(
            {
                "scenario": scenario,
                "transport": transport,
                "fast": placement.startswith("fast"),
                "placement": placement,
                "ratio": float(m.group(1)),
                "baseline": m.group(2),
            }
        )
    return out


def panel(ax, data, title, better):
    labels = [f"{r['scenario']} · {r['transport']} ÷ {r['baseline']}" for r in data]
    ys = list(range(len(data)))[::-1]
    colours = ["tab:blue" if r["fast"] else "tab:orange" for r in data]
    ratios = [max(r["ratio"], 1e-3) for r in data]
    ax.barh(ys, ratios, color=colours, height=0.7)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    for y, r in zip(ys, data):
        t = target(r["scenario"], r["transport"], r["baseline"])
        if t:
            op, bound = t
            ok = r["ratio"] >= bound if op == ">=" else r["ratio"] <= bound
            ax.plot([bound, bound], [y - 0.45, y + 0.45], color="green" if ok else "red",
                    linewidth=2.5)
        ax.text(max(r["ratio"], 1e-3) * 1.05, y, f"{r['ratio']:.2f}", va="center", fontsize=7)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_title(f"{title} ({better})", fontsize=10)
    ax.grid(axis="x", which="both", alpha=0.3)


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "benches/results.md"
    dst = sys.argv[2] if len(sys.argv) > 2 else "docs/performance.png"
    data = rows(src)
    rtt = [r for r in data if r["scenario"].startswith("round trip")]
    stream = [r for r in data if r["scenario"].startswith("stream")]
    height = max(len(rtt), len(stream)) * 0.22 + 1.8
    fig, (a, b) = plt.subplots(1, 2, figsize=(16, height))
    panel(a, rtt, "round trip: shmbus ÷ raw counterpart", "lower is better")
    panel(b, stream, "stream: shmbus ÷ raw counterpart", "higher is better")
    fig.suptitle(
        "shmbus vs raw baselines, one run of `cargo bench --bench compare` "
        "(blue: fast placement, orange: slow; tick: target, green held, red missed)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    print(f"wrote {dst} ({len(rtt)} round-trip and {len(stream)} stream ratios)")


if __name__ == "__main__":
    main()
