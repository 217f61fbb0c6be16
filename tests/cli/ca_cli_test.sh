#!/usr/bin/env bash
# The ktrust CLI (ca init/intermediate/issue, cert inspect) against real files,
# checked with the openssl command line tool: what an operator would see.
#   usage: ca_cli_test.sh /path/to/ktrust
# Prints "ok - CASE" or "not ok - CASE" per case (details as "#" lines on
# stderr) and exits 1 if any case failed. Needs no privileges.
# The case functions are called indirectly, through `check`.
# shellcheck disable=SC2317
set -euo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 /path/to/ktrust" >&2; exit 2; }
ktrust=$(realpath "$1")
[[ -x $ktrust ]] || { echo "$0: $1 is not executable" >&2; exit 2; }
testdata=$(cd "$(dirname "$(realpath "${BASH_SOURCE[0]}")")/../testdata" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
case_no=0

# ---- helpers: each failed check ends its case (cases run in a subshell) ----
fail() { echo "#   $*" >&2; exit 1; }

# kt WANT_RC ARGS...: runs ktrust, stdout to ./out and stderr to ./err, and
# insists on the exit code. A code >= 128 would be a crash.
kt() {
  local want=$1 rc=0
  shift
  "$ktrust" "$@" >out 2>err || rc=$?
  if [[ $rc != "$want" ]]; then
    sed 's/^/#   stdout: /' out >&2
    sed 's/^/#   stderr: /' err >&2
    fail "ktrust $* exited $rc, want $want"
  fi
}
has() { grep -qF -- "$2" "$1" || { sed 's/^/#   | /' "$1" >&2; fail "$1 lacks \"$2\""; }; }
lacks() { ! grep -qF -- "$2" "$1" || fail "$1 unexpectedly has \"$2\""; }
mode_is() { [[ $(stat -c %a "$1") == "$2" ]] || fail "$1 has mode $(stat -c %a "$1"), want $2"; }
eq() { [[ $1 == "$2" ]] || fail "$3: got '$1', want '$2'"; }
x509_text() { openssl x509 -in "$1" -noout -text; }
# epoch SECONDS of a certificate's notBefore/notAfter ("start"/"end").
cert_time() { date -d "$(openssl x509 -in "$1" -noout "-${2}date" | cut -d= -f2)" +%s; }
# Splits a PEM chain into leaf.pem (first certificate) and chain.pem (the rest).
split_chain() { awk '/BEGIN CERTIFICATE/ {n++} {print > (n == 1 ? "leaf.pem" : "chain.pem")}' "$1"; }
new_ca() { "$ktrust" ca init --trust-domain "${2:-example.org}" --dir "$1" >/dev/null; }

# check NAME FUNCTION: runs one case in its own directory and subshell. The
# subshell runs outside any `if` so that set -e stays in force inside it.
check() {
  local rc=0
  case_no=$((case_no + 1))
  mkdir "$tmp/$case_no"
  set +e
  (set -e; cd "$tmp/$case_no"; "$2")
  rc=$?
  set -e
  if ((rc == 0)); then echo "ok - $1"; else echo "not ok - $1"; failed=1; fi
}

# ---- cases ----

init_creates_ca() {
  kt 0 ca init --trust-domain example.org --dir ca
  for f in ca.crt ca.key bundle.crt; do [[ -s ca/$f ]] || fail "ca/$f missing"; done
  mode_is ca/ca.key 600 # the root key: owner only
  mode_is ca 700
  x509_text ca/ca.crt >text
  has text "CA:TRUE"
  has text "URI:spiffe://example.org"
  openssl verify -CAfile ca/bundle.crt ca/ca.crt >verify.txt 2>&1 || true
  has verify.txt "ca/ca.crt: OK"
}

init_refuses_to_replace() {
  new_ca ca
  cp ca/ca.key key.before
  kt 1 ca init --trust-domain example.org --dir ca
  has err "--force"
  cmp -s ca/ca.key key.before || fail "ca.key changed without --force"
  kt 0 ca init --trust-domain example.org --dir ca --force
  ! cmp -s ca/ca.key key.before || fail "--force kept the old key"
  mode_is ca/ca.key 600
}

issue_svid() {
  new_ca ca
  local t0 t1
  t0=$(date +%s)
  kt 0 ca issue --ca-dir ca --id spiffe://example.org/ns/test/sa/web --out svid
  t1=$(date +%s)
  openssl verify -CAfile ca/bundle.crt svid/tls.crt >verify.txt 2>&1 || true
  has verify.txt "svid/tls.crt: OK"
  cmp -s svid/ca.crt ca/bundle.crt || fail "svid/ca.crt is not the root bundle"
  x509_text svid/tls.crt >text
  eq "$(grep -o 'URI:' text | wc -l)" 1 "URI SAN count"
  has text "URI:spiffe://example.org/ns/test/sa/web"
  has text "CA:FALSE"
  has text "Digital Signature"
  has text "TLS Web Server Authentication, TLS Web Client Authentication"
  openssl pkey -in svid/tls.key -text -noout >key
  has key "prime256v1"
  mode_is svid/tls.key 600
  # 1 h lifetime from issuance, notBefore backdated 30 s, whole seconds.
  local nb na
  nb=$(cert_time svid/tls.crt start)
  na=$(cert_time svid/tls.crt end)
  ((na >= t0 + 3599 && na <= t1 + 3600)) || fail "notAfter $na not ~1h after $t0..$t1"
  ((na - nb >= 3629 && na - nb <= 3631)) || fail "lifetime $((na - nb))s, want ~3630s"
  kt 0 ca issue --ca-dir ca --id spiffe://example.org/ns/test/sa/web --out svid2
  [[ $(openssl x509 -in svid/tls.crt -noout -serial) != "$(openssl x509 -in svid2/tls.crt -noout -serial)" ]] ||
    fail "two SVIDs share a serial number"
  # Re-issuing into a directory that holds an SVID needs --force.
  cp svid/tls.key key.before
  kt 1 ca issue --ca-dir ca --id spiffe://example.org/ns/test/sa/web --out svid
  has err "--force"
  cmp -s svid/tls.key key.before || fail "tls.key replaced without --force"
}

intermediate_chain() {
  new_ca root
  kt 0 ca intermediate --ca-dir root --name node-a --dir node-a --scope 'spiffe://example.org/ns/test/*'
  has out "it may sign only spiffe://example.org/ns/test/*"
  mode_is node-a/ca.key 600
  # Name constraints every verifier enforces: the trust domain.
  x509_text node-a/ca.crt >text.txt
  has text.txt "X509v3 Name Constraints: critical"
  has text.txt "URI:example.org"
  kt 0 ca issue --ca-dir node-a --id spiffe://example.org/ns/test/sa/web --out svid
  eq "$(grep -c 'BEGIN CERTIFICATE' svid/tls.crt)" 2 "certificates in tls.crt"
  cmp -s svid/ca.crt root/bundle.crt || fail "svid/ca.crt is not the root bundle"
  split_chain svid/tls.crt
  openssl verify -CAfile root/bundle.crt -untrusted chain.pem leaf.pem >verify.txt 2>&1 || true
  has verify.txt "leaf.pem: OK"
  kt 0 cert inspect svid/tls.crt --bundle root/bundle.crt
  has out "spiffe://example.org/ns/test/sa/web"
  has out ": yes, as spiffe://example.org/ns/test/sa/web"
  # Intermediates sign workloads only.
  kt 1 ca intermediate --ca-dir node-a --name sub --dir sub
  [[ ! -e sub/ca.key ]] || fail "a second-level intermediate was written"
}

# Issue 10, finding 3: a node's intermediate issues only inside its scope.
intermediate_scope() {
  new_ca root
  kt 0 ca intermediate --ca-dir root --name reports-1 --dir reports-1
  has out "it may sign only spiffe://example.org/reports-1/*"
  kt 0 ca issue --ca-dir reports-1 --id spiffe://example.org/reports-1/cron --out own
  kt 1 ca issue --ca-dir reports-1 --id spiffe://example.org/web-1/nginx --out stolen
  has err "may only sign IDs matching spiffe://example.org/reports-1/*"
  [[ ! -e stolen/tls.key ]] || fail "an SVID outside the scope was written"
  kt 1 ca intermediate --ca-dir root --name x --dir x --scope 'spiffe://other.org/*'
  has err "outside this CA's trust domain"
  kt 1 ca intermediate --ca-dir root --name y --dir y --scope 'spiffe://example.org/a*'
  has err "invalid SPIFFE ID pattern"
}

# Issue 14, item 5: the CA Secret of the Kubernetes DaemonSet. stdout is the
# YAML alone (piped to kubectl), what it holds goes to stderr; never a root.
kubernetes_secret() {
  new_ca root cluster.local
  kt 0 ca intermediate --ca-dir root --name cluster --dir cluster-ca --scope 'spiffe://cluster.local/ns/*'
  kt 0 ca kubernetes-secret --ca-dir cluster-ca
  has out "kind: Secret"
  has out "  name: ktrust-ca"
  has out "  namespace: ktrust-system"
  has err "it may sign spiffe://cluster.local/ns/*"
  lacks out "it may sign"
  key=$(sed -n 's/^  ca.key: //p' out | base64 -d)
  [[ $key == "$(cat cluster-ca/ca.key)" ]] || fail "ca.key in the Secret is not the intermediate's key"
  kt 0 ca kubernetes-secret --ca-dir cluster-ca --output secret.yaml --namespace mesh
  mode_is secret.yaml 600
  has secret.yaml "  namespace: mesh"
  kt 1 ca kubernetes-secret --ca-dir cluster-ca --output secret.yaml
  has err "pass --force"
  kt 1 ca kubernetes-secret --ca-dir root
  has err "holds a root CA: its key must never enter the cluster"
  [[ ! -s out ]] || fail "a refused Secret still printed: $(head -c 200 out)"
}

# Issue 10, finding 4: ktrust ca revoke writes the issuing CA's CRL.
revoke() {
  new_ca root
  mode_is root/crl.pem 644
  openssl crl -in root/crl.pem -noout -text >empty.txt
  has empty.txt "No Revoked Certificates"
  kt 0 ca intermediate --ca-dir root --name node-b --dir node-b
  kt 0 ca revoke --ca-dir root --cert node-b/ca.crt
  has out "revoked \"O = ktrust, OU = example.org, CN = node-b\""
  serial=$(openssl x509 -in node-b/ca.crt -noout -serial | cut -d= -f2)
  openssl crl -in root/crl.pem -noout -text >crl.txt
  has crl.txt "Serial Number: $serial"
  openssl crl -in root/crl.pem -noout -CAfile root/ca.crt >verify.txt 2>&1
  has verify.txt "verify OK"
  kt 0 ca revoke --ca-dir root --serial "$serial"
  has out "already revoked"
  # Another CA's certificate: refused, the CRL unchanged.
  new_ca other
  cp root/crl.pem crl.before
  kt 1 ca revoke --ca-dir root --cert other/ca.crt
  has err "was not issued by the CA in root"
  cmp -s root/crl.pem crl.before || fail "crl.pem changed"
  kt 1 ca revoke --ca-dir root
  has err "exactly one of --serial and --cert"
  kt 1 ca revoke --ca-dir root --serial zz
  has err "not a hexadecimal certificate serial"
  # A private key others can read is refused, with the fix.
  chmod 644 root/ca.key
  kt 1 ca revoke --ca-dir root --serial 01
  has err "mode 0644"
  has err "chmod 600"
}

inspect_wrong_bundle() {
  new_ca ca
  new_ca other_ca
  new_ca other_td other.org
  kt 0 ca issue --ca-dir ca --id spiffe://example.org/ns/test/sa/web --out svid
  kt 1 cert inspect svid/tls.crt --bundle other_ca/bundle.crt
  has out "NO (unknown_authority)"
  kt 1 cert inspect svid/tls.crt --bundle other_td/bundle.crt
  has out ": NO ("
  lacks out ": yes"
}

inspect_expired() {
  new_ca ca
  kt 0 ca issue --ca-dir ca --id spiffe://example.org/ns/test/sa/web --out svid --ttl 1s
  # The CLI cannot be told what time it is and faketime is not available, so
  # wait (at most ~1.2 s) until just past this certificate's notAfter.
  local na
  na=$(cert_time svid/tls.crt end)
  sleep "$(awk -v na="$na" -v now="$(date +%s.%N)" 'BEGIN { d = na - now + 0.2; print (d > 0 ? d : 0) }')"
  # The default 60 s skew allowance still accepts it...
  kt 0 cert inspect svid/tls.crt --bundle ca/bundle.crt
  # ...no allowance does not. (--clock-skew 0s is refused as not positive,
  # so 1ns stands in for zero.)
  kt 1 cert inspect svid/tls.crt --bundle ca/bundle.crt --clock-skew 1ns
  has out "NO (expired)"
  has out "EXPIRED"
}

usage_errors() {
  kt 2 ca init --trust-domain example.org
  has err "--dir"
  kt 2 ca frobnicate
  kt 2 frobnicate
  kt 2 ca issue --ca-dir ca --id spiffe://example.org/x --out svid --bogus-flag
}

bad_values() {
  new_ca ca
  # A malformed duration is reported as a failed operation (exit 1), naming it.
  kt 1 ca issue --ca-dir ca --id spiffe://example.org/x --out svid --ttl abc
  has err '"abc" is not a duration'
  kt 1 ca init --trust-domain example.org --dir ca2 --ttl abc
  has err '"abc" is not a duration'
  [[ ! -e ca2 ]] || fail "a CA directory was created despite the bad --ttl"
  kt 1 ca issue --ca-dir ca --id spiffe://Example.org/x --out svid
  has err "lowercase"
  kt 1 ca issue --ca-dir ca --id spiffe://example.org --out svid
  has err "needs a path"
  kt 1 ca issue --ca-dir ca --id spiffe://other.org/x --out svid
  has err "this CA is for example.org"
  [[ ! -e svid ]] || fail "an SVID directory was written for a refused ID"
}

garbage_input() {
  new_ca ca
  kt 0 ca issue --ca-dir ca --id spiffe://example.org/x --out svid
  head -c 4096 /dev/urandom >random.bin
  : >empty.pem
  head -c 300 svid/tls.crt >truncated.pem
  for f in random.bin empty.pem truncated.pem missing.pem; do
    kt 1 cert inspect "$f" --bundle ca/bundle.crt
    eq "$(wc -l <err)" 1 "stderr lines for $f"
    has err "ktrust: error: "
    has err "$f"
    [[ ! -s out ]] || fail "inspect of $f printed to stdout"
  done
}

mismatched_key() {
  new_ca ca
  new_ca other
  cp -r ca mixed
  cp other/ca.key mixed/ca.key
  kt 1 ca issue --ca-dir mixed --id spiffe://example.org/x --out svid
  has err "mixed/ca.key does not match the certificate"
  [[ ! -e svid ]] || fail "an SVID was written by a CA with the wrong key"
}

# The fixed PKI of tests/testdata: the reason codes of its README table.
testdata_row() {
  kt "$([[ $row_code == ok ]] && echo 0 || echo 1)" \
    cert inspect "$testdata/$row_file" --bundle "$testdata/pki/root.crt"
  if [[ $row_code == ok ]]; then has out ": yes, as spiffe://"; else has out ": NO ($row_code)"; fi
}

check "ca init creates the CA files with owner-only key and directory" init_creates_ca
check "ca init keeps an existing CA unless --force is given" init_refuses_to_replace
check "ca issue writes a verifiable 1h P-256 X.509-SVID" issue_svid
check "ca intermediate: leaf + intermediate chain verifies to the root" intermediate_chain
check "ca intermediate: the node's intermediate issues only inside its scope" intermediate_scope
check "ca revoke: the issuing CA's CRL lists the certificate" revoke
check "ca kubernetes-secret: an intermediate as the DaemonSet's Secret, never a root" kubernetes_secret
check "cert inspect refuses another CA's and another trust domain's bundle" inspect_wrong_bundle
check "cert inspect reports an expired SVID as expired" inspect_expired
check "usage errors exit 2" usage_errors
check "bad flag values exit 1 with the reason" bad_values
check "cert inspect on garbage files: exit 1 and one clear line" garbage_input
check "ca issue refuses a CA directory whose key does not match" mismatched_key

rows=0
while IFS='|' read -r _ file _ _ code _; do
  row_file=$(tr -d ' `' <<<"$file")
  row_code=$(tr -d ' `' <<<"$code")
  [[ $row_file =~ ^pki/[a-z_]+\.crt$ && -n $row_code ]] || continue
  rows=$((rows + 1))
  check "testdata $row_file -> $row_code" testdata_row
done <"$testdata/README.md"
# Guards the parser above: the README table has six identities.
if ((rows >= 6)); then echo "ok - testdata README lists $rows identities"; else
  echo "not ok - testdata README lists only $rows identities"
  failed=1
fi

exit "$failed"
