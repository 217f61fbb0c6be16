#!/usr/bin/env python3
"""Reads one pinned ktrust_inbound rule over and over until STOP_FILE exists.

usage: watch_rule.py MAP_PIN IPV4 PORT STOP_FILE READY_FILE

Creates READY_FILE once it has read the rule (Python starts slowly on a
loaded machine: wait for it before changing anything).

Prints how often each listener slot was read ("none": no rule). Bursts of
bpf(2) lookups read the rule several times a millisecond, so a change that
lasts one is seen, where bpftool (a process per read) would miss it; short
sleeps between bursts leave the two cores to the agents.
"""
import ctypes
import os
import platform
import socket
import struct
import sys
import time
from collections import Counter

SYS_BPF = {"x86_64": 321, "aarch64": 280}[platform.machine()]
BPF_MAP_LOOKUP_ELEM = 1
BPF_OBJ_GET = 7

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)  # the rest of union bpf_attr is zero
    return libc.syscall(SYS_BPF, cmd, buf, len(buf)), ctypes.get_errno()


def main():
    pin, ipv4, port, stop, ready = sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:6]
    path = ctypes.create_string_buffer(pin.encode())
    fd, err = bpf(BPF_OBJ_GET, struct.pack("=QII", ctypes.addressof(path), 0, 0))
    if fd < 0:
        sys.exit(f"watch_rule: opening {pin}: {os.strerror(err)}")
    # struct ktrust_inbound_key: an IPv4 address as ::ffff:a.b.c.d, the port
    # in host order, two bytes of padding.
    key = ctypes.create_string_buffer(
        b"\0" * 10 + b"\xff\xff" + socket.inet_aton(ipv4) + struct.pack("=HH", port, 0), 20)
    value = ctypes.create_string_buffer(16)  # struct ktrust_inbound_value
    lookup = struct.pack("=IIQQQ", fd, 0, ctypes.addressof(key), ctypes.addressof(value), 0)
    seen = Counter()
    reads = 0
    while True:
        ret, err = bpf(BPF_MAP_LOOKUP_ELEM, lookup)
        if ret == 0:
            seen[str(struct.unpack_from("=I", value.raw)[0])] += 1
        elif err == 2:  # ENOENT
            seen["none"] += 1
        else:
            sys.exit(f"watch_rule: lookup: {os.strerror(err)}")
        reads += 1
        if reads == 1:
            open(ready, "w").close()
        if reads % 8 == 0:
            time.sleep(0.0002)
            if reads % 1024 == 0 and os.path.exists(stop):
                break
    print(" ".join(f"{slot}:{count}" for slot, count in sorted(seen.items())))


if __name__ == "__main__":
    main()
