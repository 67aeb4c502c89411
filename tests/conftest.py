"""Fixtures for the service's tests: apps on temporary folders, a few small models trained once, the real server,
and the executors. What they are built from (settings, job helpers, the server) is in ``harness.py``."""

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch as th
from harness import TINY, Server, free_port, make_settings, wait_for_job

with warnings.catch_warnings():
    # Starlette's TestClient still runs on httpx; its nudge towards httpx2 is not ours to act on.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from api import create_app
from settings import Settings


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
def server(tmp_path: Path) -> Iterator[Server]:
    """The real server (``python run_api.py``) on a free port and a folder of its own; killed at the end."""
    running = Server(tmp_path, free_port())
    running.start()
    try:
        yield running
    finally:
        running.kill()


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

    from executors import RAY_RUNTIME_ENV

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
