#!/usr/bin/env python3
"""Turns the raw runs of tools/bench/run.sh into medians, ratios, a table and a JSON file.

Inputs (all written by run.sh): meta.json (machine, parameters, per-target
status), raw.jsonl (one line per loadgen run with the proxies' CPU around it),
speed.txt (`openssl speed -mr` output) and the work directory (the proxy
configurations, embedded in the JSON for reproducibility).
"""
import argparse
import json
import os
import statistics
import sys

TARGETS = ["plain", "stunnel", "haproxy", "ktrust"]
PEERS = ["stunnel", "haproxy"]
GB = 1e9  # bytes

# key, label, unit, "higher"/"lower" is better, has a plain-TCP value
METRICS = [
    ("throughput_gbps", "throughput 1 stream, Gbit/s", "higher", True),
    ("rr_p50_us", "64 B round trip p50, us", "lower", True),
    ("rr_p99_us", "64 B round trip p99, us", "lower", True),
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
    "machine floor (the whole machine also runs the load generator and the backend)."
)


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


def read_s_time(path):
    """The openssl s_time / s_server reference: CPU of both ends per full mTLS handshake."""
    try:
        ref = json.load(open(path))
    except (OSError, ValueError):
        return None
    if not ref.get("connections"):
        return None
    cpu = ref["client_cpu_s"] + ref["server_cpu_s"]
    return {
        "what": "openssl s_time -new <-> openssl s_server -Verify, same certificates, "
                "TLS_AES_128_GCM_SHA256, X25519, no tickets; CPU of both processes / handshakes",
        **ref,
        "cpu_us_per_handshake": cpu * 1e6 / ref["connections"],
    }


def handshake_floor(speed, nproc, reference):
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
    }


def per_run_metrics(rows, floor):
    """{target: {metric: [value per run]}} and the error list."""
    values = {}
    errors = []
    for row in rows:
        t = row["target"]
        if "error" in row:
            errors.append(row)
            continue
        res = row["result"]
        m = values.setdefault(t, {})
        add = lambda k, v: m.setdefault(k, []).append(v)
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
        elif row["kind"] == "connrate":
            add("conns_per_sec", res["conns_per_sec"])
            add("connrate_errors", res["errors"])
            if t != "plain" and res["connections"] > 0:
                add("proxy_cpu_ms_per_conn", row["proxy_cpu_s"] * 1e3 / res["connections"])
            if t != "plain" and floor:
                add("conns_vs_floor", res["conns_per_sec"] / floor["handshakes_per_s_machine"])
    return values, errors


def best_peer(medians, key, better):
    cands = [(medians[p][key], p) for p in PEERS if key in medians.get(p, {})]
    if not cands:
        return None
    return (max if better == "higher" else min)(cands)


def fmt(v):
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


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
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    meta = json.load(open(args.meta))
    rows = [json.loads(l) for l in open(args.raw) if l.strip()]
    nproc = meta["machine"]["nproc"]
    floor = handshake_floor(parse_speed(args.speed), nproc, read_s_time(args.s_time))
    values, errors = per_run_metrics(rows, floor)

    # CPU the machine spent during the measurements that none of our processes used.
    for r in rows:
        # /proc/stat counts 10 ms ticks: too coarse for a short measurement.
        if r.get("wall_s", 0) * nproc >= 1.0:
            ours = r["proxy_cpu_s"] + r["backend_cpu_s"] + r["result"].get("client_cpu_s", 0)
            r["foreign_fraction"] = round(
                max(0.0, r["system_busy_s"] - ours) / (r["wall_s"] * nproc), 3)
    noisy_rows = {}
    for r in rows:
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
        sysc["noisy"] = sysc["foreign_fraction"] > 0.10 or sysc["steal_fraction"] > 0.05

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

    result = {
        "schema": "ktrust-bench/1",
        **{k: meta[k] for k in ("started", "duration_s", "mode", "params", "machine", "ports")},
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
    print(f"ktrust bench ({meta['mode']}): {nproc} cores, Linux {m['kernel']}, {m['openssl']}")
    print(f"medians of {p['runs']} run(s); throughput {p['throughput_bytes'] >> 20} MiB; "
          f"rr {p['rr_count']} x 64 B; connrate {p['connrate_seconds']} s at concurrency "
          f"{p['connrate_concurrency']}")
    w0, w = 40, 10
    print()
    print("(medians; x plain and x best peer are value / reference)".ljust(w0) +
          "".join(t.rjust(w) for t in shown))
    for key, label, better, has_plain in METRICS:
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
        elif info.get("protocol"):
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
    if "foreign_fraction" in sysc:
        print(f"machine during the measurements: load average before {sysc['loadavg_before']}; "
              f"other processes used {100 * sysc['foreign_fraction']:.0f}% of the CPU, "
              f"hypervisor steal {100 * sysc['steal_fraction']:.0f}%")
        if sysc["noisy"]:
            print("  WARNING: the machine was not quiet; latency percentiles and ratios are noisy")
        if noisy_rows:
            per_target = {t: sum(1 for r in rows if r["target"] == t) for t in noisy_rows}
            print("  measurements during which others used >10% of the CPU: " +
                  ", ".join(f"{t} {n}/{per_target[t]}" for t, n in noisy_rows.items()) +
                  " (runs[].foreign_fraction in the JSON)")
    print(f"total time {meta['duration_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
