"""Every endpoint and error path of the service, through FastAPI's TestClient."""

import json
import multiprocessing
import os
import re
import sqlite3
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch as th
from conftest import TINY, make_settings, wait_for_job
from fastapi.testclient import TestClient

import api
import grpo
import jobs
import rewards
import run_api
from api import create_app, get_store
from grpo import GRPO
from jobs import JobCallback, StopTraining, ThreadExecutor
from schemas import TrainRequest
from settings import Settings
from store import Database, InvalidName, JobRecord, JobState, ModelCache, ModelRecord, ModelStore, utcnow

CARTPOLE_OBS = [0.1, 0.0, 0.05, 0.0]
DOC_TRAIN_DEFAULTS = {
    "env_name": "CartPole-v1",
    "total_timesteps": 10000,
    "learning_rate": 3e-4,
    "n_steps": 32,
    "batch_size": 64,
    "n_epochs": 10,
    "reward_function_type": "optimized_cartpole",
}


def train(client: TestClient, **body: Any) -> str:
    response = client.post("/train", json={**TINY, **body})
    assert response.status_code == 200, response.text
    return response.json()["job_id"]


def assert_no_trace(response: Any) -> None:
    assert "Traceback" not in response.text and 'File "' not in response.text


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


# training


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
    job_id = train(client, env_name="Acrobot-v1", total_timesteps=300)
    status = client.get(f"/training/{job_id}/status").json()
    assert status["config"]["reward_function_type"] == "env"
    assert wait_for_job(client, job_id)["status"] == "completed"


def test_grpo_arguments_reach_the_model(client: TestClient) -> None:
    body = {"group_size": 4, "advantage": "outcome", "scale_rewards": "none", "beta": 0.05, "gamma": 0.95}
    job_id = train(client, model_name="args", total_timesteps=300, **body)
    status = wait_for_job(client, job_id)
    assert status["status"] == "completed", status
    assert "train/kl_ref" in status["metrics"]  # beta > 0 trains against the reference policy
    model = client.app.state.store.load("args")
    assert {name: getattr(model, name) for name in body} == body
    assert client.get("/models/args").json()["hyperparameters"]["group_size"] == 4


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


def test_live_progress_and_stop_keep_the_model(client: TestClient) -> None:
    job_id = train(client, model_name="stopped", total_timesteps=150_000, net_arch=[64, 64], n_epochs=10)
    running = wait_for_job(client, job_id, until=lambda s: s["status"] == "running" and s["current_timesteps"] > 300)
    assert 0 < running["progress"] < 1

    started = time.monotonic()
    response = client.post(f"/training/{job_id}/stop")
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    body = response.json()
    assert elapsed < 2.0, f"stop took {elapsed:.2f}s"
    assert body["job_id"] == job_id
    assert body["message"].startswith("Training job stopped")
    assert body["status"] == "stopped" and body["model_saved"] is True
    assert 0 < body["current_timesteps"] < 150_000

    status = client.get(f"/training/{job_id}/status").json()
    assert status["status"] == "stopped" and status["end_time"]
    assert client.post("/inference", json={"model_name": "stopped", "observation": CARTPOLE_OBS}).status_code == 200
    # A finished job cannot be stopped again.
    assert client.post(f"/training/{job_id}/stop").status_code == 409


def test_stop_cuts_a_long_update_short() -> None:
    # 10,000 epochs per update would take minutes: the stop must land between two gradient steps.
    job = SimpleNamespace(stop_requested=threading.Event(), timesteps=0, metrics={})
    model = GRPO("MlpPolicy", "CartPole-v1", n_steps=16, n_epochs=10_000, policy_kwargs={"net_arch": [8]}, device="cpu")

    class StopDuringTheUpdate(JobCallback):
        def _on_rollout_end(self) -> None:
            super()._on_rollout_end()
            threading.Timer(0.2, job.stop_requested.set).start()

    callback = StopDuringTheUpdate(job, report=lambda job: None)  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(StopTraining):
        model.learn(100_000, callback=callback)
    callback.detach()
    assert time.monotonic() - started < 5.0
    assert model.policy.optimizer.state  # it did update before the stop, and the weights are whole
    assert all(th.isfinite(p).all() for p in model.policy.parameters())


def test_queue_runs_jobs_in_order_and_stops_queued_ones(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, max_concurrent_jobs=1))) as client:
        first = train(client, model_name="q1", total_timesteps=3000)  # still running when q2 and q3 arrive
        second_response = client.post("/train", json={**TINY, "model_name": "q2", "total_timesteps": 300})
        third = train(client, model_name="q3", total_timesteps=300)
        second = second_response.json()["job_id"]
        assert second_response.json()["message"] == "Training queued (position 1)"
        assert client.get("/health").json()["queued_jobs"] >= 1

        stopped = client.post(f"/training/{third}/stop").json()
        assert stopped["status"] == "stopped" and stopped["model_saved"] is False

        statuses = [wait_for_job(client, job_id) for job_id in (first, second)]
        assert [status["status"] for status in statuses] == ["completed", "completed"]
        assert statuses[0]["end_time"] <= statuses[1]["start_time"]
        third_status = client.get(f"/training/{third}/status").json()
        assert third_status["status"] == "stopped" and third_status["start_time"] is None
        assert "q3" not in {model["name"] for model in client.get("/models").json()["models"]}


def test_a_failing_job_reports_its_error(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(state: th.Tensor, action: th.Tensor, next_state: th.Tensor) -> th.Tensor:
        raise ValueError("this reward function is broken")

    # The document's extension point: add a reward function to api.REWARD_FUNCTIONS.
    monkeypatch.setitem(api.REWARD_FUNCTIONS, "broken", broken)
    job_id = train(client, reward_function_type="broken", total_timesteps=500)
    status = wait_for_job(client, job_id)
    assert status["status"] == "failed"
    assert "this reward function is broken" in status["error_message"]
    assert status["model_saved"] is False


def test_a_subproc_job_trains_on_several_processes_serves_and_closes_them(client: TestClient) -> None:
    job_id = train(client, model_name="subproc", total_timesteps=512, n_envs=2, vec_env="subproc", seed=0)
    status = wait_for_job(client, job_id, timeout=120)
    assert status["status"] == "completed", status
    assert status["config"]["vec_env"] == "subproc" and status["config"]["n_envs"] == 2
    assert client.post("/inference", json={"model_name": "subproc", "observation": CARTPOLE_OBS}).status_code == 200
    assert client.get("/models/subproc").json()["hyperparameters"]["vec_env"] == "subproc"
    # The job closed its environments: none of their worker processes is left.
    assert not multiprocessing.active_children()


def test_a_subproc_job_whose_model_cannot_be_built_closes_its_processes(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> GRPO:
        assert len(multiprocessing.active_children()) == 2  # the workers are up when the model is made
        raise ValueError("no model today")

    monkeypatch.setattr(jobs, "_new_model", refuse)
    status = wait_for_job(client, train(client, total_timesteps=256, n_envs=2, vec_env="subproc"), timeout=120)
    assert status["status"] == "failed" and "no model today" in status["error_message"]
    assert not multiprocessing.active_children()


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


def test_overwrite_replaces_the_model(client: TestClient) -> None:
    first = wait_for_job(client, train(client, model_name="m", total_timesteps=300))
    assert first["status"] == "completed"
    client.post("/inference", json={"model_name": "m", "observation": CARTPOLE_OBS})  # now cached
    job_id = train(client, model_name="m", total_timesteps=400, overwrite=True)
    assert wait_for_job(client, job_id)["status"] == "completed"
    info = client.get("/models/m").json()
    assert info["job_id"] == job_id and info["timesteps"] >= 400
    # The old model, cached before, is not served any more.
    assert info["status"] == "saved"


def test_a_name_being_trained_is_busy(client: TestClient) -> None:
    job_id = train(client, model_name="busy", total_timesteps=150_000)
    assert client.post("/train", json={"model_name": "busy", "overwrite": True}).status_code == 409
    assert client.delete("/models/busy").status_code == 409
    client.post(f"/training/{job_id}/stop")
    assert client.delete("/models/busy").status_code == 200


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
    model = service.app.state.store.load("cartpole")
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
    assert info["hyperparameters"]["reward_function_type"] == "env"
    assert info["hyperparameters"]["net_arch"] == [16]
    # Left to GRPO's defaults in the request, read back from the model.
    assert info["hyperparameters"]["group_size"] == GRPO("MlpPolicy", "Pendulum-v1", device="cpu").group_size
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
    wait_for_job(client, train(client, env_name="Acrobot-v1", model_name="acro", total_timesteps=300))
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


def test_schema_offers_grpos_choices() -> None:
    schema = TrainRequest.model_json_schema()["properties"]
    assert set(schema["advantage"]["anyOf"][0]["enum"]) == set(grpo.ADVANTAGE_MODES)
    assert set(schema["scale_rewards"]["anyOf"][0]["enum"]) == set(grpo.SCALE_REWARDS)
    assert schema["group_size"]["default"] is None  # GRPO's own default, whatever it is


# metric history


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


def read_events(client: TestClient, path: str, **kwargs: Any) -> list[tuple[str, dict[str, Any], str | None]]:
    """Every (event, data, id) of a Server-Sent Events stream, until the server closes it."""
    events, fields = [], {}
    with client.stream("GET", path, **kwargs) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith(":"):
                continue
            if not line:
                if "event" in fields:  # not the stream's opening 'retry:' advice
                    events.append((fields["event"], json.loads(fields["data"]), fields.get("id")))
                fields = {}
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
    return events


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
    wait_for_job(client, job_id, until=lambda s: s["current_timesteps"] > 500)

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
    # uvicorn waits for open streams before shutting down: none may stay open for the whole of a long job.
    monkeypatch.setattr(api, "EVENT_STREAM_MAX_S", 0.5)
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


def test_metric_history_and_tensorboard_logs_survive_a_restart(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        job_id = train(client, model_name="curves", total_timesteps=300)
        assert wait_for_job(client, job_id)["status"] == "completed"
        before = client.get(f"/training/{job_id}/metrics").json()
    assert before["points"]
    with TestClient(create_app(settings)) as client:
        assert client.get(f"/training/{job_id}/metrics").json() == before
    # SB3's own TensorBoard output, one run folder per job.
    assert list((settings.jobs_dir / job_id).glob("GRPO_1/events.out.tfevents.*"))
    with sqlite3.connect(settings.db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM metrics WHERE job_id = ?", (job_id,)).fetchone()[0] == len(
            before["points"]
        )


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


# persistence


def test_history_and_models_survive_a_restart(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        job_id = train(client, model_name="kept", total_timesteps=300)
        assert wait_for_job(client, job_id)["status"] == "completed"
    with TestClient(create_app(settings)) as client:
        status = client.get(f"/training/{job_id}/status").json()
        assert status["status"] == "completed" and status["model_saved"] is True
        assert [model["name"] for model in client.get("/models").json()["models"]] == ["kept"]
        assert client.get("/models/kept").json()["status"] == "saved"  # on disk, not loaded yet
        assert client.post("/inference", json={"model_name": "kept", "observation": CARTPOLE_OBS}).status_code == 200


def test_shutdown_interrupts_running_jobs(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        job_id = train(client, model_name="cut", total_timesteps=150_000)
        wait_for_job(client, job_id, until=lambda s: s["status"] == "running")
    with TestClient(create_app(settings)) as client:
        status = client.get(f"/training/{job_id}/status").json()
        assert status["status"] == "interrupted" and status["end_time"]


def test_jobs_left_running_by_a_crash_become_interrupted(settings: Settings) -> None:
    db = Database(settings.db_path)
    for job_id, state in (("crashed-running", JobState.RUNNING), ("crashed-queued", JobState.QUEUED)):
        db.add_job(
            JobRecord(
                job_id=job_id,
                status=state,
                model_name="x",
                env_name="CartPole-v1",
                config=TrainRequest().model_dump() | {"model_name": "x"},
                total_timesteps=10,
                created_at=utcnow(),
            )
        )
    db.close()
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    half_written = settings.models_dir / ".x.0123.tmp.zip"
    half_written.write_bytes(b"PK\x03\x04 half a zip")
    with TestClient(create_app(settings)) as client:
        for job_id in ("crashed-running", "crashed-queued"):
            assert client.get(f"/training/{job_id}/status").json()["status"] == "interrupted"
        assert client.get("/models").json()["models"] == []
    assert not half_written.exists()


def test_database_is_sqlite_with_the_records(service: TestClient) -> None:
    path = service.app.state.settings.db_path
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] >= 2
        assert conn.execute("SELECT name FROM models WHERE name = 'cartpole'").fetchone() == ("cartpole",)


# store


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
    assert store.names() == [] and list(store.models_dir.iterdir()) == []
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


# errors and configuration


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


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GRPO_MODELS_DIR", str(tmp_path / "m"))
    monkeypatch.setenv("GRPO_MAX_CONCURRENT_JOBS", "3")
    monkeypatch.setenv("GRPO_CACHE_MAX_BYTES", "1000")
    settings = Settings()
    assert settings.models_dir == tmp_path / "m" and settings.db_path == tmp_path / "m" / "grpo.db"
    assert settings.max_concurrent_jobs == 3 and settings.cache_max_bytes == 1000


def test_run_api_flags_map_onto_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    captured: dict[str, Any] = {}

    def fake_run(app: Any, **kwargs: Any) -> None:
        captured.update(kwargs, app=app)

    monkeypatch.setattr(run_api.uvicorn, "run", fake_run)
    monkeypatch.setattr(run_api, "create_app", lambda settings: captured.setdefault("settings", settings))
    run_api.main(["--port", "8123", "--models-dir", "/tmp/m", "--db", "/tmp/j.db", "--max-concurrent-jobs", "4"])
    settings = captured["settings"]
    assert captured["host"] == "127.0.0.1" and captured["port"] == 8123 and captured["log_level"] == "info"
    assert settings.models_dir == Path("/tmp/m") and settings.db_path == Path("/tmp/j.db")
    assert settings.max_concurrent_jobs == 4


def test_openapi_documents_the_missing_value(service: TestClient) -> None:
    schema = service.get("/openapi.json").json()
    value = schema["components"]["schemas"]["InferenceResponse"]["properties"]["value"]
    assert "no critic" in value["description"]


def test_training_threads_yield_the_cpu_to_the_server():
    seen: list[int] = []
    base = os.getpriority(os.PRIO_PROCESS, 0)
    executor = ThreadExecutor(1, niceness=5)
    executor.submit(lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
    executor.shutdown()
    assert seen == [min(19, base + 5)]
    assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the server's own threads keep their priority


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
            "description": "The server's GRPO_API_KEY, when it has one",
        }
        authorized = {"X-API-Key": "s3cret"}
        assert client.get("/models", headers=authorized).json() == {"models": []}
        assert client.get("/training/nope/status", headers=authorized).status_code == 404
        job = client.post("/train", json={**TINY, "total_timesteps": 64}, headers=authorized)
        assert job.status_code == 200
        # The dashboard's event stream goes through fetch with the header too.
        with client.stream("GET", f"/training/{job.json()['job_id']}/events", headers=authorized) as events:
            assert events.status_code == 200


def test_the_key_is_compared_in_constant_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = api.hmac.compare_digest
    monkeypatch.setattr(api.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
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


def test_api_key_from_the_environment_and_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPO_API_KEY", "from-env")
    assert Settings().api_key.get_secret_value() == "from-env"
    assert "from-env" not in repr(Settings())
    captured: dict[str, Any] = {}
    monkeypatch.setattr(run_api.uvicorn, "run", lambda app, **kwargs: None)
    monkeypatch.setattr(run_api, "create_app", lambda settings: captured.setdefault("settings", settings))
    run_api.main(["--api-key", "from-flag"])
    assert captured["settings"].api_key.get_secret_value() == "from-flag"


def test_a_blank_api_key_means_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPO_API_KEY", " ")
    assert Settings().api_key is None


# limits


def test_a_full_queue_is_429_with_retry_after(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, max_concurrent_jobs=1, max_queued_jobs=1))) as client:
        running = train(client, model_name="l1", total_timesteps=100_000)
        queued = train(client, model_name="l2", total_timesteps=100_000)
        refused = client.post("/train", json={**TINY, "model_name": "l3"})
        assert refused.status_code == 429 and refused.headers["Retry-After"].isdigit()
        assert "1 training slots are busy and 1 job(s) are queued" in refused.json()["detail"]
        # The refused request left no trace; a freed place in the queue takes the next job.
        assert len(client.get("/training/jobs").json()["jobs"]) == 2
        client.post(f"/training/{queued}/stop")
        assert client.post("/train", json={**TINY, "model_name": "l3", "total_timesteps": 64}).status_code == 200
        client.post(f"/training/{running}/stop")


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


def test_a_job_past_its_wall_clock_timeout_fails_and_keeps_its_model(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, job_timeout_s=0.5))) as client:
        job_id = train(client, model_name="slow", total_timesteps=200_000)
        status = wait_for_job(client, job_id, timeout=30)
        assert status["status"] == "failed" and status["model_saved"] is True
        assert status["error_message"].startswith("Timed out: the job trained for longer than this server's ")
        assert "job_timeout_s of 0.5 s" in status["error_message"]
        assert 0 < status["current_timesteps"] < 200_000
        assert client.post("/inference", json={"model_name": "slow", "observation": CARTPOLE_OBS}).status_code == 200


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


def test_limit_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPO_MAX_QUEUED_JOBS", "0")
    monkeypatch.setenv("GRPO_JOB_TIMEOUT_S", "60")
    monkeypatch.setenv("GRPO_MAX_INFERENCE_BATCH", "8")
    monkeypatch.setenv("GRPO_MAX_REQUEST_BYTES", "4096")
    monkeypatch.setenv("GRPO_CORS_ORIGINS", '["https://a.example"]')
    settings = Settings()
    assert (settings.max_queued_jobs, settings.job_timeout_s, settings.max_inference_batch) == (0, 60, 8)
    assert settings.max_request_bytes == 4096 and settings.cors_origins == ["https://a.example"]


# health and readiness


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


# checkpoints and resume


def _points(client: TestClient, job_id: str) -> list[int]:
    return [point["timesteps"] for point in client.get(f"/training/{job_id}/metrics").json()["points"]]


def test_jobs_checkpoint_and_a_stopped_job_resumes_to_its_total(client: TestClient, settings: Settings) -> None:
    job_id = train(client, model_name="resumed", total_timesteps=3072, checkpoint_interval=256, seed=1)
    assert client.get(f"/training/{job_id}/status").json()["config"]["checkpoint_interval"] == 256
    checkpointed = wait_for_job(client, job_id, until=lambda s: (s["checkpoint_timesteps"] or 0) >= 512)
    checkpoint = settings.jobs_dir / job_id / "checkpoint.zip"
    assert checkpoint.is_file() and GRPO.load(checkpoint).num_timesteps >= 256
    assert not list(checkpoint.parent.glob(".*.tmp.zip"))
    assert client.post(f"/training/{job_id}/resume").status_code == 409  # still running
    stopped = client.post(f"/training/{job_id}/stop").json()
    assert stopped["status"] == "stopped"
    status = client.get(f"/training/{job_id}/status").json()
    # Stopping checkpoints where it stopped: a resume loses no step.
    assert status["checkpoint_timesteps"] == stopped["current_timesteps"] >= checkpointed["checkpoint_timesteps"]
    points_before = _points(client, job_id)

    response = client.post(f"/training/{job_id}/resume")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["job_id"] == job_id and body["status"] in ("queued", "running")
    assert body["current_timesteps"] == stopped["current_timesteps"] and body["total_timesteps"] == 3072
    assert body["message"] == f"Training resumed from the checkpoint at {stopped['current_timesteps']} timesteps"
    done = wait_for_job(client, job_id)
    assert done["status"] == "completed" and done["current_timesteps"] >= 3072 and done["model_saved"]
    assert done["config"] == status["config"]
    points = _points(client, job_id)
    assert points[: len(points_before)] == points_before and points == sorted(set(points))
    assert client.get("/models/resumed").json()["timesteps"] == done["current_timesteps"]
    prediction = client.post("/inference", json={"model_name": "resumed", "observation": CARTPOLE_OBS})
    assert prediction.status_code == 200 and prediction.json()["action"] in (0, 1)
    assert not checkpoint.exists()  # a completed job's model is whole; its checkpoint is gone
    assert len(client.get("/training/jobs").json()["jobs"]) == 1  # the same job, not a new one

    again = client.post(f"/training/{job_id}/resume")
    assert again.status_code == 409 and "only interrupted, stopped and failed jobs resume" in again.json()["detail"]
    assert client.post("/training/nope/resume").status_code == 404


def test_a_job_cut_by_shutdown_resumes_after_the_restart(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        job_id = train(client, model_name="cut", total_timesteps=2048, checkpoint_interval=100_000)
        wait_for_job(client, job_id, until=lambda s: s["current_timesteps"] >= 256)
    with TestClient(create_app(settings)) as client:
        status = client.get(f"/training/{job_id}/status").json()
        assert status["status"] == "interrupted" and status["checkpoint_timesteps"] >= 256
        assert status["current_timesteps"] == status["checkpoint_timesteps"]
        assert client.post(f"/training/{job_id}/resume").json()["current_timesteps"] == status["current_timesteps"]
        done = wait_for_job(client, job_id)
        assert done["status"] == "completed" and done["current_timesteps"] >= 2048
        assert client.post("/inference", json={"model_name": "cut", "observation": CARTPOLE_OBS}).status_code == 200


def test_a_crashed_job_shows_its_checkpoint_and_one_without_resumes_from_the_start(settings: Settings) -> None:
    db = Database(settings.db_path)
    config = TrainRequest(**TINY, total_timesteps=128).model_dump() | {"model_name": "fresh"}
    db.add_job(
        JobRecord(
            job_id="crashed",
            status=JobState.RUNNING,
            model_name="fresh",
            env_name="CartPole-v1",
            config=config,
            total_timesteps=128,
            created_at=utcnow(),
            current_timesteps=96,  # progress written after the last checkpoint: lost with the process
            checkpoint_timesteps=64,
        )
    )
    db.close()
    with TestClient(create_app(settings)) as client:
        status = client.get("/training/crashed/status").json()
        assert status["status"] == "interrupted" and status["current_timesteps"] == 64
        assert "resume goes on from its last checkpoint" in status["message"]
        # The record names a checkpoint that is not on disk: the job starts over rather than fail.
        response = client.post("/training/crashed/resume").json()
        assert response["message"] == "Training resumed from the start" and response["current_timesteps"] == 0
        assert wait_for_job(client, "crashed")["status"] == "completed"


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
