"""A model and its VecNormalize statistics travel as one zip, and act the same once loaded back."""

import io
from pathlib import Path

import numpy as np
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

import artifacts
from grpo import GRPO


def normalised_model() -> GRPO:
    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0), gamma=0.9)
    model = GRPO("MlpPolicy", env, n_steps=64, group_size=2, batch_size=64, n_epochs=1, seed=0, device="cpu")
    return model.learn(800)


def test_a_normalised_model_acts_the_same_after_a_round_trip(tmp_path: Path) -> None:
    model = normalised_model()
    path = tmp_path / "model.zip"
    artifacts.save_trained(model, path)
    agent = artifacts.load_trained(path, device="cpu")

    observations = np.random.default_rng(0).uniform(-8, 8, size=(100, 3)).astype(np.float32)
    expected, _ = model.predict(model.get_env().normalize_obs(observations), deterministic=True)
    actions, _ = agent.predict(observations, deterministic=True)
    np.testing.assert_allclose(actions, expected, rtol=0, atol=1e-6)
    # Acting never moves the statistics, and rewards come back as the env gives them.
    assert not agent.normalizer.training and not agent.normalizer.norm_reward
    np.testing.assert_array_equal(agent.normalizer.obs_rms.mean, model.get_env().obs_rms.mean)


def test_plain_sb3_loading_still_works_and_a_model_without_statistics_has_none(tmp_path: Path) -> None:
    path = tmp_path / "model.zip"
    artifacts.save_trained(normalised_model(), path)
    assert isinstance(GRPO.load(path, device="cpu"), GRPO)

    plain = GRPO("MlpPolicy", "CartPole-v1", n_steps=32, group_size=2, seed=0, device="cpu")
    buffer = io.BytesIO()
    artifacts.save_trained(plain, buffer)
    agent = artifacts.load_trained(io.BytesIO(buffer.getvalue()), device="cpu")
    assert agent.normalizer is None
    observation = np.zeros((1, 4), dtype=np.float32)
    assert agent.predict(observation, deterministic=True)[0] == plain.predict(observation, deterministic=True)[0]
    venv = make_vec_env("CartPole-v1", n_envs=1)
    assert agent.wrap(venv, training=True) is venv


def test_training_goes_on_from_the_saved_statistics(tmp_path: Path) -> None:
    model = normalised_model()
    path = tmp_path / "model.zip"
    artifacts.save_trained(model, path)
    agent = artifacts.load_trained(path, device="cpu")
    env = agent.wrap(make_vec_env("Pendulum-v1", n_envs=2, seed=1), training=True)
    assert isinstance(env, VecNormalize) and env.training and env.gamma == 0.9
    count = env.obs_rms.count
    assert count == model.get_env().obs_rms.count
    agent.model.set_env(env)
    agent.model.learn(400, reset_num_timesteps=False)
    assert env.obs_rms.count > count
