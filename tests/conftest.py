"""Fixtures for the service's tests: apps on temporary folders, and a few small models trained once."""

import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch as th

with warnings.catch_warnings():
    # Starlette's TestClient still runs on httpx; its nudge towards httpx2 is not ours to act on.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from api import create_app
from settings import Settings

# Small policies and budgets: the tests check the service, not how well GRPO learns.
TINY = {"net_arch": [16], "n_steps": 32, "batch_size": 64, "n_epochs": 2}

JobWaiter = Callable[..., dict[str, Any]]


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


def wait_for_job(client: TestClient, job_id: str, timeout: float = 60.0, until: Any = None) -> dict[str, Any]:
    """Poll a job's status until it is finished (or until ``until(status)`` holds); returns the status."""
    deadline = time.monotonic() + timeout
    while True:
        status = client.get(f"/training/{job_id}/status").json()
        done = until(status) if until else status["status"] not in ("queued", "running")
        if done:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {status['status']} after {timeout}s: {status}")
        time.sleep(0.05)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A fresh service of its own, for tests that change what is stored."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One service shared by the read-mostly tests, holding a CartPole and a Pendulum model."""
    root = tmp_path_factory.mktemp("service")
    with TestClient(create_app(make_settings(root))) as test_client:
        jobs = [
            test_client.post(
                "/train", json={"model_name": "cartpole", "total_timesteps": 1024, "seed": 0, **TINY}
            ).json()["job_id"],
            test_client.post(
                "/train", json={"env_name": "Pendulum-v1", "model_name": "pendulum", "total_timesteps": 400, **TINY}
            ).json()["job_id"],
        ]
        for job_id in jobs:
            assert wait_for_job(test_client, job_id)["status"] == "completed"
        yield test_client


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """As the benchmark's workers and the service run: tiny networks gain nothing from threads, and on a busy
    small CPU extra threads make them crawl."""
    threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(threads)


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    """One local Ray for the whole test session, as small as this machine; stopped when the session ends."""
    import ray

    from jobs import RAY_RUNTIME_ENV

    # "local": our own, not a cluster some `ray start` on this machine left behind
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env=RAY_RUNTIME_ENV)
    yield
    ray.shutdown()


@pytest.fixture(params=["thread", "ray"])
def executor(request: pytest.FixtureRequest) -> str:
    """Each executor in turn; the Ray one on the session's local Ray."""
    if request.param == "ray":
        request.getfixturevalue("local_ray")
    return request.param
