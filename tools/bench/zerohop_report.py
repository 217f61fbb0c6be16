#!/usr/bin/env python3
"""Turns the raw runs of tools/bench/zerohop.sh into medians, ratios, the issue's targets and JSON.

Inputs (written by zerohop.sh): meta.json (machine, parameters, targets) and raw.jsonl (one
line per loadgen run, with the machine's, the agents', holders' and server's CPU, the agents'
byte counters and the kernel TLS keys installed per node around it).

Every figure that matters is a ratio from the same run: zero-hop / plain, zero-hop / proxy-ktls
(and the proxies against plain). Targets are reported MET / NOT MET, never asserted; the exit
status is 3 only when a target did not run the data path it names (then its numbers describe
something else), 0 otherwise.
"""
import argparse
import json
import statistics
import sys

from reportlib import fmt, fmts

TARGETS = ["plain", "proxy-userspace", "proxy-ktls", "zero-hop"]
GB = 1e9  # bytes

# key, label, "higher"/"lower" is better
METRICS = [
    ("agents_share_idle", "agents' share of the machine, no traffic", "lower"),
    ("machine_share_idle", "machine busy, no traffic", "lower"),
    ("throughput_gbps", "throughput 1 stream, Gbit/s", "higher"),
    ("machine_cpu_s_per_gb", "whole-machine CPU s/GB", "lower"),
    ("machine_cpu_s_per_gb_whole", "  the same incl. process start", "lower"),
    ("agents_cpu_s_per_gb", "agents' CPU s/GB", "lower"),
    ("agents_share_transfer", "agents' share of the machine, during the transfer", "lower"),
    ("agents_share_bulk", "  the same, client start and set-up included", "lower"),
    ("bulk_gbps", "bulk transfer (16x the bytes), Gbit/s", "higher"),
    ("agents_share_long", "agents' share of the machine, during it", "lower"),
    ("rr_p50_us", "64 B round trip p50, us", "lower"),
    ("rr_p99_us", "64 B round trip p99, us", "lower"),
    ("rr_p50_added_us", "  p50 added over plain, us", "lower"),
    ("rr_p99_added_us", "  p99 added over plain, us", "lower"),
    ("agents_share_rr", "agents' share of the machine, rr", "lower"),
    ("conns_per_sec", "new connections/s", "higher"),
    ("conn_p50_us", "  connect..close p50, us", "lower"),
    ("machine_cpu_ms_per_conn", "whole-machine CPU ms/connection", "lower"),
    ("agents_cpu_ms_per_conn", "agents' CPU ms/connection", "lower"),
    ("agents_share_connrate", "agents' share of the machine, conns", "lower"),
    ("fb_p50_us", "sequential connect+1 B+close p50, us", "lower"),
    ("fb_connect_p50_us", "  of which connect() p50, us", "lower"),
    ("fb_agents_cpu_ms_per_conn", "  agents' CPU ms/connection", "lower"),
    ("fb_machine_cpu_ms_per_conn", "  whole-machine CPU ms/connection", "lower"),
]
# The ratio columns: (numerator, denominator).
RATIOS = [("zero-hop", "plain"), ("zero-hop", "proxy-ktls"), ("zero-hop", "proxy-userspace"),
          ("proxy-ktls", "plain"), ("proxy-ktls", "proxy-userspace")]

GOALS = {
    "agents_idle_bulk": "the agents spend under 1% of the machine's CPU during a zero-hop bulk "
                        "transfer (every run)",
    "machine_cpu_per_gb": "whole-machine CPU per GB of zero-hop below proxy kTLS's in every run",
    "added_latency": "added 64 B round-trip p50 over plain of zero-hop <= 0.25 x proxy kTLS's",
    "connection_rate": "connections/s of zero-hop >= proxy kTLS's",
}


def connections(row, params):
    """How many connections a measurement made."""
    res = row["result"]
    if row["kind"] == "firstbyte":
        return res["count"] + params["firstbyte_warmup"]
    return res.get("connections", 1)


def per_run_metrics(rows, nproc, params):
    """{target: {metric: {run: value}}} and the errors."""
    by_run, errors = {}, []
    plain_rr = {r["run"]: r["result"] for r in rows
                if r["target"] == "plain" and r["kind"] == "rr" and "error" not in r}
    for row in rows:
        if "error" in row:
            errors.append(row)
            continue
        t, run, res = row["target"], row["run"], row["result"]
        m = by_run.setdefault(t, {})

        def add(k, v):
            m.setdefault(k, {})[run] = v
        share = row["agents_cpu_s"] / (row["wall_s"] * nproc) if row["wall_s"] > 0 else None
        if row["kind"] == "idle":
            add("agents_share_idle", share)
            add("machine_share_idle", row["system_busy_s"] / (row["wall_s"] * nproc))
        elif row["kind"] == "throughput":
            gb = res["bytes"] / GB
            add("throughput_gbps", res["gbps"])
            # loadgen's own /proc/stat samples bracket the clocked transfer (after connect);
            # the script's bracket the whole client process, its start-up included.
            if res.get("machine_busy_s", -1) >= 0:
                add("machine_cpu_s_per_gb", res["machine_busy_s"] / gb)
            add("machine_cpu_s_per_gb_whole", row["system_busy_s"] / gb)
            add("agents_cpu_s_per_gb", row["agents_cpu_s"] / gb)
            add("agents_share_bulk", share)
            # loadgen's --watch samples of the agents bracket the clocked transfer.
            if res.get("watched_cpu_s", -1) >= 0 and res["seconds"] > 0:
                add("agents_share_transfer", res["watched_cpu_s"] / (res["seconds"] * nproc))
        elif row["kind"] == "bulk":
            add("bulk_gbps", res["gbps"])
            if res.get("watched_cpu_s", -1) >= 0 and res["seconds"] > 0:
                add("agents_share_long", res["watched_cpu_s"] / (res["seconds"] * nproc))
        elif row["kind"] == "rr":
            add("rr_p50_us", res["p50_us"])
            add("rr_p99_us", res["p99_us"])
            add("agents_share_rr", share)
            if t != "plain" and run in plain_rr:
                add("rr_p50_added_us", res["p50_us"] - plain_rr[run]["p50_us"])
                add("rr_p99_added_us", res["p99_us"] - plain_rr[run]["p99_us"])
        elif row["kind"] == "connrate":
            add("conns_per_sec", res["conns_per_sec"])
            add("conn_p50_us", res["conn_p50_us"])
            add("connrate_errors", res["errors"])
            add("agents_share_connrate", share)
            if res["connections"]:
                if res.get("machine_busy_s", -1) >= 0:
                    add("machine_cpu_ms_per_conn", res["machine_busy_s"] * 1e3 / res["connections"])
                add("agents_cpu_ms_per_conn", row["agents_cpu_s"] * 1e3 / res["connections"])
        elif row["kind"] == "firstbyte":
            n = connections(row, params)
            add("fb_p50_us", res["p50_us"])
            add("fb_connect_p50_us", res["connect_p50_us"])
            add("fb_agents_cpu_ms_per_conn", row["agents_cpu_s"] * 1e3 / n)
            add("fb_machine_cpu_ms_per_conn", row["system_busy_s"] * 1e3 / n)
    return by_run, errors


def path_problems(meta, rows):
    """Why a measurement did not run the data path its target names."""
    problems = []
    for r in rows:
        if "error" in r or r["kind"] == "idle":
            continue
        t, res = r["target"], r["result"]
        conns = connections(r, meta["params"])
        ka, kb, nbytes = r["ktls_installs"]["a"], r["ktls_installs"]["b"], r["agent_bytes"]
        where = f"{t} run {r['run']} {r['kind']}"
        if nbytes is None:
            problems.append(f"{where}: the agents' ktrust_bytes_total could not be read")
        elif t in ("plain", "zero-hop") and nbytes != 0:
            problems.append(f"{where}: the agents carried {nbytes} bytes, expected none")
        elif t.startswith("proxy-") and nbytes == 0:
            problems.append(f"{where}: the agents carried no bytes, expected all of them")
        if t in ("proxy-ktls", "zero-hop"):
            if ka is None or kb is None or ka < 2 * conns or kb < 2 * conns:
                problems.append(f"{where}: kernel TLS keys installed: node a {ka}, node b {kb} for "
                                f"{conns} connection(s), expected >= 2 per connection on each")
        elif ka or kb:
            problems.append(f"{where}: {ka} + {kb} kernel TLS keys installed, expected none")
    return problems


def evaluate_goals(medians, by_run, tg):
    ok = lambda t: tg.get(t, {}).get("status") == "ok" and t in medians
    goals = {}

    def goal(name, met, detail, **values):
        goals[name] = {"goal": GOALS[name], "met": met, "detail": detail, **values}

    if not (ok("zero-hop") and ok("proxy-ktls")):
        for name in GOALS:
            goal(name, None, "not measurable here: needs the zero-hop and proxy-ktls targets "
                             "(kernel TLS: run.sh vm)")
        return goals
    zh, pk = by_run["zero-hop"], by_run["proxy-ktls"]
    pct = lambda values, digits: ", ".join(f"{100 * v:.{digits}f}%" for v in values)
    runs_of = lambda target, key: [v for _, v in sorted(by_run.get(target, {}).get(key, {}).items())]
    shares = runs_of("zero-hop", "agents_share_long")
    goal("agents_idle_bulk", bool(shares) and max(shares) < 0.01,
         f"agents' CPU / machine CPU during the zero-hop bulk transfer: per run "
         f"{pct(shares, 2)} (during plain's, which they take no part in: "
         f"{pct(runs_of('plain', 'agents_share_long'), 2)}); during the short transfer, one "
         f"connection's set-up overlapping it: {pct(runs_of('zero-hop', 'agents_share_transfer'), 2)}"
         f" (proxy kTLS: {pct(runs_of('proxy-ktls', 'agents_share_transfer'), 0)}); over the "
         f"client's whole life, its start and set-up included: "
         f"{pct(runs_of('zero-hop', 'agents_share_bulk'), 1)}; with no traffic at all, just "
         f"before: {pct(runs_of('zero-hop', 'agents_share_idle'), 1)}",
         per_run=shares, short_per_run=runs_of("zero-hop", "agents_share_transfer"),
         idle_per_run=runs_of("zero-hop", "agents_share_idle"))
    a, b = zh.get("machine_cpu_s_per_gb", {}), pk.get("machine_cpu_s_per_gb", {})
    per = [a[r] / b[r] for r in sorted(a) if b.get(r)]
    goal("machine_cpu_per_gb", bool(per) and all(x < 1 for x in per),
         f"zero-hop / proxy kTLS whole-machine CPU s/GB, per run {fmts(per)} (medians "
         f"{fmt(medians['zero-hop'].get('machine_cpu_s_per_gb'))} / "
         f"{fmt(medians['proxy-ktls'].get('machine_cpu_s_per_gb'))} s/GB)", per_run=per)
    za, pa = medians["zero-hop"].get("rr_p50_added_us"), medians["proxy-ktls"].get("rr_p50_added_us")
    ra, rp = zh.get("rr_p50_added_us", {}), pk.get("rr_p50_added_us", {})
    per = [ra[r] / rp[r] for r in sorted(ra) if rp.get(r)]
    x = za / pa if za is not None and pa else None
    goal("added_latency", x is not None and x <= 0.25,
         f"added p50: zero-hop +{fmt(za)} us, proxy kTLS +{fmt(pa)} us = {fmt(x)} x "
         f"(per run {fmts(per)})", ratio=x, per_run=per)
    a, b = zh.get("conns_per_sec", {}), pk.get("conns_per_sec", {})
    per = [a[r] / b[r] for r in sorted(a) if b.get(r)]
    x = (medians["zero-hop"]["conns_per_sec"] / medians["proxy-ktls"]["conns_per_sec"]
         if medians["proxy-ktls"].get("conns_per_sec") else None)
    goal("connection_rate", x is not None and x >= 1.0,
         f"connections/s zero-hop / proxy kTLS = {fmt(x)} (per run {fmts(per)}; "
         f"{fmt(medians['zero-hop'].get('conns_per_sec'))} vs "
         f"{fmt(medians['proxy-ktls'].get('conns_per_sec'))}/s)", ratio=x, per_run=per)
    return goals


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--meta", required=True)
    ap.add_argument("--raw", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    meta = json.load(open(args.meta))
    rows = [json.loads(l) for l in open(args.raw) if l.strip()]
    nproc = meta["machine"]["nproc"]
    tg = meta["targets"]
    by_run, errors = per_run_metrics(rows, nproc, meta["params"])
    medians = {t: {k: statistics.median(v.values()) for k, v in m.items() if v}
               for t, m in by_run.items()}
    ratios = {}
    for num, den in RATIOS:
        if num not in medians or den not in medians:
            continue
        col = ratios.setdefault(f"{num} / {den}", {})
        for key, _, _ in METRICS:
            a, b = medians[num].get(key), medians[den].get(key)
            if a is None or not b:
                continue
            ra, rb = by_run[num].get(key, {}), by_run[den].get(key, {})
            col[key] = {"ratio_of_medians": a / b,
                        "per_run": [ra[r] / rb[r] for r in sorted(ra) if rb.get(r)]}
    goals = evaluate_goals(medians, by_run, tg)
    problems = path_problems(meta, rows)
    result = {
        "schema": "ktrust-bench-zerohop/1",
        **{k: meta[k] for k in ("started", "duration_s", "mode", "in_vm", "params", "machine",
                                "window", "agents_data_path_auto")},
        "targets": tg,
        "medians": medians,
        "ratios": {"definition": "numerator / denominator: the ratio of the medians over runs, "
                                 "and the same ratio run by run (paired)", **ratios},
        "goals": goals,
        "path_problems": problems,
        "errors": errors,
        "runs": rows,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    p = meta["params"]
    print()
    print(f"ktrust zero-hop bench ({meta['mode']}{', in the kTLS VM' if meta['in_vm'] else ''}): "
          f"{nproc} cores, Linux {meta['machine']['kernel']}; two simulated nodes, real agents")
    if meta["in_vm"]:
        print("QEMU TCG emulates every instruction, AES included: absolute numbers mean nothing, "
              "only ratios within this run do")
    print(f"medians of {p['runs']} run(s); throughput {p['throughput_bytes'] >> 20} MiB; rr "
          f"{p['rr_count']} x 64 B; connrate {p['connrate_seconds']} s at concurrency "
          f"{p['connrate_concurrency']}")
    shown = [t for t in TARGETS if t in tg]
    cols = [(n, d) for n, d in RATIOS[:2]]
    w0, w = 38, 20
    print()
    print("(medians)".ljust(w0) + "".join(t.rjust(w) for t in shown) +
          "".join(f"zero-hop/{d}".rjust(w) for n, d in cols))
    for key, label, better in METRICS:
        if not any(key in medians.get(t, {}) for t in shown):
            continue
        cells = [fmt(medians.get(t, {}).get(key)) if tg[t]["status"] == "ok" else tg[t]["status"]
                 for t in shown]
        rcells = [fmt(ratios.get(f"{n} / {d}", {}).get(key, {}).get("ratio_of_medians"))
                  for n, d in cols]
        print(f"{label} [{better[0]}]".ljust(w0) + "".join(c.rjust(w) for c in cells) +
              "".join(c.rjust(w) for c in rcells))
    print()
    for t in shown:
        if tg[t]["status"] != "ok":
            print(f"{t}: {tg[t]['status']}: {tg[t]['reason']}")
    errs = {t: sum(v.get("connrate_errors", {}).values()) for t, v in by_run.items()}
    if any(errs.values()):
        print("connection errors: " + ", ".join(f"{t} {n}" for t, n in errs.items() if n))
    for e in errors:
        print(f"ERROR {e['target']} run {e['run']} {e['kind']}: {e['error']}")
    idle = [r for r in rows if r["kind"] == "idle" and r.get("threads")]
    if idle:
        print("agents' CPU with no traffic (3 s windows), the busiest threads of the last window:")
        for r in idle:
            print(f"  {r['target']} run {r['run']} ({r['agents_mode']}): agents {r['agents_cpu_s']:.2f} s "
                  f"CPU in {r['wall_s']:.1f} s, machine busy {r['system_busy_s']:.2f} s")
        last = idle[-1]
        for th in last["threads"][:6]:
            print(f"    agent {th['agent']} thread {th['tid']}: {th['cpu_s']:.2f} s, now in {th['wchan']}")
    bulk = [r for r in rows
            if r["kind"] in ("throughput", "bulk") and r["result"].get("watched_threads")]
    if bulk:
        print("agents' busiest threads during each clocked transfer (loadgen --watch):")
        for r in bulk:
            res = r["result"]
            threads = ", ".join(f"{t['thread']} {t['cpu_s'] * 1e3:.1f} ms"
                                for t in res["watched_threads"])
            print(f"  {r['target']} run {r['run']} {r['kind']}: {res['watched_cpu_s'] * 1e3:.1f} ms in "
                  f"{res['seconds']:.1f} s: {threads}")
    print("per run (paired) ratios:")
    for name, col in ratios.items():
        for key in ("throughput_gbps", "machine_cpu_s_per_gb", "rr_p50_added_us", "conns_per_sec",
                    "fb_p50_us"):
            if key in col:
                print(f"  {name:32} {key:24} {fmts(col[key]['per_run'])}")
    print()
    print("issue targets (reported, not asserted):")
    for name, g in goals.items():
        verdict = {True: "MET", False: "NOT MET", None: "n/a"}[g["met"]]
        print(f"  {verdict:8} {g['goal']}")
        print(f"           {g['detail']}")
    print(f"total time {meta['duration_s']} s")
    for pr in problems:
        print(f"ERROR: {pr}")
    if problems:
        return 3
    print("data paths verified per measurement: plain and zero-hop moved no byte through the "
          "agents; proxy-ktls and zero-hop installed >= 2 kernel TLS keys per connection on each "
          "node, plain and proxy-userspace none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
