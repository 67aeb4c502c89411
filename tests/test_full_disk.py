"""A full disk, for real: the server's data folder on a small tmpfs that the test fills up while jobs write to it.
A checkpoint, a model save and the metrics writes each meet ENOSPC in turn; each job fails saying the disk is full,
what was there before stays whole and loadable, the database passes ``integrity_check``, and inference answers 200
throughout. Mounting needs root (CI runs as root); elsewhere the test skips and says why."""

import errno
import hashlib
import os
import shutil
import sqlite3
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import CARTPOLE_OBS, TINY, Server, free_port

from grpo import GRPO
from store import DISK_RESERVE_FILE, TEMPORARY_SUFFIX, DiskReserve, is_disk_full, save_atomically

DISK_MB = 32
# A [256, 256] policy's zip (weights and Adam's moments) is about 800 KB: more than this much free space.
BIG = {**TINY, "net_arch": [256, 256]}
LEAVE_BYTES = 256 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("filling a disk for real needs a tmpfs of its own, and mounting one needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def fill(folder: Path, leave: int) -> Path:
    """Write a file into ``folder``'s file system until at most ``leave`` bytes are free; returns it."""
    filler = folder / f"filler-{uuid.uuid4().hex}"
    with open(filler, "wb", buffering=0) as output:
        while (free := shutil.disk_usage(folder).free) > leave:
            try:
                output.write(bytes(min(1 << 20, free - leave)))
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                break
    return filler


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class InferenceLoad:
    """Asks ``model`` for an action every 50 ms from a thread of its own, counting the answers' status codes."""

    def __init__(self, server: Server, model: str) -> None:
        self.statuses: Counter[int] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(server, model), daemon=True)
        self._thread.start()

    def _run(self, server: Server, model: str) -> None:
        with httpx.Client(base_url=server.base, timeout=30) as client:
            while not self._stop.is_set():
                response = client.post("/inference", json={"model_name": model, "observation": CARTPOLE_OBS})
                self.statuses[response.status_code] += 1
                time.sleep(0.05)

    def stop(self) -> Counter[int]:
        self._stop.set()
        self._thread.join(timeout=60)
        return self.statuses


def _failed_for_a_full_disk(server: Server, job_id: str) -> dict[str, Any]:
    status = server.wait_for_job(job_id, timeout=180)
    assert status["status"] == "failed", status
    assert "The disk is full" in status["error_message"], status["error_message"]
    print(f"\n{status['model_name']}: {status['error_message']}")
    return status


def test_a_full_disk_fails_the_job_and_keeps_everything_else(small_disk: Path, tmp_path: Path) -> None:
    server = Server(small_disk, free_port())
    server.log = tmp_path / "server.log"  # not on the disk that fills up
    server.start()
    try:
        models, jobs, database = small_disk / "models", small_disk / "models" / "jobs", small_disk / "jobs.db"
        kept = server.post("/train", {**BIG, "model_name": "kept", "total_timesteps": 1024, "seed": 0}).json()
        assert server.wait_for_job(kept["job_id"])["status"] == "completed"
        kept_sha = sha256(models / "kept.zip")
        assert (models / DISK_RESERVE_FILE).stat().st_size > LEAVE_BYTES
        load = InferenceLoad(server, "kept")

        # 1. A checkpoint: the job has one on disk when the space runs out before its next.
        job = server.post(
            "/train", {**BIG, "model_name": "ckpt", "total_timesteps": 200_000, "checkpoint_interval": 512}
        )
        job_id = job.json()["job_id"]
        server_wait = time.monotonic() + 120
        while (server.get(f"/training/{job_id}/status")["checkpoint_timesteps"] or 0) < 512:
            assert time.monotonic() < server_wait
            time.sleep(0.1)
        filler = fill(small_disk, LEAVE_BYTES)
        status = _failed_for_a_full_disk(server, job_id)
        checkpoint = GRPO.load(jobs / job_id / "checkpoint.zip", device="cpu")
        assert checkpoint.num_timesteps == status["checkpoint_timesteps"] >= 512
        filler.unlink()

        # 2. A model save: a job retraining "kept" runs out of space as it saves; the old "kept" stays.
        job = server.post("/train", {**BIG, "model_name": "kept", "total_timesteps": 2048, "overwrite": True})
        filler = fill(small_disk, LEAVE_BYTES)
        _failed_for_a_full_disk(server, job.json()["job_id"])
        assert sha256(models / "kept.zip") == kept_sha
        filler.unlink()

        # 3. The metrics: no room at all while a small job reports its progress.
        job = server.post("/train", {**TINY, "model_name": "metrics", "total_timesteps": 200_000})
        job_id = job.json()["job_id"]
        while server.get(f"/training/{job_id}/status")["current_timesteps"] == 0:
            time.sleep(0.1)
        filler = fill(small_disk, 0)
        _failed_for_a_full_disk(server, job_id)
        filler.unlink()

        statuses = load.stop()
        print(f"inference while the disk filled: {dict(statuses)}")
        assert set(statuses) == {200} and statuses[200] > 20
        with sqlite3.connect(database) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert not list(small_disk.rglob(f"*{TEMPORARY_SUFFIX}"))
        assert GRPO.load(models / "kept.zip", device="cpu").num_timesteps == 1024
        assert "metrics" not in {model["name"] for model in server.get("/models")["models"]}

        # With room again, the server goes on: a new job completes and the reserve is back.
        again = server.post("/train", {**TINY, "model_name": "after", "total_timesteps": 256}).json()
        assert server.wait_for_job(again["job_id"])["status"] == "completed"
        assert (models / DISK_RESERVE_FILE).is_file()
    finally:
        server.kill()


def test_a_save_that_finds_no_space_leaves_the_old_file_and_the_database_whole(small_disk: Path) -> None:
    model = GRPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, policy_kwargs={"net_arch": [256, 256]})
    target = small_disk / "model.zip"
    save_atomically(model, target)
    before = sha256(target)
    database = sqlite3.connect(small_disk / "grpo.db")
    database.execute("PRAGMA journal_mode=WAL")
    database.execute("CREATE TABLE metrics (t INTEGER PRIMARY KEY, value REAL)")
    reserve = DiskReserve(small_disk)
    assert reserve.ensure()
    fill(small_disk, 0)

    with pytest.raises(OSError) as refused:
        save_atomically(model, target)
    assert is_disk_full(refused.value)
    assert sha256(target) == before and not list(small_disk.glob(f"*{TEMPORARY_SUFFIX}"))
    with pytest.raises(sqlite3.OperationalError) as full:
        with database:
            database.executemany("INSERT INTO metrics VALUES (?, ?)", [(t, 0.5) for t in range(10_000)])
    assert is_disk_full(full.value)
    # The reserve gives back enough for the record of a failure.
    assert reserve.release() and not reserve.release()
    with database:
        database.execute("INSERT INTO metrics VALUES (1, 0.5)")
    assert database.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    database.close()
    fill(small_disk, 0)
    assert not reserve.ensure()  # no room to take it back yet: it says so rather than failing
    assert not (small_disk / DISK_RESERVE_FILE).exists()


def test_a_save_is_flushed_before_the_rename_that_publishes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        steps.append("fsync folder" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file")
        real_fsync(fd)

    def replace(source: Any, target: Any) -> None:
        steps.append("rename")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_atomically(GRPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32), tmp_path / "model.zip")
    # The file's bytes are on disk before its name points at them; the folder's flush makes the rename itself last.
    assert steps == ["fsync file", "rename", "fsync folder"]
