"""The environment as GRPO treats it: group starts, the user's env outside learn, what reward functions see."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, StopTrainingOnMaxEpisodes
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import FakeImageEnv
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from grpo import GRPO
from rewards import CARTPOLE_ANGLE_LIMIT


class _FirstObservations(BaseCallback):
    """Records the released batch's first observation of every episode, with its group."""

    def __init__(self):
        super().__init__()
        self.starts: list[tuple[int, np.ndarray]] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        buffer = self.model.rollout_buffer
        if buffer.size == 0:
            return
        first = np.r_[True, buffer.episodes[1:] != buffer.episodes[:-1]]
        offset = len({g for g, _ in self.starts})
        for index in np.flatnonzero(first):
            group = buffer.episode_groups[buffer.episodes[index]]
            self.starts.append((offset + int(group), buffer.observations[index].copy()))

    def groups(self) -> dict[int, list[np.ndarray]]:
        by_group: dict[int, list[np.ndarray]] = {}
        for group, obs in self.starts:
            by_group.setdefault(group, []).append(obs)
        return by_group

    def mixed_groups(self) -> int:
        return sum(any(not np.array_equal(obs, m[0]) for obs in m[1:]) for m in self.groups().values())


@pytest.mark.parametrize("n_envs", [1, 3, 8])
def test_members_of_a_group_start_from_the_same_state(n_envs):
    env = make_vec_env("CartPole-v1", n_envs=n_envs, seed=1)
    recorder = _FirstObservations()
    GRPO("MlpPolicy", env, seed=0, group_size=4, n_steps=32, n_epochs=1).learn(1500, callback=recorder)
    by_group = recorder.groups()
    assert len(by_group) >= 5
    assert all(len(members) == 4 for members in by_group.values())
    assert recorder.mixed_groups() == 0
    distinct_starts = {tuple(members[0]) for members in by_group.values()}
    assert len(distinct_starts) == len(by_group)


# ------------------------------------------------------------------------------- the user's env outside learn --


def test_after_learn_the_training_env_obeys_the_user():
    """Issue 16, defect 1: no group seed is left pending, and the user's seed and resets are obeyed."""
    env = make_vec_env("CartPole-v1", n_envs=4, seed=0)
    GRPO("MlpPolicy", env, n_steps=32, group_size=4, n_epochs=1, seed=0).learn(600)
    starts = np.concatenate([env.reset() for _ in range(3)])
    assert len(np.unique(starts, axis=0)) == len(starts), "resets replay group starts"
    episode_returns, _ = evaluate_policy(GRPO("MlpPolicy", env, seed=0), env, 8, return_episode_rewards=True)
    assert len(set(episode_returns)) > 2
    env.seed(123)
    fresh = make_vec_env("CartPole-v1", n_envs=4)
    fresh.seed(123)
    np.testing.assert_array_equal(env.reset(), fresh.reset())


def test_groups_stay_pure_when_the_user_uses_the_env_between_learn_calls():
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = GRPO("MlpPolicy", env, n_steps=16, group_size=4, n_epochs=1, seed=0)
    recorder = _FirstObservations()
    for _ in range(4):
        model.learn(300, reset_num_timesteps=False, callback=recorder)
        evaluate_policy(model, env, n_eval_episodes=3)
        env.seed(7)
    assert len(recorder.groups()) >= 4
    assert recorder.mixed_groups() == 0


def test_a_callback_stopping_mid_rollout_keeps_the_groups_pure():
    """Issue 16, defect 2: the step a callback stops on is still recorded, with the slot's next episode."""
    model = GRPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), n_steps=16, group_size=4, seed=0)
    recorder = _FirstObservations()
    for _ in range(30):
        model.learn(10_000, reset_num_timesteps=False, callback=CallbackList([StopTrainingOnMaxEpisodes(3), recorder]))
    model.learn(2000, reset_num_timesteps=False, callback=recorder)
    assert len(recorder.groups()) >= 10
    assert recorder.mixed_groups() == 0


class _NoOptionsEnv(gym.Env):
    """An env written before Gymnasium added ``options`` to ``reset``."""

    observation_space = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, seed: int | None = None):  # type: ignore[override]
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(2, dtype=np.float32), float(action), self.t >= 5, False, {}


def test_envs_whose_reset_takes_no_options_work():
    """Issue 16, defect 10: options are passed on only when set, as SB3's VecEnvs do."""
    model = GRPO("MlpPolicy", DummyVecEnv([_NoOptionsEnv, _NoOptionsEnv]), n_steps=8, group_size=2, seed=0)
    model.learn(64)
    assert model.num_timesteps >= 64


# ---------------------------------------------------------------------------- what reward functions see --


def test_reward_functions_see_the_envs_own_observations_under_vec_normalize():
    """Issue 16, defect 4: not the normalised observations the policy sees."""
    seen: list[th.Tensor] = []

    def record(state, action, next_state):
        seen.append(state)
        return th.zeros(len(state), 1)

    env = VecNormalize(make_vec_env("CartPole-v1", n_envs=2, seed=0))
    GRPO("MlpPolicy", env, reward_function=record, n_steps=32, group_size=4, n_epochs=1, seed=0).learn(1500)
    states = th.cat(seen)
    assert states[:, 2].abs().max() <= CARTPOLE_ANGLE_LIMIT + 1e-4
    assert states[:, 2].abs().max() > 0.02


def test_reward_functions_see_images_in_the_envs_layout():
    shapes: set[tuple[int, ...]] = set()

    def record(state, action, next_state):
        shapes.update({tuple(state.shape[1:]), tuple(next_state.shape[1:])})
        return th.zeros(len(state), 1)

    env = make_vec_env(lambda: FakeImageEnv(screen_height=36, screen_width=36, n_channels=3), n_envs=2)
    GRPO("CnnPolicy", env, reward_function=record, n_steps=8, group_size=2, n_epochs=1, batch_size=32).learn(64)
    assert shapes == {(36, 36, 3)}
