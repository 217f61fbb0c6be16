#!/usr/bin/env python3
"""Long-lived echo connections for the drain and handover tests.

    conns.py HOST PORT COUNT GO_FILE

Opens COUNT connections to an echo server and checks one round trip on
each, prints "open COUNT", then waits until GO_FILE exists (the test's
signal) and does a second round trip on each before closing it. Prints one
line per connection: "again <i> ok" or "again <i> failed: <why>", then
"done <ok count>". A connection the agent closed meanwhile shows as failed.
"""
import os
import socket
import sys
import time

host, port, count, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]


def round_trip(s, text):
    data = text.encode() + b"\n"
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(len(data) - len(got))
        if not chunk:
            raise ConnectionError("the connection ended")
        got += chunk
    if got != data:
        raise ValueError("echo mismatch: %r" % got)


conns = []
for i in range(count):
    s = socket.create_connection((host, port), timeout=10)
    round_trip(s, "hello %d" % i)
    conns.append(s)
print("open %d" % len(conns), flush=True)

while not os.path.exists(go):
    time.sleep(0.05)

ok = 0
for i, s in enumerate(conns):
    try:
        round_trip(s, "again %d" % i)
        print("again %d ok" % i, flush=True)
        ok += 1
    except Exception as e:  # noqa: BLE001 - every failure is reported as such
        print("again %d failed: %s" % (i, e), flush=True)
    s.close()
print("done %d" % ok, flush=True)
