#!/usr/bin/env bash
# gen.sh - makes the certificates test_tls_probe serves from real
# `openssl s_server` processes. Run once; the output is committed so the tests
# never depend on the clock or on key generation:
#   ca.pem/ca.key            test CA (the only trust anchor the tests load)
#   server.pem/server.key    www.example.test + IP 127.0.0.1, signed by the CA
#   self.pem/self.key        the same names, self-signed (not trusted)
#   expired.pem/expired.key  www.example.test, signed by the CA, valid 2000-2001
#   future.pem/future.key    the same, valid 2100-2101 (not yet valid)
#   client.pem/client.key    the same names, signed by the CA, but for
#                            clientAuth only (wrong purpose for a server)
# The rest is valid for 36500 days. EC P-256 keeps it fast.
set -euo pipefail
cd "$(dirname "$0")"

days=36500
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

cat >"$work/ext.cnf" <<'CNF'
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:www.example.test, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = DNS:www.example.test, IP:127.0.0.1
[self]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:www.example.test, IP:127.0.0.1
CNF

key ca.key
openssl req -new -x509 -key ca.key -out ca.pem -days "$days" -subj "/CN=Portcullis probe test CA" \
    -config "$work/ext.cnf" -extensions ca

key server.key
openssl req -new -key server.key -out "$work/server.csr" -subj "/CN=www.example.test"
openssl x509 -req -in "$work/server.csr" -CA ca.pem -CAkey ca.key -set_serial 2 -days "$days" \
    -extfile "$work/ext.cnf" -extensions leaf -out server.pem 2>/dev/null

key self.key
openssl req -new -x509 -key self.key -out self.pem -days "$days" -subj "/CN=www.example.test" \
    -config "$work/ext.cnf" -extensions self

key client.key
openssl req -new -key client.key -out "$work/client.csr" -subj "/CN=www.example.test"
openssl x509 -req -in "$work/client.csr" -CA ca.pem -CAkey ca.key -set_serial 5 -days "$days" \
    -extfile "$work/ext.cnf" -extensions client -out client.pem 2>/dev/null

# `openssl x509` cannot set validity dates; `openssl ca` can, given a scratch
# database.
mkdir "$work/db"
: >"$work/db/index.txt"
echo 03 >"$work/db/serial"
cat >"$work/ca.cnf" <<CNF
[ca]
default_ca = test
[test]
dir = $work/db
database = \$dir/index.txt
unique_subject = no
serial = \$dir/serial
new_certs_dir = \$dir
certificate = $PWD/ca.pem
private_key = $PWD/ca.key
default_md = sha256
policy = any
copy_extensions = none
x509_extensions = leaf
[any]
commonName = supplied
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:www.example.test, IP:127.0.0.1
CNF
dated() { # name start end
    key "$1.key"
    openssl req -new -key "$1.key" -out "$work/$1.csr" -subj "/CN=www.example.test"
    openssl ca -batch -notext -config "$work/ca.cnf" -in "$work/$1.csr" -out "$1.pem" \
        -startdate "$2" -enddate "$3" 2>/dev/null
}
dated expired 20000101000000Z 20010101000000Z
dated future 21000101000000Z 21010101000000Z

# Show what each one is for.
for c in server self expired future client; do
    openssl verify -CAfile ca.pem -purpose sslserver "$c.pem" 2>&1 |
        grep -E ': OK$|^error [0-9]+ at' || true
done
