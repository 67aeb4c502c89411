"""Four jobs at once on the thread executor versus the Ray executor: total training steps per second, and the
``/inference`` latency meanwhile; writes the ``ray`` section of docs/benchmarks.md.

Each executor gets a fresh ``python run_api.py`` (a local Ray of this machine's CPUs for ``--executor ray``):
idle ``/inference`` latency first, then four CartPole jobs submitted together, with inference requests running
while they train.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from benchmarks.api import OBSERVATION, SPARSE_POLLS  # noqa: E402
from benchmarks.report import DEFAULT_MARKDOWN, publish  # noqa: E402
from executors import local_ray_cpus  # noqa: E402
from settings import Settings  # noqa: E402
from tests.harness import Server, free_port, start_job, wait_for_job  # noqa: E402

JOBS = 4
CONCURRENCY = 4


async def load(url: str, body: dict[str, Any], concurrency: int, duration: float) -> dict[str, float]:
    """Requests per second and latency percentiles of ``concurrency`` clients posting ``body`` for ``duration``.
    In Python (httpx), as this section always measured: benchmarks/api.py drives wrk, for the service's ceiling."""
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


def measure(executor: str, timesteps: int, duration: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        server = Server(
            Path(folder),
            free_port(),
            "--executor",
            executor,
            "--max-concurrent-jobs",
            str(JOBS),
            "--log-level",
            "warning",
        )
        server.start()
        base, client = server.base, server.http
        try:
            probe = start_job(client, {"model_name": "probe", "total_timesteps": 512})
            wait_for_job(client, probe["job_id"], **SPARSE_POLLS)
            body = {"model_name": "probe", "observation": OBSERVATION}
            idle = asyncio.run(load(f"{base}/inference", body, CONCURRENCY, duration))
            started = time.monotonic()
            jobs = [
                start_job(client, {"model_name": f"job{i}", "total_timesteps": timesteps})["job_id"]
                for i in range(JOBS)
            ]
            busy = asyncio.run(load(f"{base}/inference", body, CONCURRENCY, duration))
            statuses = [wait_for_job(client, job_id, **SPARSE_POLLS) for job_id in jobs]
            elapsed = time.monotonic() - started
            assert all(status["status"] == "completed" for status in statuses), statuses
            steps = sum(status["current_timesteps"] for status in statuses)
        finally:
            server.stop(signal.SIGTERM)
    return {"steps_per_s": steps / elapsed, "seconds": elapsed, "idle_p99": idle["p99"], "busy_p99": busy["p99"]}


def run(timesteps: int, duration: float, output: Path) -> str:
    results = {executor: measure(executor, timesteps, duration) for executor in ("thread", "ray")}
    # What else ran meanwhile: on a shared machine a load far above its CPU count makes every figure here noise.
    load_average = os.getloadavg()[1]
    thread, ray = results["thread"], results["ray"]
    ray_cpus = local_ray_cpus(Settings())
    lines = [
        "## Executors: four jobs at once (`benchmarks/executors.py`)",
        "",
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs ({platform.machine()}), "
        f"Python {platform.python_version()}. {JOBS} CartPole jobs of {timesteps} timesteps each (the API's "
        f"default settings) submitted together to a fresh `python run_api.py --executor <executor> "
        f"--max-concurrent-jobs {JOBS}`; the local Ray has {ray_cpus} of this machine's CPUs (one per job's "
        f"actor), the rest left to the server (`GRPO_RAY_SERVER_CPUS`, default 1). "
        f"`/inference` p99 at concurrency {CONCURRENCY}, {duration:.0f} s each, idle and while the jobs train. "
        f"Load average over the run's last 5 minutes: {load_average:.1f}.",
        "",
        "| executor | total training steps/s | wall time s | idle p99 ms | p99 while training ms | p99 ratio |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, result in results.items():
        lines.append(
            f"| {name} | {result['steps_per_s']:.0f} | {result['seconds']:.1f} | {result['idle_p99']:.2f} | "
            f"{result['busy_p99']:.2f} | {result['busy_p99'] / result['idle_p99']:.2f}x |"
        )
    lines += [
        "",
        "| target | measured | met |",
        "| --- | --- | --- |",
        f"| Ray: p99 while four jobs train <= 1.5x idle | {ray['busy_p99'] / ray['idle_p99']:.2f}x | "
        f"{'yes' if ray['busy_p99'] <= 1.5 * ray['idle_p99'] else 'no'} |",
        f"| Ray: four jobs at least as fast in total as threads | {ray['steps_per_s']:.0f} vs "
        f"{thread['steps_per_s']:.0f} steps/s | {'yes' if ray['steps_per_s'] >= thread['steps_per_s'] else 'no'} |",
        "",
        "**Why, and across nodes.** On one machine the Ray executor adds no CPUs; it moves training out of the "
        "API's process. The thread executor's four jobs share one interpreter, and its lock, with the server; "
        "Ray's actors reserve one CPU each, so as many jobs as the local Ray has CPUs train at a time, each in a "
        "process of its own, while the rest wait in Ray's queue (each actor also pays a worker start of a few "
        "seconds). The CPU the local Ray leaves out is the server's: its requests no longer queue behind "
        "training, at the price of fewer jobs training at once on a small machine. On a cluster "
        "(README, Running on a Ray cluster) each added node brings its CPUs to the same queue: jobs are "
        "independent and exchange only a poll twice a second and a model zip at the end, so total steps/s "
        "should grow with the number of CPUs until the API server's polling becomes the limit; that was not "
        "measured here, as this machine has no second node.",
    ]
    return publish(output, "ray", lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=20_000, help="timesteps of each of the four jobs")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of inference requests per measurement")
    parser.add_argument("--output", type=Path, default=DEFAULT_MARKDOWN, help="markdown file to write the section in")
    args = parser.parse_args()
    run(args.timesteps, args.duration, args.output)


if __name__ == "__main__":
    main()
