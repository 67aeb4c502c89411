"""How one job trains: its settings reach GRPO, its callback stops a long update, its environments close."""

import multiprocessing
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
import torch as th
from fastapi.testclient import TestClient
from harness import CARTPOLE_OBS, train, wait_for_job

import grpo
import training
from grpo import GRPO
from schemas import TrainRequest
from training import JobCallback, StopTraining


def test_schema_offers_grpos_choices() -> None:
    schema = TrainRequest.model_json_schema()["properties"]
    assert set(schema["advantage"]["anyOf"][0]["enum"]) == set(grpo.ADVANTAGE_MODES)
    assert set(schema["scale_rewards"]["anyOf"][0]["enum"]) == set(grpo.SCALE_REWARDS)
    assert schema["group_size"]["default"] is None  # GRPO's own default, whatever it is


def test_grpo_arguments_reach_the_model(client: TestClient) -> None:
    body = {"group_size": 4, "advantage": "outcome", "scale_rewards": "none", "beta": 0.05, "gamma": 0.95}
    job_id = train(client, model_name="args", total_timesteps=300, **body)
    status = wait_for_job(client, job_id)
    assert status["status"] == "completed", status
    assert "train/kl_ref" in status["metrics"]  # beta > 0 trains against the reference policy
    model = client.app.state.store.load("args")
    assert {name: getattr(model, name) for name in body} == body
    assert client.get("/models/args").json()["hyperparameters"]["group_size"] == 4


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

    monkeypatch.setattr(training, "_new_model", refuse)
    status = wait_for_job(client, train(client, total_timesteps=256, n_envs=2, vec_env="subproc"), timeout=120)
    assert status["status"] == "failed" and "no model today" in status["error_message"]
    assert not multiprocessing.active_children()
