#!/usr/bin/env bash
# Makes development certificates with the openssl CLI: a dev CA, a server certificate for
# localhost / 127.0.0.1, and a client certificate named like a Genesys data-actions client.
# Output goes to certs/dev/ (git-ignored). Never use these outside a laptop or a test VM.
# Usage: bash certs/make-dev-certs.sh [OUT_DIR]
set -euo pipefail
out="${1:-$(dirname "$0")/dev}"
mkdir -p "$out"
cd "$out"

if [ -f ca.pem ] && [ -f issuer-es256.pub.pem ] && openssl x509 -checkend 86400 -noout -in ca.pem >/dev/null 2>&1; then
  echo "certs: $out already has a valid dev CA; delete the folder to start over" >&2
  exit 0
fi

days=825
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
  -subj "/CN=Seawall dev CA" -keyout ca.key -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

issue() { # name subject san extended-key-usage
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$2" \
    -keyout "$1.key" -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days "$days" \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=%s\nbasicConstraints=CA:FALSE\n' "$3" "$4") \
    -out "$1.pem" 2>/dev/null
  rm -f "$1.csr"
}

issue server "/CN=localhost" "DNS:localhost,IP:127.0.0.1,IP:::1" serverAuth
issue client "/CN=dataactions.dev.local" "DNS:dataactions.dev.local" clientAuth

# A dev token-signing key pair (ES256), for a jwt_providers entry with public_key_pem.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out issuer-es256.pem 2>/dev/null
openssl pkey -in issuer-es256.pem -pubout -out issuer-es256.pub.pem 2>/dev/null

chmod 600 ./*.key issuer-es256.pem
echo "certs: wrote ca.pem, server.pem/.key, client.pem/.key, issuer-es256.pem/.pub.pem to $out"
