"""HTTPS straight from the server: ``python run_api.py --ssl-certfile ... --ssl-keyfile ...`` with a self-signed
certificate made here answers over TLS, and the same port refuses plain HTTP."""

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import Server, free_port

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


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[Server]:
    certificate, key = self_signed_certificate(tmp_path)
    # The certificate through its flag, the key through its GRPO_ variable: both ways reach uvicorn.
    server = Server(
        tmp_path,
        free_port(),
        "--ssl-certfile",
        str(certificate),
        env={"GRPO_SSL_KEYFILE": str(key)},
        tls=ssl.create_default_context(cafile=certificate),
    )
    server.start()
    try:
        yield server
    finally:
        server.kill()


def test_https_answers_and_plain_http_on_the_same_port_does_not(https_server: Server) -> None:
    address = f"127.0.0.1:{https_server.port}"
    response = https_server.http.get("/health")
    assert response.status_code == 200 and response.json()["status"] == "healthy"
    assert https_server.base.startswith("https://")
    # A client that does not trust the certificate refuses it: the server really speaks TLS with that certificate.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://{address}/health", timeout=10)
    # Plain HTTP to the TLS port gets no HTTP answer at all.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{address}/health", timeout=10)


def test_a_certificate_without_its_key_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="both ssl_certfile and ssl_keyfile"):
        Settings(ssl_certfile=Path("cert.pem"))
