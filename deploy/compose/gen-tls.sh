#!/bin/sh
# Development certificates for compose.yaml, in tls/: a CA (ca.pem; its key in tls-ca/), the gateways' server certificate for the
# name devices connect to (gateway.pem, the arguments: DNS names or IP addresses) and the NATS nodes'
# certificate (nats.pem, for nats-1..3), each with its key. Production uses certificates from your own PKI
# under the same file names; see README.md.
#
#   ./gen-tls.sh mqtt.example.com 203.0.113.10
set -eu

if [ $# -eq 0 ]; then
  echo "usage: $0 NAME... (the DNS names or IP addresses devices connect to)" >&2
  exit 2
fi
cd "$(dirname "$0")"
if [ -e tls/ca.pem ]; then
  echo "tls/ca.pem exists: remove tls/ and tls-ca/ to start over" >&2
  exit 1
fi
# The CA's key stays out of tls/, which the containers mount.
mkdir -p tls tls-ca
chmod 700 tls-ca
cd tls

san() {
  out=""
  for n in "$@"; do
    case $n in
      *[!0-9.:]*) out="$out,DNS:$n" ;;
      *) out="$out,IP:$n" ;;
    esac
  done
  echo "${out#,}"
}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
  -subj "/CN=fleetflow compose CA" -keyout ../tls-ca/ca-key.pem -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

issue() { # issue NAME SUBJECT-ALT-NAMES EXTENDED-KEY-USAGE
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$1-key.pem" -out "$1.csr" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=%s\nkeyUsage=critical,digitalSignature\n' "$2" "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ../tls-ca/ca-key.pem -CAcreateserial -days 397 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

issue gateway "$(san "$@")" serverAuth
# NATS nodes present this certificate to clients and, as clients and servers of their routes, to each other.
issue nats "$(san nats-1 nats-2 nats-3)" serverAuth,clientAuth
rm -f ca.srl
# The containers run as non-root users (uid 65532 for fleetflow's): the keys must be readable to them. Keep
# tls/ itself private to the host's operators (chmod 700 tls on a shared host).
chmod 0644 ./*.pem
echo "tls/: ca.pem, gateway.pem for $*, nats.pem for nats-1..3 (tls-ca/ca-key.pem: keep it offline)"
