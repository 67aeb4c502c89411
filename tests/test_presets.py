"""hyperparams/grpo.yml and its loader: every entry builds, zoo conventions translate as the zoo does."""

from pathlib import Path

import gymnasium as gym
import pytest
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn

import presets
from grpo import GRPO

# The environments the presets must cover (issue: tuned presets for the classic, box2d and MuJoCo tasks).
REQUIRED = (
    "CartPole-v1",
    "Acrobot-v1",
    "MountainCar-v0",
    "Pendulum-v1",
    "MountainCarContinuous-v0",
    "LunarLander-v3",
    "LunarLanderContinuous-v3",
    "Hopper-v5",
    "HalfCheetah-v5",
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grpo.yml"
    path.write_text(text)
    return path


def test_the_presets_file_covers_the_required_environments() -> None:
    book = presets.read()
    assert set(REQUIRED) <= set(book)
    for env_id, preset in book.items():
        assert env_id in gym.registry, env_id
        assert preset.n_timesteps and preset.n_timesteps > 0


@pytest.mark.parametrize("env_id", REQUIRED)
def test_every_preset_builds_its_model(env_id: str) -> None:
    preset = presets.load(env_id)
    model = presets.make_model(env_id, seed=0, device="cpu")
    assert isinstance(model, GRPO)
    assert model.n_envs == preset.n_envs
    assert isinstance(model.get_env(), VecNormalize) == (preset.normalize is not None)
    for key, value in preset.algorithm_values().items():
        if key in ("learning_rate", "policy_kwargs", "reward_function"):
            continue
        assert getattr(model, key) == value, key
    model.get_env().close()


def test_zoo_conventions_translate(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
Pendulum-v1:
  normalize: "{'norm_obs': True, 'norm_reward': False}"
  n_envs: 2
  n_timesteps: !!float 2e3
  gamma: 0.9
  learning_rate: lin_1e-3
  clip_range: lin_0.2
  policy_kwargs: "dict(log_std_init=-1, activation_fn=nn.ReLU, net_arch=[32])"
""",
    )
    preset = presets.load("Pendulum-v1", path)
    assert preset.n_timesteps == 2000 and preset.n_envs == 2
    # The zoo discounts VecNormalize's returns with the algorithm's gamma.
    assert preset.normalize == {"norm_obs": True, "norm_reward": False, "gamma": 0.9}
    kwargs = preset.algorithm_kwargs()
    assert isinstance(kwargs["learning_rate"], LinearSchedule)
    assert kwargs["learning_rate"](1.0) == pytest.approx(1e-3) and kwargs["learning_rate"](0.5) == pytest.approx(5e-4)
    assert kwargs["policy_kwargs"] == {"log_std_init": -1, "activation_fn": nn.ReLU, "net_arch": [32]}
    # The entry as written stays JSON-friendly, for the service to show.
    assert preset.algorithm_values()["learning_rate"] == "lin_1e-3"

    model = presets.make_model("Pendulum-v1", seed=0, device="cpu", path=path, n_envs=1)
    env = model.get_env()
    assert isinstance(env, VecNormalize) and env.norm_obs and not env.norm_reward and env.gamma == 0.9
    assert model.n_envs == 1  # an override replaces the preset's value
    assert model.learning_rate(0.5) == pytest.approx(5e-4)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("CartPole-v1:\n  frame_stack: 4\n", "frame_stack"),
        ("CartPole-v1:\n  normalize: \"{'norm_obs': True, 'bogus': 1}\"\n", "bogus"),
        ("CartPole-v1:\n  normalize: 'yes please'\n", "normalize"),
        ("CartPole-v1:\n  learning_rate: lin_fast\n", "lin_fast"),
        ("CartPole-v1:\n  policy_kwargs: \"open('/etc/passwd')\"\n", "policy_kwargs"),
        ("- CartPole-v1\n", "must map"),
        ("CartPole-v1: [1, 2\n", "cannot read"),
    ],
)
def test_bad_presets_files_are_clear_errors(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(presets.PresetError, match=fragment):
        presets.read(write(tmp_path, text))


def test_an_environment_without_a_preset_names_those_with_one() -> None:
    with pytest.raises(KeyError, match="CartPole-v1"):
        presets.load("NoSuchEnv-v0")
