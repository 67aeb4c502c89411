"""Benchmark of the service: inference throughput and latency, the same under training load, and training speed.

    python benchmarks/api.py [--duration 3] [--output docs/benchmarks.md]

It starts ``create_app`` under uvicorn in a subprocess (with one extra route, ``POST /echo``, that returns its
body: the web stack's own ceiling on the same server), drives it from this process with httpx at several
concurrencies, and compares with ``model.predict`` called in-process. Then it measures ``/inference`` while two
training jobs run, training steps per second through the API against ``learn`` called directly, and the mean
return of the model that the document's default ``POST /train {}`` produces.
"""

import argparse
import asyncio
import os
import platform
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch as th
from stable_baselines3.common.env_util import make_vec_env

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from benchmarks.report import DEFAULT_MARKDOWN, publish  # noqa: E402
from grpo import GRPO  # noqa: E402
from rewards import REWARD_FUNCTIONS  # noqa: E402
from tests.harness import Server, free_port, start_job, wait_for_job  # noqa: E402

OBSERVATION = [0.1, 0.0, 0.05, 0.0]
BATCH = 256
CONCURRENCY = (1, 16, 64)
SPEED_ATTEMPTS = 3
# Sparse polls: each costs the server a little of the CPU it trains on.
SPARSE_POLLS = {"timeout": 600, "poll_s": 0.5}


def serve(port: int, models_dir: str, db_path: str) -> None:
    """The benchmark's server: the real app plus a bare echo route on the same uvicorn stack."""
    import uvicorn

    from api import create_app
    from settings import Settings

    app = create_app(Settings(models_dir=Path(models_dir), db_path=Path(db_path), port=port, max_concurrent_jobs=2))

    @app.post("/echo")
    async def echo(body: dict[str, Any]) -> dict[str, Any]:
        return body

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# load generation


async def load(url: str, body: dict[str, Any], concurrency: int, duration: float) -> dict[str, float]:
    """Requests per second and latency percentiles of ``concurrency`` clients posting ``body`` for ``duration``."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        for _ in range(concurrency):  # warm the connections and the model cache
            await client.post(url, json=body)
        stop_at = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                response = await client.post(url, json=body)
                latencies.append(time.perf_counter() - started)
                errors += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "rps": len(latencies) / elapsed,
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "errors": errors,
    }


def direct_predict(model: Any, observations: np.ndarray, duration: float) -> dict[str, float]:
    latencies = []
    stop_at = time.perf_counter() + duration
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        model.predict(observations, deterministic=True)
        latencies.append(time.perf_counter() - started)
    ms = np.array(latencies) * 1000
    return {
        "rps": len(latencies) / sum(latencies),
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "errors": 0,
    }


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


# helpers


def seconds(status: dict[str, Any]) -> float:
    start = datetime.fromisoformat(status["start_time"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(status["end_time"].replace("Z", "+00:00"))
    return (end - start).total_seconds()


def row(name: str, concurrency: int | str, result: dict[str, float]) -> str:
    return (
        f"| {name} | {concurrency} | {result['rps']:.0f} | {result['p50']:.2f} | {result['p99']:.2f} | "
        f"{int(result['errors'])} |"
    )


# the benchmark


def run(duration: float, output: Path) -> str:
    th.set_num_threads(1)  # as the server does (Settings.torch_threads)
    load_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="grpo-bench-"))
    server = Server(root, free_port(), command=[sys.executable, __file__, "serve"])
    server.start()
    base, client = server.base, server.http
    lines: list[str] = []
    try:
        print("training the served model ...", flush=True)
        job = start_job(client, {"model_name": "bench", "total_timesteps": 2048, "seed": 0})
        assert wait_for_job(client, job["job_id"], **SPARSE_POLLS)["status"] == "completed"
        model = GRPO.load(root / "models" / "bench.zip", device="cpu")

        single = {"model_name": "bench", "observation": OBSERVATION}
        rng = np.random.default_rng(0)
        batch_obs = rng.normal(0, 0.05, size=(BATCH, 4)).astype(np.float32)
        batch = {"model_name": "bench", "observations": batch_obs.tolist()}

        results: dict[tuple[str, str, int], dict[str, float]] = {}
        table = [
            "| what | concurrency | requests/s | p50 ms | p99 ms | errors |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for payload_name, body, direct_obs in (
            ("single", single, np.array(OBSERVATION, dtype=np.float32)),
            (f"batch of {BATCH}", batch, batch_obs),
        ):
            result = direct_predict(model, direct_obs, duration)
            table.append(row(f"in-process `model.predict`, {payload_name}", "-", result))
            for concurrency in CONCURRENCY:
                for endpoint in ("echo", "inference"):
                    print(f"{endpoint} {payload_name} c={concurrency} ...", flush=True)
                    result = asyncio.run(load(f"{base}/{endpoint}", body, concurrency, duration))
                    results[(endpoint, payload_name, concurrency)] = result
                    table.append(row(f"`/{endpoint}`, {payload_name}", concurrency, result))

        print("inference while two jobs train ...", flush=True)
        busy_jobs = [
            start_job(client, {"model_name": f"load{i}", "total_timesteps": 2_000_000})["job_id"] for i in range(2)
        ]
        time.sleep(1.0)
        loaded = {c: asyncio.run(load(f"{base}/inference", single, c, duration)) for c in (1, 16)}
        for job_id in busy_jobs:
            client.post(f"/training/{job_id}/stop", timeout=60)
        load_table = [
            "| concurrency | idle p50 ms | idle p99 ms | training p50 ms | training p99 ms | p99 ratio | requests/s |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for c, result in loaded.items():
            idle = results[("inference", "single", c)]
            load_table.append(
                f"| {c} | {idle['p50']:.2f} | {idle['p99']:.2f} | {result['p50']:.2f} | {result['p99']:.2f} | "
                f"{result['p99'] / idle['p99']:.2f}x | {result['rps']:.0f} |"
            )

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

        echo16 = results[("echo", "single", 16)]["rps"]
        inference16 = results[("inference", "single", 16)]["rps"]
        worst_ratio = max(loaded[c]["p99"] / results[("inference", "single", c)]["p99"] for c in loaded)
        targets = [
            "| target | measured | met |",
            "| --- | --- | --- |",
            f"| `/inference` >= 50% of echo at concurrency 16 (single) | {inference16 / echo16:.0%} "
            f"| {'yes' if inference16 >= 0.5 * echo16 else 'no'} |",
            f"| p99 while two jobs train <= 3x idle p99 | {worst_ratio:.2f}x | {'yes' if worst_ratio <= 3 else 'no'} |",
            f"| training through the API >= 90% of direct `learn` | {api_sps / direct_sps:.0%} "
            f"({api_sps:.0f} vs {direct_sps:.0f} steps/s) | {'yes' if api_sps >= 0.9 * direct_sps else 'no'} |",
            f"| default `POST /train {{}}` mean return >= 300 (20 episodes) | {evaluation['mean_return']:.1f} "
            f"± {evaluation['std_return']:.1f} ({default_status['status']}) "
            f"| {'yes' if evaluation['mean_return'] >= 300 else 'no'} |",
        ]

        lines = [
            "## Service (`benchmarks/api.py`)",
            "",
            f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs "
            f"({platform.processor() or platform.machine()}), "
            f"Python {platform.python_version()}, torch {th.__version__} (1 intra-op thread), one uvicorn worker; "
            f"client (httpx, asyncio) and server share the machine. Each cell: {duration:.0f} s of requests. "
            "Model: CartPole, SB3's default [64, 64] policy. "
            f"Load average (1 min) before the run: {load_before:.2f}, after: {os.getloadavg()[0]:.2f} "
            "(anything well above 0 means other work shared the CPUs and the numbers are noisier).",
            "",
            "### Targets",
            "",
            *targets,
            "",
            "### Inference throughput and latency",
            "",
            "`/echo` is a bare FastAPI route on the same server that returns the request body: the web stack's "
            "ceiling. In-process `model.predict` has no HTTP at all.",
            "",
            *table,
            "",
            "### `/inference` (single observation) while two training jobs run",
            "",
            *load_table,
            "",
            "### Training speed",
            "",
            f"CartPole, the document's settings, {steps} steps, best of {SPEED_ATTEMPTS} alternated runs each: "
            f"{api_sps:.0f} steps/s through `POST /train` (from the job's start to its end) against "
            f"{direct_sps:.0f} steps/s doing the same in-process (make the env, build, `learn`, save). "
            f"All runs: API {', '.join(f'{v:.0f}' for v in api_runs)}; "
            f"direct {', '.join(f'{v:.0f}' for v in direct_runs)}.",
            "",
        ]
    finally:
        server.stop(signal.SIGTERM)
    return publish(output, "service", lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    serve_parser = sub.add_parser("serve", help="(internal) run the benchmark's server")
    serve_parser.add_argument("--port", type=int, required=True)
    serve_parser.add_argument("--models-dir", required=True)
    serve_parser.add_argument("--db", required=True)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of requests per measurement")
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_MARKDOWN, help="markdown file whose service section is rewritten"
    )
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.port, args.models_dir, args.db)
    else:
        run(args.duration, args.output)


if __name__ == "__main__":
    main()
