"""Lists that grow: GET /training/jobs and GET /models page (limit, cursor or offset) and filter (status, env,
model name, study), while the unparameterised call keeps the API document's shape. 20,000 job records are written
straight into the database, as a service that ran studies for months would hold."""

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from harness import make_settings, train, wait_for_job

from api import create_app
from settings import Settings
from store import Database
from training import TrainingConfig

N_JOBS = 20_000
STATES = ["completed", "failed", "stopped", "interrupted"]


def fill_jobs(db_path: Path, n: int) -> list[str]:
    """``n`` finished job records, inserted directly; returns their ids in submission order."""
    Database(db_path).close()  # the schema
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    ids, rows = [], []
    for index in range(n):
        job_id = uuid.UUID(int=index + 1).hex
        env = "CartPole-v1" if index % 2 == 0 else "Pendulum-v1"
        name = f"model_{index:05d}"
        config = TrainingConfig(env_name=env, model_name=name, reward_function_type="env", total_timesteps=10_000)
        created = (start + timedelta(seconds=index)).isoformat()
        metrics = {"rollout/ep_rew_mean": 100.0 + index % 400, "time/fps": 1500.0}
        values = (config.model_dump_json(), 10_000, 10_000, json.dumps(metrics), created)
        rows.append((job_id, STATES[index % 4], name, env, *values))
        ids.append(job_id)
    with sqlite3.connect(db_path) as conn:
        conn.executemany(
            "INSERT INTO jobs (job_id, status, model_name, env_name, config, total_timesteps, current_timesteps, "
            "metrics, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.executemany(
            "INSERT INTO study_trials VALUES (?, ?, ?)", [("study1", number, ids[number * 7]) for number in range(30)]
        )
    return ids


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, list[str]]]:
    settings = make_settings(tmp_path_factory.mktemp("crowded"))
    ids = fill_jobs(settings.db_path, N_JOBS)
    with TestClient(create_app(settings)) as client:
        yield client, ids


def test_the_unparameterised_list_keeps_its_shape(crowded: tuple[TestClient, list[str]]) -> None:
    client, ids = crowded
    started = time.perf_counter()
    response = client.get("/training/jobs")
    elapsed = time.perf_counter() - started
    body = response.json()
    assert list(body) == ["jobs"] and [job["job_id"] for job in body["jobs"]] == ids
    print(f"all {N_JOBS} jobs: {len(response.content) / 1e6:.1f} MB in {elapsed:.2f} s")


def test_pages_by_cursor_cover_every_job_once(crowded: tuple[TestClient, list[str]]) -> None:
    client, ids = crowded
    started = time.perf_counter()
    first = client.get("/training/jobs", params={"limit": 50})
    elapsed = time.perf_counter() - started
    body = first.json()
    assert body["total"] == N_JOBS and len(body["jobs"]) == 50 and body["next_cursor"]
    print(f"a page of 50 of {N_JOBS} jobs: {len(first.content) / 1e3:.1f} kB in {elapsed * 1000:.0f} ms")
    assert elapsed < 0.5
    seen, cursor = [], None
    while True:
        params = {"limit": 1000, "status": "completed"}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/training/jobs", params=params).json()
        seen += [job["job_id"] for job in page["jobs"]]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert seen == ids[::4] and page["total"] == N_JOBS // 4


def test_newest_first_offset_and_filters(crowded: tuple[TestClient, list[str]]) -> None:
    client, ids = crowded
    newest = client.get("/training/jobs", params={"limit": 3, "order": "newest"}).json()["jobs"]
    assert [job["job_id"] for job in newest] == ids[::-1][:3]
    offset = client.get("/training/jobs", params={"limit": 2, "offset": 10}).json()["jobs"]
    assert [job["job_id"] for job in offset] == ids[10:12]
    both = client.get("/training/jobs", params={"status": ["failed", "stopped"], "env": "Pendulum-v1"}).json()
    assert {job["status"] for job in both["jobs"]} == {"failed"}  # odd indices: Pendulum, failed or interrupted
    assert both["total"] == N_JOBS // 4 and "next_cursor" not in both
    named = client.get("/training/jobs", params={"model": "model_0001"}).json()
    assert sorted(job["model_name"] for job in named["jobs"]) == [f"model_0001{i}" for i in range(10)]
    # '_' is a letter here, not SQL's wildcard
    assert client.get("/training/jobs", params={"model": "l_0"}).json()["total"] == 10_000
    assert client.get("/training/jobs", params={"model": "%"}).json()["total"] == 0
    study = client.get("/training/jobs", params={"study": "study1"}).json()
    assert [job["job_id"] for job in study["jobs"]] == [ids[n * 7] for n in range(30)]
    last = client.get("/training/jobs", params={"limit": 5, "offset": N_JOBS - 5}).json()
    assert len(last["jobs"]) == 5 and "next_cursor" not in last


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 100_000}, {"offset": -1}, {"status": "sleeping"}, {"order": "random"}, {"colour": "red"}],
)
def test_bad_list_parameters_are_422(crowded: tuple[TestClient, list[str]], params: dict) -> None:
    client, _ = crowded
    assert client.get("/training/jobs", params=params).status_code == 422


def test_a_bad_cursor_is_a_400(crowded: tuple[TestClient, list[str]]) -> None:
    client, _ = crowded
    response = client.get("/training/jobs", params={"limit": 5, "cursor": "nonsense"})
    assert response.status_code == 400 and "cursor" in response.json()["detail"]


def test_models_page_and_filter(client: TestClient, settings: Settings) -> None:
    for name in ("alpha_1", "alpha_2", "beta_1"):
        wait_for_job(client, train(client, model_name=name, total_timesteps=512))
    assert list(client.get("/models").json()) == ["models"]
    first = client.get("/models", params={"limit": 2}).json()
    assert [m["name"] for m in first["models"]] == ["alpha_1", "alpha_2"]
    assert first["total"] == 3 and first["next_offset"] == 2
    second = client.get("/models", params={"limit": 2, "offset": 2}).json()
    assert [m["name"] for m in second["models"]] == ["beta_1"] and "next_offset" not in second
    assert [m["name"] for m in client.get("/models", params={"name": "alpha"}).json()["models"]] == [
        "alpha_1",
        "alpha_2",
    ]
    assert client.get("/models", params={"env": "Pendulum-v1"}).json() == {"models": [], "total": 0}
    assert client.get("/models", params={"limit": 0}).status_code == 422
