#!/usr/bin/env bash
# A throwaway test CA and a server certificate for 127.0.0.1 / ::1 /
# localhost, for wss:// benchmarks (scripts/perf-run.sh *-tls, nginx):
#
#   scripts/tls-test-ca.sh [DIR]     (default /tmp/tls-perf)
#
# Writes DIR/ca.pem (give it to `ignis-ws bench --ca-file`), DIR/cert.pem
# (the server's chain: leaf then CA), DIR/key.pem (the leaf's key, P-256)
# and DIR/ca.key. Never for production: the keys are unprotected.
set -euo pipefail
dir=${1:-/tmp/tls-perf}
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout ca.key -out ca.pem -days 3650 -subj "/CN=ignis-ws perf test CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout key.pem -out leaf.csr -subj "/CN=localhost" 2>/dev/null
cat > leaf.ext <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost
EXT
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
  -out leaf.pem -days 825 -extfile leaf.ext 2>/dev/null
cat leaf.pem ca.pem > cert.pem
rm -f leaf.csr leaf.ext ca.srl
chmod 600 key.pem ca.key
openssl verify -CAfile ca.pem leaf.pem >/dev/null
echo "$dir: ca.pem, cert.pem (leaf + CA), key.pem"
