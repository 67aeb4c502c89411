"""Jobs on either executor: in threads of the service, or as Ray actors (a local Ray, and a cluster started with
``ray start``). Status, metrics, events, stop, checkpoints and resume must not tell them apart."""

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from harness import CARTPOLE_OBS, TINY, Server, free_port, make_settings, read_events, train, wait_for_job

from api import create_app
from executors import ThreadExecutor, local_ray_cpus
from settings import Settings

# As a cluster should run: with token authentication, the service holding the cluster's token.
RAY_TOKEN_AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@pytest.fixture
def client_on(executor: str, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path, executor=executor))) as test_client:
        yield test_client


def test_a_job_trains_reports_and_serves(client_on: TestClient, executor: str) -> None:
    job_id = train(client_on, model_name="trained", total_timesteps=1024, seed=0)
    status = wait_for_job(client_on, job_id, timeout=120)
    assert status["status"] == "completed" and status["model_saved"], status
    assert status["current_timesteps"] >= 1024 and status["progress"] == 1.0
    assert status["metrics"]["rollout/ep_rew_mean"] > 0 and status["metrics"]["time/fps"] > 0
    points = client_on.get(f"/training/{job_id}/metrics").json()["points"]
    steps = [point["timesteps"] for point in points]
    assert len(points) >= 3 and steps == sorted(set(steps)) and steps[-1] == status["current_timesteps"]
    events = read_events(client_on, f"/training/{job_id}/events")
    assert [data for name, data, _ in events if name == "metrics"] == points
    assert events[-1][0] == "end" and events[-1][1]["status"] == "completed"
    response = client_on.post("/inference", json={"model_name": "trained", "observation": CARTPOLE_OBS})
    assert response.status_code == 200 and response.json()["action"] in (0, 1)


def test_stop_keeps_the_model_and_resume_goes_on_from_the_checkpoint(
    client_on: TestClient, executor: str, tmp_path: Path
) -> None:
    job_id = train(client_on, model_name="stopped", total_timesteps=150_000, checkpoint_interval=256, seed=1)
    wait_for_job(client_on, job_id, timeout=120, until=lambda s: (s["checkpoint_timesteps"] or 0) >= 256)
    assert (make_settings(tmp_path).jobs_dir / job_id / "checkpoint.zip").is_file()
    started = time.monotonic()
    stopped = client_on.post(f"/training/{job_id}/stop").json()
    assert time.monotonic() - started < 5.0
    assert stopped["status"] == "stopped" and stopped["model_saved"] and 0 < stopped["current_timesteps"] < 150_000
    assert client_on.get(f"/training/{job_id}/status").json()["checkpoint_timesteps"] == stopped["current_timesteps"]
    response = client_on.post("/inference", json={"model_name": "stopped", "observation": CARTPOLE_OBS})
    assert response.status_code == 200

    resumed = client_on.post(f"/training/{job_id}/resume").json()
    assert resumed["current_timesteps"] == stopped["current_timesteps"]
    wait_for_job(client_on, job_id, timeout=120, until=lambda s: s["current_timesteps"] > stopped["current_timesteps"])
    again = client_on.post(f"/training/{job_id}/stop").json()
    assert again["status"] == "stopped" and again["current_timesteps"] > stopped["current_timesteps"]


def test_a_subproc_job_completes_and_serves(client_on: TestClient, executor: str) -> None:
    job_id = train(client_on, model_name="subproc", total_timesteps=512, n_envs=2, vec_env="subproc", seed=0)
    assert wait_for_job(client_on, job_id, timeout=120)["status"] == "completed"
    response = client_on.post("/inference", json={"model_name": "subproc", "observation": CARTPOLE_OBS})
    assert response.status_code == 200


def test_a_killed_actor_fails_its_job_with_the_reason(local_ray: None, settings: Settings) -> None:
    import ray

    with TestClient(create_app(settings.model_copy(update={"executor": "ray"}))) as client:
        job_id = train(client, model_name="killed", total_timesteps=150_000)
        wait_for_job(client, job_id, timeout=120, until=lambda s: s["current_timesteps"] > 0)
        ray.kill(client.app.state.runner.executor.actor(job_id))
        status = wait_for_job(client, job_id, timeout=60)
        assert status["status"] == "failed" and not status["model_saved"]
        assert "Ray actor training the job died" in status["error_message"]
        assert client.post("/inference", json={"model_name": "killed", "observation": CARTPOLE_OBS}).status_code == 404


@pytest.fixture
def ray_cluster(tmp_path: Path) -> Iterator[str]:
    """A one-node Ray cluster of its own (``ray start --head``), stopped with everything it started."""
    port = free_port()
    command = [
        *(sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block"),
        *(f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--include-dashboard=false"),
    ]
    with open(tmp_path / "ray.log", "wb") as log:
        head = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **RAY_TOKEN_AUTH}
        )
    try:
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in (tmp_path / "ray.log").read_text():
            assert head.poll() is None and time.monotonic() < deadline, (tmp_path / "ray.log").read_text()
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        # --block ties the node's processes to this one: ending it ends them all, and no other Ray.
        head.terminate()
        try:
            head.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):  # whatever of its session outlived it
                os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def test_the_service_trains_on_a_ray_cluster_at_an_address(ray_cluster: str, tmp_path: Path) -> None:
    server = Server(tmp_path, free_port(), "--executor", "ray", "--ray-address", ray_cluster, env=RAY_TOKEN_AUTH)
    server.start()
    try:
        job_id = server.post("/train", {**TINY, "model_name": "remote", "total_timesteps": 512}).json()["job_id"]
        assert server.wait_for_job(job_id)["status"] == "completed"
        prediction = server.post("/inference", {"model_name": "remote", "observation": CARTPOLE_OBS})
        assert prediction.status_code == 200
    finally:
        server.stop()
    assert "training on Ray" in server.log.read_text()


def test_training_threads_yield_the_cpu_to_the_server():
    seen: list[int] = []
    base = os.getpriority(os.PRIO_PROCESS, 0)
    executor = ThreadExecutor(1, niceness=5)
    executor.submit(lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
    executor.shutdown()
    assert seen == [min(19, base + 5)]
    assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the server's own threads keep their priority


def test_a_local_ray_leaves_a_cpu_to_the_server_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert local_ray_cpus(Settings()) == 7
    assert local_ray_cpus(Settings(ray_server_cpus=0)) == 8
    assert local_ray_cpus(Settings(ray_num_cpus=3)) == 3
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert local_ray_cpus(Settings()) == 1  # never none for the jobs
