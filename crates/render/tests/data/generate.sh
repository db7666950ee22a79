#!/usr/bin/env bash
# Regenerates the TEST-ONLY key material in this folder with openssl. None of it protects anything.
set -euo pipefail
cd "$(dirname "$0")"
days=36500
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days $days -subj "/CN=test-cluster-ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -keyout proxy-ca.key -out proxy-ca.crt -days $days -subj "/CN=test-proxy-ca" \
  -addext "basicConstraints=critical,CA:TRUE" 2>/dev/null
# RSA admin credential, key in PKCS#1 ("RSA PRIVATE KEY"), as kubeadm writes it.
openssl genrsa -traditional -out admin-rsa.key 2048 2>/dev/null
openssl req -new -key admin-rsa.key -subj "/O=system:masters/CN=kubernetes-admin" -out admin-rsa.csr
openssl x509 -req -in admin-rsa.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days $days -out admin-rsa.crt 2>/dev/null
# EC P-256 admin credential, key in SEC1 ("EC PRIVATE KEY"), as k3s writes it.
openssl ecparam -name prime256v1 -genkey -noout -out admin-ec.key
openssl req -new -key admin-ec.key -subj "/O=system:masters/CN=ec-admin" -out admin-ec.csr
openssl x509 -req -in admin-ec.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days $days -out admin-ec.crt 2>/dev/null
# The same EC key as PKCS#8 ("PRIVATE KEY"), and a P-384 key in PKCS#8 with its certificate.
openssl pkcs8 -topk8 -nocrypt -in admin-ec.key -out admin-ec.pkcs8.key
openssl ecparam -name secp384r1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out admin-p384.key
openssl req -new -key admin-p384.key -subj "/CN=p384-admin" -out admin-p384.csr
openssl x509 -req -in admin-p384.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days $days -out admin-p384.crt 2>/dev/null
rm -f ./*.csr ./*.srl ca.key proxy-ca.key
# A second P-256 key that belongs to no certificate here (key-mismatch test on the same curve).
openssl ecparam -name prime256v1 -genkey -noout -out other-ec.key
