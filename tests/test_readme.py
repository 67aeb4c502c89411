"""The README's commands and examples, run as a reader would copy them."""

import contextlib
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from harness import REPO

from records import ModelRecord, utcnow
from store import Database

README = (REPO / "README.md").read_text()


def code_block(after: str, language: str) -> str:
    """The first ``language`` code block of the README after the text ``after``."""
    start = README.index(after)
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(README, start)
    assert match, f"no {language} block after {after!r}"
    return match.group(1)


def test_the_backup_commands_work_in_a_fresh_folder(tmp_path: Path) -> None:
    # Issue 17, 10: the commands failed unless the reader had made backup/ first.
    if not shutil.which("sqlite3"):
        pytest.skip("the sqlite3 command-line tool is not installed")
    models = tmp_path / "models"
    db = Database(models / "grpo.db")  # open, in WAL mode, as a running server holds it
    db.put_model(ModelRecord(name="kept", size_bytes=3, created_at=utcnow()))
    (models / "kept.zip").write_bytes(b"zip")
    (models / ".kept.0123.tmp.zip").write_bytes(b"half")
    result = subprocess.run(
        ["bash", "-e", "-c", code_block("backing it up", "bash")], cwd=tmp_path, capture_output=True, text=True
    )
    db.close()
    backup = tmp_path / "backup"
    assert (backup / "grpo.db").is_file(), result.stderr
    # closing(): sqlite3's own context manager only commits, and an open WAL database keeps its -wal/-shm files.
    with contextlib.closing(sqlite3.connect(backup / "grpo.db")) as copy:
        assert copy.execute("SELECT name FROM models").fetchall() == [("kept",)]
    if result.returncode == 127 and "rsync" in result.stderr:
        pytest.skip("rsync is not installed: the database was backed up, the model files were not copied")
    assert result.returncode == 0, result.stderr
    assert (backup / "kept.zip").read_bytes() == b"zip"
    assert not list(backup.glob(".*.tmp.zip")) and not list(backup.glob("grpo.db-*"))


def test_the_custom_app_example_shows_the_services_logs(tmp_path: Path) -> None:
    # Issue 17, 10: started this way, the app set up no logging and the jobs' logs never appeared.
    example = code_block("**Custom reward functions.**", "python")
    assert "uvicorn.run(" in example
    # Everything the example does, except serving: in its place, one line of a job's log.
    runner = (
        "import logging, uvicorn\n"
        "uvicorn.run = lambda app, **kwargs: logging.getLogger('grpo.jobs').info('a job log line')\n"
        f"exec(compile({example!r}, 'README example', 'exec'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", runner], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    assert "a job log line" in result.stdout + result.stderr
