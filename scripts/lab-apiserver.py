#!/usr/bin/env python3
"""A stand-in Kubernetes API server for trying `kubeconfigd import` without a cluster at hand.

`--init DIR` makes a throwaway cluster CA, a server certificate for 127.0.0.1 and a cluster-admin
client certificate (CN kubernetes-admin, O system:masters) with the `openssl` CLI, and writes
DIR/admin.conf exactly as kubeadm writes /etc/kubernetes/admin.conf. `--serve DIR` answers HTTPS on
127.0.0.1:6443 (`--port` to change it) the way an API server answers `kubectl get nodes`, and, like
one, refuses every connection that does not present a client certificate signed by that CA. It
serves one made-up node; it is not a Kubernetes API server beyond that.
"""

import argparse
import base64
import http.server
import json
import pathlib
import ssl
import subprocess
import sys


def openssl(directory, *args):
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


def init(directory: pathlib.Path, port: int):
    directory.mkdir(parents=True, exist_ok=True)
    openssl(directory, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
    openssl(directory, "req", "-x509", "-new", "-key", "ca.key", "-out", "ca.crt", "-days", "30",
            "-subj", "/CN=lab-ca")
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, subject, extension in [
        ("server", "/CN=lab-apiserver", ["-extfile", "server.ext"]),
        ("admin", "/O=system:masters/CN=kubernetes-admin", []),
    ]:
        openssl(directory, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key")
        openssl(directory, "req", "-new", "-key", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
        openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", "30", *extension)

    def data(name):
        return base64.b64encode((directory / name).read_bytes()).decode()

    (directory / "admin.conf").write_text(f"""apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: {data("ca.crt")}
    server: https://127.0.0.1:{port}
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    user: kubernetes-admin
  name: kubernetes-admin@kubernetes
current-context: kubernetes-admin@kubernetes
preferences: {{}}
users:
- name: kubernetes-admin
  user:
    client-certificate-data: {data("admin.crt")}
    client-key-data: {data("admin.key")}
""")
    (directory / "admin.conf").chmod(0o600)
    print(f"wrote {directory / 'admin.conf'} for https://127.0.0.1:{port}")


NODES_TABLE = {
    "kind": "Table",
    "apiVersion": "meta.k8s.io/v1",
    "metadata": {"resourceVersion": "1"},
    "columnDefinitions": [
        {"name": "Name", "type": "string", "format": "name"},
        {"name": "Status", "type": "string"},
        {"name": "Roles", "type": "string"},
        {"name": "Age", "type": "string"},
        {"name": "Version", "type": "string"},
    ],
    "rows": [{
        "cells": ["lab-node-1", "Ready", "control-plane", "1d", "v1.31.0"],
        "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                   "metadata": {"name": "lab-node-1"}},
    }],
}

RESPONSES = {
    "/api": {"kind": "APIVersions", "versions": ["v1"],
             "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
    "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
        {"name": "nodes", "singularName": "node", "namespaced": False, "kind": "Node",
         "verbs": ["get", "list"], "shortNames": ["no"]}]},
    "/api/v1/nodes": NODES_TABLE,
}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = RESPONSES.get(self.path.split("?", 1)[0])
        if body is None:
            self.send_response(404)
            body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
        else:
            self.send_response(200)
        payload = json.dumps(body).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format, *args):
        subject = dict(x[0] for x in self.connection.getpeercert().get("subject", ()))
        sys.stderr.write(f"{subject.get('commonName', '?')}: {format % args}\n")


def serve(directory: pathlib.Path, port: int):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "server.crt", directory / "server.key")
    context.load_verify_locations(directory / "ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"serving https://127.0.0.1:{port} (client certificates of {directory / 'ca.crt'} only)", flush=True)
    server.serve_forever()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--init", metavar="DIR", type=pathlib.Path, help="make the PKI and DIR/admin.conf")
    mode.add_argument("--serve", metavar="DIR", type=pathlib.Path, help="serve with the PKI in DIR")
    parser.add_argument("--port", type=int, default=6443)
    args = parser.parse_args()
    if args.init:
        init(args.init, args.port)
    else:
        serve(args.serve, args.port)


if __name__ == "__main__":
    main()
