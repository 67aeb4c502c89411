"""Tuned GRPO settings per environment, kept in ``hyperparams/grpo.yml`` in rl-baselines3-zoo's format.

One loader for everyone: Python users, the service (a field a training request omits takes the preset's value)
and the benchmarks::

    import presets

    preset = presets.load("Acrobot-v1")  # n_envs, n_timesteps, normalize, policy, GRPO's arguments
    model = presets.make_model("Acrobot-v1", seed=0)  # its VecEnv (normalised as the preset says) and GRPO
    model.learn(preset.n_timesteps)

An entry's keys are the zoo's (``n_envs``, ``n_timesteps``, ``policy``, ``normalize``, ``env_kwargs``,
``policy_kwargs``, ``lin_<x>`` schedules) plus GRPO's constructor arguments; ``reward_function`` names an entry
of ``rewards.REWARD_FUNCTIONS``.
"""

import ast
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecNormalize
from torch import nn

from grpo import GRPO, GroupResetWrapper

PRESETS_FILE = Path(__file__).resolve().parent / "hyperparams" / "grpo.yml"
# Keys that shape the environment or the run rather than GRPO's constructor.
ENV_KEYS = ("n_envs", "n_timesteps", "policy", "normalize", "env_kwargs")
# rl-baselines3-zoo keys this loader does not build: better a clear error than a silently different run.
UNSUPPORTED_KEYS = ("frame_stack", "env_wrapper", "vec_env_wrapper", "callback", "normalize_kwargs")
# VecNormalize's own options: anything else under `normalize` is a typo.
NORMALIZE_OPTIONS = ("norm_obs", "norm_reward", "clip_obs", "clip_reward", "gamma", "epsilon", "norm_obs_keys")


class PresetError(ValueError):
    """A presets file or entry that cannot be used as written."""


@dataclass(frozen=True)
class Preset:
    """One environment's entry. ``values`` are as written in the file (JSON-friendly: schedules stay ``lin_<x>``
    strings, ``policy_kwargs`` the zoo's source text), so that the service can show and record them."""

    env_id: str
    values: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n_envs(self) -> int:
        return int(self.values.get("n_envs", 1))

    @property
    def n_timesteps(self) -> int | None:
        value = self.values.get("n_timesteps")
        return None if value is None else int(value)

    @property
    def policy(self) -> str:
        return str(self.values.get("policy", "MlpPolicy"))

    @property
    def normalize(self) -> dict[str, Any] | None:
        """VecNormalize's options, or None when the preset does not normalise."""
        return normalize_options(self.values.get("normalize", False), self.values.get("gamma"))

    @property
    def env_kwargs(self) -> dict[str, Any]:
        return dict(self.values.get("env_kwargs") or {})

    def algorithm_values(self) -> dict[str, Any]:
        """GRPO's constructor arguments, as written."""
        return {key: value for key, value in self.values.items() if key not in ENV_KEYS}

    def algorithm_kwargs(self) -> dict[str, Any]:
        """GRPO's constructor arguments, ready to pass: schedules and policy_kwargs built."""
        return algorithm_kwargs(self.algorithm_values())


def normalize_options(value: Any, gamma: float | None = None) -> dict[str, Any] | None:
    """VecNormalize's options from a preset or request value: ``false``/``None`` (none), ``true`` (its defaults),
    a mapping, or the zoo's string form ``"{'norm_obs': True, 'norm_reward': False}"``."""
    if value is None or value is False:
        return None
    if value is True:
        options: dict[str, Any] = {}
    elif isinstance(value, str):
        try:
            options = ast.literal_eval(value)
        except (ValueError, SyntaxError) as error:
            raise PresetError(f"normalize {value!r} is neither a boolean nor a dict of VecNormalize options") from error
    else:
        options = dict(value)
    if not isinstance(options, dict):
        raise PresetError(f"normalize must be a boolean or a dict of VecNormalize options, got {value!r}")
    unknown = sorted(set(options) - set(NORMALIZE_OPTIONS))
    if unknown:
        raise PresetError(f"unknown VecNormalize option(s) {unknown}; known: {', '.join(NORMALIZE_OPTIONS)}")
    if gamma is not None:
        # As the zoo does: VecNormalize discounts the returns it scales rewards by with the algorithm's gamma.
        options.setdefault("gamma", gamma)
    return options


def algorithm_kwargs(values: Mapping[str, Any]) -> dict[str, Any]:
    """Translate zoo-style values into constructor arguments: ``lin_<x>`` -> a linear schedule from x to 0, a
    ``policy_kwargs`` string -> the dict it spells (``nn`` in scope, as in the zoo)."""
    kwargs = dict(values)
    for key, value in kwargs.items():
        if isinstance(value, str) and value.startswith("lin_"):
            try:
                kwargs[key] = LinearSchedule(float(value.removeprefix("lin_")), 0.0, 1.0)
            except ValueError:
                raise PresetError(f"{key}: {value!r} is not a schedule 'lin_<number>'") from None
    policy_kwargs = kwargs.get("policy_kwargs")
    if isinstance(policy_kwargs, str):
        kwargs["policy_kwargs"] = _policy_kwargs(policy_kwargs)
    return kwargs


def _policy_kwargs(source: str) -> dict[str, Any]:
    # The zoo writes policy_kwargs as Python, e.g. "dict(activation_fn=nn.ReLU, net_arch=[64])". The presets file is
    # the administrator's, never a request's; still, only dict() and torch.nn are in reach.
    try:
        value = eval(source, {"__builtins__": {"dict": dict}, "nn": nn})
    except Exception as error:  # whatever the text raises, it is not usable policy_kwargs
        raise PresetError(f"policy_kwargs {source!r} cannot be read: {error}") from error
    if not isinstance(value, dict):
        raise PresetError(f"policy_kwargs must spell a dict, got {source!r}")
    return value


def read(path: Path = PRESETS_FILE) -> dict[str, Preset]:
    """Every entry of a presets file, checked."""
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise PresetError(f"cannot read presets from {path}: {error}") from error
    if not isinstance(document, dict) or not all(isinstance(entry, dict) for entry in document.values()):
        raise PresetError(f"{path} must map environment ids to mappings of settings")
    book = {}
    for env_id, values in document.items():
        unsupported = sorted(set(values) & set(UNSUPPORTED_KEYS))
        if unsupported:
            raise PresetError(f"{path}: {env_id}: {unsupported} are rl-baselines3-zoo keys this project does not build")
        preset = Preset(str(env_id), values)
        preset.normalize  # noqa: B018  # fail on a bad entry now, not when a job uses it
        algorithm_kwargs(preset.algorithm_values())
        book[preset.env_id] = preset
    return book


def load(env_id: str, path: Path = PRESETS_FILE) -> Preset:
    """The preset of ``env_id``; a KeyError names the environments that have one."""
    book = read(path)
    if env_id not in book:
        raise KeyError(f"no preset for {env_id!r}; presets exist for {', '.join(book)}")
    return book[env_id]


def make_env(
    env_id: str,
    n_envs: int = 1,
    seed: int | None = None,
    normalize: dict[str, Any] | None = None,
    env_kwargs: dict[str, Any] | None = None,
    subproc: bool = False,
) -> VecEnv:
    """The VecEnv GRPO trains on: ``n_envs`` copies of ``env_id`` (each in its own process with ``subproc``, wrapped
    so GRPO can reset a group's members alike), under VecNormalize when ``normalize`` gives its options."""
    env = make_vec_env(
        env_id,
        n_envs=n_envs,
        seed=seed,
        env_kwargs=env_kwargs,
        vec_env_cls=SubprocVecEnv if subproc else DummyVecEnv,
        wrapper_class=GroupResetWrapper if subproc else None,
    )
    return env if normalize is None else VecNormalize(env, **normalize)


def make_model(
    env_id: str,
    seed: int | None = None,
    device: str = "auto",
    path: Path = PRESETS_FILE,
    **overrides: Any,
) -> GRPO:
    """GRPO on ``env_id`` with its preset: the VecEnv built as the preset says, then the model; ``overrides`` replace
    preset values (zoo-style too: ``learning_rate="lin_1e-3"``, ``n_envs=4``, ``normalize=False``)."""
    preset = load(env_id, path)
    values = {**preset.values, **overrides}
    chosen = Preset(env_id, values)
    env = make_env(env_id, chosen.n_envs, seed, chosen.normalize, chosen.env_kwargs)
    return GRPO(chosen.policy, env, seed=seed, device=device, **chosen.algorithm_kwargs())
