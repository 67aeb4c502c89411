"""Every route and error path of the service, through FastAPI's TestClient: the API document's contract, validation,
inference, models, learning curves and event streams, the dashboard, the API key, limits and CORS."""

import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from harness import CARTPOLE_OBS, TINY, assert_no_trace, make_settings, read_events, train, wait_for_job

import access
import api
import rewards
import routes.training
from api import create_app
from grpo import GRPO
from records import JobState
from routes.dependencies import get_store
from settings import Settings

# root, health, docs


def test_root_lists_the_documented_endpoints(service: TestClient) -> None:
    body = service.get("/").json()
    assert body["message"] == "GRPO API Server"
    assert body["version"] == "1.0.0"
    for name, route in {
        "train": "POST /train",
        "inference": "POST /inference",
        "health": "GET /health",
        "models": "GET /models",
    }.items():
        assert body["endpoints"][name] == route


def test_health(service: TestClient) -> None:
    body = service.get("/health").json()
    assert body["status"] == "healthy"
    assert {"timestamp", "active_jobs", "loaded_models", "queued_jobs"} <= body.keys()
    assert body["active_jobs"] >= 0 and body["loaded_models"] >= 0


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
def test_interactive_docs(service: TestClient, path: str) -> None:
    assert service.get(path).status_code == 200


def test_every_route_declares_its_responses(service: TestClient) -> None:
    schema = service.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            content = operation["responses"]["200"].get("content", {})
            assert content, f"{method.upper()} {path} has no response schema"
    assert {"400", "409", "422"} <= schema["paths"]["/train"]["post"]["responses"].keys()
    assert {"400", "404", "422"} <= schema["paths"]["/inference"]["post"]["responses"].keys()


def test_openapi_documents_the_missing_value(service: TestClient) -> None:
    schema = service.get("/openapi.json").json()
    value = schema["components"]["schemas"]["InferenceResponse"]["properties"]["value"]
    assert "no critic" in value["description"]


def test_openapi_describes_the_training_settings_and_gives_examples_that_work(service: TestClient) -> None:
    # Issue 17, 10: Swagger showed bare names, and its default /inference example was a 422.
    schema = service.get("/openapi.json").json()
    fields = schema["components"]["schemas"]["TrainRequest"]["properties"]
    for name in ("learning_rate", "batch_size", "n_epochs", "gamma", "clip_range", "ent_coef", "seed"):
        assert fields[name].get("description"), name
    for path in ("/train", "/inference"):
        examples = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["examples"]
        assert examples, path
        for example in examples.values():
            if path == "/inference":
                assert ("observation" in example["value"]) != ("observations" in example["value"]), example
                response = service.post(path, json={**example["value"], "model_name": "cartpole"})
            else:  # the example as given but short: it must be accepted
                response = service.post(path, json={**example["value"], "total_timesteps": 512, "overwrite": True})
                service.post(f"/training/{response.json().get('job_id')}/stop")
            assert response.status_code == 200, (path, example, response.text)


def test_health_and_readiness_follow_the_store(client: TestClient, settings: Settings) -> None:
    health = client.get("/health").json()
    assert health["status"] == "healthy" and health["database"] == "ok" and health["model_store"] == "ok"
    assert client.get("/ready").json() == {"ready": True, "database": "ok", "model_store": "ok", "problems": []}

    moved = settings.models_dir.with_name("moved-away")
    settings.models_dir.rename(moved)  # root reads any folder, so make it vanish rather than chmod it
    try:
        response = client.get("/ready")
        assert response.status_code == 503
        body = response.json()
        assert body["ready"] is False and body["model_store"] == "failing" and body["database"] == "ok"
        assert "is not a folder" in body["problems"][0]
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "unhealthy"
    finally:
        moved.rename(settings.models_dir)
    assert client.get("/ready").status_code == 200


def test_readiness_fails_while_the_database_does(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    store = client.app.state.store

    def broken(*_: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store.db, "_read", broken)
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["database"] == "failing" and response.json()["problems"] == ["database: disk I/O error"]


def test_unexpected_errors_are_500_without_a_trace(settings: Settings) -> None:
    app = create_app(settings)

    def broken_store() -> None:
        raise RuntimeError("secret internals")

    app.dependency_overrides[get_store] = broken_store
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/models")
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error"}
    assert "secret" not in response.text


# training requests

DOC_TRAIN_DEFAULTS = {
    "env_name": "CartPole-v1",
    "total_timesteps": 10000,
    "learning_rate": 3e-4,
    "n_steps": 32,
    "batch_size": 64,
    "n_epochs": 10,
    "reward_function_type": "optimized_cartpole",
}


def test_train_defaults_are_the_documents(client: TestClient) -> None:
    response = client.post("/train", json={})
    assert response.status_code == 200
    body = response.json()
    assert body["message"] == "Training started"
    config = body["config"]
    assert {key: config[key] for key in DOC_TRAIN_DEFAULTS} == DOC_TRAIN_DEFAULTS
    assert config["model_name"].startswith("grpo_CartPole-v1_")
    # Stopping keeps the default job from spending the test's time.
    assert client.post(f"/training/{body['job_id']}/stop").status_code == 200


def test_train_without_a_body(client: TestClient) -> None:
    response = client.post("/train")
    assert response.status_code == 200
    client.post(f"/training/{response.json()['job_id']}/stop")


def test_other_environments_default_to_their_own_reward(client: TestClient) -> None:
    # Acrobot's episodes last 500 steps under an untrained policy: two of them make a group.
    job_id = train(client, env_name="Acrobot-v1", total_timesteps=1000, group_size=2)
    status = client.get(f"/training/{job_id}/status").json()
    assert status["config"]["reward_function_type"] == "env"
    assert wait_for_job(client, job_id)["status"] == "completed"


def test_status_reports_progress_and_metrics(service: TestClient) -> None:
    job = next(job for job in service.get("/training/jobs").json()["jobs"] if job["model_name"] == "cartpole")
    status = service.get(f"/training/{job['job_id']}/status").json()
    assert status["status"] == "completed"
    assert status["progress"] == 1.0
    assert status["current_timesteps"] >= status["total_timesteps"] == 1024
    assert status["start_time"] and status["end_time"] and status["error_message"] is None
    assert status["model_saved"] is True
    metrics = status["metrics"]
    for key in ("rollout/ep_rew_mean", "train/policy_gradient_loss", "train/approx_kl", "time/fps"):
        assert key in metrics, key


def test_jobs_list(service: TestClient) -> None:
    jobs = service.get("/training/jobs").json()["jobs"]
    assert {job["model_name"] for job in jobs} >= {"cartpole", "pendulum"}
    assert all({"job_id", "status", "progress"} <= job.keys() for job in jobs)


def test_unknown_job(service: TestClient) -> None:
    assert service.get("/training/nope/status").status_code == 404
    assert service.post("/training/nope/stop").status_code == 404


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"env_name": "CartPol-v1"}, "CartPole-v1"),
        ({"env_name": "NoSuchEnv-v0"}, "Unknown environment"),
        ({"env_name": "os:system"}, "Unknown environment"),
        ({"reward_function_type": "nope"}, "optimized_cartpole"),
        ({"env_name": "Pendulum-v1", "reward_function_type": "optimized_cartpole"}, "[3]"),
        ({"total_timesteps": 200_001}, "maximum"),
    ],
)
def test_bad_training_requests_are_400(service: TestClient, body: dict[str, Any], fragment: str) -> None:
    response = service.post("/train", json=body)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"total_timesteps": 0},
        {"learning_rate": -1},
        {"learning_rate": 0},
        {"n_steps": 0},
        {"batch_size": 1},
        {"n_epochs": 0},
        {"gamma": 1.5},
        {"group_size": 1},
        {"n_envs": 0},
        {"advantage": "sometimes"},
        {"total_timesteps": "many"},
        {"model_name": "../etc/passwd"},
        {"model_name": "a/b"},
        {"model_name": ".hidden"},
        {"model_name": ""},
        {"model_name": "x" * 65},
        {"unknown_field": 1},
    ],
)
def test_malformed_training_requests_are_422(service: TestClient, body: dict[str, Any]) -> None:
    response = service.post("/train", json=body)
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)
    assert_no_trace(response)


@pytest.mark.parametrize("raw", [b'{"learning_rate": NaN}', b'{"learning_rate": Infinity}', b"{not json", b"[1, 2]"])
def test_unparsable_or_non_finite_bodies_are_422(service: TestClient, raw: bytes) -> None:
    response = service.post("/train", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text


def test_existing_model_name_needs_overwrite(service: TestClient) -> None:
    response = service.post("/train", json={"model_name": "cartpole"})
    assert response.status_code == 409
    assert "overwrite" in response.json()["detail"]


# inference


def test_inference_as_in_the_document(service: TestClient) -> None:
    response = service.post("/inference", json={"model_name": "cartpole", "observation": CARTPOLE_OBS})
    assert response.status_code == 200
    body = response.json()
    assert body["action"] in (0, 1)
    assert len(body["action_probs"]) == 2 and abs(sum(body["action_probs"]) - 1) < 1e-5
    assert body["action"] == int(np.argmax(body["action_probs"]))  # deterministic by default
    assert body["value"] is None  # GRPO has no critic


def test_batch_inference(service: TestClient) -> None:
    observations = np.random.default_rng(0).normal(0, 0.05, size=(5, 4)).tolist()
    body = service.post("/inference", json={"model_name": "cartpole", "observations": observations}).json()
    assert len(body["actions"]) == 5 and all(action in (0, 1) for action in body["actions"])
    assert len(body["action_probs"]) == 5
    singles = [
        service.post("/inference", json={"model_name": "cartpole", "observation": obs}).json()["action"]
        for obs in observations
    ]
    assert singles == body["actions"]


def test_inference_matches_predict(service: TestClient) -> None:
    model = service.app.state.store.load("cartpole").model
    action, _ = model.predict(np.array(CARTPOLE_OBS, dtype=np.float32), deterministic=True)
    body = service.post("/inference", json={"model_name": "cartpole", "observation": CARTPOLE_OBS}).json()
    assert body["action"] == int(action)


def test_box_actions_are_lists_of_floats(service: TestClient) -> None:
    body = service.post("/inference", json={"model_name": "pendulum", "observation": [1.0, 0.0, 0.5]}).json()
    assert isinstance(body["action"], list) and len(body["action"]) == 1
    assert -2.0 <= body["action"][0] <= 2.0
    assert body["action_probs"] is None and body["value"] is None
    batch = service.post("/inference", json={"model_name": "pendulum", "observations": [[1, 0, 0.5]] * 3}).json()
    assert len(batch["actions"]) == 3 and all(len(action) == 1 for action in batch["actions"])


def test_stochastic_inference(service: TestClient) -> None:
    body = {"model_name": "cartpole", "observation": CARTPOLE_OBS, "deterministic": False}
    assert service.post("/inference", json=body).json()["action"] in (0, 1)


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"model_name": "cartpole", "observation": [0.1, 0.0, 0.05]}, 400, "[4]"),
        ({"model_name": "cartpole", "observation": [[0.1, 0.0, 0.05, 0.0]]}, 400, "[4]"),
        ({"model_name": "cartpole", "observations": [[0.1, 0.0, 0.05, 0.0], [0.1]]}, 400, "same shape"),
        ({"model_name": "cartpole", "observation": [1e39, 0, 0, 0]}, 400, "finite"),
        ({"model_name": "missing", "observation": CARTPOLE_OBS}, 404, "not found"),
        ({"model_name": "cartpole"}, 422, None),
        ({"model_name": "cartpole", "observation": CARTPOLE_OBS, "observations": [CARTPOLE_OBS]}, 422, None),
        ({"model_name": "cartpole", "observations": []}, 422, None),
        ({"model_name": "cartpole", "observation": ["a", "b", "c", "d"]}, 422, None),
        ({"model_name": "../cartpole", "observation": CARTPOLE_OBS}, 422, None),
    ],
)
def test_bad_inference_requests(service: TestClient, body: dict[str, Any], status: int, fragment: str | None) -> None:
    response = service.post("/inference", json=body)
    assert response.status_code == status, response.text
    if fragment:
        assert fragment in response.json()["detail"]
    assert_no_trace(response)


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_observations_are_rejected(service: TestClient, value: bytes) -> None:
    raw = b'{"model_name": "cartpole", "observation": [0.1, ' + value + b", 0.0, 0.0]}"
    response = service.post("/inference", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text


# models


def test_models_list_says_loaded_or_saved(service: TestClient) -> None:
    service.post("/inference", json={"model_name": "cartpole", "observation": CARTPOLE_OBS})
    models = {model["name"]: model for model in service.get("/models").json()["models"]}
    assert models["cartpole"]["status"] == "loaded"
    assert {"name", "status", "env_name", "size_bytes", "created_at"} <= models["pendulum"].keys()


def test_model_metadata(service: TestClient) -> None:
    info = service.get("/models/pendulum").json()
    assert info["env_name"] == "Pendulum-v1"
    assert info["observation_space"] == {
        "type": "Box",
        "shape": [3],
        "dtype": "float32",
        "low": [-1.0, -1.0, -8.0],
        "high": [1.0, 1.0, 8.0],
    }
    assert info["action_space"]["shape"] == [1] and info["action_space"]["high"] == [2.0]
    assert info["hyperparameters"]["reward_function_type"] == "env" and info["hyperparameters"]["group_size"] == 2
    assert "time/fps" in info["metrics"] and info["timesteps"] >= 400 and info["size_bytes"] > 0
    assert service.get("/models/missing").status_code == 404
    assert service.get("/models/..%2F..%2Fetc").status_code in (404, 422)


def test_download_is_a_loadable_zip(service: TestClient, tmp_path: Path) -> None:
    response = service.get("/models/cartpole/download")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert 'filename="cartpole.zip"' in response.headers["content-disposition"]
    path = tmp_path / "downloaded.zip"
    path.write_bytes(response.content)
    model = GRPO.load(path, device="cpu")
    assert model.observation_space.shape == (4,)
    assert service.get("/models/missing/download").status_code == 404


def test_evaluate(service: TestClient) -> None:
    body = service.post("/models/cartpole/evaluate", json={"n_episodes": 2, "seed": 1}).json()
    assert body["env_name"] == "CartPole-v1" and body["n_episodes"] == 2 and len(body["returns"]) == 2
    assert body["mean_return"] == pytest.approx(np.mean(body["returns"]))
    assert body["mean_return"] > 0 and body["std_return"] >= 0
    assert service.post("/models/cartpole/evaluate").status_code == 200  # the body is optional


@pytest.mark.parametrize(
    ("name", "body", "status"),
    [
        ("cartpole", {"n_episodes": 0}, 422),
        ("cartpole", {"env_name": "Acrobot-v1"}, 400),
        ("cartpole", {"env_name": "Nope-v0"}, 400),
        ("missing", {}, 404),
    ],
)
def test_bad_evaluate_requests(service: TestClient, name: str, body: dict[str, Any], status: int) -> None:
    assert service.post(f"/models/{name}/evaluate", json=body).status_code == status


def test_delete(client: TestClient) -> None:
    wait_for_job(client, train(client, model_name="doomed", total_timesteps=300))
    client.post("/inference", json={"model_name": "doomed", "observation": CARTPOLE_OBS})
    response = client.delete("/models/doomed")
    assert response.status_code == 200 and response.json()["model_name"] == "doomed"
    assert client.get("/models").json()["models"] == []
    assert client.post("/inference", json={"model_name": "doomed", "observation": CARTPOLE_OBS}).status_code == 404
    assert client.delete("/models/doomed").status_code == 404
    assert client.delete("/models/bad%2Fname").status_code in (404, 422)


def test_a_damaged_model_file_is_a_clear_500(client: TestClient) -> None:
    models_dir = client.app.state.settings.models_dir
    (models_dir / "damaged.zip").write_bytes(b"not a zip at all")
    response = client.post("/inference", json={"model_name": "damaged", "observation": CARTPOLE_OBS})
    assert response.status_code == 500
    assert "cannot be loaded" in response.json()["detail"]
    assert_no_trace(response)
    assert client.get("/models/damaged").status_code == 500
    assert client.delete("/models/damaged").status_code == 200  # and it can be cleaned up


def test_acrobot_model_serves_without_its_environment(client: TestClient) -> None:
    wait_for_job(client, train(client, env_name="Acrobot-v1", model_name="acro", total_timesteps=1000, group_size=2))
    body = client.post("/inference", json={"model_name": "acro", "observation": [0.0] * 6}).json()
    assert body["action"] in (0, 1, 2) and len(body["action_probs"]) == 3


# reward functions


def test_reward_functions(service: TestClient) -> None:
    listed = {entry["name"]: entry for entry in service.get("/reward-functions").json()["reward_functions"]}
    assert listed.keys() >= {"env", "optimized_cartpole", "simple_cartpole"}
    assert listed["env"]["observation_shape"] is None
    assert listed["optimized_cartpole"]["observation_shape"] == [4]
    assert listed["simple_cartpole"]["description"]


def test_reward_registry_is_importable_from_api() -> None:
    assert api.REWARD_FUNCTIONS is rewards.REWARD_FUNCTIONS


# metric history and events


def test_metric_history_has_a_point_per_rollout(service: TestClient) -> None:
    job = next(job for job in service.get("/training/jobs").json()["jobs"] if job["model_name"] == "cartpole")
    status = service.get(f"/training/{job['job_id']}/status").json()
    body = service.get(f"/training/{job['job_id']}/metrics").json()
    assert body["job_id"] == job["job_id"]
    points = body["points"]
    steps = [point["timesteps"] for point in points]
    # A rollout ends on complete groups (several episodes each), and a last point comes where training ended.
    assert len(points) >= 3 and steps == sorted(set(steps))
    assert steps[-1] == status["current_timesteps"]
    assert [point["wall_time_s"] for point in points] == sorted(point["wall_time_s"] for point in points)
    last = points[-1]
    for key in ("episode_return_mean", "episode_length_mean", "policy_gradient_loss", "entropy_loss", "loss"):
        assert last[key] is not None, key
    assert last["approx_kl"] >= 0 and 0 <= last["clip_fraction"] <= 1 and last["fps"] > 0
    assert 0 <= last["frac_zero_std_groups"] <= 1
    assert last["episode_return_mean"] == pytest.approx(status["metrics"]["rollout/ep_rew_mean"])

    since = steps[len(steps) // 2]
    later = service.get(f"/training/{job['job_id']}/metrics", params={"since": since}).json()["points"]
    assert later == points[len(steps) // 2 + 1 :]


def test_metric_history_errors(service: TestClient) -> None:
    assert service.get("/training/nope/metrics").status_code == 404
    job_id = service.get("/training/jobs").json()["jobs"][0]["job_id"]
    assert service.get(f"/training/{job_id}/metrics", params={"since": -5}).status_code == 422


def test_huge_timesteps_are_422_not_a_crash(service: TestClient) -> None:
    # Past SQLite's INTEGER: a 500 (OverflowError) from /metrics and a traceback in the middle of the stream.
    job_id = service.get("/training/jobs").json()["jobs"][0]["job_id"]
    huge = "99999999999999999999999999"
    for path in ["metrics", "events"]:
        response = service.get(f"/training/{job_id}/{path}", params={"since": huge})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "since"], path
        assert service.get(f"/training/{job_id}/{path}", params={"since": 2**63 - 1}).status_code == 200, path
    response = service.get(f"/training/{job_id}/events", headers={"Last-Event-ID": huge})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["header", "last-event-id"]
    # An id the server never sends is ignored as before, even one that str.isdigit() takes for a number.
    for odd in ["abc", "-1", "\N{SUPERSCRIPT TWO}".encode("latin-1")]:
        assert read_events(service, f"/training/{job_id}/events", headers={"Last-Event-ID": odd})[-1][0] == "end"


def test_metric_history_grows_while_the_job_runs(client: TestClient) -> None:
    job_id = train(client, model_name="growing", total_timesteps=150_000)
    wait_for_job(client, job_id, until=lambda s: s["current_timesteps"] > 200)
    deadline = time.monotonic() + 30
    while not client.get(f"/training/{job_id}/metrics").json()["points"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    client.post(f"/training/{job_id}/stop")
    points = client.get(f"/training/{job_id}/metrics").json()["points"]
    status = client.get(f"/training/{job_id}/status").json()
    assert status["status"] == "stopped" and points[-1]["timesteps"] == status["current_timesteps"]


def test_events_of_a_finished_job_replay_its_history_then_end(service: TestClient) -> None:
    job_id = next(job for job in service.get("/training/jobs").json()["jobs"] if job["model_name"] == "cartpole")[
        "job_id"
    ]
    points = service.get(f"/training/{job_id}/metrics").json()["points"]
    events = read_events(service, f"/training/{job_id}/events")
    assert [data for name, data, _ in events if name == "metrics"] == points
    assert [int(event_id) for name, _, event_id in events if name == "metrics"] == [p["timesteps"] for p in points]
    (name, end, _) = events[-1]
    assert name == "end" and end["status"] == "completed" and end["progress"] == 1.0
    assert end == service.get(f"/training/{job_id}/status").json()

    # A client that reconnects, or asks for what came after a timestep, gets only the newer points.
    middle = points[len(points) // 2]["timesteps"]
    resumed = read_events(service, f"/training/{job_id}/events", headers={"Last-Event-ID": str(middle)})
    assert [data for name, data, _ in resumed if name == "metrics"] == [p for p in points if p["timesteps"] > middle]
    since = read_events(service, f"/training/{job_id}/events", params={"since": middle})
    assert since == resumed


def test_events_follow_a_running_job_to_its_end(client: TestClient) -> None:
    job_id = train(client, model_name="watched", total_timesteps=2_000)
    events = read_events(client, f"/training/{job_id}/events")
    names = [name for name, _, _ in events]
    assert names[-1] == "end" and names.count("end") == 1
    progress = [data for name, data, _ in events if name == "progress"]
    assert progress[-1]["current_timesteps"] >= 2_000 and progress[-1]["progress"] == 1.0
    assert [p["current_timesteps"] for p in progress] == sorted(p["current_timesteps"] for p in progress)
    streamed = [data for name, data, _ in events if name == "metrics"]
    assert streamed == client.get(f"/training/{job_id}/metrics").json()["points"]
    assert events[-1][1]["status"] == "completed"


def test_event_watchers_read_memory_not_the_database(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = client.app.state.runner
    job_id = train(client, model_name="watched_live", total_timesteps=150_000)
    # Past the first rollout (CartPole's preset steps 8 environments), so that the job has points to read.
    wait_for_job(client, job_id, until=lambda s: s["current_timesteps"] > 3_000)

    def no_database(*args: Any) -> Any:
        raise AssertionError("a watcher of a running job read the database")

    monkeypatch.setattr(runner.db, "list_metrics", no_database)
    monkeypatch.setattr(runner.db, "get_job", no_database)
    record, points = runner.snapshot(job_id)
    assert record.status is JobState.RUNNING and points
    monkeypatch.undo()
    client.post(f"/training/{job_id}/stop")
    assert read_events(client, f"/training/{job_id}/events")[-1][1]["status"] == "stopped"


def test_a_stream_closes_after_a_while_and_resumes_where_it_was(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No stream stays open for the whole of a long job (proxies, clients); a reconnect goes on where it was.
    monkeypatch.setattr(routes.training, "EVENT_STREAM_MAX_S", 0.5)
    job_id = train(client, model_name="resumed", total_timesteps=150_000)
    wait_for_job(client, job_id, until=lambda s: s["current_timesteps"] > 500)
    first = read_events(client, f"/training/{job_id}/events")
    assert "end" not in [name for name, _, _ in first]
    last_id = [event_id for name, _, event_id in first if name == "metrics"][-1]
    time.sleep(0.5)
    client.post(f"/training/{job_id}/stop")
    rest = read_events(client, f"/training/{job_id}/events", headers={"Last-Event-ID": last_id})
    assert rest[-1][0] == "end" and rest[-1][1]["status"] == "stopped"
    streamed = [data for name, data, _ in first + rest if name == "metrics"]
    assert streamed == client.get(f"/training/{job_id}/metrics").json()["points"]


def test_events_of_an_unknown_job_are_404(service: TestClient) -> None:
    assert service.get("/training/nope/events").status_code == 404


# dashboard


def test_dashboard_is_served_with_local_assets_only(service: TestClient) -> None:
    page = service.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/static/vendor/uplot/uPlot.iife.min.js" in assets and "/static/dashboard.js" in assets
    for asset in assets:
        assert asset.startswith("/static/"), f"{asset} would need the internet"
        assert service.get(asset).status_code == 200, asset
    assert service.get("/static/vendor/uplot/LICENSE").status_code == 200
    assert service.get("/").json()["endpoints"]["dashboard"] == "GET /dashboard"  # "/" stays the API's JSON


# auth


def test_a_key_guards_every_endpoint_but_health_docs_and_the_dashboard(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, api_key="s3cret"))) as client:
        for path in ["/health", "/docs", "/redoc", "/openapi.json", "/dashboard", "/static/dashboard.js"]:
            assert client.get(path).status_code == 200, path
        schema = client.get("/openapi.json").json()
        guarded = [
            (method, path)
            for path, operations in schema["paths"].items()
            for method, operation in operations.items()
            if path not in ("/health", "/ready")
        ]
        assert guarded
        for method, path in guarded:
            operation = schema["paths"][path][method]
            assert operation["security"] == [{"APIKeyHeader": []}], path
            assert "401" in operation["responses"], path
            url = path.replace("{job_id}", "nope").replace("{model_name}", "nope")
            wrong_keys = ["wrong", "s3cret-and-more", "é".encode("latin-1")]
            for headers in [{}, *({"X-API-Key": key} for key in wrong_keys)]:
                response = client.request(method, url, headers=headers)
                assert response.status_code == 401, (method, path, headers)
                assert response.json() == {"detail": "Missing or wrong X-API-Key"}
        assert schema["components"]["securitySchemes"]["APIKeyHeader"] == {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": "One of the server's API keys, when it has any",
        }
        authorized = {"X-API-Key": "s3cret"}
        assert client.get("/models", headers=authorized).json() == {"models": []}
        assert client.get("/training/nope/status", headers=authorized).status_code == 404
        job = client.post("/train", json={**TINY, "total_timesteps": 256}, headers=authorized)
        assert job.status_code == 200
        # The dashboard's event stream goes through fetch with the header too.
        with client.stream("GET", f"/training/{job.json()['job_id']}/events", headers=authorized) as events:
            assert events.status_code == 200


def test_the_key_is_compared_in_constant_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = access.hmac.compare_digest
    monkeypatch.setattr(access.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    with TestClient(create_app(make_settings(tmp_path, api_key="s3cret"))) as client:
        assert client.get("/models", headers={"X-API-Key": "guess"}).status_code == 401
    assert calls == [(b"guess", b"s3cret")]


def test_without_a_key_the_server_is_open_and_warns_off_loopback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for host, warned in [("127.0.0.1", False), ("localhost", False), ("::1", False), ("0.0.0.0", True)]:
        caplog.clear()
        with TestClient(create_app(make_settings(tmp_path / host, host=host))) as client:
            assert client.get("/models").status_code == 200
        assert ("no API key set" in caplog.text) is warned, host
    caplog.clear()
    with TestClient(create_app(make_settings(tmp_path / "keyed", host="0.0.0.0", api_key="k"))):
        pass
    assert "no API key set" not in caplog.text


# limits


def test_inference_batches_are_bounded(tmp_path: Path, service: TestClient) -> None:
    # The shared service keeps the default limit; a batch beyond a small limit is refused before any model work.
    with TestClient(create_app(make_settings(tmp_path, max_inference_batch=3))) as client:
        response = client.post("/inference", json={"model_name": "cartpole", "observations": [CARTPOLE_OBS] * 4})
        assert response.status_code == 413
        assert (
            response.json()["detail"] == "4 observations in one request; this server takes at most 3 "
            "(send several requests)"
        )
    assert service.post("/inference", json={"model_name": "cartpole", "observations": [CARTPOLE_OBS] * 3}).json()


def test_request_bodies_are_bounded(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, max_request_bytes=2048))) as client:
        big = json.dumps({"model_name": "x", "observations": [CARTPOLE_OBS] * 200}).encode()
        for path in ["/inference", "/train", "/models/x/evaluate"]:
            response = client.post(path, content=big, headers={"Content-Type": "application/json"})
            assert response.status_code == 413 and "limit of 2048 bytes" in response.json()["detail"], path

        def chunks() -> Any:  # no Content-Length: the server counts what arrives
            for _ in range(10):
                yield big[:1000]

        response = client.post("/inference", content=chunks(), headers={"Content-Type": "application/json"})
        assert response.status_code == 413 and "limit of 2048 bytes" in response.json()["detail"]
        small = client.post("/inference", json={"model_name": "x", "observation": CARTPOLE_OBS})
        assert small.status_code == 404


def test_cors_is_off_unless_origins_are_set(tmp_path: Path) -> None:
    preflight = {"Origin": "https://example.org", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(make_settings(tmp_path / "closed"))) as client:
        assert "access-control-allow-origin" not in client.get("/health", headers=preflight).headers
        assert client.options("/train", headers=preflight).status_code == 405
    allowed = make_settings(tmp_path / "open", cors_origins=["https://example.org"])
    with TestClient(create_app(allowed)) as client:
        response = client.options(
            "/train", headers={**preflight, "Access-Control-Request-Headers": "X-API-Key, Content-Type"}
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "https://example.org"
        other = client.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
