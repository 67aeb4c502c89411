"""What the tests and the benchmarks drive the service with, one copy each: settings on a temporary folder, a job
started and waited for, an event stream read to its end, and the real server (``python run_api.py``) in a
subprocess on a free port. Fixtures built on these are in ``conftest.py``."""

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import httpx

from settings import Settings

REPO = Path(__file__).resolve().parents[1]
# Small policies and budgets: the tests check the service, not how well GRPO learns. One environment, whatever the
# environment's preset says, so that a budget means the same number of rollouts everywhere.
TINY = {"net_arch": [16], "n_steps": 32, "batch_size": 64, "n_epochs": 2, "n_envs": 1}
CARTPOLE_OBS = [0.1, 0.0, 0.05, 0.0]
NO_RATE_LIMITS = {"GRPO_RATE_LIMIT_INFERENCE": "", "GRPO_RATE_LIMIT_MANAGEMENT": ""}


class Client(Protocol):
    """FastAPI's TestClient or an ``httpx.Client`` with a base URL: whatever a test or a benchmark talks through."""

    def get(self, url: str, **kwargs: Any) -> Any: ...

    def post(self, url: str, **kwargs: Any) -> Any: ...


def make_settings(root: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "models_dir": root / "models",
        "db_path": root / "grpo.db",
        "max_concurrent_jobs": 2,
        "max_total_timesteps": 200_000,
        "device": "cpu",
    }
    values.update(overrides)
    return Settings(**values)


def start_job(client: Client, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """POST /train with ``body`` as it is; returns the answer, which must be a 200."""
    response = client.post("/train", json=body or {})
    assert response.status_code == 200, response.text
    return response.json()


def train(client: Client, **body: Any) -> str:
    """Start a tiny job (``TINY``, overridden by ``body``); returns its id."""
    return start_job(client, {**TINY, **body})["job_id"]


def wait_for_job(
    client: Client, job_id: str, timeout: float = 60.0, until: Any = None, poll_s: float = 0.05
) -> dict[str, Any]:
    """Poll a job's status until it is finished (or until ``until(status)`` holds); returns the status."""
    deadline = time.monotonic() + timeout
    while True:
        status = client.get(f"/training/{job_id}/status").json()
        done = until(status) if until else status["status"] not in ("queued", "running")
        if done:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {status['status']} after {timeout}s: {status}")
        time.sleep(poll_s)


def read_events(client: Any, path: str, **kwargs: Any) -> list[tuple[str, dict[str, Any], str | None]]:
    """Every (event, data, id) of a Server-Sent Events stream, until the server closes it."""
    events, fields = [], {}
    with client.stream("GET", path, **kwargs) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith(":"):
                continue
            if not line:
                if "event" in fields:  # not the stream's opening 'retry:' advice
                    events.append((fields["event"], json.loads(fields["data"]), fields.get("id")))
                fields = {}
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
    return events


def assert_no_trace(response: Any) -> None:
    assert "Traceback" not in response.text and 'File "' not in response.text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """The service in a subprocess, on its own data folder: ``python run_api.py`` by default, or another
    ``command`` that takes the same --port, --models-dir and --db flags. With ``tls`` (a context that trusts the
    server's certificate) it is reached over HTTPS."""

    def __init__(
        self,
        root: Path,
        port: int,
        *args: str,
        api_key: str | None = None,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.root = root
        self.port = port
        self.tls = tls
        self.base = f"{'https' if tls else 'http'}://127.0.0.1:{port}"  # where uvicorn listens: no detour through ::1
        self.process: subprocess.Popen[bytes] | None = None
        self.log = root / "server.log"
        self.command = command or [sys.executable, "run_api.py"]
        self.args = [*args, *(["--api-key", api_key] if api_key else [])]
        self.headers = {"X-API-Key": api_key} if api_key else {}
        # One client driving the server hard on purpose: per-client rate limits off unless ``env`` sets them.
        self.env = {**os.environ, **NO_RATE_LIMITS, **(env or {})}
        # Talks to the server with its key: for wait_for_job and anything else that takes a Client.
        self.http = httpx.Client(base_url=self.base, headers=self.headers, timeout=30, verify=tls or True)

    def start(self) -> None:
        command = [
            *self.command,
            *("--port", str(self.port), "--models-dir", str(self.root / "models"), "--db", str(self.root / "jobs.db")),
            *self.args,
        ]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"server exited:\n{self.log.read_text()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/health", timeout=1, verify=self.tls or True).status_code == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"server did not come up:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGINT) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(timeout=60)
        self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def get(self, path: str) -> Any:
        return self.http.get(path).json()

    def post(self, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return self.http.post(path, json=body)

    def wait_for_job(self, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
        return wait_for_job(self.http, job_id, timeout=timeout, poll_s=0.2)
