"""Benchmark of the service as a load balancer sees it: requests/s and latency from ``wrk`` against the real server
(``run_api.py``) and, in a process of its own on the same stack, a bare FastAPI echo app (the ceiling); then
``/inference`` while two training jobs run, training speed through the API against ``learn``, and the mean return of
the model that the document's default ``POST /train {}`` produces.

    python benchmarks/api.py [--duration 3] [--rounds 3] [--before DIR] [--output docs/benchmarks.md]

Each cell is measured ``rounds`` times, the rounds interleaved across all cells so that the machine's other work
hits every cell alike; a cell shows the median. Besides requests/s, each cell gives the server's CPU time per
request (from /proc), which other work on the machine disturbs much less than wall-clock numbers. ``--before DIR``
adds rows for an earlier checkout of this repository, started as it ran then: without uvicorn's standard extras
(httptools, uvloop). Make one with ``git archive <commit> | tar -x -C DIR && echo <commit> > DIR/.commit``.
"""

import argparse
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.env_util import make_vec_env

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from benchmarks import wrk  # noqa: E402
from benchmarks.report import DEFAULT_MARKDOWN, publish  # noqa: E402
from grpo import GRPO  # noqa: E402
from rewards import REWARD_FUNCTIONS  # noqa: E402
from tests.harness import Server, free_port, start_job, wait_for_job  # noqa: E402

OBSERVATION = [0.1, 0.0, 0.05, 0.0]
BATCH = 256
LARGE_POLICY = {"net_arch": [1024, 1024], "total_timesteps": 256, "n_steps": 32, "group_size": 2, "n_envs": 1}
LARGE_NAME = "[1024, 1024] policy"
CONCURRENCY = (1, 16, 64)
SPEED_ATTEMPTS = 3
# Sparse polls: each costs the server a little of the CPU it trains on.
SPARSE_POLLS = {"timeout": 600, "poll_s": 0.5}
# Imported first by a Python started with this folder on PYTHONPATH: uvicorn's "auto" then finds neither
# uvloop nor httptools and runs asyncio and h11, as it did before requirements.txt asked for uvicorn[standard].
WITHOUT_STANDARD_EXTRAS = 'import sys\nsys.modules["uvloop"] = None\nsys.modules["httptools"] = None\n'


@dataclass
class Cell:
    """One row of the table: the same wrk load, repeated once per round."""

    what: str
    server: str
    path: str
    body: dict[str, Any] | None = None
    connections: int = 16
    threads: int = 1
    results: list[wrk.LoadResult] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return statistics.median(result.rps for result in self.results)

    @property
    def p50(self) -> float:
        return statistics.median(result.p50_ms for result in self.results)

    @property
    def p99(self) -> float:
        return statistics.median(result.p99_ms for result in self.results)

    @property
    def errors(self) -> int:
        return sum(result.errors for result in self.results)

    def row(self) -> str:
        return (
            f"| {self.what} | {self.connections} | {self.threads} | {self.rps:.0f} | {self.p50:.2f} | "
            f"{self.p99:.2f} | {statistics.median(self.cpu_us):.0f} | {self.errors} |"
        )


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(cells: list[Cell], servers: dict[str, Server], rounds: int, duration: float) -> None:
    for round_ in range(rounds):
        for cell in cells:
            print(f"round {round_ + 1}/{rounds}: {cell.what}, {cell.connections} connections ...", flush=True)
            server = servers[cell.server]
            assert server.process is not None
            before = cpu_seconds(server.process.pid)
            result = wrk.load(
                server.base + cell.path, cell.body, cell.connections, cell.threads, duration, server.headers
            )
            cell.results.append(result)
            cell.cpu_us.append((cpu_seconds(server.process.pid) - before) / max(result.requests, 1) * 1e6)


def direct_training(steps: int, config: dict[str, Any], path: Path) -> float:
    """Steps per second of what a job does, without the service: make the env, build, learn, save."""
    started = time.perf_counter()
    env = make_vec_env("CartPole-v1", n_envs=1, seed=config["seed"])
    # The service trains CartPole on the document's optimized_cartpole reward: so does this.
    model = GRPO("MlpPolicy", env, reward_function=REWARD_FUNCTIONS["optimized_cartpole"], device="cpu", **config)
    model.learn(steps)
    model.save(path)
    env.close()
    return model.num_timesteps / (time.perf_counter() - started)


def seconds(status: dict[str, Any]) -> float:
    start = datetime.fromisoformat(status["start_time"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(status["end_time"].replace("Z", "+00:00"))
    return (end - start).total_seconds()


def describe_checkout(folder: Path) -> str:
    """Which commit a ``git archive`` of this repository came from, as its tar header recorded it (in .commit)."""
    marker = folder / ".commit"
    return f"commit {marker.read_text().strip()[:7]}" if marker.exists() else "an earlier version"


def met(condition: bool) -> str:
    return "yes" if condition else "**no**"


# the benchmark


def start_servers(root: Path, before: Path | None) -> dict[str, Server]:
    def server(name: str, **kwargs: Any) -> Server:
        (root / name).mkdir(parents=True)
        # Every server alike without uvicorn's access log: one log line per request would be what is measured.
        return Server(root / name, free_port(), "--log-level", "warning", **kwargs)

    servers = {
        "echo": server("echo", command=[sys.executable, str(REPO / "benchmarks" / "echo_app.py")]),
        "service": server("service"),
        "batched": server("batched", env={"GRPO_INFERENCE_BATCHING": "true"}),
        "torch": server("torch", env={"GRPO_INFERENCE_ENGINE": "torch"}),
        "torch-batched": server(
            "torch-batched", env={"GRPO_INFERENCE_ENGINE": "torch", "GRPO_INFERENCE_BATCHING": "true"}
        ),
    }
    if before is not None:
        shim = root / "without-standard-extras"
        shim.mkdir()
        (shim / "sitecustomize.py").write_text(WITHOUT_STANDARD_EXTRAS)
        servers["before"] = server(
            "before", command=[sys.executable, str(before / "run_api.py")], env={"PYTHONPATH": str(shim)}
        )
    for running in servers.values():
        running.start()
    return servers


def inference_cells(before: bool) -> list[Cell]:
    single = {"model_name": "bench", "observation": OBSERVATION}
    rng = np.random.default_rng(0)
    batch = {"model_name": "bench", "observations": rng.normal(0, 0.05, size=(BATCH, 4)).round(5).tolist()}
    cells = [
        # wrk is not the bottleneck when twice its connections or threads do not raise the echo's rate
        Cell("`POST /echo` (wrk check)", "echo", "/echo", single, 16, 1),
        Cell("`POST /echo` (wrk check)", "echo", "/echo", single, 32, 1),
        Cell("`POST /echo` (wrk check)", "echo", "/echo", single, 16, 2),
        Cell("echo app `GET /`", "echo", "/"),
        Cell("service `GET /`", "service", "/"),
        Cell("service `GET /health`", "service", "/health"),
    ]
    for c in CONCURRENCY:
        cells += [
            Cell("echo app `POST /echo`, single", "echo", "/echo", single, c),
            Cell("`/inference`, single (defaults: onnxruntime, no micro-batching)", "service", "/inference", single, c),
            Cell("`/inference`, single, onnxruntime, micro-batching", "batched", "/inference", single, c),
        ]
        if c > 1:
            cells += [
                Cell("`/inference`, single, torch engine", "torch", "/inference", single, c),
                Cell("`/inference`, single, torch engine, micro-batching", "torch-batched", "/inference", single, c),
            ]
        if before:
            cells.append(Cell("`/inference`, single, before (h11, asyncio)", "before", "/inference", single, c))
    cells += [Cell(f"`/inference`, batch of {BATCH} (defaults)", "service", "/inference", batch, c) for c in (1, 16)]
    large = {"model_name": "bench-large", "observation": OBSERVATION}
    for c in (1, 64):
        cells += [
            Cell(f"`/inference`, single, {LARGE_NAME} (defaults)", "service", "/inference", large, c),
            Cell(f"`/inference`, single, {LARGE_NAME}, micro-batching", "batched", "/inference", large, c),
        ]
    return cells


def find(cells: list[Cell], server: str, path: str, connections: int, threads: int = 1, model: str = "bench") -> Cell:
    return next(
        cell
        for cell in cells
        if (cell.server, cell.path, cell.connections, cell.threads) == (server, path, connections, threads)
        and "batch of" not in cell.what
        and (cell.body or {}).get("model_name", "bench") == model
    )


def run(duration: float, rounds: int, before: Path | None, output: Path) -> str:
    th.set_num_threads(1)  # as the server does (Settings.torch_threads)
    load_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="grpo-bench-"))
    servers = start_servers(root, before)
    service = servers["service"]
    client = service.http
    try:
        print("training the served model ...", flush=True)
        job = start_job(client, {"model_name": "bench", "total_timesteps": 2048, "seed": 0})
        assert wait_for_job(client, job["job_id"], **SPARSE_POLLS)["status"] == "completed"
        # A policy whose forward pass costs more than the request around it: where micro-batching is meant to pay.
        job = start_job(client, {"model_name": "bench-large", **LARGE_POLICY})
        assert wait_for_job(client, job["job_id"], **SPARSE_POLLS)["status"] == "completed"
        for name in servers.keys() - {"echo", "service"}:
            for model in ("bench", "bench-large"):
                shutil.copy(root / "service" / "models" / f"{model}.zip", root / name / "models" / f"{model}.zip")
        for name in servers.keys() - {"echo"}:  # load the models and build their fast paths before the clock runs
            for model in ("bench", "bench-large"):
                if name == "before" and model == "bench-large":
                    continue
                assert servers[name].post("/inference", {"model_name": model, "observation": OBSERVATION}).is_success

        cells = inference_cells(before is not None)
        measure(cells, servers, rounds, duration)

        print("inference while two jobs train ...", flush=True)
        busy_jobs = [
            start_job(client, {"model_name": f"load{i}", "total_timesteps": 2_000_000})["job_id"] for i in range(2)
        ]
        time.sleep(1.0)
        single = {"model_name": "bench", "observation": OBSERVATION}
        loaded = [Cell("training", "service", "/inference", single, c) for c in (1, 16)]
        measure(loaded, servers, rounds, duration)
        for job_id in busy_jobs:
            client.post(f"/training/{job_id}/stop", timeout=60)

        print("training speed: API against learn() ...", flush=True)
        doc_config = {"n_steps": 32, "batch_size": 64, "n_epochs": 10, "learning_rate": 3e-4, "seed": 0}
        steps = 10_000
        api_runs, direct_runs = [], []
        for attempt in range(SPEED_ATTEMPTS):  # alternated, best of each: the machine's noise hits both alike
            job = start_job(client, {"model_name": f"speed{attempt}", "total_timesteps": steps, **doc_config})
            status = wait_for_job(client, job["job_id"], **SPARSE_POLLS)
            api_runs.append(status["current_timesteps"] / seconds(status))
            direct_runs.append(direct_training(steps, doc_config, root / f"direct{attempt}.zip"))
        api_sps, direct_sps = max(api_runs), max(direct_runs)

        print("quality of the default POST /train {} ...", flush=True)
        default_job = start_job(client)
        default_status = wait_for_job(client, default_job["job_id"], **SPARSE_POLLS)
        evaluation = client.post(
            f"/models/{default_job['config']['model_name']}/evaluate",
            json={"n_episodes": 20, "seed": 1},
            timeout=600,
        ).json()
    finally:
        for running in servers.values():
            if running.process is not None:
                running.stop(signal.SIGTERM)

    lines = report(cells, loaded, before, duration, rounds, load_before)
    lines += [
        "### Training speed",
        "",
        f"CartPole, the document's settings, {steps} steps, best of {SPEED_ATTEMPTS} alternated runs each: "
        f"{api_sps:.0f} steps/s through `POST /train` (from the job's start to its end) against "
        f"{direct_sps:.0f} steps/s doing the same in-process (make the env, build, `learn`, save). "
        f"All runs: API {', '.join(f'{v:.0f}' for v in api_runs)}; "
        f"direct {', '.join(f'{v:.0f}' for v in direct_runs)}. Through the API at least 90% of direct `learn`: "
        f"{api_sps / direct_sps:.0%}, {met(api_sps >= 0.9 * direct_sps)}. "
        f"Default `POST /train {{}}` ({default_status['status']}): mean return "
        f"{evaluation['mean_return']:.1f} ± {evaluation['std_return']:.1f} over 20 episodes (target >= 300: "
        f"{met(evaluation['mean_return'] >= 300)}).",
        "",
    ]
    return publish(output, "service", lines)


def report(
    cells: list[Cell], loaded: list[Cell], before: Path | None, duration: float, rounds: int, load_before: float
) -> list[str]:
    echo16 = find(cells, "echo", "/echo", 16)
    default = {c: find(cells, "service", "/inference", c) for c in CONCURRENCY}
    batched = {c: find(cells, "batched", "/inference", c) for c in CONCURRENCY}
    torch_gain = find(cells, "torch-batched", "/inference", 64).rps / find(cells, "torch", "/inference", 64).rps
    doubled = max(find(cells, "echo", "/echo", 32).rps, find(cells, "echo", "/echo", 16, 2).rps)
    wrk_check = cells[0]
    idle = {1: default[1], 16: default[16]}
    worst = max(cell.p99 / idle[cell.connections].p99 for cell in loaded)
    ratio = default[16].rps / echo16.rps
    gain = batched[64].rps / default[64].rps
    added = batched[1].p50 - default[1].p50
    large = {c: find(cells, "service", "/inference", c, model="bench-large") for c in (1, 64)}
    large_batched = {c: find(cells, "batched", "/inference", c, model="bench-large") for c in (1, 64)}
    large_gain = large_batched[64].rps / large[64].rps
    large_added = large_batched[1].p50 - large[1].p50
    targets = [
        "| target | measured | met |",
        "| --- | --- | --- |",
        f"| wrk is not the bottleneck: 2x connections or threads raise the echo's requests/s by <= 10% | "
        f"{doubled / wrk_check.rps - 1:+.0%} | {met(doubled <= 1.1 * wrk_check.rps)} |",
        f"| `/inference` (single, c=16, default settings) >= 0.6x the echo app's requests/s | {ratio:.2f}x "
        f"({default[16].rps:.0f} vs {echo16.rps:.0f}; with micro-batching: "
        f"{batched[16].rps / echo16.rps:.2f}x) | {met(ratio >= 0.6)} |",
    ]
    if before is not None:
        old = find(cells, "before", "/inference", 16)
        targets.append(
            f"| `/inference` p99 at c=16 no worse than before | {default[16].p99:.2f} ms vs {old.p99:.2f} ms "
            f"before | {met(default[16].p99 <= old.p99)} |"
        )
    targets += [
        f"| micro-batching: `/inference` at c=64 >= 1.3x the requests/s without it | onnxruntime {gain:.2f}x "
        f"({batched[64].rps:.0f} vs {default[64].rps:.0f}); torch engine {torch_gain:.2f}x | {met(gain >= 1.3)} |",
        f"| micro-batching adds < 1 ms to p50 at c=1 | {added:+.2f} ms | {met(added < 1.0)} |",
        f"| micro-batching, {LARGE_NAME}: c=64 >= 1.3x the requests/s without it | {large_gain:.2f}x "
        f"({large_batched[64].rps:.0f} vs {large[64].rps:.0f}) | {met(large_gain >= 1.3)} |",
        f"| micro-batching, {LARGE_NAME}: adds < 1 ms to p50 at c=1 | {large_added:+.2f} ms | "
        f"{met(large_added < 1.0)} |",
        f"| p99 while two jobs train <= 3x idle p99 | {worst:.2f}x | {met(worst <= 3)} |",
    ]
    load_table = [
        "| concurrency | idle p50 ms | idle p99 ms | training p50 ms | training p99 ms | p99 ratio | requests/s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for cell in loaded:
        base = idle[cell.connections]
        load_table.append(
            f"| {cell.connections} | {base.p50:.2f} | {base.p99:.2f} | {cell.p50:.2f} | {cell.p99:.2f} | "
            f"{cell.p99 / base.p99:.2f}x | {cell.rps:.0f} |"
        )
    before_note = (
        f' "before" is the checkout in `{before}` ({describe_checkout(before)}), started as it ran then (uvicorn on '
        "h11 and asyncio)."
        if before is not None
        else ""
    )
    return [
        "## Service (`benchmarks/api.py`)",
        "",
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}, torch {th.__version__} "
        f"(1 intra-op thread), one uvicorn worker per server, each server in its own process; load from `wrk` "
        f"on the same machine. Each cell: the median of {rounds} rounds of {duration:.0f} s, the rounds interleaved "
        "across cells. Model: CartPole, SB3's default [64, 64] policy. "
        f"Load average (1 min) before the run: {load_before:.2f}, after: {os.getloadavg()[0]:.2f} (this machine has "
        "2 cores: well above 2 means other work took much of them, and wall-clock numbers move from run to run; "
        "the server's CPU time per request moves much less).",
        "",
        "Command: `python benchmarks/api.py"
        + (f" --before {before}" if before is not None else "")
        + f" --duration {duration:g} --rounds {rounds}`",
        "",
        "### Targets",
        "",
        *targets,
        "",
        "### Requests/s and latency",
        "",
        "The echo app is a bare FastAPI app (`benchmarks/echo_app.py`: one route that returns its body, no "
        "middleware) started like the service, in a process of its own: the ceiling of the web stack. "
        "The service runs `run_api.py` with its defaults (onnxruntime, no micro-batching); the other rows are "
        "servers of their own with `GRPO_INFERENCE_BATCHING=true` and/or `GRPO_INFERENCE_ENGINE=torch`."
        f"{before_note} "
        "CPU us/request: the server process's user and system time over the cell, per request.",
        "",
        "| what | connections | wrk threads | requests/s | p50 ms | p99 ms | server CPU us/request | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *(cell.row() for cell in cells),
        "",
        "### `/inference` (single observation) while two training jobs run",
        "",
        *load_table,
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of requests per cell and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per cell; the table shows the median")
    parser.add_argument("--before", type=Path, help="an earlier checkout of this repository to measure too")
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_MARKDOWN, help="markdown file whose service section is rewritten"
    )
    args = parser.parse_args()
    if not wrk.available():
        parser.error("wrk is not installed (apt-get install wrk)")
    run(args.duration, args.rounds, args.before, args.output)


if __name__ == "__main__":
    main()
