"""Fixtures: the real kubeconfigd binary started on free loopback ports, stopped after the tests."""

import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def binary() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("KUBECONFIGD_BIN", ROOT / "target" / "debug" / "kubeconfigd"))
    if not path.is_file():
        raise RuntimeError(f"{path} not found: run `cargo build --workspace --bins` first")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TLS = ROOT / "tests" / "fixtures" / "tls"


class PortTaken(RuntimeError):
    """The server could not bind a port picked for it."""


class Server:
    def __init__(self, args, tls=False):
        import ssl

        self.tls = tls
        self.ssl_context = ssl.create_default_context(cafile=str(TLS / "ca.crt")) if tls else None
        if tls:
            args = [*args, "--tls-cert-file", str(TLS / "server.crt"), "--tls-key-file", str(TLS / "server.key")]
        # A port picked free can be taken by someone else's connection before the server binds it
        # (an ephemeral port of any client on the machine): start again on other ports then.
        for attempt in range(3):
            try:
                self._start(args)
                return
            except PortTaken:
                if attempt == 2:
                    raise

    def _start(self, args):
        self.grpc_port = free_port()
        self.rest_port = free_port()
        self.admin_port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="kubeconfigd-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [str(binary()), *args, "--grpc-addr", f"127.0.0.1:{self.grpc_port}", "--rest-addr", f"127.0.0.1:{self.rest_port}",
             "--admin-addr", f"127.0.0.1:{self.admin_port}"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            if self.process.poll() is not None:
                text = self.log_text()
                if "Address already in use" in text:
                    raise PortTaken(text)
                raise RuntimeError(f"kubeconfigd exited: {text}")
            try:
                with urllib.request.urlopen(f"{self.admin}/readyz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"kubeconfigd did not start: {self.log_text()}")
                time.sleep(0.05)

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def rest(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.rest_port}"

    def log_text(self) -> str:
        return pathlib.Path(self.log.name).read_text()

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="session")
def demo():
    server = Server(["--demo"])
    yield server
    server.stop()


@pytest.fixture(scope="session")
def matrix(tmp_path_factory):
    target = tmp_path_factory.mktemp("matrix")
    shutil.copytree(ROOT / "tests" / "fixtures" / "matrix", target, dirs_exist_ok=True)
    server = Server(["--tenant", str(target / "tenant.yaml"), "--inventory", str(target / "inventory")])
    yield server
    server.stop()


@pytest.fixture(scope="session")
def grpcurl() -> str:
    path = shutil.which("grpcurl")
    if path is None:
        raise RuntimeError("grpcurl not on PATH: install tests/python/requirements.txt (scripts/test.sh does)")
    return path
