#!/usr/bin/env bash
# Regenerates the demo inventory under deploy/demo/inventory with fresh DEMO key material (openssl).
# The keys are generated for the demo, are public in this repository, and protect nothing.
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
indent() { sed 's/^/    /' "$1"; }

ca() { # name -> $work/name-ca.{crt,key}
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/$1-ca.key" -out "$work/$1-ca.crt" -days 36500 \
    -subj "/CN=$1 demo cluster CA (DEMO ONLY)" -addext "basicConstraints=critical,CA:TRUE" 2>/dev/null
}
admin_rsa() { # name -> $work/name-admin.{crt,key}, PKCS#1 key as kubeadm writes it
  openssl genrsa -traditional -out "$work/$1-admin.key" 2048 2>/dev/null
  openssl req -new -key "$work/$1-admin.key" -subj "/O=system:masters/CN=kubernetes-admin (DEMO ONLY)" -out "$work/$1.csr"
  openssl x509 -req -in "$work/$1.csr" -CA "$work/$1-ca.crt" -CAkey "$work/$1-ca.key" -CAcreateserial -days 36500 -out "$work/$1-admin.crt" 2>/dev/null
}
admin_ec() { # name -> EC P-256 key in SEC1 form, as k3s writes it
  openssl ecparam -name prime256v1 -genkey -noout -out "$work/$1-admin.key"
  openssl req -new -key "$work/$1-admin.key" -subj "/O=system:masters/CN=edge-admin (DEMO ONLY)" -out "$work/$1.csr"
  openssl x509 -req -in "$work/$1.csr" -CA "$work/$1-ca.crt" -CAkey "$work/$1-ca.key" -CAcreateserial -days 36500 -out "$work/$1-admin.crt" 2>/dev/null
}
header() {
  echo "# DEMO DATA for kubeconfigd --demo. The key material below was generated for the demo by"
  echo "# deploy/demo/generate.sh, is public, and protects nothing."
}

# prod-minted: a kubeadm-style cluster whose CA is also its client CA; the service holds the CA's key and
# mints a short-lived client certificate per caller instead of handing out a shared admin credential.
minted() {
  openssl ecparam -name prime256v1 -genkey -noout -out "$work/prod-minted-ca.key"
  openssl req -x509 -new -key "$work/prod-minted-ca.key" -days 36500 \
    -subj "/CN=prod-minted demo cluster CA (DEMO ONLY)" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$work/prod-minted-ca.crt" 2>/dev/null
  { header; cat <<EOF
# A kubeadm-style cluster with OIDC configured whose admin credential is minted: the file holds the
# client CA (here the cluster CA, as kubeadm sets it up) and its signing key, and no shared admin
# credential. Each admin kubeconfig carries a client certificate issued for the caller (CN
# kubeconfigd:admin:<user>, O system:masters), valid for an hour unless asked otherwise.
uid: 6470a2b1c5e6f1a2b3c4d5e7
name: prod-minted
project: platform
apiServer: https://10.40.0.10:6443
certificateAuthority: |
$(indent "$work/prod-minted-ca.crt")
adminCredential: minted
clientCa:
  certificate: |
$(indent "$work/prod-minted-ca.crt")
  key: |
$(indent "$work/prod-minted-ca.key")
kubernetesPack:
  name: kubernetes
  version: "1.30.0"
  values: |
    kubeadmconfig:
      apiServer:
        extraArgs:
          oidc-issuer-url: https://idp.demo.test/realms/platform
          oidc-client-id: k8s-prod-minted
      clientConfig:
        oidc-issuer-url: https://idp.demo.test/realms/platform
        oidc-client-id: k8s-prod-minted
EOF
  } > inventory/prod-minted.yaml
}
if [ "${1:-}" = "--minted-only" ]; then minted; echo "prod-minted regenerated"; exit 0; fi

ca prod-east; admin_rsa prod-east
{ header; cat <<EOF
# PXK cluster with OIDC properly configured and the Spectro Proxy enabled.
uid: 6470a2b1c5e6f1a2b3c4d5e1
name: prod-east
project: platform
apiServer: https://10.10.0.10:6443
certificateAuthority: |
$(indent "$work/prod-east-ca.crt")
admin:
  clientCertificate: |
$(sed 's/^/    /' "$work/prod-east-admin.crt")
  clientKey: |
$(sed 's/^/    /' "$work/prod-east-admin.key")
kubernetesPack:
  name: kubernetes
  version: "1.29.0"
  values: |
    pack:
      podCIDR: "192.168.0.0/16"
      palette:
        config:
          dashboard:
            identityProvider: none
    kubeadmconfig:
      apiServer:
        certSANs:
          - "cluster-{{ .spectro.system.cluster.uid }}.{{ .spectro.system.reverseproxy.server }}"
        extraArgs:
          oidc-issuer-url: "https://idp.demo.test/realms/platform"
          oidc-client-id: "k8s-prod-east"
          oidc-username-claim: "email"
          oidc-groups-claim: "groups"
      clientConfig:
        oidc-issuer-url: "{{ .spectro.pack.kubernetes.kubeadmconfig.apiServer.extraArgs.oidc-issuer-url }}"
        oidc-client-id: "{{ .spectro.pack.kubernetes.kubeadmconfig.apiServer.extraArgs.oidc-client-id }}"
        oidc-extra-scope: profile,email
spectroProxy:
  enabled: true
EOF
} > inventory/prod-east.yaml

ca edge-store-42; admin_ec edge-store-42
{ header; cat <<EOF
# K3s edge cluster with OIDC properly configured, no Spectro Proxy.
uid: 6470a2b1c5e6f1a2b3c4d5e2
name: edge-store-42
project: platform
apiServer: https://192.168.42.10:6443
certificateAuthority: |
$(indent "$work/edge-store-42-ca.crt")
admin:
  clientCertificate: |
$(sed 's/^/    /' "$work/edge-store-42-admin.crt")
  clientKey: |
$(sed 's/^/    /' "$work/edge-store-42-admin.key")
kubernetesPack:
  name: edge-k3s
  version: "1.29.5"
  values: |
    cluster:
      config:
        kube-apiserver-arg:
          - anonymous-auth=true
          - oidc-issuer-url=https://idp.demo.test/realms/edge
          - oidc-client-id=edge-stores
          - oidc-username-claim=email
    clientConfig:
      oidc-issuer-url: https://idp.demo.test/realms/edge
      oidc-client-id: edge-stores
      oidc-client-secret: demo-edge-client-secret
      oidc-extra-scope: groups
EOF
} > inventory/edge-store-42.yaml

ca eks-analytics
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/proxy-ca.key" -out "$work/proxy-ca.crt" -days 36500 \
  -subj "/CN=Spectro Proxy demo CA (DEMO ONLY)" -addext "basicConstraints=critical,CA:TRUE" 2>/dev/null
{ header; cat <<EOF
# EKS cluster (imported) where OIDC is only half configured (issuer, no clientConfig), reached through
# the Spectro Proxy with the proxy's CA and a service-account token. The admin credential is a token.
uid: 6470a2b1c5e6f1a2b3c4d5e3
name: eks-analytics
project: platform
apiServer: https://ABCDEF0123456789.gr7.us-east-1.eks.demo.test
certificateAuthority: |
$(indent "$work/eks-analytics-ca.crt")
admin:
  token: demo-eks-admin-token-$(openssl rand -hex 16)
kubernetesPack:
  name: kubernetes-eks
  version: "1.30"
  values: |
    managedControlPlane:
      oidcIdentityProvider:
        identityProviderConfigName: analytics-oidc
        issuerUrl: https://idp.demo.test/realms/analytics
        clientId: eks-analytics
        usernameClaim: email
spectroProxy:
  enabled: true
  certificateAuthority: |
$(sed 's/^/    /' "$work/proxy-ca.crt")
  token: demo-proxy-sa-token-$(openssl rand -hex 16)
EOF
} > inventory/eks-analytics.yaml

ca edge-factory-7; admin_ec edge-factory-7
{ header; cat <<EOF
# PXK-E edge cluster with a clientConfig block but no issuer on the API server: OIDC not configured.
uid: 6470a2b1c5e6f1a2b3c4d5e4
name: edge-factory-7
project: platform
apiServer: https://172.20.7.10:6443
certificateAuthority: |
$(indent "$work/edge-factory-7-ca.crt")
admin:
  clientCertificate: |
$(sed 's/^/    /' "$work/edge-factory-7-admin.crt")
  clientKey: |
$(sed 's/^/    /' "$work/edge-factory-7-admin.key")
kubernetesPack:
  name: edge-k8s
  version: "1.28.9"
  values: |
    cluster:
      config: |
        clusterConfiguration:
          apiServer:
            extraArgs:
              advertise-address: "0.0.0.0"
    clientConfig:
      oidc-issuer-url: https://idp.demo.test/realms/edge
      oidc-client-id: edge-factories
EOF
} > inventory/edge-factory-7.yaml

ca broken-staging; admin_rsa broken-staging
openssl genrsa -traditional -out "$work/other.key" 2048 2>/dev/null
{ header; cat <<EOF
# Deliberately broken: the admin key does not belong to the admin certificate, so this cluster is
# served as unavailable (503) with the reason, while every other cluster keeps working.
uid: 6470a2b1c5e6f1a2b3c4d5e5
name: broken-staging
project: platform
apiServer: https://10.30.0.10:6443
certificateAuthority: |
$(indent "$work/broken-staging-ca.crt")
admin:
  clientCertificate: |
$(sed 's/^/    /' "$work/broken-staging-admin.crt")
  clientKey: |
$(sed 's/^/    /' "$work/other.key")
kubernetesPack:
  name: kubernetes
  version: "1.29.0"
  values: |
    kubeadmconfig:
      apiServer:
        extraArgs:
          oidc-issuer-url: https://idp.demo.test/realms/platform
          oidc-client-id: k8s-staging
      clientConfig:
        oidc-issuer-url: https://idp.demo.test/realms/platform
        oidc-client-id: k8s-staging
EOF
} > inventory/broken-staging.yaml
minted
echo "demo inventory regenerated"
