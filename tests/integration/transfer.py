#!/usr/bin/env python3
"""A large transfer through an echo server, for the handover test.

    transfer.py HOST PORT MIB [MIB_PER_SECOND]

Sends MIB mebibytes on one connection while reading the echo back, prints
"progress" once 8 MiB have come back (the test starts its handover then),
and at the end "took <seconds> s, <rate> MiB/s each way", then "transfer
sent <sha256> <bytes> received <sha256> <bytes>", or "transfer failed:
<why>". MIB_PER_SECOND caps the sending rate, so that the transfer is still
under way when the test's handover happens however fast the machine is.
"""
import hashlib
import socket
import sys
import threading
import time

host, port, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rate = float(sys.argv[4]) * (1 << 20) if len(sys.argv) > 4 else None
total = mib << 20
block = 64 << 10

s = socket.create_connection((host, port), timeout=60)
sent_hash = hashlib.sha256()
failure = []


def send():
    start = time.monotonic()
    try:
        for i in range(total // block):
            if rate is not None:
                ahead = i * block / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
            # Distinct blocks: a block lost, doubled or reordered changes the hash.
            data = i.to_bytes(8, "big") * (block // 8)
            sent_hash.update(data)
            s.sendall(data)
        s.shutdown(socket.SHUT_WR)
    except OSError as e:
        failure.append("send: %s" % e)


started = time.monotonic()
sender = threading.Thread(target=send)
sender.start()
received_hash = hashlib.sha256()
received = 0
said_progress = False
try:
    while received < total:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        received_hash.update(chunk)
        received += len(chunk)
        if not said_progress and received >= 8 << 20:
            print("progress", flush=True)
            said_progress = True
except OSError as e:
    failure.append("receive: %s" % e)
sender.join()
# Before the result line, which the test waits for.
took = time.monotonic() - started
print("took %.0f s, %.1f MiB/s each way" % (took, received / (1 << 20) / max(took, 0.001)),
      flush=True)
if failure:
    print("transfer failed: %s (received %d)" % ("; ".join(failure), received), flush=True)
else:
    print("transfer sent %s %d received %s %d" % (sent_hash.hexdigest(), total,
                                                   received_hash.hexdigest(), received),
          flush=True)
