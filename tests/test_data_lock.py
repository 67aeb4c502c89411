"""One server per data folder: a second ``python run_api.py`` on a folder in use exits at once, naming the folder and
the holder, and the first one goes on serving."""

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from harness import REPO, Server, free_port

from data_lock import LOCK_FILE, DataFolderInUse, DataFolderLock, DataLocks
from settings import Settings

# The target: the second server is gone, with its message, within this long.
SECOND_SERVER_LIMIT_S = 10.0


def test_a_second_server_on_a_folder_in_use_exits_at_once_and_the_first_goes_on(server: Server) -> None:
    models = server.root / "models"
    command = [sys.executable, "run_api.py", "--port", str(free_port()), "--models-dir", str(models)]
    started = time.monotonic()
    second = subprocess.run(
        [*command, "--db", str(server.root / "jobs.db")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SECOND_SERVER_LIMIT_S,
    )
    elapsed = time.monotonic() - started
    assert server.process is not None
    print(f"\nsecond server exited with {second.returncode} after {elapsed:.2f} s: {second.stderr.strip()}")
    assert second.returncode != 0 and elapsed < SECOND_SERVER_LIMIT_S
    assert str(models.resolve()) in second.stderr
    assert f"pid {server.process.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    assert httpx.get(f"{server.base}/health", timeout=10).json()["status"] == "healthy"

    # The database alone, moved elsewhere, is guarded too: another models folder does not make it free.
    other_models = server.root / "elsewhere"
    by_database = subprocess.run(
        [*command[:-1], str(other_models), "--db", str(server.root / "jobs.db")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SECOND_SERVER_LIMIT_S,
    )
    assert by_database.returncode != 0 and "jobs.db" in by_database.stderr

    # Once the first one is gone (a kill -9: the kernel drops its lock), the folder is free for the next.
    server.stop(9)
    server.start()
    assert server.get("/health")["status"] == "healthy"


def _holder(lock_file: Path) -> subprocess.Popen[str]:
    """Another process holding the lock on ``lock_file``'s folder until its input closes."""
    code = (
        "import sys; from pathlib import Path; from data_lock import DataFolderLock; "
        f"lock = DataFolderLock(Path({str(lock_file.parent)!r})).acquire(); print('locked', flush=True); "
        "sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_the_lock_names_its_holder_and_lets_its_own_process_through(tmp_path: Path) -> None:
    holder = _holder(tmp_path / LOCK_FILE)
    try:
        with pytest.raises(DataFolderInUse, match=rf"pid {holder.pid} on host .+ since 20\d\d-"):
            DataFolderLock(tmp_path).acquire()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait()
    # Free again: this process takes it, and taking it again here (the app's lifespan after run_api.py) is allowed.
    with DataFolderLock(tmp_path), DataFolderLock(tmp_path):
        assert '"pid"' in (tmp_path / LOCK_FILE).read_text()
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released: the file no longer names a holder


def test_every_folder_a_server_keeps_is_locked(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path / "models", db_path=tmp_path / "db" / "grpo.db", jobs_dir=tmp_path / "jobs")
    locks = DataLocks(settings)
    assert [lock.path for lock in locks.locks] == [
        (tmp_path / "models" / LOCK_FILE).resolve(),
        (tmp_path / "jobs" / LOCK_FILE).resolve(),
        (tmp_path / "db" / "grpo.db.lock").resolve(),
    ]
    # The defaults keep everything in the models folder: one lock.
    assert len(DataLocks(Settings(models_dir=tmp_path / "models")).locks) == 1
    holder = _holder(tmp_path / "jobs" / LOCK_FILE)
    try:
        with pytest.raises(DataFolderInUse, match="jobs"):
            locks.acquire()
        # What it took before it met the held one is given back (a released lock file names no holder).
        assert (tmp_path / "models" / LOCK_FILE).read_text() == ""
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait()
