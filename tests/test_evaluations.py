"""Evaluations kept with the model: each POST /models/{name}/evaluate is stored (episodes, seed, mean, std, when),
listed newest first by GET /models/{name}, survives a restart, and goes when the model goes."""

import sqlite3
from typing import Any

import pytest
from fastapi.testclient import TestClient
from harness import train, wait_for_job

from api import create_app
from settings import Settings
from store import Database


def test_evaluations_are_kept_with_the_model(client: TestClient, settings: Settings) -> None:
    assert wait_for_job(client, train(client, model_name="kept", total_timesteps=256))["status"] == "completed"
    assert client.get("/models/kept").json()["evaluations"] == []
    first = client.post("/models/kept/evaluate", json={"n_episodes": 2, "seed": 7}).json()
    second = client.post("/models/kept/evaluate", json={"n_episodes": 3}).json()
    kept = client.get("/models/kept").json()["evaluations"]
    assert [e["n_episodes"] for e in kept] == [3, 2]  # newest first
    assert kept[1]["seed"] == 7 and kept[0]["seed"] is None
    assert kept[1]["mean_return"] == first["mean_return"] and kept[0]["std_return"] == second["std_return"]
    assert kept[0]["env_name"] == "CartPole-v1" and kept[0]["deterministic"] is True
    assert kept[0]["created_at"] >= kept[1]["created_at"]
    # A failed evaluation keeps nothing.
    assert client.post("/models/kept/evaluate", json={"env_name": "Pendulum-v1"}).status_code == 400
    assert len(client.get("/models/kept").json()["evaluations"]) == 2


def test_kept_evaluations_survive_a_restart_and_go_with_the_model(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        job = train(client, model_name="kept", total_timesteps=512)
        wait_for_job(client, job)
        client.post("/models/kept/evaluate", json={"n_episodes": 1, "seed": 1})
    with TestClient(create_app(settings)) as client:
        assert [e["seed"] for e in client.get("/models/kept").json()["evaluations"]] == [1]
        client.delete("/models/kept")
        wait_for_job(client, train(client, model_name="kept", total_timesteps=512))
        assert client.get("/models/kept").json()["evaluations"] == []


def test_an_evaluation_that_finds_the_disk_full_is_a_507_and_keeps_nothing(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real full disk (a tmpfs) is tests/test_full_disk.py's; here SQLite's answer to one, as it raises it.
    def full(*_: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_for_job(client, train(client, model_name="kept", total_timesteps=256))
        monkeypatch.setattr(Database, "add_evaluation", full)
        refused = client.post("/models/kept/evaluate", json={"n_episodes": 1})
        assert refused.status_code == 507 and "disk is full" in refused.json()["detail"]
        monkeypatch.undo()
        assert client.get("/models/kept").json()["evaluations"] == []
        assert client.post("/models/kept/evaluate", json={"n_episodes": 1}).status_code == 200
