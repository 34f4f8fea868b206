#!/usr/bin/env bash
# Make the TLS files for a batchd NATS cluster: a private CA and one
# certificate for the servers, used for client connections (batchd → NATS)
# and for the routes between the servers (mutual TLS: it is valid for both
# server and client authentication).
#
#   deploy/nats/make-tls.sh --out ./nats-tls --names n1,n2,n3
#
# Names are every host name clients and servers use to reach a server (the
# host names in BATCHD_NATS_URL and in the routes; IP addresses are fine).
# For the Helm chart in namespace nats, release nats:
#   --names nats,nats.nats.svc,nats.nats.svc.cluster.local,'*.nats-headless','*.nats-headless.nats.svc.cluster.local'
#
# Writes to --out (created, mode 0700):
#   ca.crt       the CA: on every NATS server (/etc/nats/tls/ca.crt) and on
#                every batchd host (BATCHD_NATS_TLS_CA=/etc/batchd/nats-ca.crt)
#   ca.key       the CA's key: keep it off the servers (needed only to renew)
#   server.crt   the servers' certificate (/etc/nats/tls/server.crt)
#   server.key   its key, mode 0600 (/etc/nats/tls/server.key, owned by nats)
# The certificate is valid for --days (825, the most many clients accept);
# run again with the same --out before then to renew it with the same CA.
set -euo pipefail

out="" names="" days=825
usage() { sed -n '2,20p' "$0" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --names) names="${2:?--names needs a list}"; shift 2 ;;
    --days) days="${2:?--days needs a number}"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "make-tls.sh: unknown argument $1" >&2; usage ;;
  esac
done
[[ -n $out && -n $names ]] || { echo "make-tls.sh: --out and --names are required" >&2; usage; }
[[ $days =~ ^[0-9]+$ ]] || { echo "make-tls.sh: --days $days is not a number" >&2; exit 2; }
command -v openssl >/dev/null || { echo "make-tls.sh: openssl is not installed" >&2; exit 1; }

san=""
IFS=',' read -r -a list <<<"$names"
for n in "${list[@]}"; do
  [[ $n =~ ^[A-Za-z0-9*.:-]+$ ]] || { echo "make-tls.sh: $n is not a host name or address" >&2; exit 2; }
  if [[ $n =~ ^[0-9.]+$ || $n == *:* ]]; then san+="IP:$n,"; else san+="DNS:$n,"; fi
done
san=${san%,}

umask 077
mkdir -p "$out"
cd "$out"
if [[ ! -f ca.key ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt \
    -days 3650 -subj "/CN=batchd NATS CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr \
  -subj "/CN=${list[0]}" 2>/dev/null
cat >server.ext <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$san
EXT
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
  -extfile server.ext -out server.crt 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 0644 ca.crt server.crt
echo "wrote $out/ca.crt, $out/server.crt and their keys (names: $names)"
