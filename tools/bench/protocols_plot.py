#!/usr/bin/env python3
"""Plots a tools/bench/protocols.sh result: each target's value as a multiple
of plain TCP's in the same run (bars: the median of the per-run ratios; dots:
each run), rates on the left (higher is better), times on the right (lower is
better), dotted lines at the issue's targets (0.5x, 1.5x). Needs Debian's python3-matplotlib.

    tools/bench/protocols_plot.py RESULT.json OUT.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")  # no display
import matplotlib.pyplot as plt  # noqa: E402

RATES = [("redis/set_rps", "redis\nSET"), ("redis/get_rps", "redis\nGET"),
         ("redis-pipelined/set_rps", "-P 16\nSET"), ("redis-pipelined/get_rps", "-P 16\nGET"),
         ("redis-reconnect/set_rps", "-k 0\nconn/s"), ("pgbench/tps", "pgbench\ntps"),
         ("pgbench-connect/tps", "pgbench -C\ntps")]
TIMES = [("redis/set_p50_ms", "redis SET\np50"), ("pgbench/latency_ms", "pgbench\nlatency"),
         ("pgbench-connect/connection_ms", "pgbench -C\nconnect")]
COLOURS = {"haproxy": "#9e9e9e", "mesh": "#1f77b4", "mesh-resume": "#2ca02c"}


def panel(ax, result, metrics, title, goal_lines):
    targets = [t for t in COLOURS if t in result["x_plain_per_run"]]
    width = 0.8 / len(targets)
    for i, t in enumerate(targets):
        for j, (key, _) in enumerate(metrics):
            runs = result["x_plain_per_run"][t].get(key, [])
            if not runs:
                continue
            x = j + (i - (len(targets) - 1) / 2) * width
            v = result["x_plain"][t][key]
            ax.bar(x, v, width, color=COLOURS[t], label=t if j == 0 else None)
            ax.annotate(f"{v:.2f}", (x, max([v] + runs)), xytext=(0, 2),
                        textcoords="offset points", ha="center", fontsize=5)
            ax.plot([x] * len(runs), runs, "k.", markersize=3)
    for y, style in goal_lines:
        ax.axhline(y, color="k", linestyle=style, linewidth=0.7)
    ax.set_xticks(range(len(metrics)), [label for _, label in metrics], fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="y", labelsize=7)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        result = json.load(f)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2), width_ratios=[7, 3])
    panel(left, result, RATES, "rate ÷ plain, same run (higher is better; plain = 1)",
          [(1.0, "-"), (0.5, ":")])
    panel(right, result, TIMES, "time ÷ plain (lower is better)", [(1.0, "-"), (1.5, ":")])
    # Room above plain's line for the legend, in one row.
    left.set_ylim(0, max(1.3, left.get_ylim()[1] * 1.15))
    left.legend(fontsize=7, loc="upper left", ncol=3)
    m = result["machine"]
    fig.suptitle(f"redis {m['redis']} and pgbench through the mesh vs an haproxy mTLS pair, "
                 f"{result['started'][:16].replace('T', ' ')} UTC, {m['nproc']} cores, agents {m['agents_data_path']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=90)


if __name__ == "__main__":
    main()
