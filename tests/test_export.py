"""The deterministic policy module and its ONNX file give what ``predict(deterministic=True)`` gives."""

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.envs import (
    IdentityEnv,
    IdentityEnvBox,
    IdentityEnvMultiBinary,
    SimpleMultiObsEnv,
)
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from export import DeterministicPolicy, ExportUnsupported, export_onnx
from grpo import GRPO

ort = pytest.importorskip("onnxruntime")

N_OBSERVATIONS = 1_000
ENVS: dict[str, Callable[[], gym.Env]] = {
    "discrete": lambda: IdentityEnv(5),
    "box": lambda: IdentityEnvBox(low=-2.0, high=3.0, eps=0.5),
    "multidiscrete": lambda: IdentityEnv(space=gym.spaces.MultiDiscrete([2, 4, 3])),
    "multibinary": lambda: IdentityEnvMultiBinary(4),
    "cartpole": lambda: gym.make("CartPole-v1"),
    "pendulum": lambda: gym.make("Pendulum-v1"),
}


def make_model(env_name: str, **kwargs: Any) -> GRPO:
    env = DummyVecEnv([ENVS[env_name]])
    kwargs = {"n_steps": 16, "batch_size": 16, "seed": 0, "policy_kwargs": {"net_arch": [32, 32]}, **kwargs}
    model = GRPO("MlpPolicy", env, **kwargs)
    # Random weights leave every logit near zero; a little training spreads them as a real model's are.
    return model.learn(64)


def observations(model: GRPO, seed: int = 0) -> np.ndarray:
    space = model.observation_space
    space.seed(seed)
    if isinstance(space, gym.spaces.Box):
        # Bounded where the space is: unbounded Box spaces would give huge, unrealistic values.
        rng = np.random.default_rng(seed)
        low, high = np.maximum(space.low, -5.0), np.minimum(space.high, 5.0)
        return rng.uniform(low, high, size=(N_OBSERVATIONS, *space.shape)).astype(np.float32)
    return np.stack([space.sample() for _ in range(N_OBSERVATIONS)]).astype(np.float32)


def run_onnx(data: bytes, batch: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {"observation": batch.astype(np.float32)})


def assert_same_actions(model: GRPO, got: np.ndarray, expected: np.ndarray) -> None:
    if isinstance(model.action_space, gym.spaces.Box):
        assert got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    else:
        assert got.dtype == np.int64 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("env_name", list(ENVS))
def test_onnx_actions_equal_predict(env_name: str) -> None:
    model = make_model(env_name)
    batch = observations(model)
    expected, _ = model.predict(batch, deterministic=True)
    outputs = run_onnx(export_onnx(model), batch)
    assert_same_actions(model, outputs[0], expected)
    if isinstance(model.action_space, gym.spaces.Discrete):
        with th.no_grad():
            distribution = model.policy.get_distribution(model.policy.obs_to_tensor(batch)[0])
        np.testing.assert_allclose(outputs[1], distribution.distribution.probs.cpu().numpy(), rtol=0, atol=1e-6)
    else:
        assert len(outputs) == 1


@pytest.mark.parametrize("env_name", list(ENVS))
def test_the_module_equals_predict(env_name: str) -> None:
    """The module the inference route runs: same actions as predict, one forward pass."""
    model = make_model(env_name)
    batch = observations(model, seed=1).astype(model.observation_space.dtype)
    expected, _ = model.predict(batch, deterministic=True)
    actions, probabilities = DeterministicPolicy(model.policy).predict(batch)
    assert_same_actions(model, actions, expected)
    assert (probabilities is not None) == isinstance(model.action_space, gym.spaces.Discrete)


def test_squashed_gsde_actions_are_unscaled_like_predict() -> None:
    model = make_model("box", use_sde=True, policy_kwargs={"net_arch": [32], "squash_output": True})
    assert model.policy.squash_output
    batch = observations(model)
    expected, _ = model.predict(batch, deterministic=True)
    assert_same_actions(model, run_onnx(export_onnx(model), batch)[0], expected)


def test_observation_normalisation_is_baked_in(tmp_path) -> None:
    env = VecNormalize(DummyVecEnv([ENVS["pendulum"]]), norm_reward=False, clip_obs=2.0)
    model = GRPO("MlpPolicy", env, n_steps=16, batch_size=16, seed=0).learn(256)
    assert env.obs_rms.count > 100  # statistics that really differ from mean 0, variance 1
    batch = observations(model)
    expected, _ = model.predict(env.normalize_obs(batch), deterministic=True)
    path = tmp_path / "pendulum.onnx"
    data = export_onnx(model, normalizer=env, path=path)
    assert path.read_bytes() == data
    assert_same_actions(model, run_onnx(data, batch)[0], expected)
    # and without the normaliser, the file expects observations normalised already
    assert_same_actions(model, run_onnx(export_onnx(model), env.normalize_obs(batch))[0], expected)


def test_the_bounds_and_statistics_follow_the_policys_device() -> None:
    """A model on a GPU is served there: the module's buffers must sit beside the layers it borrows (the meta
    device stands in for a GPU here; tests/test_cuda.py serves a normalised model on a real one)."""
    env = VecNormalize(DummyVecEnv([ENVS["pendulum"]]), norm_reward=False)
    policy = GRPO("MlpPolicy", env, n_steps=16, batch_size=16, seed=0).policy.to("meta")
    module = DeterministicPolicy(policy, normalizer=env)
    assert {buffer.device.type for buffer in module.buffers()} == {"meta"}
    assert module.device.type == "meta"


def test_any_batch_size_and_a_valid_graph() -> None:
    onnx = pytest.importorskip("onnx")
    model = make_model("cartpole")
    data = export_onnx(model)
    onnx.checker.check_model(onnx.load_from_string(data))
    for size in (1, 7):
        batch = observations(model)[:size]
        action, probabilities = run_onnx(data, batch)
        assert action.shape == (size,) and probabilities.shape == (size, 2)


def test_export_leaves_the_served_model_alone() -> None:
    model = make_model("cartpole")
    before, device = [parameter.clone() for parameter in model.policy.parameters()], model.policy.device
    export_onnx(model)  # through a copy on the CPU
    assert all(th.equal(a, b) for a, b in zip(before, model.policy.parameters(), strict=True))
    assert model.policy.device == device and isinstance(model.policy.action_net, th.nn.Linear)


def test_unsupported_spaces_say_so() -> None:
    model = GRPO("MultiInputPolicy", DummyVecEnv([SimpleMultiObsEnv]), n_steps=16, batch_size=16)
    with pytest.raises(ExportUnsupported, match="Dict observation spaces are not supported"):
        export_onnx(model)
