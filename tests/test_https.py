"""HTTPS straight from the server: ``python run_api.py --ssl-certfile ... --ssl-keyfile ...`` with a self-signed
certificate made here answers over TLS, and the same port refuses plain HTTP."""

import contextlib
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_server import REPO, free_port

from settings import Settings


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1, valid for a day, and its key (openssl's command line)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line is not installed: no certificate to serve HTTPS with")
    certificate, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(certificate)),
        ],
        check=True,
        capture_output=True,
    )
    return certificate, key


def trusting(certificate: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certificate)


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    certificate, key = self_signed_certificate(tmp_path)
    port = free_port()
    log = tmp_path / "server.log"
    # The certificate through the flags, the key through its GRPO_ variable: both ways reach uvicorn.
    command = [sys.executable, "run_api.py", "--port", str(port), "--models-dir", str(tmp_path / "models")]
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [*command, "--ssl-certfile", str(certificate)],
            cwd=REPO,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GRPO_SSL_KEYFILE": str(key)},
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"https://127.0.0.1:{port}/health", verify=trusting(certificate), timeout=1)
                break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", certificate
    finally:
        process.kill()
        process.wait()


def test_https_answers_and_plain_http_on_the_same_port_does_not(https_server: tuple[str, Path]) -> None:
    address, certificate = https_server
    response = httpx.get(f"https://{address}/health", verify=trusting(certificate), timeout=10)
    assert response.status_code == 200 and response.json()["status"] == "healthy"
    assert response.http_version == "HTTP/1.1"
    # A client that does not trust the certificate refuses it: the server really speaks TLS with that certificate.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://{address}/health", timeout=10)
    # Plain HTTP to the TLS port gets no HTTP answer at all.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{address}/health", timeout=10)


def test_a_certificate_without_its_key_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="both ssl_certfile and ssl_keyfile"):
        Settings(ssl_certfile=Path("cert.pem"))
