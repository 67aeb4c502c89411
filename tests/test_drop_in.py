"""GRPO as a drop-in for an SB3 user: arguments, loading, policies and spaces as SB3 takes them."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from gymnasium.wrappers import TimeLimit
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import IdentityEnvBox
from stable_baselines3.common.vec_env import DummyVecEnv

from grpo import GRPO, reward_functions
from rewards import REWARD_FUNCTIONS

TINY = dict(n_steps=16, group_size=2, n_epochs=1, batch_size=32)


def test_a_budget_that_cannot_complete_a_group_warns_at_the_start_of_learn():
    """Issue 16, defect 3: Pendulum's episodes last 200 steps, four of them do not fit in 700."""
    model = GRPO("MlpPolicy", "Pendulum-v1", group_size=4, seed=0)
    with pytest.warns(UserWarning, match=r"group_size.*n_envs.*total_timesteps"):
        model.learn(700)
    assert model._n_updates == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", "You are trying to run GRPO on the GPU")  # SB3's, where CUDA is
        GRPO("MlpPolicy", "Pendulum-v1", group_size=2, n_steps=64, n_epochs=1, seed=0).learn(500)


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"group_size": 1}, "group_size"), ({"advantage": "bogus"}, "advantage")]
)
def test_load_checks_its_arguments(tmp_path, kwargs, message):
    """Issue 16, defect 5."""
    GRPO("MlpPolicy", "CartPole-v1", seed=0, **TINY).save(tmp_path / "model")
    with pytest.raises(ValueError, match=message):
        GRPO.load(tmp_path / "model", env=make_vec_env("CartPole-v1"), **kwargs)


def test_a_reward_function_can_be_named_by_its_registry_name():
    """Issue 16, defect 6."""
    model = GRPO("MlpPolicy", "CartPole-v1", reward_function="optimized_cartpole", seed=0, **TINY)
    assert reward_functions(model.reward_function) == [REWARD_FUNCTIONS["optimized_cartpole"]]
    model.learn(64)
    with pytest.raises(ValueError, match=r"'no_such_reward'.*optimized_cartpole"):
        GRPO("MlpPolicy", "CartPole-v1", reward_function="no_such_reward")


@pytest.mark.parametrize("net_arch", [None, [32], {"pi": [32], "vf": [32]}, {"pi": [16, 16]}])
def test_no_value_network_is_built_or_saved(tmp_path, net_arch):
    """Issue 16, defect 7: whatever net_arch says about the critic."""
    model = GRPO("MlpPolicy", "CartPole-v1", policy_kwargs={"net_arch": net_arch}, seed=0, **TINY).learn(64)
    assert not [name for name in model.policy.state_dict() if "value" in name]
    optimized = {id(p) for group in model.policy.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.policy.parameters()}
    model.save(tmp_path / "model")
    loaded = GRPO.load(tmp_path / "model")
    assert not [name for name in loaded.policy.state_dict() if "value" in name]


def test_set_env_then_learn_without_resetting_the_timesteps(tmp_path):
    """Issue 16, defect 8: SB3's test_set_env."""
    model = GRPO("MlpPolicy", DummyVecEnv([lambda: IdentityEnvBox(ep_length=10)]), n_steps=64, seed=0)
    model.learn(64)
    model.set_env(DummyVecEnv([lambda: IdentityEnvBox(ep_length=10)]))
    model.learn(64, reset_num_timesteps=False)
    model.set_env(model.get_env(), force_reset=False)
    model.learn(64, reset_num_timesteps=False)
    model.save(tmp_path / "model")
    model = GRPO.load(tmp_path / "model", env=model.get_env(), force_reset=False)
    model.learn(64, reset_num_timesteps=False)
    assert model.num_timesteps == 4 * 64


class _MatrixActionEnv(gym.Env):
    """SB3's DummyMultidimensionalAction: a Box of shape (2, 2)."""

    observation_space = spaces.Box(-1.0, 1.0, (3,), dtype=np.float32)
    action_space = spaces.Box(-1.0, 1.0, (2, 2), dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        assert action.shape == (2, 2)
        return self.observation_space.sample(), -float(np.abs(action).sum()), False, False, {}


def test_multi_dimensional_box_actions():
    """Issue 16, defect 9."""
    model = GRPO("MlpPolicy", DummyVecEnv([lambda: TimeLimit(_MatrixActionEnv(), 5)]), seed=0, **TINY).learn(64)
    action, _ = model.predict(model.env.reset())
    assert action.shape == (1, 2, 2)


def test_a_model_saved_with_a_value_head_still_loads(tmp_path):
    """Models saved before GRPO dropped its value head (as the service's stored models were) load and act the same;
    the head's weights and their optimizer moments are left behind."""
    old = GRPO("MlpPolicy", "CartPole-v1", seed=0, **TINY)
    old.policy.value_net = th.nn.Linear(64, 1)  # as SB3's ActorCriticPolicy built it, and GRPO once did
    old.policy.optimizer = th.optim.Adam(old.policy.parameters(), lr=3e-4)
    old.learn(200)
    old.save(tmp_path / "old")
    with pytest.warns(UserWarning, match="moments start afresh"):
        loaded = GRPO.load(tmp_path / "old", env=make_vec_env("CartPole-v1"))
    observations = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    np.testing.assert_array_equal(
        loaded.predict(observations, deterministic=True)[0], old.predict(observations, deterministic=True)[0]
    )
    assert not any(name.startswith("value_net.") for name in loaded.policy.state_dict())
    loaded.learn(200)  # and goes on training
