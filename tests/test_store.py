"""The store: SQLite records, model files written atomically, no path from a bad name, the LRU cache."""

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from harness import CARTPOLE_OBS, make_settings

from api import create_app
from errors import InvalidName
from grpo import GRPO
from records import ModelRecord, utcnow
from store import DISK_RESERVE_FILE, Database, ModelCache, ModelStore


def test_database_is_sqlite_with_the_records(service: TestClient) -> None:
    path = service.app.state.settings.db_path
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] >= 2
        assert conn.execute("SELECT name FROM models WHERE name = 'cartpole'").fetchone() == ("cartpole",)


def test_a_database_from_before_checkpoints_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE jobs (job_id TEXT PRIMARY KEY, status TEXT NOT NULL, model_name TEXT NOT NULL, "
            "env_name TEXT NOT NULL, config TEXT NOT NULL, total_timesteps INTEGER NOT NULL, "
            "current_timesteps INTEGER NOT NULL DEFAULT 0, metrics TEXT NOT NULL DEFAULT '{}', "
            "created_at TEXT NOT NULL, start_time TEXT, end_time TEXT, error_message TEXT, message TEXT, "
            "model_saved INTEGER NOT NULL DEFAULT 0)"
        )
        old.execute(
            "INSERT INTO jobs (job_id, status, model_name, env_name, config, total_timesteps, created_at) "
            "VALUES ('old', 'running', 'm', 'CartPole-v1', '{}', 10, '2026-01-01T00:00:00+00:00')"
        )
    db = Database(path)
    assert db.interrupt_unfinished("down") == 1
    record = db.get_job("old")
    assert record is not None and record.checkpoint_timesteps is None and record.current_timesteps == 0
    assert db._read("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
    db.close()


def _tiny_model() -> GRPO:
    return GRPO("MlpPolicy", "CartPole-v1", policy_kwargs={"net_arch": [8]}, device="cpu")


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = Database(tmp_path / "db.sqlite")
    store = ModelStore(tmp_path / "models", db, ModelCache(4, 2**30), "cpu")
    model = _tiny_model()

    def crash_half_way(path: Any, *args: Any, **kwargs: Any) -> None:
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(model, "save", crash_half_way)
    record = ModelRecord(name="atomic", size_bytes=0, created_at=utcnow())
    with pytest.raises(OSError):
        store.save(model, record)
    assert store.names() == [] and [path.name for path in store.models_dir.iterdir()] == [DISK_RESERVE_FILE]
    monkeypatch.undo()
    store.save(model, record)
    assert store.names() == ["atomic"] and db.get_model("atomic") is not None


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/b", ".hidden", "", "x" * 65, "name\x00"])
def test_the_store_builds_no_path_from_a_bad_name(tmp_path: Path, name: str) -> None:
    store = ModelStore(tmp_path / "models", Database(tmp_path / "db.sqlite"), ModelCache(1, 1), "cpu")
    with pytest.raises(InvalidName):
        store.path_for(name)


def test_cache_is_bounded_by_count_and_bytes() -> None:
    model = object()
    cache = ModelCache(max_models=2, max_bytes=100)
    cache.put("a", model, 10)  # type: ignore[arg-type]
    cache.put("b", model, 10)  # type: ignore[arg-type]
    cache.get("a")  # a is now the most recently used
    cache.put("c", model, 10)  # type: ignore[arg-type]
    assert "b" not in cache and "a" in cache and "c" in cache
    cache.put("d", model, 95)  # type: ignore[arg-type]
    assert len(cache) == 1 and "d" in cache  # bytes: only the newest fits
    cache.put("e", model, 500)  # type: ignore[arg-type]
    assert len(cache) == 1 and "e" in cache  # a model larger than the budget is still served


def test_cache_limits_apply_to_served_models(service: TestClient, tmp_path: Path) -> None:
    source = service.app.state.settings.models_dir
    settings = make_settings(tmp_path, cache_max_models=1)
    settings.models_dir.mkdir(parents=True)
    for name in ("cartpole", "pendulum"):
        # Zips copied in by hand are served too, with their spaces read from the zip.
        (settings.models_dir / f"{name}.zip").write_bytes((source / f"{name}.zip").read_bytes())
    with TestClient(create_app(settings)) as client:
        client.post("/inference", json={"model_name": "cartpole", "observation": CARTPOLE_OBS})
        client.post("/inference", json={"model_name": "pendulum", "observation": [1, 0, 0]})
        status = {model["name"]: model["status"] for model in client.get("/models").json()["models"]}
        assert status == {"cartpole": "saved", "pendulum": "loaded"}
        assert client.get("/health").json()["loaded_models"] == 1
        assert client.get("/models/cartpole").json()["observation_space"]["shape"] == [4]
        # No record of its environment: evaluation needs one named.
        assert client.post("/models/cartpole/evaluate", json={"n_episodes": 1}).status_code == 400
        body = {"n_episodes": 1, "env_name": "CartPole-v1"}
        assert client.post("/models/cartpole/evaluate", json=body).json()["env_name"] == "CartPole-v1"
