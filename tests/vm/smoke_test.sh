#!/usr/bin/env bash
# smoke_test.sh — proves kTLS works in the VM.
#
# Inside the VM (run.sh sets KTRUST_VM=1):
#   tests/vm/run.sh CACHE_DIR -- "$PWD/tests/vm/smoke_test.sh"
# From the host it prepares the cache and re-runs itself in the VM:
#   tests/vm/smoke_test.sh [CACHE_DIR]     (default $KTRUST_VM_CACHE or /var/cache/ktrust-vm)
#
# What it checks, per TLS 1.2 cipher (OpenSSL 3.0 installs kTLS TX+RX for 1.2):
# a real TCP loopback connection between Debian's OpenSSL (via python's ssl, with
# SSL_OP_ENABLE_KTLS) has TCP_ULP "tls" and kernel TX and RX state on both ends,
# 1 MiB echoes back intact, and /proc/net/tls_stat TlsTxSw/TlsRxSw rise with no
# decrypt errors. TLS 1.3 (TX only on OpenSSL 3.0) is reported, not asserted.
# Last line: "PASS ktls-smoke" (exit 0) or "FAIL ktls-smoke: <why>" (exit 1).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [[ ${KTRUST_VM:-} != 1 ]]; then
  cache=${1:-${KTRUST_VM_CACHE:-/var/cache/ktrust-vm}}
  "$here/prepare.sh" "$cache"
  exec "$here/run.sh" "$cache" -- "$here/smoke_test.sh"
fi

fail() { echo "FAIL ktls-smoke: $*"; exit 1; }

[[ -r /proc/net/tls_stat ]] || fail "/proc/net/tls_stat missing: tls module not loaded"

# Throwaway CA-less self-signed cert; the host / is read-only, /tmp is a tmpfs.
work=$(mktemp -d /tmp/ktls-smoke.XXXXXX)
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
  -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null \
  || fail "openssl req could not make a certificate"

# Debian's python3, linked to the system libssl3 that has kTLS (not a pyenv build).
/usr/bin/python3 - "$work/cert.pem" "$work/key.pem" <<'PY' || fail "see above"
import hashlib, os, socket, ssl, sys, threading

CERT, KEY = sys.argv[1], sys.argv[2]
SOL_TLS, TLS_TX, TLS_RX = 282, 1, 2          # linux/tls.h
TCP_ULP = 31                                 # linux/tcp.h
OP_ENABLE_KTLS = getattr(ssl, "OP_ENABLE_KTLS", 1 << 3)  # python < 3.12 lacks the name
PAYLOAD = os.urandom(1 << 20)

def tls_stat():
    with open("/proc/net/tls_stat") as f:
        return {k: int(v) for k, v in (line.split() for line in f)}

def ulp(sock):
    return sock.getsockopt(socket.IPPROTO_TCP, TCP_ULP, 16).rstrip(b"\0").decode()

def has_state(sock, direction):
    # Asking for just struct tls_crypto_info (version, cipher_type: 4 bytes) works
    # for every cipher; the kernel answers EBUSY until that direction has keys.
    try:
        info = sock.getsockopt(SOL_TLS, direction, 4)
        return int.from_bytes(info[:2], "little") in (0x0303, 0x0304)
    except OSError:
        return False

def describe(sock):
    return {"ulp": ulp(sock), "tx": has_state(sock, TLS_TX), "rx": has_state(sock, TLS_RX)}

def contexts(version, cipher):
    srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cli = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for ctx in (srv, cli):
        ctx.minimum_version = ctx.maximum_version = version
        ctx.options |= OP_ENABLE_KTLS
        if cipher:
            ctx.set_ciphers(cipher)
    srv.load_cert_chain(CERT, KEY)
    srv.num_tickets = 0     # a 1.3 ticket on kTLS RX would make recv() fail with EIO
    cli.load_verify_locations(CERT)
    return srv, cli

def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(65536, n - len(buf)))
        if not chunk:
            raise RuntimeError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)

def run_case(version, cipher):
    srv_ctx, cli_ctx = contexts(version, cipher)
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    result = {}

    def server():
        try:
            raw, _ = lsock.accept()
            with srv_ctx.wrap_socket(raw, server_side=True) as s:
                result["server"] = describe(s)
                s.sendall(recv_exact(s, len(PAYLOAD)))   # echo
                s.recv(1)                                # wait for the client's close
        except Exception as e:                           # reported by the main thread
            result["server_error"] = repr(e)

    t = threading.Thread(target=server)
    t.start()
    with cli_ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                             server_hostname="127.0.0.1") as c:
        result["client"] = describe(c)
        result["cipher"] = c.cipher()[0]
        # Send from a second thread so the echo never deadlocks on full buffers.
        sender = threading.Thread(target=c.sendall, args=(PAYLOAD,))
        sender.start()
        echoed = recv_exact(c, len(PAYLOAD))
        sender.join()
        result["intact"] = hashlib.sha256(echoed).digest() == hashlib.sha256(PAYLOAD).digest()
    t.join(timeout=60)
    lsock.close()
    return result

failures = []
cases = [
    (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-GCM-SHA256"),
    (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES256-GCM-SHA384"),
    (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-CHACHA20-POLY1305"),
]
for version, cipher in cases:
    before = tls_stat()
    r = run_case(version, cipher)
    after = tls_stat()
    delta = {k: after[k] - before[k] for k in ("TlsTxSw", "TlsRxSw", "TlsDecryptError")}
    ok = ("server_error" not in r and r.get("intact")
          and all(r[side] == {"ulp": "tls", "tx": True, "rx": True} for side in ("client", "server"))
          and delta["TlsTxSw"] >= 2 and delta["TlsRxSw"] >= 2 and delta["TlsDecryptError"] == 0)
    print(f"{'ok  ' if ok else 'BAD '} {version.name} {r.get('cipher', cipher)}: "
          f"client={r.get('client')} server={r.get('server')} intact={r.get('intact')} "
          f"tls_stat+={delta} {r.get('server_error', '')}", flush=True)
    if not ok:
        failures.append(cipher)

# TLS 1.3: OpenSSL 3.0 installs TX only (docs/dataplane.md); report what we see.
r = run_case(ssl.TLSVersion.TLSv1_3, None)
print(f"info TLSv1_3 {r.get('cipher')}: client={r.get('client')} server={r.get('server')} "
      f"intact={r.get('intact')} {r.get('server_error', '')}", flush=True)

print("tls_stat:", {k: v for k, v in tls_stat().items() if v})
if failures:
    print("failed cases:", ", ".join(failures))
    sys.exit(1)
PY

echo "PASS ktls-smoke"
