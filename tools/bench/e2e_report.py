#!/usr/bin/env python3
"""Summarises tools/bench/e2e.sh's rounds: enrolled (through both agents)
against plain TCP, connect + first byte per connection.

Input: ROUNDS_DIR/<round>-enrolled.json and <round>-plain.json, each one
`loadgen firstbyte` result with every sample. Output: a table on stdout and
JSON (schema ktrust-bench-e2e/1) in --out. Pooled percentiles are over every
recorded connection of every round; the paired figures are per round
(enrolled p50 - plain p50 of the same round), so drift between rounds cancels.
"""
import argparse
import json
import math
import os
import re
import sys

TARGETS = ("enrolled", "plain")


def percentile(values, p):
    """Nearest-rank percentile, p in (0, 1], as loadgen computes it."""
    s = sorted(values)
    if not s:
        return 0.0
    rank = min(max(math.ceil(p * len(s)), 1), len(s))
    return s[rank - 1]


def summary(samples):
    return {
        "count": len(samples),
        "p50_us": round(percentile(samples, 0.50), 1),
        "p90_us": round(percentile(samples, 0.90), 1),
        "p99_us": round(percentile(samples, 0.99), 1),
        "mean_us": round(sum(samples) / len(samples), 1) if samples else 0.0,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--param", action="append", default=[], help="KEY=VALUE recorded in the JSON")
    args = ap.parse_args()
    params = dict(p.split("=", 1) for p in args.param)

    rounds = {}
    for name in os.listdir(args.rounds_dir):
        m = re.fullmatch(r"(\d+)-(enrolled|plain)\.json", name)
        if m:
            with open(os.path.join(args.rounds_dir, name)) as f:
                rounds.setdefault(int(m.group(1)), {})[m.group(2)] = json.load(f)
    complete = sorted(r for r, v in rounds.items() if all(t in v for t in TARGETS))
    if not complete:
        sys.exit("e2e_report: no complete round in " + args.rounds_dir)

    pooled = {t: [] for t in TARGETS}
    pooled_connect = {t: [] for t in TARGETS}
    per_round = []
    for r in complete:
        for t in TARGETS:
            pooled[t] += rounds[r][t]["total_us"]
            pooled_connect[t] += rounds[r][t]["connect_us"]
        e50 = percentile(rounds[r]["enrolled"]["total_us"], 0.5)
        p50 = percentile(rounds[r]["plain"]["total_us"], 0.5)
        per_round.append({"round": r, "enrolled_p50_us": e50, "plain_p50_us": p50,
                          "added_p50_us": round(e50 - p50, 1), "ratio_p50": round(e50 / p50, 2)})

    res = {t: summary(pooled[t]) for t in TARGETS}
    for t in TARGETS:
        res[t]["connect_p50_us"] = round(percentile(pooled_connect[t], 0.5), 1)
    added = [x["added_p50_us"] for x in per_round]
    ratios = [x["ratio_p50"] for x in per_round]
    e, p = res["enrolled"], res["plain"]
    result = {
        "schema": "ktrust-bench-e2e/1",
        "params": params,
        "enrolled": e,
        "plain": p,
        "ratio_p50": round(e["p50_us"] / p["p50_us"], 2),
        "ratio_p99": round(e["p99_us"] / p["p99_us"], 2),
        "added_p50_us": round(e["p50_us"] - p["p50_us"], 1),
        "added_p99_us": round(e["p99_us"] - p["p99_us"], 1),
        "paired_added_p50_us": {"median": percentile(added, 0.5), "p25": percentile(added, 0.25),
                                "p75": percentile(added, 0.75)},
        "paired_ratio_p50": {"median": percentile(ratios, 0.5), "min": min(ratios),
                             "max": max(ratios)},
        "rounds": per_round,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    print(f"connect + 1 byte echoed + close, per connection; {len(complete)} rounds x "
          f"{e['count'] // len(complete)} connections per target; "
          f"load {params.get('load_before', '?')} -> {params.get('load_after', '?')}")
    print(f"{'':34} {'p50 us':>10} {'p90 us':>10} {'p99 us':>10} {'connect() p50':>14}")
    for label, t in (("enrolled, through both agents", "enrolled"), ("plain TCP", "plain")):
        r = res[t]
        print(f"{label:34} {r['p50_us']:>10.1f} {r['p90_us']:>10.1f} {r['p99_us']:>10.1f} "
              f"{r['connect_p50_us']:>14.1f}")
    print(f"{'ratio enrolled / plain':34} {result['ratio_p50']:>10.2f} {'':>10} "
          f"{result['ratio_p99']:>10.2f}")
    print(f"{'added by interception':34} {result['added_p50_us']:>10.1f} {'':>10} "
          f"{result['added_p99_us']:>10.1f}")
    pa = result["paired_added_p50_us"]
    print(f"per round: added p50 median {pa['median']:.1f} us (p25..p75 {pa['p25']:.1f}.."
          f"{pa['p75']:.1f}), ratio {result['paired_ratio_p50']['median']:.2f} "
          f"({result['paired_ratio_p50']['min']:.2f}..{result['paired_ratio_p50']['max']:.2f})")
    if "agent_cpu_ms_per_conn" in params:
        print(f"both agents' CPU per enrolled connection: {params['agent_cpu_ms_per_conn']} ms "
              f"(data path {params.get('data_path', '?')})")


if __name__ == "__main__":
    main()
