#!/usr/bin/env python3
"""Turns the raw runs of tools/bench/loopback.sh into medians, ratios, a table and a JSON file.

Inputs (all written by loopback.sh): meta.json (machine, parameters, per-target
status and ktrust data path), raw.jsonl (one line per loadgen run with the
proxies' CPU around it), speed.txt (`openssl speed -mr` output) and the work
directory (the proxy configurations, embedded in the JSON for reproducibility).

Besides the table it prints the kTLS / userspace ratios (ktrust vs
ktrust-userspace, same run) and checks the performance goals of the issue
(GOALS below) against this run.
"""
import argparse
import json
import os
import statistics
import sys

from reportlib import fmt, fmts, per_run_ratio

TARGETS = ["plain", "stunnel", "haproxy", "ktrust", "ktrust-userspace", "ktrust-resume"]
PEERS = ["stunnel", "haproxy"]
KTRUST = ["ktrust", "ktrust-userspace"]  # --data-path auto / userspace
GB = 1e9  # bytes

# key, label, unit, "higher"/"lower" is better, has a plain-TCP value
METRICS = [
    ("throughput_gbps", "throughput 1 stream, Gbit/s", "higher", True),
    ("rr_p50_us", "64 B round trip p50, us", "lower", True),
    ("rr_p99_us", "64 B round trip p99, us", "lower", True),
    ("rr_p50_added_us", "  p50 added over plain, us", "lower", False),
    ("rr_p99_added_us", "  p99 added over plain, us", "lower", False),
    ("conns_per_sec", "new connections/s", "higher", True),
    ("proxy_cpu_s_per_gb", "proxy CPU s/GB (both proxies)", "lower", False),
    ("total_cpu_s_per_gb", "all CPU s/GB (+loadgen, backend)", "lower", True),
    ("proxy_cpu_ms_per_conn", "proxy CPU ms/connection", "lower", False),
    ("conns_vs_floor", "conn/s as fraction of floor", "higher", False),
]

FLOOR_FORMULA = (
    "cpu_per_handshake = 2 sides * (1/ecdsa_p256_sign_per_s + 2/ecdsa_p256_verify_per_s "
    "+ 1/ecdh_x25519_per_s); per side: sign own CertificateVerify, verify the peer's "
    "CertificateVerify and the peer leaf's signature by the root (chain leaf -> root), one "
    "X25519 derive. Excludes key generation, HKDF, hashing, certificate parsing and syscalls, "
    "so it is a lower bound on CPU per handshake. handshakes_per_s_per_core = "
    "1/cpu_per_handshake; machine floor = nproc * per core. conns_vs_floor = conns_per_sec / "
    "machine floor (the whole machine also runs the load generator and the backend). "
    "cpu_vs_floor = floor cpu_per_handshake / proxy CPU per connection (1.0 = the proxies "
    "spend no more CPU per connection than the public-key maths)."
)

# ktrust / ktrust-userspace, same run: the kTLS data path against OpenSSL's record layer.
KTLS_RATIO_METRICS = ["throughput_gbps", "proxy_cpu_s_per_gb", "total_cpu_s_per_gb",
                      "rr_p50_us", "rr_p99_us", "conns_per_sec", "proxy_cpu_ms_per_conn"]

# The performance goals of the issue, as this script evaluates them.
GOALS = {
    "userspace_vs_best_peer": "userspace path: throughput >= the best peer's, with lower proxy "
                              "CPU s/GB than the best peer's",
    "ktls_vs_userspace": "kTLS path: throughput >= 1.5 x the userspace path's, same VM run",
    "added_latency": "added 64 B round-trip latency (p50 over plain TCP) of the engine pair "
                     "<= 1.5 x the best peer's added latency",
    "connection_rate": "connection rate within 20% of the handshake CPU floor: floor CPU per "
                       "handshake / proxy CPU per connection >= 0.8",
}


def parse_speed(path):
    """ECDSA P-256 sign/verify and ECDH P-256 / X25519 ops per second from `openssl speed -mr`."""
    out = {}
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return out
    for line in lines:
        f = line.split(":")
        if line.startswith("+F4:") and len(f) >= 5 and f[2] == "256":
            out["ecdsa_p256_sign_per_s"] = float(f[3])
            out["ecdsa_p256_verify_per_s"] = float(f[4])
        elif line.startswith("+F5:") and len(f) >= 4:
            if f[2] == "256":
                out["ecdh_p256_per_s"] = float(f[3])
            elif f[2] == "253":
                out["ecdh_x25519_per_s"] = float(f[3])
    return out


S_TIME_WHAT = {
    "full": "openssl s_time -new <-> openssl s_server -Verify, same certificates, "
            "TLS_AES_128_GCM_SHA256, X25519, no tickets; CPU of both processes / handshakes",
    "resumed": "openssl s_time -reuse <-> openssl s_server -Verify -no_ticket -num_tickets 1 "
               "(stateful tickets, as ktrust's server), same certificates, suite and group; "
               "CPU of both processes / handshakes, the first one full",
}


def read_s_time(path, kind="full"):
    """An openssl s_time / s_server reference: CPU of both ends per mTLS handshake."""
    try:
        ref = json.load(open(path))
    except (OSError, TypeError, ValueError):
        return None
    if not ref.get("connections"):
        return None
    cpu = ref["client_cpu_s"] + ref["server_cpu_s"]
    return {
        "what": S_TIME_WHAT[kind],
        **ref,
        "cpu_us_per_handshake": cpu * 1e6 / ref["connections"],
    }


def handshake_floor(speed, nproc, reference, resumed=None):
    need = ("ecdsa_p256_sign_per_s", "ecdsa_p256_verify_per_s", "ecdh_x25519_per_s")
    if not all(k in speed for k in need):
        return None
    per_side = (1 / speed["ecdsa_p256_sign_per_s"] + 2 / speed["ecdsa_p256_verify_per_s"] +
                1 / speed["ecdh_x25519_per_s"])
    cpu = 2 * per_side
    return {
        "formula": FLOOR_FORMULA,
        **speed,
        "cpu_us_per_handshake": cpu * 1e6,
        "handshakes_per_s_per_core": 1 / cpu,
        "handshakes_per_s_machine": nproc / cpu,
        "openssl_reference": reference,
        "openssl_resumed_reference": resumed,
    }


def per_run_metrics(rows, floor):
    """{target: {metric: [value per run]}}, the same keyed by run, and the error list."""
    values = {}
    by_run = {}
    errors = []
    rows = [r for r in rows if not r.get("discarded")]
    plain_rr = {r["run"]: r["result"] for r in rows
                if r["target"] == "plain" and r["kind"] == "rr" and "error" not in r}
    for row in rows:
        t = row["target"]
        if "error" in row:
            errors.append(row)
            continue
        res = row["result"]
        m = values.setdefault(t, {})
        mr = by_run.setdefault(t, {})

        def add(k, v):
            m.setdefault(k, []).append(v)
            mr.setdefault(k, {})[row["run"]] = v
        if row["kind"] == "throughput":
            gb = res["bytes"] / GB
            add("throughput_gbps", res["gbps"])
            if t != "plain":
                add("proxy_cpu_s_per_gb", row["proxy_cpu_s"] / gb)
            add("total_cpu_s_per_gb",
                (row["proxy_cpu_s"] + row["backend_cpu_s"] + res["client_cpu_s"]) / gb)
        elif row["kind"] == "rr":
            add("rr_p50_us", res["p50_us"])
            add("rr_p99_us", res["p99_us"])
            # Paired with plain TCP of the same run: what the pair adds to a round trip.
            if t != "plain" and row["run"] in plain_rr:
                add("rr_p50_added_us", res["p50_us"] - plain_rr[row["run"]]["p50_us"])
                add("rr_p99_added_us", res["p99_us"] - plain_rr[row["run"]]["p99_us"])
        elif row["kind"] == "connrate":
            add("conns_per_sec", res["conns_per_sec"])
            add("connrate_errors", res["errors"])
            if t != "plain" and res["connections"] > 0:
                add("proxy_cpu_ms_per_conn", row["proxy_cpu_s"] * 1e3 / res["connections"])
            if t != "plain" and floor:
                add("conns_vs_floor", res["conns_per_sec"] / floor["handshakes_per_s_machine"])
                if row["proxy_cpu_s"] > 0 and res["connections"] > 0:
                    add("cpu_vs_floor", floor["cpu_us_per_handshake"] /
                        (row["proxy_cpu_s"] * 1e6 / res["connections"]))
        if row.get("ktls_installs") is not None:
            conns = res.get("connections", 1)
            if conns:
                add(f"ktls_installs_per_conn_{row['kind']}", row["ktls_installs"] / conns)
    return values, by_run, errors


def best_peer(medians, key, better):
    cands = [(medians[p][key], p) for p in PEERS if key in medians.get(p, {})]
    if not cands:
        return None
    return (max if better == "higher" else min)(cands)


def same_run_ratios(medians, by_run, t, ref, keys, definition):
    """t / ref per metric: the ratio of medians and, per run, the same ratio."""
    out = {"definition": definition, "ratios": {}, "per_run": {}}
    for key in keys:
        a, b = medians[t].get(key), medians[ref].get(key)
        if a is None or not b:
            continue
        out["ratios"][key] = a / b
        out["per_run"][key] = per_run_ratio(by_run, t, ref, key)
    return out


def ktls_vs_userspace(meta, medians, by_run):
    """ktrust / ktrust-userspace per metric: the ratio of medians and the per-run range."""
    if not all(t in medians for t in KTRUST):
        return None
    out = {"data_paths": {t: meta["targets"][t].get("data_path") for t in KTRUST}}
    out.update(same_run_ratios(
        medians, by_run, "ktrust", "ktrust-userspace", KTLS_RATIO_METRICS,
        "ktrust (--data-path auto) / ktrust-userspace, medians of the same run; "
        "per_run: the same ratio for each run"))
    return out


# ktrust-resume / ktrust, same run: TLS 1.3 session resumption against full handshakes.
RESUME_RATIO_METRICS = ["conns_per_sec", "proxy_cpu_ms_per_conn", "rr_p50_us",
                        "throughput_gbps"]


def resumed_vs_full(medians, by_run):
    """ktrust-resume / ktrust per metric: the ratio of medians and the per-run range."""
    if not all(t in medians for t in ("ktrust", "ktrust-resume")):
        return None
    return same_run_ratios(
        medians, by_run, "ktrust-resume", "ktrust", RESUME_RATIO_METRICS,
        "ktrust-resume (--resumption) / ktrust, both --data-path auto, medians of the same "
        "run; per_run: the same ratio for each run")


def evaluate_goals(meta, medians, to_peer, best, kvu, floor, by_run):
    """{goal: {"goal", "met" (True/False/None = not measurable here), "detail", values}}."""
    tg = meta["targets"]
    ok = lambda t: tg.get(t, {}).get("status") == "ok" and t in medians
    peers = any(ok(p) for p in PEERS)
    userspace = [t for t in KTRUST if ok(t) and tg[t].get("data_path") == "userspace"]
    ktls = ok("ktrust") and (tg["ktrust"].get("data_path") or "").startswith("ktls")
    goals = {}

    def goal(name, met, detail, **values):
        goals[name] = {"goal": GOALS[name], "met": met, "detail": detail, **values}

    if userspace and peers:
        per = {}
        for t in userspace:
            thr = to_peer.get(t, {}).get("throughput_gbps")
            cpu = to_peer.get(t, {}).get("proxy_cpu_s_per_gb")
            per[t] = {"throughput_x_best_peer": thr, "proxy_cpu_per_gb_x_best_peer": cpu,
                      "met": thr is not None and cpu is not None and thr >= 1.0 and cpu < 1.0,
                      "throughput_per_run": per_run_ratio(by_run, t, best.get("throughput_gbps"),
                                                          "throughput_gbps"),
                      "proxy_cpu_per_gb_per_run": per_run_ratio(
                          by_run, t, best.get("proxy_cpu_s_per_gb"), "proxy_cpu_s_per_gb")}
        t = "ktrust-userspace" if "ktrust-userspace" in per else userspace[0]
        p = per[t]
        goal("userspace_vs_best_peer", p["met"],
             f"{t}: throughput {fmt(p['throughput_x_best_peer'])} x best peer "
             f"({best.get('throughput_gbps')}; per run {fmts(p['throughput_per_run'])}), proxy CPU "
             f"s/GB {fmt(p['proxy_cpu_per_gb_x_best_peer'])} x best peer "
             f"({best.get('proxy_cpu_s_per_gb')}; per run {fmts(p['proxy_cpu_per_gb_per_run'])})",
             targets=per)
    else:
        goal("userspace_vs_best_peer", None,
             "not measurable here: needs a userspace ktrust target and stunnel or haproxy")

    if ktls and kvu and "throughput_gbps" in kvu["ratios"]:
        r = kvu["ratios"]["throughput_gbps"]
        goal("ktls_vs_userspace", r >= 1.5,
             f"throughput kTLS / userspace = {fmt(r)} (per run "
             f"{fmts(kvu['per_run']['throughput_gbps'])})", ratio=r)
    else:
        goal("ktls_vs_userspace", None,
             "not measurable here: the ktrust target did not run on kernel TLS "
             f"({(tg.get('ktrust') or {}).get('data_path_reason') or 'not measured'}); "
             "use run.sh --vm")

    if peers and any(ok(t) for t in KTRUST):
        bp = best.get("rr_p50_added_us")
        ref = medians.get(bp, {}).get("rr_p50_added_us") if bp else None
        per = {}
        for t in KTRUST:
            if not ok(t) or "rr_p50_added_us" not in medians[t]:
                continue
            v = medians[t]["rr_p50_added_us"]
            v99 = medians[t].get("rr_p99_added_us")
            per[t] = {"p50_added_us": v, "p99_added_us": v99,
                      "p50_x_best_peer": v / ref if ref and ref > 0 else None,
                      "p99_x_best_peer": to_peer.get(t, {}).get("rr_p99_added_us"),
                      "p50_per_run": per_run_ratio(by_run, t, bp, "rr_p50_added_us")}
            per[t]["met"] = per[t]["p50_x_best_peer"] is not None and per[t]["p50_x_best_peer"] <= 1.5
        goal("added_latency", all(p["met"] for p in per.values()) if per else None,
             "; ".join(f"{t}: p50 +{fmt(p['p50_added_us'])} us = {fmt(p['p50_x_best_peer'])} x "
                       f"best peer ({bp}, +{fmt(ref)} us; per run {fmts(p['p50_per_run'])}); "
                       f"p99 {fmt(p['p99_x_best_peer'])} x" for t, p in per.items()), targets=per)
    else:
        goal("added_latency", None, "not measurable here: needs a ktrust target and a peer")

    per = {t: medians[t]["cpu_vs_floor"] for t in KTRUST if ok(t) and "cpu_vs_floor" in medians[t]}
    if per and floor:
        goal("connection_rate", all(v >= 0.8 for v in per.values()),
             "; ".join(f"{t}: {fmt(v)} x floor rate per CPU second, conn/s = "
                       f"{fmt(medians[t].get('conns_vs_floor'))} x machine floor"
                       for t, v in per.items()),
             targets={t: {"cpu_vs_floor": v, "conns_vs_floor": medians[t].get("conns_vs_floor"),
                          "met": v >= 0.8} for t, v in per.items()})
    else:
        goal("connection_rate", None, "not measurable here: no floor or no ktrust target")
    return goals


def ktls_problems(meta, rows):
    """Why the ktrust target did not demonstrably run on kernel TLS while measured."""
    problems = []
    for t in KTRUST:
        if meta["targets"].get(t, {}).get("status") != "ok":
            problems.append(f"{t} was not measured: {meta['targets'].get(t, {}).get('reason')}")
    if meta["targets"].get("ktrust", {}).get("data_path") != "ktls":
        problems.append(f"ktrust's ready line says data path "
                        f"{meta['targets'].get('ktrust', {}).get('data_path')!r}, not 'ktls'")
    for r in rows:
        if r["target"] not in KTRUST or "error" in r or r.get("discarded"):
            continue
        n, conns = r.get("ktls_installs"), r["result"].get("connections", 1)
        where = f"{r['target']} run {r['run']} {r['kind']}"
        if n is None:
            problems.append(f"{where}: no /proc/net/tls_stat")
        elif r["target"] == "ktrust" and n < 3.5 * conns:
            problems.append(f"{where}: {n} kTLS key installs for {conns} connection(s)")
        elif r["target"] == "ktrust-userspace" and n:
            problems.append(f"{where}: {n} kTLS key installs, expected none")
    return problems


def read_configs(work):
    names = ["stunnel-a.conf", "stunnel-b.conf", "haproxy-a.cfg", "haproxy-b.cfg"]
    out = {}
    for n in names:
        p = os.path.join(work, n)
        if os.path.exists(p):
            out[n] = open(p).read()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--meta", required=True)
    ap.add_argument("--raw", required=True)
    ap.add_argument("--speed", required=True)
    ap.add_argument("--s-time", required=True)
    ap.add_argument("--s-time-resumed", help="the resumed reference (s_time -reuse), if measured")
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--expect-ktls", action="store_true",
                    help="exit 3 unless ktrust ran on kernel TLS while measuring (every ktrust "
                         "measurement installed TX+RX keys on both sides, about 4 per connection, "
                         "from /proc/net/tls_stat) and ktrust-userspace installed none")
    args = ap.parse_args()

    meta = json.load(open(args.meta))
    rows = [json.loads(l) for l in open(args.raw) if l.strip()]
    nproc = meta["machine"]["nproc"]
    floor = handshake_floor(parse_speed(args.speed), nproc, read_s_time(args.s_time),
                           read_s_time(args.s_time_resumed, "resumed"))
    values, by_run, errors = per_run_metrics(rows, floor)

    # CPU the machine spent during the measurements that none of our processes used.
    for r in rows:
        # /proc/stat counts 10 ms ticks: too coarse for a short measurement.
        if r.get("wall_s", 0) * nproc >= 1.0:
            ours = r["proxy_cpu_s"] + r["backend_cpu_s"] + r["result"].get("client_cpu_s", 0)
            r["foreign_fraction"] = round(
                max(0.0, r["system_busy_s"] - ours) / (r["wall_s"] * nproc), 3)
    kept = [r for r in rows if not r.get("discarded")]
    discarded = [r for r in rows if r.get("discarded")]
    noisy_rows = {}
    for r in kept if not meta.get("in_vm") else []:
        if r.get("foreign_fraction", 0) > 0.10:
            noisy_rows[r["target"]] = noisy_rows.get(r["target"], 0) + 1
    sysc = meta.get("system_cpu") or {}
    known = sum(r.get("proxy_cpu_s", 0) + r.get("backend_cpu_s", 0) +
                r.get("result", {}).get("client_cpu_s", 0) for r in rows)
    if sysc.get("wall_s"):
        capacity = sysc["wall_s"] * nproc
        sysc["ours_s"] = known
        sysc["foreign_s"] = max(0.0, sysc["busy_s"] - known)
        sysc["foreign_fraction"] = sysc["foreign_s"] / capacity
        sysc["steal_fraction"] = sysc["steal_s"] / capacity
        # In the VM nothing else runs: the unattributed CPU is this script's own helpers
        # (fork+exec is slow under TCG) and kernel threads; the host side checks the host.
        # Measurements taken while others were busy are repeated (loopback.sh), so what counts is
        # the kept ones; the whole window's share is reported too.
        sysc["discarded_measurements"] = len(discarded)
        sysc["kept_max_foreign_fraction"] = max(
            (r.get("foreign_fraction", 0) for r in kept), default=0)
        sysc["noisy"] = not meta.get("in_vm") and (
            sysc["kept_max_foreign_fraction"] > 0.10 or sysc["steal_fraction"] > 0.05)

    medians = {t: {k: statistics.median(v) for k, v in m.items()} for t, m in values.items()}
    to_plain, to_peer, best = {}, {}, {}
    for key, _, better, has_plain in METRICS:
        bp = best_peer(medians, key, better)
        if bp:
            best[key] = bp[1]
        plain = medians.get("plain", {}).get(key) if has_plain else None
        for t, m in medians.items():
            if key not in m:
                continue
            if plain:
                to_plain.setdefault(t, {})[key] = m[key] / plain
            if bp and bp[0] and t != "plain":
                to_peer.setdefault(t, {})[key] = m[key] / bp[0]

    kvu = ktls_vs_userspace(meta, medians, by_run)
    rvf = resumed_vs_full(medians, by_run)
    goals = evaluate_goals(meta, medians, to_peer, best, kvu, floor, by_run)

    result = {
        "schema": "ktrust-bench/2",
        **{k: meta[k] for k in ("started", "duration_s", "mode", "in_vm", "params", "machine",
                                "ports")},
        "system_cpu": sysc,
        "targets": meta["targets"],
        "handshake_floor": floor,
        "medians": medians,
        "ratios": {
            "definition": "value / reference, medians of runs; the best peer is the better of "
                          "stunnel and haproxy for each metric",
            "to_plain": to_plain,
            "to_best_peer": to_peer,
            "best_peer": best,
        },
        "ktls_vs_userspace": kvu,
        "resumed_vs_full": rvf,
        "goals": goals,
        "errors": errors,
        "runs": rows,
        "configs": read_configs(args.work),
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    # ---------------------------------------------------------------- table
    shown = [t for t in TARGETS if t in meta["targets"]]
    m = meta["machine"]
    p = meta["params"]
    print()
    print(f"ktrust bench ({meta['mode']}{', in the kTLS VM' if meta.get('in_vm') else ''}): "
          f"{nproc} cores, Linux {m['kernel']}, {m['openssl']}")
    if meta.get("in_vm"):
        print("QEMU TCG emulates every instruction: absolute numbers mean nothing, "
              "only ratios within this run do")
    print(f"medians of {p['runs']} run(s); throughput {p['throughput_bytes'] >> 20} MiB; "
          f"rr {p['rr_count']} x 64 B; connrate {p['connrate_seconds']} s at concurrency "
          f"{p['connrate_concurrency']}")
    w0 = 40
    w = max(10, max(len(t) for t in shown) + 2)
    print()
    print("(medians; x plain and x best peer are value / reference)".ljust(w0) +
          "".join(t.rjust(w) for t in shown))
    for key, label, better, has_plain in METRICS:
        if not any(key in medians.get(t, {}) for t in shown):
            continue
        cells = []
        for t in shown:
            if meta["targets"][t]["status"] != "ok":
                cells.append(meta["targets"][t]["status"])
            else:
                cells.append(fmt(medians.get(t, {}).get(key)))
        print(f"{label} [{better} better]")
        print("  value".ljust(w0) + "".join(c.rjust(w) for c in cells))
        if has_plain:
            print("  x plain".ljust(w0) + "".join(
                (fmt(to_plain[t][key]) if key in to_plain.get(t, {}) else "").rjust(w)
                for t in shown))
        if key in best:
            print(f"  x best peer ({best[key]})".ljust(w0) + "".join(
                (fmt(to_peer[t][key]) if key in to_peer.get(t, {}) else "").rjust(w)
                for t in shown))
    print()
    for t in shown:
        info = meta["targets"][t]
        if info["status"] != "ok":
            print(f"{t}: {info['status']}: {info['reason']}")
            continue
        if info.get("protocol"):
            print(f"{t}: B negotiated {info['protocol']} {info['ciphersuite']} "
                  f"{info['key_exchange']}, session tickets: {info.get('session_tickets') or '?'}")
            unlike = [what for what, ok in (
                ("not TLS 1.3", info["protocol"] == "TLSv1.3"),
                ("not TLS_AES_128_GCM_SHA256", info["ciphersuite"] == "TLS_AES_128_GCM_SHA256"),
                ("not X25519", info["key_exchange"].startswith("X25519")),
                ("sends session tickets", info.get("session_tickets") == "no"),
            ) if not ok]
            if unlike:
                print(f"  WARNING: {t} is not like-for-like: {', '.join(unlike)}")
        if info.get("data_path_flag"):
            print(f"  --data-path {info['data_path_flag']}: ran on {info.get('data_path') or '?'} "
                  f"({info.get('data_path_reason') or '?'}); connections: "
                  f"{info.get('connection_data_path') or '?'}")
            inst = {k: medians.get(t, {}).get(f"ktls_installs_per_conn_{k}")
                    for k in ("throughput", "rr", "connrate")}
            if any(v is not None for v in inst.values()):
                print("  kernel TLS keys installed per connection while measuring "
                      "(/proc/net/tls_stat; 4 = TX+RX on both sides): " +
                      ", ".join(f"{k} {fmt(v)}" for k, v in inst.items() if v is not None))
    if meta.get("in_vm") is False and all(
            meta["targets"].get(t, {}).get("data_path") == "userspace" for t in KTRUST):
        print("NOTE: this kernel has no kernel TLS, so ktrust (auto) and ktrust-userspace both "
              "ran the userspace data path: two measurements of the same thing")
    errs = {t: sum(v.get("connrate_errors", [0])) for t, v in values.items()}
    if any(errs.values()):
        print("connection errors: " + ", ".join(f"{t} {n}" for t, n in errs.items() if n))
    for e in errors:
        print(f"ERROR {e['target']} run {e['run']} {e['kind']}: {e['error']}")
    if floor:
        print(f"handshake CPU floor (one core): ECDSA P-256 sign "
              f"{1e6 / floor['ecdsa_p256_sign_per_s']:.1f} us, verify "
              f"{1e6 / floor['ecdsa_p256_verify_per_s']:.1f} us, X25519 "
              f"{1e6 / floor['ecdh_x25519_per_s']:.1f} us")
        print(f"  2 x (sign + 2 verify + ECDH) = {floor['cpu_us_per_handshake']:.0f} us per "
              f"handshake -> {floor['handshakes_per_s_per_core']:.0f}/s per core, "
              f"{floor['handshakes_per_s_machine']:.0f}/s on {nproc} cores")
        ref = floor.get("openssl_reference")
        if ref:
            print(f"  OpenSSL reference (s_time <-> s_server, no proxying): "
                  f"{ref['cpu_us_per_handshake']:.0f} us CPU per handshake = "
                  f"{ref['cpu_us_per_handshake'] / floor['cpu_us_per_handshake']:.1f} x floor")
        floor_ms = floor["cpu_us_per_handshake"] / 1e3
        for t in shown:
            v = medians.get(t, {}).get("proxy_cpu_ms_per_conn")
            if v:
                extra = (f", {v * 1e3 / ref['cpu_us_per_handshake']:.2f} x OpenSSL reference"
                         if ref else "")
                print(f"  {t}: {v:.2f} ms proxy CPU per connection = {v / floor_ms:.1f} x floor"
                      + extra)
        resumed = floor.get("openssl_resumed_reference")
        if resumed:
            us = resumed["cpu_us_per_handshake"]
            print(f"  OpenSSL reference, resumed (s_time -reuse <-> s_server, stateful tickets, "
                  f"no proxying): {us:.0f} us CPU per handshake "
                  f"({resumed['connections'] - resumed.get('full_handshakes', 0)} of "
                  f"{resumed['connections']} resumed); the issue's 0.5 ms per resumed pair is "
                  f"{500 / us:.2f} x it")
            v = medians.get("ktrust-resume", {}).get("proxy_cpu_ms_per_conn")
            if v:
                print(f"  ktrust-resume: {v:.2f} ms proxy CPU per connection = "
                      f"{v * 1e3 / us:.2f} x the resumed reference")
    if "foreign_fraction" in sysc and meta.get("in_vm"):
        print(f"inside the VM, CPU not used by the measured processes (this script's helpers, "
              f"kernel threads): {100 * sysc['foreign_fraction']:.0f}%; the host side of --vm "
              f"reports whether the host was quiet")
    elif "foreign_fraction" in sysc:
        print(f"machine during the measurements: load average before {sysc['loadavg_before']}; "
              f"other processes used {100 * sysc['foreign_fraction']:.0f}% of the CPU, "
              f"hypervisor steal {100 * sysc['steal_fraction']:.0f}%")
        if discarded:
            print(f"  {len(discarded)} measurement(s) repeated because others used >10% of the "
                  f"CPU meanwhile (kept in the JSON with \"discarded\"); in the kept ones others "
                  f"used at most {100 * sysc['kept_max_foreign_fraction']:.0f}%")
        if sysc["noisy"]:
            print("  WARNING: the machine was not quiet; latency percentiles and ratios are noisy")
        if noisy_rows:
            per_target = {t: sum(1 for r in kept if r["target"] == t) for t in noisy_rows}
            print("  measurements during which others used >10% of the CPU: " +
                  ", ".join(f"{t} {n}/{per_target[t]}" for t, n in noisy_rows.items()) +
                  " (runs[].foreign_fraction in the JSON)")
    if kvu:
        dp = kvu["data_paths"]
        same = dp["ktrust"] == dp["ktrust-userspace"]
        print()
        print(f"ktrust ({dp['ktrust']}) / ktrust-userspace ({dp['ktrust-userspace']}), same run"
              + (": both userspace here, so this shows the run-to-run noise (A/A)" if same else ""))
        labels = {k: lab.strip() for k, lab, _, _ in METRICS}
        labels["proxy_cpu_ms_per_conn"] = "proxy CPU ms/connection"
        for key, r in kvu["ratios"].items():
            print(f"  {labels.get(key, key)}".ljust(w0) + f"{fmt(r):>8}   per run: " +
                  ", ".join(fmt(x) for x in kvu["per_run"][key]))
    if rvf:
        print()
        print("ktrust-resume / ktrust (TLS 1.3 session resumption vs full handshakes), same run")
        labels = {k: lab.strip() for k, lab, _, _ in METRICS}
        for key, r in rvf["ratios"].items():
            print(f"  {labels.get(key, key)}".ljust(w0) + f"{fmt(r):>8}   per run: " +
                  ", ".join(fmt(x) for x in rvf["per_run"][key]))
    print()
    print("issue goals (see tools/bench/README.md):")
    for name, g in goals.items():
        verdict = {True: "MET", False: "NOT MET", None: "n/a"}[g["met"]]
        print(f"  {verdict:8} {g['goal']}")
        print(f"           {g['detail']}")
    print(f"total time {meta['duration_s']} s")
    if args.expect_ktls:
        problems = ktls_problems(meta, rows)
        for p in problems:
            print(f"ERROR: {p}")
        if problems:
            return 3
        print("kernel TLS verified: every ktrust measurement installed >= 3.5 kTLS keys per "
              "connection, ktrust-userspace none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
