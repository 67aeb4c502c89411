"""On a machine with a GPU: training, reward functions, branching, save/load, inference and the service run on CUDA.

Skipped where CUDA is absent (CI has none); run them where it is: ``python -m pytest tests/test_cuda.py``.
"""

from pathlib import Path

import numpy as np
import pytest
import torch as th
from fastapi.testclient import TestClient
from harness import TINY, make_settings, train, wait_for_job

import artifacts
import presets
from api import create_app
from export import DeterministicPolicy, export_onnx
from grpo import GRPO
from rewards import optimized_cartpole

pytestmark = pytest.mark.skipif(not th.cuda.is_available(), reason="no CUDA device on this machine")


def on_cuda(model: GRPO) -> bool:
    return all(parameter.device.type == "cuda" for parameter in model.policy.parameters())


def test_episode_groups_with_a_reward_function_train_on_cuda(tmp_path: Path) -> None:
    seen = []

    def reward(state: th.Tensor, action: th.Tensor, next_state: th.Tensor) -> th.Tensor:
        seen.append(next_state.device.type)
        return optimized_cartpole(state, action, next_state)

    def on_the_cpu(state: th.Tensor, action: th.Tensor, next_state: th.Tensor) -> th.Tensor:
        return th.zeros(len(state))  # written without a device: copied over, not refused

    functions = [reward, on_the_cpu]
    model = GRPO("MlpPolicy", "CartPole-v1", n_steps=32, group_size=4, reward_function=functions, seed=0, device="cuda")
    model.learn(2_000)
    assert on_cuda(model) and model._n_updates > 0 and set(seen) == {"cuda"}
    model.save(tmp_path / "model.zip")
    loaded = GRPO.load(tmp_path / "model.zip", device="cuda")
    observation = np.zeros((5, 4), dtype=np.float32)
    np.testing.assert_array_equal(
        loaded.predict(observation, deterministic=True)[0], model.predict(observation, deterministic=True)[0]
    )


def test_branching_and_box_actions_on_cuda() -> None:
    branching = GRPO("MlpPolicy", "CartPole-v1", group_mode="state", lookahead=2, n_steps=16, seed=0, device="cuda")
    branching.learn(256)
    assert on_cuda(branching) and branching.num_branch_steps > 0 and branching._n_updates > 0
    normalised = presets.make_model("Pendulum-v1", seed=0, device="cuda", n_envs=1, group_size=2, n_steps=64)
    normalised.learn(800)
    assert on_cuda(normalised) and normalised._n_updates > 0
    # the inference route's module on the GPU (Box bounds beside the layers), and an ONNX file from a GPU model
    observations = np.random.default_rng(0).uniform(-1, 1, size=(8, 3)).astype(np.float32)
    expected, _ = normalised.predict(observations, deterministic=True)
    actions, _ = DeterministicPolicy(normalised.policy).predict(observations)
    np.testing.assert_allclose(actions, expected, atol=1e-5)
    assert export_onnx(normalised, normalizer=normalised.get_env())


def test_the_service_trains_and_serves_on_cuda(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, device="cuda"))) as client:
        job_id = train(client, model_name="gpu", total_timesteps=2_000, **{**TINY, "normalize": True})
        assert wait_for_job(client, job_id, timeout=300)["status"] == "completed"
        loaded = client.app.state.store.load("gpu")
        assert on_cuda(loaded.model)
        body = client.post("/inference", json={"model_name": "gpu", "observation": [0.1, 0.0, 0.05, 0.0]}).json()
        assert body["action"] in (0, 1) and len(body["action_probs"]) == 2
        agent = artifacts.load_trained(tmp_path / "models" / "gpu.zip", device="cuda")
        action, _ = agent.predict(np.array([[0.1, 0.0, 0.05, 0.0]], dtype=np.float32), deterministic=True)
        assert int(action[0]) == body["action"]
