"""Real servers on loopback for contract tests: moto (S3), s3rver (S3 that checks credentials), Pushgateway.

Each server runs as a child process on a free port and is stopped (terminate, then kill) when its context
exits. Binaries that ``scripts/install-test-tools.sh`` provides are looked up under ``<repo>/.tools``; when
one is missing the test FAILS with a message saying to run that script (these tests are not optional).
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = Path(os.environ.get("DG_TOOLS_DIR") or REPO / ".tools")
INSTALL_HINT = "run scripts/install-test-tools.sh (needs node/npm and apt-get) to install it"

S3RVER_BIN = TOOLS / "node_modules" / ".bin" / "s3rver"
PUSHGATEWAY_BIN = TOOLS / "pushgateway" / "usr" / "bin" / "prometheus-pushgateway"
S3RVER_KEY = "S3RVER"  # the account s3rver has built in (id and secret)


def require_tool(path: Path, what: str) -> Path:
    """The tool's path, or fail the test (not skip) with the command that installs it."""
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{what} not found at {path}: {INSTALL_HINT}", pytrace=False)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen
    log: Path
    cert: Path | None = None  # the server's self-signed certificate, when it serves https

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def _wait_http(server: Server, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}: {server.log_tail()}")
        try:
            with urllib.request.urlopen(server.url + path, timeout=2, context=ssl._create_unverified_context()):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it is serving
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not answer on {server.url} within {timeout}s: {server.log_tail()}")


@contextlib.contextmanager
def _serve(
    name: str, argv: list[str], port: int, ready_path: str, env: dict[str, str] | None = None, scheme: str = "http"
) -> Iterator[Server]:
    with tempfile.TemporaryDirectory(prefix=f"dg-{name}-") as tmp:
        log = Path(tmp) / "server.log"
        with open(log, "wb") as logf:
            proc = subprocess.Popen(
                argv, stdout=logf, stderr=subprocess.STDOUT, cwd=tmp, env={**os.environ, **(env or {})}
            )
        server = Server(name, f"{scheme}://127.0.0.1:{port}", proc, log)
        try:
            _wait_http(server, ready_path, timeout=60)
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def moto_server() -> Iterator[Server]:
    """moto's S3 server (accepts any credentials, keeps objects in memory)."""
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with _serve("moto", argv, port, "/moto-api/") as s:
        yield s


@dataclass
class IamMoto:
    """A moto server that enforces IAM: ``admin`` may do anything, ``reader`` only GetObject + ListBucket."""

    server: Server
    keys: dict[str, tuple[str, str]]  # user -> (access key id, secret)

    @property
    def url(self) -> str:
        return self.server.url


@contextlib.contextmanager
def moto_iam_server() -> Iterator[IamMoto]:
    """moto with authentication on (INITIAL_NO_AUTH_ACTION_COUNT): real AccessDenied/SignatureDoesNotMatch."""
    import json

    import boto3

    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    # Three unauthenticated calls bootstrap the admin user; after that every request is authenticated.
    with _serve("moto-iam", argv, port, "/moto-api/", env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"}) as server:

        def iam(key: str = "bootstrap", secret: str = "bootstrap"):
            return boto3.client(
                "iam",
                endpoint_url=server.url,
                region_name="us-east-1",
                aws_access_key_id=key,
                aws_secret_access_key=secret,
            )

        def policy(actions: list[str]) -> str:
            return json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
            )

        keys: dict[str, tuple[str, str]] = {}
        boot = iam()
        for user, actions in (("admin", ["*"]), ("reader", ["s3:GetObject", "s3:ListBucket"])):
            boot.create_user(UserName=user)
            boot.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=policy(actions))
            k = boot.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (k["AccessKeyId"], k["SecretAccessKey"])
            boot = iam(*keys["admin"])
        yield IamMoto(server, keys)


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A throwaway CA-less certificate for 127.0.0.1/localhost: (cert.pem, key.pem)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@contextlib.contextmanager
def s3rver_server(tls: bool = False, data_dir: Path | None = None, port: int | None = None) -> Iterator[Server]:
    """s3rver (npm): rejects unknown access key ids, so wrong-credential paths can be tested.

    With ``tls`` it serves https with a fresh self-signed certificate (``server.cert``). It keeps objects
    on disk: given the same ``data_dir`` and ``port``, a restarted server serves what the last one stored.
    """
    exe = require_tool(S3RVER_BIN, "s3rver")
    port = port or free_port()
    with contextlib.ExitStack() as stack:
        data = str(data_dir) if data_dir else stack.enter_context(tempfile.TemporaryDirectory(prefix="dg-s3rver-"))
        argv = [str(exe), "-d", data, "-a", "127.0.0.1", "-p", str(port), "--silent"]
        if tls:
            cert, key = self_signed_cert(Path(data))
            argv += ["--cert", str(cert), "--key", str(key)]
        with _serve("s3rver", argv, port, "/", scheme="https" if tls else "http") as s:
            s.cert = cert if tls else None
            yield s


@contextlib.contextmanager
def pushgateway_server() -> Iterator[Server]:
    """The Debian prometheus-pushgateway binary, persisting nothing."""
    exe = require_tool(PUSHGATEWAY_BIN, "prometheus-pushgateway")
    port = free_port()
    argv = [str(exe), f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    with _serve("pushgateway", argv, port, "/-/ready") as s:
        yield s


def use_s3(monkeypatch: pytest.MonkeyPatch, server: Server, key: str = "test-key", secret: str = "test-secret") -> str:
    """Point dg_core.store at an S3 server with a fresh bucket (created on first write); returns its URI."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("DG_S3_CREATE_BUCKET", "1")
    return f"s3://dg-test-{uuid.uuid4().hex[:12]}"


class FlakyProxy:
    """A loopback HTTP proxy to an S3 server that answers the first ``fail_first`` requests (of ``methods``)
    with an S3 error.

    It is a real server between the SDK and moto, so retry/backoff is exercised over the wire, not mocked.
    """

    def __init__(
        self,
        target: Server,
        fail_first: int,
        status: int = 503,
        code: str = "SlowDown",
        methods: tuple[str, ...] = ("GET", "PUT", "POST", "DELETE", "HEAD"),
        host_for_action: dict[str, str] | None = None,
    ):
        """``host_for_action`` sends requests whose query names ``Action=<key>`` with ``Host: <value>`` and the
        query as a form body (moto picks the service by host, so unsigned STS calls reach its STS); ``auth``
        records each request's Authorization header."""
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        self.fail_first = fail_first
        self.auth: list[str] = []
        self.requests = 0
        self.failed = 0
        lock = threading.Lock()
        host, port = urlsplit(target.url).hostname, urlsplit(target.url).port
        proxy = self
        body_err = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>injected by FlakyProxy</Message><RequestId>flaky</RequestId></Error>"
        ).encode()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with lock:
                    proxy.auth.append(self.headers.get("Authorization") or "")
                    proxy.requests += 1
                    fail = proxy.failed < proxy.fail_first and self.command in methods
                    proxy.failed += fail
                if fail:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(body_err)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(body_err)
                    return
                conn = http.client.HTTPConnection(host, port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                path = self.path
                for action, host_header in (host_for_action or {}).items():
                    if f"Action={action}" in path:
                        headers = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")}
                        headers |= {"Host": host_header, "Content-Type": "application/x-www-form-urlencoded"}
                        path, _, query = path.partition("?")
                        body = query.encode()  # moto reads STS parameters from a form body only
                conn.request(self.command, path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)
