"""What the service keeps: job and model records in SQLite, model files on disk, loaded models in an LRU cache.

Model files are the SB3 zips that ``GRPO.save`` writes, named ``<model name>.zip`` in the models folder. They are
written to a hidden temporary file and renamed into place, so a crash never leaves a half-written model under a
listed name. Model names are checked against ``MODEL_NAME_PATTERN`` here too, so no path is ever built from
unchecked input.

A full disk: a write that fails for want of space (``is_disk_full``) leaves the previous file and the database as
they were, and the store keeps a small reserve file in the models folder that it gives up (``DiskReserve``) so that
the failure itself can still be recorded.
"""

import errno
import json
import logging
import os
import re
import sqlite3
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces

from artifacts import TrainedModel, load_trained, save_trained
from errors import InvalidName, ModelNotFound, ModelUnreadable
from grpo import GRPO
from records import (
    METRIC_LOGGER_KEYS,
    MODEL_NAME_PATTERN,
    EvaluationRecord,
    JobRecord,
    JobState,
    MetricPoint,
    ModelRecord,
    utcnow,
)

logger = logging.getLogger("grpo.store")

_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)
MODEL_SUFFIX = ".zip"
TEMPORARY_SUFFIX = f".tmp{MODEL_SUFFIX}"
# Spaces with more bounds than this are described by shape only: the bounds would swamp the metadata.
_MAX_DESCRIBED_BOUNDS = 64


def describe_space(space: spaces.Space) -> dict[str, Any]:
    """A JSON-friendly description of a gymnasium space."""
    description: dict[str, Any] = {"type": type(space).__name__, "shape": list(space.shape or ())}
    if space.dtype is not None:
        description["dtype"] = str(space.dtype)
    if isinstance(space, spaces.Discrete):
        description["n"] = int(space.n)
    elif isinstance(space, spaces.MultiDiscrete):
        description["nvec"] = space.nvec.tolist()
    elif isinstance(space, spaces.Box) and space.low.size <= _MAX_DESCRIBED_BOUNDS:
        # JSON has no infinity: an unbounded side is null.
        description["low"] = [float(v) if np.isfinite(v) else None for v in space.low.flatten()]
        description["high"] = [float(v) if np.isfinite(v) else None for v in space.high.flatten()]
    return description


def check_model_name(name: str) -> str:
    if not _MODEL_NAME.fullmatch(name):
        raise InvalidName(f"Invalid model name {name!r}: it must match {MODEL_NAME_PATTERN}")
    return name


_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    model_name TEXT NOT NULL,
    env_name TEXT NOT NULL,
    config TEXT NOT NULL,
    total_timesteps INTEGER NOT NULL,
    current_timesteps INTEGER NOT NULL DEFAULT 0,
    metrics TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    start_time TEXT,
    end_time TEXT,
    error_message TEXT,
    message TEXT,
    model_saved INTEGER NOT NULL DEFAULT 0,
    checkpoint_timesteps INTEGER
);
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    size_bytes INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    env_name TEXT,
    job_id TEXT,
    observation_space TEXT,
    action_space TEXT,
    hyperparameters TEXT NOT NULL DEFAULT '{}',
    metrics TEXT NOT NULL DEFAULT '{}',
    timesteps INTEGER
);
CREATE TABLE IF NOT EXISTS metrics (
    job_id TEXT NOT NULL,
    timesteps INTEGER NOT NULL,
    wall_time_s REAL NOT NULL,
"""
    # one column per learning-curve value, as records.MetricPoint lists them
    + "".join(f"    {name} REAL,\n" for name in METRIC_LOGGER_KEYS)
    + """    PRIMARY KEY (job_id, timesteps)
);
"""
)
# Tables added after the first release: created where missing, like the columns of Database.__init__.
_LATER_SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    model_name TEXT NOT NULL,
    env_name TEXT NOT NULL,
    n_episodes INTEGER NOT NULL,
    seed INTEGER,
    deterministic INTEGER NOT NULL,
    mean_return REAL NOT NULL,
    std_return REAL NOT NULL,
    mean_length REAL NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS evaluations_by_model ON evaluations (model_name, created_at);
CREATE TABLE IF NOT EXISTS study_trials (
    study_id TEXT NOT NULL,
    trial_number INTEGER NOT NULL,
    job_id TEXT NOT NULL,
    PRIMARY KEY (study_id, trial_number)
);
CREATE INDEX IF NOT EXISTS study_trials_by_job ON study_trials (job_id);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status);
"""
_JSON_COLUMNS = {"config", "metrics", "observation_space", "action_space", "hyperparameters"}
_TIME_COLUMNS = {"created_at", "start_time", "end_time"}


def _to_column(key: str, value: Any) -> Any:
    if value is None:
        return None
    if key in _JSON_COLUMNS:
        return json.dumps(value)
    if key in _TIME_COLUMNS:
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return value


def _from_row(row: sqlite3.Row) -> dict[str, Any]:
    values = dict(row)
    for key, value in values.items():
        if value is None:
            continue
        if key in _JSON_COLUMNS:
            values[key] = json.loads(value)
        elif key in _TIME_COLUMNS:
            values[key] = datetime.fromisoformat(value)
    return values


class Database:
    """Job and model records in one SQLite file, shared by the request threads and the training threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection behind a lock: writes are small and rare, and SQLite serialises writers anyway.
        self._conn = sqlite3.connect(path, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock, self._conn:
            # WAL: readers never wait for the writer, and a crash mid-write leaves the last committed state.
            self._conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before the call returns, so whatever an answer reports survives a crash.
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
            columns = {row["name"] for row in self._conn.execute("PRAGMA table_info(jobs)")}
            if "checkpoint_timesteps" not in columns:  # a database made before checkpoints
                self._conn.execute("ALTER TABLE jobs ADD COLUMN checkpoint_timesteps INTEGER")
            self._conn.executescript(_LATER_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def check(self) -> str | None:
        """None when the database answers a query; otherwise what is wrong."""
        try:
            self._read("SELECT count(*) FROM jobs")
        except sqlite3.Error as error:
            return f"database: {error}"
        return None

    def _write(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        with self._lock, self._conn:
            return self._conn.execute(sql, params).rowcount

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [_from_row(row) for row in self._conn.execute(sql, params).fetchall()]

    def _insert(self, table: str, values: dict[str, Any], replace: bool = False) -> None:
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        params = tuple(_to_column(key, value) for key, value in values.items())
        self._write(f"{verb} INTO {table} ({columns}) VALUES ({marks})", params)

    # jobs

    def add_job(self, job: JobRecord) -> None:
        self._insert("jobs", vars(job))

    def update_job(self, job_id: str, **values: Any) -> None:
        assignments = ", ".join(f"{key} = ?" for key in values)
        params = tuple(_to_column(key, value) for key, value in values.items())
        self._write(f"UPDATE jobs SET {assignments} WHERE job_id = ?", (*params, job_id))

    def get_job(self, job_id: str) -> JobRecord | None:
        rows = self._read("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def list_jobs(self) -> list[JobRecord]:
        return [_job(row) for row in self._read("SELECT * FROM jobs ORDER BY rowid")]

    def count_jobs(self) -> dict[str, int]:
        """How many jobs are in each state that has any."""
        rows = self._read("SELECT status, COUNT(*) AS count FROM jobs GROUP BY status")
        return {row["status"]: row["count"] for row in rows}

    def page_jobs(
        self, filters: "JobFilters", limit: int | None, offset: int = 0
    ) -> tuple[list[JobRecord], int, int | None]:
        """One page of the jobs that pass ``filters`` (after ``filters.after``, the cursor, when given) in the order
        submitted (newest first with ``filters.newest_first``), how many pass the filters in all, and the position
        of the page's last job (the next page's cursor)."""
        where, params = filters.sql()
        total = self._read(f"SELECT count(*) AS n FROM jobs WHERE {where}", params)[0]["n"]
        order = "DESC" if filters.newest_first else "ASC"
        if filters.after is not None:
            where += f" AND rowid {'<' if filters.newest_first else '>'} ?"
            params = (*params, filters.after)
        sql = f"SELECT rowid AS _rowid, * FROM jobs WHERE {where} ORDER BY rowid {order} LIMIT ? OFFSET ?"
        rows = self._read(sql, (*params, -1 if limit is None else limit, offset))
        last = rows[-1]["_rowid"] if rows else None
        for row in rows:
            del row["_rowid"]
        return [_job(row) for row in rows], total, last

    def interrupt_unfinished(self, message: str) -> int:
        """Mark the jobs a previous run left queued or running as interrupted, back at their last checkpoint (what
        a resume continues from); returns how many."""
        return self._write(
            "UPDATE jobs SET status = ?, end_time = ?, message = ?, "
            "current_timesteps = COALESCE(checkpoint_timesteps, 0) WHERE status IN (?, ?)",
            (JobState.INTERRUPTED.value, utcnow().isoformat(), message, JobState.QUEUED.value, JobState.RUNNING.value),
        )

    # metric history

    def add_metrics(self, job_id: str, points: list[MetricPoint]) -> None:
        """Append points to a job's learning curves, in one transaction."""
        if not points:
            return
        rows = [(job_id, *vars(point).values()) for point in points]
        columns = ", ".join(["job_id", *vars(points[0])])
        marks = ", ".join("?" for _ in rows[0])
        with self._lock, self._conn:
            self._conn.executemany(f"INSERT OR REPLACE INTO metrics ({columns}) VALUES ({marks})", rows)

    def delete_metrics_after(self, job_id: str, timesteps: int) -> None:
        """Forget a job's points past ``timesteps``: the training after its checkpoint, which a resume redoes."""
        self._write("DELETE FROM metrics WHERE job_id = ? AND timesteps > ?", (job_id, timesteps))

    def list_metrics(self, job_id: str, since: int = -1) -> list[MetricPoint]:
        """A job's points after timestep ``since``, oldest first."""
        rows = self._read(
            "SELECT * FROM metrics WHERE job_id = ? AND timesteps > ? ORDER BY timesteps", (job_id, since)
        )
        for row in rows:
            del row["job_id"]
        return [MetricPoint(**row) for row in rows]

    # models

    def put_model(self, model: ModelRecord) -> None:
        self._insert("models", vars(model), replace=True)

    def get_model(self, name: str) -> ModelRecord | None:
        rows = self._read("SELECT * FROM models WHERE name = ?", (name,))
        return ModelRecord(**rows[0]) if rows else None

    def list_models(self) -> list[ModelRecord]:
        return [ModelRecord(**row) for row in self._read("SELECT * FROM models")]

    def delete_model(self, name: str) -> None:
        self._write("DELETE FROM models WHERE name = ?", (name,))
        self._write("DELETE FROM evaluations WHERE model_name = ?", (name,))

    # studies' trials, each a job

    def add_study_trial(self, study_id: str, trial_number: int, job_id: str) -> None:
        self._write("INSERT OR REPLACE INTO study_trials VALUES (?, ?, ?)", (study_id, trial_number, job_id))

    def study_job_ids(self, study_id: str) -> list[str]:
        """The job of each trial of a study, by trial number."""
        rows = self._read("SELECT job_id FROM study_trials WHERE study_id = ? ORDER BY trial_number", (study_id,))
        return [row["job_id"] for row in rows]

    # evaluations kept with a model

    def add_evaluation(self, evaluation: EvaluationRecord) -> None:
        self._insert("evaluations", vars(evaluation))

    def list_evaluations(self, model_name: str) -> list[EvaluationRecord]:
        """A model's evaluations, newest first."""
        rows = self._read("SELECT * FROM evaluations WHERE model_name = ? ORDER BY created_at DESC", (model_name,))
        return [EvaluationRecord(**{**row, "deterministic": bool(row["deterministic"])}) for row in rows]


@dataclass
class JobFilters:
    """What GET /training/jobs narrows its list by; None: no narrowing."""

    statuses: list[str] | None = None
    env_name: str | None = None
    model_name: str | None = None  # a part of the name
    study_id: str | None = None
    after: int | None = None  # the cursor: the position (rowid) of the last job of the previous page
    newest_first: bool = False

    def sql(self) -> tuple[str, tuple[Any, ...]]:
        clauses, params = ["1"], []
        if self.statuses:
            clauses.append(f"status IN ({', '.join('?' for _ in self.statuses)})")
            params += self.statuses
        if self.env_name:
            clauses.append("env_name = ?")
            params.append(self.env_name)
        if self.model_name:
            escaped = self.model_name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append("model_name LIKE ? ESCAPE '\\'")
            params.append(f"%{escaped}%")
        if self.study_id:
            clauses.append("job_id IN (SELECT job_id FROM study_trials WHERE study_id = ?)")
            params.append(self.study_id)
        return " AND ".join(clauses), tuple(params)


def _job(row: dict[str, Any]) -> JobRecord:
    row["status"] = JobState(row["status"])
    row["model_saved"] = bool(row["model_saved"])
    return JobRecord(**row)


def memory_bytes(model: GRPO) -> int:
    """What a loaded model holds in tensors: the policy's weights and the optimizer's moments."""
    tensors = list(model.policy.state_dict().values())
    optimizer = getattr(model.policy, "optimizer", None)
    if optimizer is not None:
        for state in optimizer.state_dict()["state"].values():
            tensors.extend(value for value in state.values() if th.is_tensor(value))
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


class ModelCache:
    """Loaded models, least recently used first out, bounded by count and by bytes.

    ``hits`` counts the models it handed out, ``misses`` the ones that had to be read from disk and put in."""

    def __init__(self, max_models: int, max_bytes: int) -> None:
        self.max_models = max_models
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._models: OrderedDict[str, tuple[TrainedModel, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str) -> TrainedModel | None:
        with self._lock:
            entry = self._models.get(name)
            if entry is None:
                return None
            self.hits += 1
            self._models.move_to_end(name)
            return entry[0]

    def put(self, name: str, model: TrainedModel, size: int) -> None:
        with self._lock:
            self.misses += 1
            self._models[name] = (model, size)
            self._models.move_to_end(name)
            # The newest model stays even when it alone exceeds the byte budget: it is the one being served.
            while len(self._models) > 1 and (len(self._models) > self.max_models or self.total_bytes > self.max_bytes):
                evicted, _ = self._models.popitem(last=False)
                logger.info("model %s unloaded from the cache", evicted)

    def discard(self, name: str) -> None:
        with self._lock:
            self._models.pop(name, None)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._models

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self._models.values())

    def stats(self) -> dict[str, int]:
        """hits, misses, bytes and models, read together (for the metrics)."""
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "bytes": self.total_bytes, "models": len(self._models)}


class ModelStore:
    """Trained models: files in ``models_dir``, metadata in the database, loaded ones in the cache."""

    def __init__(self, models_dir: Path, db: Database, cache: ModelCache, device: str = "auto") -> None:
        self.models_dir = models_dir
        self.db = db
        self.cache = cache
        self.device = device
        self._load_lock = threading.Lock()
        models_dir.mkdir(parents=True, exist_ok=True)
        self.reserve = DiskReserve(models_dir)
        self.reserve.ensure()

    def path_for(self, name: str) -> Path:
        return self.models_dir / f"{check_model_name(name)}{MODEL_SUFFIX}"

    def check(self) -> str | None:
        """None when the models folder can be listed and written to; otherwise what is wrong."""
        try:
            if not self.models_dir.is_dir():
                return f"model store: {self.models_dir} is not a folder"
            if not os.access(self.models_dir, os.R_OK | os.W_OK | os.X_OK):
                return f"model store: {self.models_dir} is not readable and writable"
            with os.scandir(self.models_dir) as entries:
                next(entries, None)
        except OSError as error:
            return f"model store: {error}"
        return None

    def exists(self, name: str) -> bool:
        return self.path_for(name).is_file()

    def names(self) -> list[str]:
        """Models on disk; the hidden temporary files of an unfinished save never match a model name."""
        return sorted(
            path.stem
            for path in self.models_dir.glob(f"*{MODEL_SUFFIX}")
            if _MODEL_NAME.fullmatch(path.stem) and path.is_file()
        )

    def is_loaded(self, name: str) -> bool:
        return name in self.cache

    def remove_temporary_files(self) -> None:
        """Drop what a save cut short by a crash left behind."""
        remove_temporary_files(self.models_dir)

    def save(self, model: GRPO | TrainedModel, record: ModelRecord) -> ModelRecord:
        """Write ``model`` (a trained one, or one loaded with its statistics) under ``record.name`` atomically, then
        record its metadata."""
        final = self.path_for(record.name)
        save_atomically(model, final)
        spaces_of = model.model if isinstance(model, TrainedModel) else model
        record.size_bytes = final.stat().st_size
        record.observation_space = describe_space(spaces_of.observation_space)
        record.action_space = describe_space(spaces_of.action_space)
        self.db.put_model(record)
        # A model saved over an older one of the same name must not be served from the stale cache entry.
        self.cache.discard(record.name)
        return record

    def loaded(self, name: str) -> TrainedModel | None:
        """The model when it is in the cache, else None: never touches the disk, so the event loop may call it."""
        return self.cache.get(name)

    def load(self, name: str) -> TrainedModel:
        """The model saved under ``name``, with the normalisation statistics it was trained under."""
        model = self.cache.get(name)
        if model is not None:
            return model
        path = self.path_for(name)
        # One loader at a time, so a burst of requests for a cold model reads the zip once.
        with self._load_lock:
            model = self.cache.get(name)
            if model is not None:
                return model
            try:
                model = load_trained(path, device=self.device)
            except FileNotFoundError:  # also when deleted between a listing and this load
                raise ModelNotFound(f"Model {name!r} not found") from None
            except Exception as error:  # a damaged or foreign zip: whatever SB3's loader throws
                logger.exception("model %s cannot be loaded", name)
                raise ModelUnreadable(f"Model {name!r} cannot be loaded: {type(error).__name__}") from error
            model.model.policy.set_training_mode(False)
            self.cache.put(name, model, memory_bytes(model.model))
            logger.info("model %s loaded", name)
            return model

    def list(self) -> list[ModelRecord]:
        """Every model on disk, with its metadata when the service trained it."""
        known = {record.name: record for record in self.db.list_models()}
        return [known.get(name) or self._file_record(name) for name in self.names()]

    def _file_record(self, name: str) -> ModelRecord:
        stat = self.path_for(name).stat()
        return ModelRecord(
            name=name, size_bytes=stat.st_size, created_at=datetime.fromtimestamp(stat.st_mtime, timezone.utc)
        )

    def read_bytes(self, name: str) -> bytes:
        # Read whole, so a model replaced or deleted mid-download cannot break the response half-way.
        try:
            return self.path_for(name).read_bytes()
        except FileNotFoundError:
            raise ModelNotFound(f"Model {name!r} not found") from None

    def record(self, name: str) -> ModelRecord:
        """The model's record as the database has it, or, for a zip copied into the folder by hand, as its file
        says (no spaces: reading them loads the model)."""
        if not self.path_for(name).is_file():
            raise ModelNotFound(f"Model {name!r} not found")
        return self.db.get_model(name) or self._file_record(name)

    def info(self, name: str) -> ModelRecord:
        record = self.record(name)
        if record.observation_space is None:
            # A zip copied into the folder by hand: its spaces come from the zip itself.
            model = self.load(name).model
            record.observation_space = describe_space(model.observation_space)
            record.action_space = describe_space(model.action_space)
        return record

    def delete(self, name: str) -> None:
        path = self.path_for(name)
        if not path.is_file():
            raise ModelNotFound(f"Model {name!r} not found")
        self.cache.discard(name)
        path.unlink(missing_ok=True)
        self.db.delete_model(name)
        logger.info("model %s deleted", name)


def save_atomically(
    model: GRPO | TrainedModel,
    final: Path,
    write: Callable[[GRPO | TrainedModel, Path], None] = save_trained,
) -> None:
    """Write ``model`` to ``final`` so that a crash leaves either the old file or the new one, never half of one:
    into a hidden temporary file beside it, flushed to disk, then renamed over it, and the folder flushed so that
    the rename is on disk too. A save that fails (a full disk) removes its temporary file and leaves ``final`` as
    it was. ``write(model, path)`` writes the file: by default the model with its VecNormalize statistics, if it
    trains under them (``artifacts.save_trained``)."""
    temporary = final.with_name(f".{final.stem}.{uuid.uuid4().hex}{TEMPORARY_SUFFIX}")
    try:
        write(model, temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_directory(final.parent)


def remove_temporary_files(directory: Path) -> None:
    """Drop the temporary files of saves that a crash cut short in ``directory``."""
    for path in directory.glob(f".*{TEMPORARY_SUFFIX}"):
        path.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# a full disk

# Space the store holds back in the models folder, given up when the disk fills so that a job's failure (a few pages
# of the database) can still be written.
DISK_RESERVE_BYTES = 1 << 20
DISK_RESERVE_FILE = ".grpo-disk-reserve"
_SQLITE_FULL = 13


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from, is a write that found no space: ENOSPC or a quota from
    the OS, SQLITE_FULL from the database."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(current, sqlite3.OperationalError) and (
            getattr(current, "sqlite_errorcode", None) == _SQLITE_FULL or "disk is full" in str(current)
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


class DiskReserve:
    """A file of ``size`` bytes that keeps that much space for the server's own records when the disk fills up."""

    def __init__(self, folder: Path, size: int = DISK_RESERVE_BYTES) -> None:
        self.path = folder / DISK_RESERVE_FILE
        self.size = size

    def ensure(self) -> bool:
        """Make the reserve if it is missing and the disk has room for it; whether it is there now."""
        if self.path.is_file() and self.path.stat().st_size >= self.size:
            return True
        try:
            with open(self.path, "wb") as reserve:
                # Real blocks, not a sparse file: only written bytes hold space on every file system.
                reserve.write(bytes(self.size))
                reserve.flush()
                os.fsync(reserve.fileno())
        except OSError as error:
            self.path.unlink(missing_ok=True)
            if not is_disk_full(error):
                raise
            logger.warning("no room for the %d-byte disk reserve in %s", self.size, self.path.parent)
            return False
        return True

    def release(self) -> bool:
        """Give the reserved space back to the disk; whether there was any."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        logger.error("the disk is full: released the %d-byte reserve in %s", self.size, self.path.parent)
        return True
