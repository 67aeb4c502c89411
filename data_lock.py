"""One server per data folder: an exclusive lock the server holds on its models folder (and on its database, when
that lives elsewhere) for as long as it runs.

The lock is ``fcntl.flock`` on a small file, ``.grpo-server.lock``, which also says who holds it (process id, host,
since when) so that a second server can name the holder when it refuses to start. The kernel drops the lock when
the holder's process ends, however it ends (``kill -9`` included): a stale lock file never blocks a restart.
``flock`` is local to one machine: on a network file system (NFS, SMB) two machines may both get it, so give each
server a folder of its own there.
"""

import fcntl
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from settings import Settings

LOCK_FILE = ".grpo-server.lock"


class DataFolderInUse(Exception):
    """Another process holds the lock on a data folder."""

    def __init__(self, folder: Path, holder: str) -> None:
        super().__init__(
            f"The data folder {folder} is in use by another GRPO server ({holder}); run one server per data folder: "
            "stop that one, or give this one another --models-dir and --db"
        )
        self.folder = folder
        self.holder = holder


def describe_holder(text: str) -> str:
    """What a lock file says of its holder, in words (``pid 123 on host h since ...``)."""
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on host {holder['host']} since {holder['since']}"
    except (ValueError, KeyError, TypeError):
        return "a process that did not say who it is"


class DataFolderLock:
    """The exclusive lock on one folder (or one file, through a lock file beside it); ``acquire`` raises
    ``DataFolderInUse`` at once when another process has it.

    A process that already holds a folder's lock (``run_api.py`` takes it before uvicorn starts the app, whose
    lifespan takes it again) is let through: ``flock`` belongs to an open file, so it would refuse its own holder.
    """

    def __init__(self, folder: Path, path: Path | None = None) -> None:
        self.folder = folder
        self.path = path or folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "DataFolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 4096, 0).decode(errors="replace")
            os.close(fd)
            if _held_by_this_process(text):
                return self
            raise DataFolderInUse(self.folder, describe_holder(text)) from None
        since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since})
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        # The file stays: removing it would let a third process lock a new file while a second waits on the old one.
        os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the file drops the lock
        self._fd = None

    def __enter__(self) -> "DataFolderLock":
        return self.acquire()

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.release()


class DataLocks:
    """The locks of everything a server keeps: its models folder (which holds the jobs folder and the database by
    default), the jobs folder when it is elsewhere, and the database, through ``<db>.lock``, when it is elsewhere."""

    def __init__(self, settings: Settings) -> None:
        models, jobs, database = (path.resolve() for path in (settings.models_dir, settings.jobs_dir, settings.db_path))
        self.locks = [DataFolderLock(models)]
        if not jobs.is_relative_to(models):
            self.locks.append(DataFolderLock(jobs))
        if not database.is_relative_to(models):
            self.locks.append(DataFolderLock(database, database.with_name(f"{database.name}.lock")))

    def acquire(self) -> "DataLocks":
        taken: list[DataFolderLock] = []
        try:
            for lock in self.locks:
                taken.append(lock.acquire())
        except DataFolderInUse:
            for lock in taken:
                lock.release()
            raise
        return self

    def release(self) -> None:
        for lock in self.locks:
            lock.release()

    def __enter__(self) -> "DataLocks":
        return self.acquire()

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.release()


def _held_by_this_process(text: str) -> bool:
    try:
        holder = json.loads(text)
        return holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    except (ValueError, KeyError, TypeError):
        return False
