"""Optuna studies as jobs, over HTTP: a small study end to end (each trial a job, reported for pruning, scored by
evaluation, the best model saved, its settings as a preset entry), a stop, a restart that interrupts a running
study which then resumes to the end, and the 4xx of bad input."""

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from harness import train, wait_for_job

from api import create_app
from errors import InvalidTrainingRequest
from settings import Settings

# Tiny trials: the tests check the plumbing, not what Optuna finds.
FIXED = {"net_arch": [16], "n_epochs": 2, "n_envs": 1, "n_steps": 32, "batch_size": 64, "reward_function_type": "env"}
SPACE: dict[str, Any] = {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "gamma": {"type": "categorical", "choices": [0.9, 0.99]},
    "net_arch": None,
    "group_size": None,
    "clip_range": None,
    "ent_coef": None,
}


def study_body(**overrides: Any) -> dict[str, Any]:
    return {
        "n_trials": 3,
        "total_timesteps": 384,
        "fixed": FIXED,
        "search_space": SPACE,
        "pruner_startup_trials": 1,
        "report_interval": 64,
        "n_eval_episodes": 2,
        "seed": 0,
        **overrides,
    }


def wait_for_study(client: TestClient, study_id: str, until: Any, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        study = client.get(f"/studies/{study_id}").json()
        if until(study):
            return study
        assert time.monotonic() < deadline, f"study still {study['status']}: {study['trials']}"
        time.sleep(0.2)


def test_a_small_study_end_to_end(client: TestClient) -> None:
    answer = client.post("/studies", json=study_body(model_name="best_of_study"))
    assert answer.status_code == 200, answer.text
    created = answer.json()
    study_id = created["study_id"]
    assert set(created["search_space"]) == {"learning_rate", "gamma"}  # fixed settings and nulls are not searched
    study = wait_for_study(client, study_id, lambda s: s["status"] != "running")
    assert study["status"] == "completed", study
    trials = study["trials_list"]
    assert study["trials"]["complete"] + study["trials"]["pruned"] == 3 and study["trials"]["fail"] == 0
    for trial in trials:
        assert set(trial["params"]) == {"learning_rate", "gamma"} and trial["job_id"]
        assert trial["intermediate_values"], "no return was reported for pruning"
        job = client.get(f"/training/{trial['job_id']}/status").json()
        assert job["config"]["learning_rate"] == trial["params"]["learning_rate"]
        # A pruned trial's job is stopped, unless it finished in the moment between the pruner's word and the stop.
        assert job["status"] in (("completed",) if trial["state"] == "complete" else ("stopped", "completed"))
    complete = [t for t in trials if t["state"] == "complete"]
    best = max(complete, key=lambda t: t["value"])
    assert study["best_trial"] == best["number"] and study["best_value"] == best["value"]
    # The best model is saved under the asked name, with the kept evaluation that scored the trial.
    assert study["best_model_name"] == "best_of_study"
    model = client.get("/models/best_of_study").json()
    assert model["hyperparameters"]["learning_rate"] == best["params"]["learning_rate"]
    assert client.get(f"/models/{best['model_name']}").json()["evaluations"][0]["mean_return"] == best["value"]
    preset = study["best_preset_yaml"]
    assert preset.startswith("CartPole-v1:\n") and "n_timesteps: !!float 384" in preset
    assert "reward_function: 'env'" in preset and 'policy_kwargs: "dict(net_arch=[16])"' in preset
    # The trials' jobs and models are found by the lists' study filter.
    jobs = client.get("/training/jobs", params={"study": study_id}).json()
    assert [job["job_id"] for job in jobs["jobs"]] == [t["job_id"] for t in trials]
    assert client.get("/models", params={"study": study_id}).json()["total"] >= len(complete)
    listed = client.get("/studies").json()["studies"]
    assert [s["study_id"] for s in listed] == [study_id] and listed[0]["best_value"] == best["value"]
    assert client.post(f"/studies/{study_id}/stop").status_code == 409
    assert client.post(f"/studies/{study_id}/resume").status_code == 409  # nothing left to do


def test_a_study_on_the_ray_executor(local_ray: None, settings: Settings) -> None:
    """The trials go through the runner, so they run wherever jobs run: here, as Ray actors, two at once."""
    with TestClient(create_app(settings.model_copy(update={"executor": "ray"}))) as client:
        study_id = client.post("/studies", json=study_body(n_trials=2, parallel_trials=2)).json()["study_id"]
        study = wait_for_study(client, study_id, lambda s: s["status"] != "running", timeout=300)
        assert study["status"] == "completed", study
        assert study["trials"]["complete"] + study["trials"]["pruned"] == 2
        assert client.get(f"/models/{study['best_model_name']}").status_code == 200


def test_stop_a_running_study(client: TestClient) -> None:
    body = study_body(n_trials=20, total_timesteps=200_000, parallel_trials=2, pruner="none")
    study_id = client.post("/studies", json=body).json()["study_id"]
    running = wait_for_study(client, study_id, lambda s: any(t["job_id"] for t in s["trials_list"]))
    job_id = next(t["job_id"] for t in running["trials_list"] if t["job_id"])
    answer = client.post(f"/studies/{study_id}/stop")
    assert answer.status_code == 200 and answer.json()["status"] == "stopped"
    study = client.get(f"/studies/{study_id}").json()
    assert study["status"] == "stopped" and study["trials"]["running"] == 0
    assert {t["error"] for t in study["trials_list"]} == {"stopped"}
    deadline = time.monotonic() + 30
    while client.get(f"/training/{job_id}/status").json()["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, "the trial's job did not stop"
        time.sleep(0.2)


def test_a_restart_interrupts_a_running_study_which_then_resumes(settings: Settings) -> None:
    body = study_body(n_trials=2, total_timesteps=100_000)
    with TestClient(create_app(settings)) as client:
        study_id = client.post("/studies", json=body).json()["study_id"]
        wait_for_study(client, study_id, lambda s: any(t["job_id"] for t in s["trials_list"]))
    with TestClient(create_app(settings)) as client:
        study = client.get(f"/studies/{study_id}").json()
        assert study["status"] == "interrupted", study
        assert study["trials"]["fail"] >= 1 and study["trials"]["running"] == 0
        assert {t["error"] for t in study["trials_list"]} == {"interrupted"}
        job = client.get(f"/training/{study['trials_list'][0]['job_id']}/status").json()
        assert job["status"] == "interrupted"
        # Shorter trials from here on are not possible (the request is the study's), so stop the long ones soon.
        assert client.post(f"/studies/{study_id}/resume").json()["status"] == "running"
        assert client.post(f"/studies/{study_id}/resume").status_code == 409
        resumed = wait_for_study(
            client,
            study_id,
            lambda s: (
                s["trials"]["running"] > 0 and any(t["job_id"] and t["state"] == "running" for t in s["trials_list"])
            ),
        )
        assert len(resumed["trials_list"]) > len(study["trials_list"])
        assert client.post(f"/studies/{study_id}/stop").json()["status"] == "stopped"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"env_name": "CartPol-v1"}, 400, "CartPole-v1"),
        ({"search_space": {"colour": {"type": "categorical", "choices": [1]}}}, 400, "cannot be searched"),
        ({"search_space": {"learning_rate": {"type": "float", "low": 0.1, "high": 5}}}, 400, "learning_rate"),
        ({"search_space": {"learning_rate": {"type": "float", "low": 0.1, "high": 0.01}}}, 400, "low < high"),
        ({"search_space": {"n_epochs": {"type": "int", "low": 0, "high": 3}}}, 400, "n_epochs"),
        ({"search_space": {"gamma": {"type": "categorical"}}}, 400, "choices"),
        ({"fixed": {"model_name": "x"}}, 400, "fixed cannot set"),
        ({"fixed": {"n_envs": 0}}, 400, "n_envs"),
        ({"fixed": {"reward_function_type": "nope"}}, 400, "GET /reward-functions"),
        ({"env_name": "Pendulum-v1", "fixed": {"reward_function_type": "optimized_cartpole"}}, 400, "Pendulum"),
        ({"n_trials": 0}, 422, None),
        ({"sampler": "grid"}, 422, None),
        ({"pruner": "hyperband"}, 422, None),
        ({"colour": "red"}, 422, None),
    ],
)
def test_bad_study_requests(client: TestClient, body: dict[str, Any], status: int, words: str | None) -> None:
    response = client.post("/studies", json=body)
    assert response.status_code == status, response.text
    if words:
        assert words in response.json()["detail"]
    assert client.get("/studies").json() == {"studies": []}


def test_a_study_whose_trials_all_fail_ends_failed(client: TestClient) -> None:
    def refuse(request: Any) -> None:
        raise InvalidTrainingRequest("no jobs today")

    client.app.state.runner.submit = refuse
    study_id = client.post("/studies", json=study_body(n_trials=50)).json()["study_id"]
    study = wait_for_study(client, study_id, lambda s: s["status"] != "running", timeout=60)
    assert study["status"] == "failed" and "in a row failed" in study["error"]
    assert study["trials"]["fail"] == 3 and {t["error"] for t in study["trials_list"]} == {"no jobs today"}


def test_the_best_models_name_must_be_free(client: TestClient) -> None:
    wait_for_job(client, train(client, model_name="taken", total_timesteps=512))
    response = client.post("/studies", json=study_body(model_name="taken"))
    assert response.status_code == 409 and "taken" in response.json()["detail"]


def test_unknown_studies(client: TestClient) -> None:
    assert client.get("/studies/0123456789ab").status_code == 404
    assert client.post("/studies/0123456789ab/stop").status_code == 404
    assert client.get("/studies/not-an-id").status_code == 422
