#!/usr/bin/env python3
"""The soak benchmark's sampler and report (tools/bench/soak.sh).

  soak_report.py sample --agent NODE=PID,CONTROL_SOCKET,MAP_DIR ... --ktrust KTRUST
                        --every S --phase-file F --out SAMPLES.jsonl
      every S seconds, one JSON line: each agent's RSS (VmRSS), descriptors
      (/proc/PID/fd), CPU (utime + stime), `ktrust status` counts and the
      entries of its per-connection BPF maps, labelled with the phase written
      in F; until SIGTERM.
  soak_report.py assemble --samples F --series F --loadgen F --out RESULT.json
                          [--param KEY=VALUE ...]
      one JSON result (schema ktrust-bench-soak/1) from the run's files.
  soak_report.py report RESULT.json [--plot PNG]
      a table over time, then the figures: RSS per held connection, agent CPU
      per connection, errors, and whether descriptors, live connections and
      map entries came back to the baseline after the load. --plot draws them
      (matplotlib).
"""
import argparse
import ctypes
import errno
import json
import os
import signal
import subprocess
import sys
import time

# Per-connection maps (bpf/lib/maps.h): by socket cookie from connect until
# close, by 4-tuple from ESTABLISHED until close, the agent's own connects
# in flight.
MAPS = ("ktrust_orig_ck", "ktrust_orig_tp", "ktrust_agent_connects")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- sample

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


_libc = ctypes.CDLL(None, use_errno=True)
_SYS_BPF = 321  # x86_64
_BPF_MAP_GET_NEXT_KEY, _BPF_OBJ_GET, _BPF_OBJ_GET_INFO_BY_FD = 4, 7, 15
_BPF_F_RDONLY = 1 << 3


def _bpf(cmd, attr):
    r = _libc.syscall(_SYS_BPF, ctypes.c_int(cmd), ctypes.byref(attr),
                      ctypes.c_uint(ctypes.sizeof(attr)))
    if r < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return r


def map_entries(path):
    """Entries of a pinned map, counted by walking its keys (bpftool's dump
    would format every value: megabytes each time for 10000 connections)."""
    class ObjGet(ctypes.Structure):
        _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                    ("file_flags", ctypes.c_uint32)]

    class InfoByFd(ctypes.Structure):
        _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                    ("info", ctypes.c_uint64)]

    class NextKey(ctypes.Structure):
        _fields_ = [("map_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                    ("key", ctypes.c_uint64), ("next_key", ctypes.c_uint64)]

    name = ctypes.create_string_buffer(path.encode())
    try:
        fd = _bpf(_BPF_OBJ_GET, ObjGet(ctypes.addressof(name), 0, _BPF_F_RDONLY))
    except OSError:
        return None
    try:
        info = (ctypes.c_uint32 * 64)()  # struct bpf_map_info; key_size is the third field
        _bpf(_BPF_OBJ_GET_INFO_BY_FD, InfoByFd(fd, ctypes.sizeof(info), ctypes.addressof(info)))
        key, next_key = (ctypes.create_string_buffer(info[2]) for _ in range(2))
        count, attr = 0, NextKey(fd, 0, 0, ctypes.addressof(next_key))  # key 0: the first
        while True:
            try:
                _bpf(_BPF_MAP_GET_NEXT_KEY, attr)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    return count
                return None
            count += 1
            ctypes.memmove(key, next_key, info[2])
            attr.key = ctypes.addressof(key)
    finally:
        os.close(fd)


def agent_sample(ktrust, pid, socket, map_dir):
    s = {}
    try:
        s["rss_kib"] = rss_kib(pid)
        s["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        s["cpu_s"] = round(cpu_seconds(pid), 3)
    except OSError:
        return {"gone": True}
    try:
        r = subprocess.run([ktrust, "--socket", socket, "status", "--json"], capture_output=True,
                           text=True, timeout=10)
        counts = json.loads(r.stdout)["counts"]
        s.update(active=counts["connections_active"], total=counts["connections_total"],
                 handshakes_failed=counts["handshakes_failed"], denied=counts["denied"])
    except (subprocess.TimeoutExpired, ValueError, KeyError) as e:
        s["status_error"] = str(e)[:200]
    s["maps"] = {m: map_entries(os.path.join(map_dir, m)) for m in MAPS}
    return s


def sample(args):
    agents = []
    for spec in args.agent:
        node, rest = spec.split("=", 1)
        pid, socket, map_dir = rest.split(",", 2)
        agents.append((node, int(pid), socket, map_dir))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(args.out, "a") as out:
        due = time.monotonic()
        while True:
            with open(args.phase_file) as f:
                phase = f.read().strip()
            line = {"time": round(time.time(), 3), "phase": phase}
            for node, pid, socket, map_dir in agents:
                line[node] = agent_sample(args.ktrust, pid, socket, map_dir)
            out.write(json.dumps(line) + "\n")
            out.flush()
            due += args.every
            time.sleep(max(0.0, due - time.monotonic()))


# ---------------------------------------------------------------- assemble

def read_lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def assemble(args):
    with open(args.loadgen) as f:
        loadgen = json.load(f)
    result = {
        "schema": "ktrust-bench-soak/1",
        "params": dict(p.split("=", 1) for p in args.param),
        "loadgen": loadgen,
        "series": read_lines(args.series),
        "samples": read_lines(args.samples),
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


# ---------------------------------------------------------------- report

def figures(r):
    """What the report prints and plots, computed once."""
    samples = [s for s in r["samples"] if all("fds" in s.get(n, {}) for n in ("a", "b"))]
    base = [s for s in samples if s["phase"] == "baseline"]
    load = [s for s in samples if s["phase"] == "load"]
    settle = [s for s in samples if s["phase"] == "settle"]
    if not base or not load:
        sys.exit("soak_report: the result has no baseline or no load samples")
    series = r["series"]
    t0 = series[0]["time"] - series[0]["elapsed_s"] if series else load[0]["time"]
    load_end = series[-1]["time"] if series else load[-1]["time"]
    return samples, base[-1], load, settle, series, t0, load_end


def held_at(series, t):
    held = [x["held"] for x in series if x["time"] <= t]
    return held[-1] if held else 0


def errors_between(series, t0, t1):
    return sum(x["open_errors"] + x["new_errors"] + x["held_errors"] for x in series
               if t0 < x["time"] <= t1)


def per_conn_cpu_ms(a, b):
    """Both agents' CPU per connection node b accepted between samples a and b."""
    made = b["b"].get("total", 0) - a["b"].get("total", 0)
    cpu = sum(b[n]["cpu_s"] - a[n]["cpu_s"] for n in ("a", "b"))
    return cpu * 1000 / made if made > 0 else None


def back_to_baseline(base, s):
    """The figures of sample s still above the baseline's, as "name now/was"."""
    above = []
    for n in ("a", "b"):
        for key in ("fds", "active"):
            if s[n].get(key, 0) > base[n].get(key, 0):
                above.append(f"{n}.{key} {s[n][key]}/{base[n][key]}")
        for m in MAPS:
            now, was = s[n]["maps"].get(m), base[n]["maps"].get(m)
            if now is None or was is None or now > was:
                above.append(f"{n}.{m} {now}/{was}")
    return above


def report(args):
    with open(args.result) as f:
        r = json.load(f)
    samples, base, load, settle, series, t0, load_end = figures(r)
    p, lg = r["params"], r["loadgen"]
    print(f"soak: {p.get('connections')} held + {p.get('rate')} new/s for {p.get('seconds')} s "
          f"through two agents (data path {p.get('data_path')}, {p.get('nproc')} CPUs, "
          f"ktrustd {p.get('ktrustd_sha256')}, git {p.get('git')})")

    # One row per sample, thinned to about 30 rows; always the last of each phase.
    rows = [base] + load + settle
    step = max(1, len(rows) // 30)
    keep = {id(x) for x in rows[::step]} | {id(base), id(load[-1])}
    if settle:
        keep.add(id(settle[-1]))
    header = (f"{'t s':>6} {'phase':8} {'held':>6} {'new/s':>6} {'errors':>6} {'RSS a MiB':>9} "
              f"{'RSS b MiB':>9} {'fds a':>6} {'fds b':>6} {'conns a':>7} {'conns b':>7} "
              f"{'CPU ms/conn':>11} {'orig_tp a':>9}")
    print(header)
    prev = None
    for s in rows:
        if id(s) not in keep:
            continue
        rate = cpu = ""
        errs = ""
        if prev is not None:
            dt = s["time"] - prev["time"]
            if dt > 0:
                rate = f"{(s['b'].get('total', 0) - prev['b'].get('total', 0)) / dt:.0f}"
            c = per_conn_cpu_ms(prev, s)
            cpu = f"{c:.2f}" if c is not None else "-"
            errs = str(errors_between(series, prev["time"], s["time"]))
        print(f"{s['time'] - t0:6.0f} {s['phase']:8} {held_at(series, s['time']):6} {rate:>6} "
              f"{errs:>6} {s['a']['rss_kib'] / 1024:9.1f} {s['b']['rss_kib'] / 1024:9.1f} "
              f"{s['a']['fds']:6} {s['b']['fds']:6} {s['a'].get('active', '?'):>7} "
              f"{s['b'].get('active', '?'):>7} {cpu:>11} "
              f"{s['a']['maps'].get('ktrust_orig_tp')!s:>9}")
        prev = s

    print()
    kinds = ", ".join(f"{k}: {v}" for k, v in lg["error_kinds"].items()) or "none"
    print(f"load: {lg['opened']} of {lg['connections']} held connections opened in "
          f"{lg['open_s']} s; {lg['new_ok']} new ones in {lg['seconds']} s = "
          f"{lg['new_per_s']}/s of {lg['rate']}/s asked ({lg['late']} started over 1 s late); "
          f"new connection p50 {lg['new_p50_ms']} ms, p99 {lg['new_p99_ms']} ms; "
          f"{lg['held_at_end']} held still echoing at the end")
    print(f"errors: {lg['errors']} ({kinds})")
    last = load[-1]
    held = held_at(series, last["time"]) or lg["opened"]
    for n, name in (("a", "A (client's node)"), ("b", "B (server's node)")):
        peak_rss = max(s[n]["rss_kib"] for s in load)
        peak_fds = max(s[n]["fds"] for s in load)
        per = (last[n]["rss_kib"] - base[n]["rss_kib"]) / held if held else 0
        end = (settle or load)[-1]
        print(f"agent {name}: RSS {base[n]['rss_kib'] / 1024:.1f} MiB before, peak "
              f"{peak_rss / 1024:.1f}, {per:.1f} KiB per held connection at the end of the load, "
              f"{end[n]['rss_kib'] / 1024:.1f} MiB after ({end[n]['rss_kib'] / base[n]['rss_kib']:.2f}x); "
              f"descriptors {base[n]['fds']} before, peak {peak_fds}, {end[n]['fds']} after")
        failed = end[n].get("handshakes_failed", 0) - base[n].get("handshakes_failed", 0)
        denied = end[n].get("denied", 0) - base[n].get("denied", 0)
        print(f"agent {name}: {failed} failed handshakes, {denied} denials during the run")
    cpu = per_conn_cpu_ms(base, load[-1])
    print(f"agent CPU (both) per connection over the load: {cpu:.2f} ms" if cpu else
          "agent CPU per connection: no connection counted")
    if settle:
        back = next((s for s in settle if not back_to_baseline(base, s)), None)
        if back is not None:
            print(f"after the load: descriptors, live connections and map entries back to the "
                  f"baseline {back['time'] - load_end:.0f} s after the last connection closed")
        else:
            print("after the load: NOT back to the baseline within the settle time: "
                  + ", ".join(back_to_baseline(base, settle[-1])))
        within = next((s for s in settle if all(s[n]["rss_kib"] <= 2 * base[n]["rss_kib"]
                                               for n in ("a", "b"))), None)
        print("RSS within 2x the baseline " + (f"{within['time'] - load_end:.0f} s after the load"
                                               if within else "not within the settle time"))
    if args.plot:
        plot([s for s in samples if s["phase"] != "warmup"], series, base, t0, args.plot, p)


def plot(samples, series, base, t0, path, params):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = [s["time"] - t0 for s in samples]
    fig, ax = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for n, style in (("a", "-"), ("b", "--")):
        ax[0][0].plot(t, [s[n].get("active", 0) for s in samples], style, label=f"agent {n} connections")
        ax[0][1].plot(t, [s[n]["rss_kib"] / 1024 for s in samples], style, label=f"agent {n}")
        ax[1][0].plot(t, [s[n]["fds"] for s in samples], style, label=f"agent {n}")
    ax[0][0].plot([x["time"] - t0 for x in series], [x["held"] for x in series], ":",
                  label="held by the client")
    rate_t, rate, cpu = [], [], []
    for a, b in zip(samples, samples[1:]):
        dt = b["time"] - a["time"]
        if dt > 0:
            rate_t.append(b["time"] - t0)
            rate.append((b["b"].get("total", 0) - a["b"].get("total", 0)) / dt)
            cpu.append(per_conn_cpu_ms(a, b) or 0)
    ax[1][1].plot(rate_t, rate, label="new connections/s (agent b)")
    # Only the intervals that had errors: a run without any shows none.
    errs = [(x["time"] - t0, x["open_errors"] + x["new_errors"] + x["held_errors"]) for x in series]
    errs = [e for e in errs if e[1] > 0]
    ax[1][1].plot([e[0] for e in errs], [e[1] for e in errs], "rx",
                  label=f"errors per interval ({sum(e[1] for e in errs)} in all)")
    cpu_ax = ax[1][1].twinx()
    cpu_ax.plot(rate_t, cpu, "g:", label="agent CPU ms per connection")
    cpu_ax.set_ylabel("CPU ms per connection")
    titles = ("live connections", "RSS (MiB)", "descriptors", "new connections/s, errors")
    for a, title in zip([ax[0][0], ax[0][1], ax[1][0], ax[1][1]], titles):
        a.set_title(title)
        a.legend(loc="upper left", fontsize=8)
        a.grid(alpha=0.3)
    cpu_ax.legend(loc="upper right", fontsize=8)
    for a in ax[1]:
        a.set_xlabel("seconds since the load started")
    fig.suptitle(f"ktrust soak: {params.get('connections')} held + {params.get('rate')} new/s, "
                 f"{params.get('seconds')} s, two agents ({params.get('data_path')})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--agent", action="append", required=True, help="NODE=PID,CONTROL_SOCKET,MAP_DIR")
    s.add_argument("--ktrust", required=True)
    s.add_argument("--every", type=float, default=5)
    s.add_argument("--phase-file", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(run=sample)
    a = sub.add_parser("assemble")
    a.add_argument("--samples", required=True)
    a.add_argument("--series", required=True)
    a.add_argument("--loadgen", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--param", action="append", default=[], help="KEY=VALUE recorded in the JSON")
    a.set_defaults(run=assemble)
    r = sub.add_parser("report")
    r.add_argument("result")
    r.add_argument("--plot")
    r.set_defaults(run=report)
    args = ap.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
