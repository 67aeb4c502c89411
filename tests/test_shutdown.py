"""SIGTERM to the real server (``python run_api.py``), as Docker and systemd stop it, on either executor: open event
streams close at once, a running job checkpoints and becomes ``interrupted``, a request in flight gets its answer,
and the process is gone in well under Docker's 10 s stop timeout, with nothing of ours left running and no
traceback in the log."""

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import TINY, Server, free_port

STREAMS = 10
SHUTDOWN_TARGET_S = 5.0


class Stream(threading.Thread):
    """An event stream of a job, read line by line in the background until the server closes it."""

    def __init__(self, base: str, job_id: str) -> None:
        super().__init__(daemon=True)
        self.url = f"{base}/training/{job_id}/events"
        self.connected = threading.Event()
        self.closed_at: float | None = None
        self.error: str | None = None

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.url, timeout=60) as response:
                for _ in response.iter_lines():
                    self.connected.set()
        except httpx.HTTPError as error:
            self.error = repr(error)
        self.closed_at = time.monotonic()


def _start_server(tmp_path: Path, executor: str) -> Server:
    # A checkpoint interval no job reaches here: the checkpoint the job ends at is the one shutdown took.
    env = {"GRPO_CHECKPOINT_INTERVAL": "100000", "GRPO_RAY_NUM_CPUS": "2"}
    server = Server(tmp_path, free_port(), "--executor", executor, env=env)
    server.start()
    return server


@pytest.mark.parametrize("executor", ["thread", "ray"])
def test_sigterm_closes_streams_at_once_and_the_job_checkpoints(tmp_path: Path, executor: str) -> None:
    server = _start_server(tmp_path, executor)
    try:
        trained = server.post("/train", {**TINY, "model_name": "evaluated", "total_timesteps": 256})
        assert server.wait_for_job(trained.json()["job_id"])["status"] == "completed"
        body = {**TINY, "model_name": "long", "total_timesteps": 1_000_000, "seed": 0}
        job_id = server.post("/train", body).json()["job_id"]
        deadline = time.monotonic() + 120
        while server.get(f"/training/{job_id}/status")["current_timesteps"] < 500:
            assert time.monotonic() < deadline, server.get(f"/training/{job_id}/status")
            time.sleep(0.2)
        streams = [Stream(server.base, job_id) for _ in range(STREAMS)]
        for stream in streams:
            stream.start()
        for stream in streams:
            assert stream.connected.wait(30), "a stream did not open"

        # A request in flight when the signal comes gets its answer, as with any graceful stop.
        answers: dict[str, Any] = {}

        def evaluate_model() -> None:
            answers["response"] = server.http.post(
                "/models/evaluated/evaluate", json={"n_episodes": 30, "deterministic": False, "seed": 0}
            )
            answers["at"] = time.monotonic()

        evaluate = threading.Thread(target=evaluate_model)
        evaluate.start()
        time.sleep(0.1)
        reached = server.get(f"/training/{job_id}/status")["current_timesteps"]
        assert server.process is not None
        process = server.process
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        took = time.monotonic() - signalled
        server.process = None
        evaluate.join(timeout=30)
        for stream in streams:
            stream.join(timeout=5)
        closed = [stream.closed_at - signalled for stream in streams if stream.closed_at is not None]
        print(
            f"{executor}: SIGTERM to exit {took:.2f} s with {STREAMS} streams open (closed after at most "
            f"{max(closed, default=0):.3f} s) and an evaluation in flight "
            f"(answered after {answers.get('at', 0) - signalled:.2f} s)"
        )

        log = server.log.read_text()
        assert took < SHUTDOWN_TARGET_S, f"shutdown took {took:.1f} s:\n{log[-3000:]}"
        assert len(closed) == STREAMS and max(closed) < SHUTDOWN_TARGET_S
        response = answers["response"]
        assert response.status_code == 200, response.text
        assert response.json()["n_episodes"] == 30 and answers["at"] > signalled  # it was in flight
        for trace in ["Traceback", "SystemExit", "CancelledError"]:
            assert trace not in log, log[-3000:]

        server.start()
        status = server.get(f"/training/{job_id}/status")
        assert status["status"] == "interrupted", status
        # Fresh: taken when the signal came, not at an interval; the job trained on no longer than a rollout.
        assert status["checkpoint_timesteps"] == status["current_timesteps"] >= reached
        assert (tmp_path / "models" / "jobs" / job_id / "checkpoint.zip").is_file()
        resumed = server.post(f"/training/{job_id}/resume")
        assert resumed.status_code == 200 and resumed.json()["current_timesteps"] == status["checkpoint_timesteps"]
        server.post(f"/training/{job_id}/stop")
    finally:
        server.kill()


# kill -9 with the Ray executor


def _processes() -> dict[int, tuple[int, str, str]]:
    """Every process: its parent, state and command line, from /proc."""
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as stat:
                    state, parent = stat.read().rsplit(")", 1)[1].split()[:2]
                with open(f"/proc/{name}/cmdline", "rb") as cmdline:
                    command = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            found[int(name)] = (int(parent), state, command)
    return found


def _descendants(pid: int) -> dict[int, str]:
    processes, found, parents = _processes(), {}, [pid]
    while parents:
        parent = parents.pop()
        for child, (ppid, _, command) in processes.items():
            if ppid == parent and child not in found:
                found[child] = command
                parents.append(child)
    return found


def _alive(pids: dict[int, str]) -> dict[int, str]:
    processes = _processes()
    return {pid: command for pid, command in pids.items() if pid in processes and processes[pid][1] != "Z"}


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_after_a_kill_9_no_ray_process_of_the_server_is_left(tmp_path: Path) -> None:
    server = _start_server(tmp_path, "ray")
    try:
        job_id = server.post("/train", {**TINY, "model_name": "orphan", "total_timesteps": 1_000_000}).json()["job_id"]
        deadline = time.monotonic() + 120
        while server.get(f"/training/{job_id}/status")["current_timesteps"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert server.process is not None
        ours = _descendants(server.process.pid)
        names = " ".join(ours.values())
        assert "raylet" in names and "ray::DashboardAgent" in names and "ray::TrainingActor" in names, names
        server.stop(signal.SIGKILL)
        killed = time.monotonic()
        # Ray's own fate sharing ends the raylet at once, but its agents stayed for about two minutes; the reaper
        # ends them within a second on a quiet machine (15 s leaves room for a loaded one, far below 2 min).
        while _alive(ours) and time.monotonic() - killed < 15:
            time.sleep(0.5)
        left = {pid: command.strip() for pid, command in _alive(ours).items()}
        assert not left, f"still running {time.monotonic() - killed:.0f} s after kill -9: {left}"
        print(f"kill -9: every Ray process of the server gone after {time.monotonic() - killed:.1f} s")
    finally:
        server.kill()


SERVER_LIKE = """
import subprocess, sys, time
from executors import start_reaper
start_reaper()
# Ray's agents rename themselves, which wipes the environment /proc shows, marker included: env={} does the same.
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], env={})
print(child.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_the_reaper_ends_what_the_server_started_even_without_its_marker() -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    server = subprocess.Popen([sys.executable, "-c", SERVER_LIKE], cwd=repo, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        child = int(server.stdout.readline())
        time.sleep(1.5)  # the reaper's look at the tree takes place every half second
        server.kill()
        server.wait()
        deadline = time.monotonic() + 10
        while _alive({child: ""}) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive({child: ""}), "the server's child outlived it"
    finally:
        server.kill()
