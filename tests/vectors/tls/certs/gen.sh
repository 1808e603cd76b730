#!/bin/sh
# gen.sh - makes the test PKI the TLS vectors and unit tests use. Run it in
# this directory; it overwrites every file it makes. TEST KEYS ONLY.
#
#   ca.pem / ca.key                 "Portcullis Test Root CA" (self-signed)
#   int.pem / int.key               "Portcullis Test Intermediate CA" (by ca)
#   server.pem / server.key         leaf for www.portcullis.test,
#                                   portcullis.test, localhost, 127.0.0.1
#                                   (issued by int)
#   chain.pem                       server.pem + int.pem, what a server sends
#   selfsigned.pem / selfsigned.key self-signed leaf for
#                                   selfsigned.portcullis.test
#   cnonly.pem / cnonly.key         leaf with no subjectAltName, CN
#                                   cn.portcullis.test (issued by int)
#   expired.pem / expired.key       leaf for www.portcullis.test valid only in
#                                   2000 (issued by int)
#
# Everything but expired.pem is valid for 36500 days so the recorded vectors
# keep verifying. EC P-256 keeps the certificates (and the vectors) small.
set -eu
cd "$(dirname "$0")"
DAYS=36500

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

cat >ext.cnf <<'EOF'
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[int]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:www.portcullis.test, DNS:portcullis.test, DNS:localhost, IP:127.0.0.1
[selfsigned]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:selfsigned.portcullis.test
[cnonly]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
authorityKeyIdentifier = keyid
EOF

key ca.key
openssl req -new -x509 -key ca.key -days $DAYS -subj "/O=Portcullis Test/CN=Portcullis Test Root CA" \
    -extensions ca -config ext.cnf -set_serial 1 -out ca.pem 2>/dev/null

issue() { # name subject issuer-cert issuer-key extensions serial
    key "$1.key"
    openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
    openssl x509 -req -in "$1.csr" -CA "$3" -CAkey "$4" -days $DAYS -set_serial "$6" \
        -extfile ext.cnf -extensions "$5" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr"
}

issue int "/O=Portcullis Test/CN=Portcullis Test Intermediate CA" ca.pem ca.key int 2
issue server "/O=Portcullis Test/CN=www.portcullis.test" int.pem int.key server 3
issue cnonly "/O=Portcullis Test/CN=cn.portcullis.test" int.pem int.key cnonly 4
cat server.pem int.pem >chain.pem

key selfsigned.key
openssl req -new -x509 -key selfsigned.key -days $DAYS \
    -subj "/O=Portcullis Test/CN=selfsigned.portcullis.test" -config ext.cnf \
    -extensions selfsigned -set_serial 5 -out selfsigned.pem 2>/dev/null

# An expired leaf needs explicit dates, which only "openssl ca" sets.
key expired.key
openssl req -new -key expired.key -subj "/O=Portcullis Test/CN=www.portcullis.test" -out expired.csr
rm -rf ca.d && mkdir ca.d && : >ca.d/index.txt && echo 06 >ca.d/serial
cat >ca.cnf <<'EOF'
[ca]
default_ca = test
[test]
dir = ca.d
database = $dir/index.txt
serial = $dir/serial
new_certs_dir = $dir
default_md = sha256
policy = any
copy_extensions = none
[any]
organizationName = optional
commonName = supplied
[expired]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:www.portcullis.test
EOF
openssl ca -batch -config ca.cnf -cert int.pem -keyfile int.key -in expired.csr -out expired.pem \
    -startdate 20000101000000Z -enddate 20001231000000Z -extensions expired -extfile ca.cnf \
    -notext 2>/dev/null
rm -rf ca.d ca.cnf expired.csr ext.cnf

for c in ca int server selfsigned cnonly expired; do
    openssl x509 -in $c.pem -noout -subject -enddate
done
openssl verify -CAfile ca.pem -untrusted int.pem server.pem
