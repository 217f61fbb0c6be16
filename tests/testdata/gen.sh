#!/usr/bin/env bash
# Regenerates tests/testdata/pki/: a small fixed PKI for tests that need files
# which do not change between runs. README.md says what each identity is for
# and which reason code ktrust must report for it.
# Only the openssl command line tool is used (OpenSSL 3.0, as on Debian 12).
# The keys are test keys, checked in on purpose: never trust this root.
#   usage: tests/testdata/gen.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out="$here/pki"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Ten years, so that the valid identities stay valid in CI for a long time.
days=3650

# ext_file NAME SAN BASIC_CONSTRAINTS KEY_USAGE [EKU]: an extension file.
# SKID/AKID are explicit because ktrust verifies with X509_V_FLAG_X509_STRICT.
ext_file() {
  {
    echo "basicConstraints = $3"
    echo "keyUsage = $4"
    [[ -z ${5:-} ]] || echo "extendedKeyUsage = $5"
    echo "subjectKeyIdentifier = hash"
    echo "authorityKeyIdentifier = keyid:always"
    [[ -z $2 ]] || echo "subjectAltName = $2"
  } >"$work/$1.ext"
}

# csr NAME: a fresh P-256 key in pki/ and a request for it in the work dir.
csr() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$out/$1.key"
  openssl req -new -key "$out/$1.key" -subj "/O=ktrust testdata/CN=$1" -out "$work/$1.csr"
}

# root NAME: a self-signed CA for example.org.
root() {
  csr "$1"
  ext_file "$1" "URI:spiffe://example.org" "critical,CA:TRUE" "critical,keyCertSign,cRLSign"
  openssl x509 -req -in "$work/$1.csr" -signkey "$out/$1.key" -days "$days" \
    -set_serial "0x$(openssl rand -hex 15)" -extfile "$work/$1.ext" -out "$out/$1.crt" 2>/dev/null
}

# leaf NAME ISSUER SAN [BASIC_CONSTRAINTS [KEY_USAGE]]: a leaf shaped like an
# X.509-SVID unless the arguments say otherwise, signed by ISSUER.
leaf() {
  csr "$1"
  ext_file "$1" "$3" "${4:-critical,CA:FALSE}" "${5:-critical,digitalSignature}" \
    "serverAuth,clientAuth"
  openssl x509 -req -in "$work/$1.csr" -CA "$out/$2.crt" -CAkey "$out/$2.key" -days "$days" \
    -set_serial "0x$(openssl rand -hex 15)" -extfile "$work/$1.ext" -out "$out/$1.crt" 2>/dev/null
}

# expired_leaf NAME ISSUER SAN: valid for one day in 2020. OpenSSL 3.0's x509
# command cannot set past dates, `openssl ca` can (-startdate/-enddate).
expired_leaf() {
  csr "$1"
  ext_file "$1" "$3" "critical,CA:FALSE" "critical,digitalSignature" "serverAuth,clientAuth"
  : >"$work/index.txt"
  cat >"$work/ca.cnf" <<EOF
[ca]
default_ca = fixture
[fixture]
database = $work/index.txt
new_certs_dir = $work
serial = $work/serial
default_md = sha256
policy = any_dn
unique_subject = no
[any_dn]
organizationName = optional
commonName = optional
EOF
  openssl ca -batch -notext -rand_serial -config "$work/ca.cnf" -cert "$out/$2.crt" \
    -keyfile "$out/$2.key" -in "$work/$1.csr" -extfile "$work/$1.ext" \
    -startdate 20200101000000Z -enddate 20200102000000Z -out "$out/$1.crt" 2>/dev/null
}

rm -rf "$out"
mkdir -p "$out"

id=spiffe://example.org/ns/test/sa/client
root root
leaf client root "URI:$id"
leaf no_uri_san root "DNS:client.example.org"
leaf multiple_uri_sans root "URI:$id,URI:spiffe://example.org/ns/test/sa/other"
leaf leaf_is_ca root "URI:$id" "critical,CA:TRUE" "critical,digitalSignature,keyCertSign"
expired_leaf expired root "URI:$id"
# Same trust domain, different key: chains to nothing in root.crt.
root untrusted_root
leaf untrusted_client untrusted_root "URI:$id"
ls "$out"
