#!/usr/bin/env bash
# Regenerates the test client CAs (throwaway keys, for tests only).
set -euo pipefail
cd "$(dirname "$0")"
days=36500
# A P-256 CA, key as SEC1 ("EC PRIVATE KEY").
openssl ecparam -name prime256v1 -genkey -noout -out ca-p256.key
openssl req -x509 -new -key ca-p256.key -subj "/O=Example Org/CN=kubernetes-client-ca" -days "$days" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out ca-p256.crt
# An RSA-2048 CA, key as PKCS#1 ("RSA PRIVATE KEY"), as kubeadm writes it.
openssl genrsa -traditional -out ca-rsa.key 2048 2>/dev/null
openssl req -x509 -new -key ca-rsa.key -subj "/CN=kubernetes" -days "$days" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out ca-rsa.crt
# Keys a caller brings: P-256 and RSA-2048 (with a CSR each), and a weak RSA-1024.
openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out byo-p256.key
openssl pkey -in byo-p256.key -pubout -out byo-p256.pub
openssl req -new -key byo-p256.key -subj "/CN=ignored" -out byo-p256.csr
openssl genrsa -out byo-rsa.key 2048 2>/dev/null
openssl pkey -in byo-rsa.key -pubout -out byo-rsa.pub
openssl req -new -key byo-rsa.key -subj "/CN=ignored" -out byo-rsa.csr
openssl genrsa 1024 2>/dev/null | openssl pkey -pubout -out weak-rsa1024.pub
# The largest RSA key accepted (8192 bits): only its public key and CSR are kept.
openssl genrsa -out byo-rsa8192.key 8192 2>/dev/null
openssl pkey -in byo-rsa8192.key -pubout -out byo-rsa8192.pub
openssl req -new -key byo-rsa8192.key -subj "/CN=ignored" -out byo-rsa8192.csr
rm byo-rsa8192.key
