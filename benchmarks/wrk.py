"""HTTP load from ``wrk`` (Debian's package: ``apt-get install wrk``): a C load generator that a one-worker Python
server cannot outrun, unlike a Python client sharing the machine with it.

``load(url, ...)`` runs it for a few seconds and returns requests/s, p50, p99 and the failed requests.
"""

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
_LATENCY = re.compile(r"^\s*(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_REQUESTS = re.compile(r"^\s*(\d+) requests in", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


@dataclass(frozen=True)
class LoadResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # answers other than 2xx/3xx, and connect/read/write errors and timeouts


def available() -> bool:
    return shutil.which("wrk") is not None


def lua_script(method: str, body: str | None, headers: dict[str, str]) -> str:
    lines = [f'wrk.method = "{method}"']
    if body is not None:
        lines.append(f"wrk.body = [==[{body}]==]")
        headers = {"Content-Type": "application/json", **headers}
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    return "\n".join(lines) + "\n"


def parse(output: str) -> LoadResult:
    """What ``wrk --latency`` printed, as numbers."""
    latencies = {percent: float(value) * _UNITS[unit] for percent, value, unit in _LATENCY.findall(output)}
    rps, requests = _RPS.search(output), _REQUESTS.search(output)
    if rps is None or requests is None or set(latencies) != {"50", "99"}:
        raise ValueError(f"unexpected wrk output:\n{output}")
    errors = sum(int(n) for n in _NON_2XX.findall(output))
    socket_errors = _SOCKET_ERRORS.search(output)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return LoadResult(float(rps.group(1)), latencies["50"], latencies["99"], int(requests.group(1)), errors)


def load(
    url: str,
    body: dict[str, Any] | str | None = None,
    connections: int = 16,
    threads: int = 1,
    duration: float = 5.0,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """``connections`` keep-alive connections on ``threads`` wrk threads for ``duration`` seconds: GET without a
    body, POST of ``body`` (JSON) with one."""
    import json

    text = json.dumps(body, separators=(",", ":")) if isinstance(body, dict) else body
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "request.lua"
        script.write_text(lua_script("GET" if text is None else "POST", text, headers or {}))
        command = [
            "wrk",
            f"--threads={min(threads, connections)}",
            f"--connections={connections}",
            f"--duration={max(1, round(duration))}s",
            "--timeout=10s",
            "--latency",
            f"--script={script}",
            url,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=True)
    return parse(done.stdout)
