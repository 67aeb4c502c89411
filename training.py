"""How one job trains, in whichever process runs it: its settings, its environments and model, the callback that
reports its progress and stops it, checkpoints, and ``train_model``, which every executor calls.

Nothing here knows about HTTP: ``schemas.TrainRequest`` builds on ``TrainingSettings``, never the reverse, and
``TrainingConfig`` is what a job records and ships to a Ray actor.
"""

import bisect
import ctypes
import difflib
import gc
import inspect
import io
import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from pydantic import BaseModel, ConfigDict, Field
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

import artifacts
import checkpoints
import presets
from errors import UnknownEnvironment
from grpo import ADVANTAGE_MODES, GROUP_MODES, GRPO, NEAREST_FITS, SCALE_REWARDS, TIE_BREAKS
from records import JobRecord, MetricPoint, ModelName
from rewards import REWARD_FUNCTIONS

logger = logging.getLogger("grpo.training")

# The settings that go to GRPO's constructor as they are, when given.
GRPO_ARGUMENTS = frozenset(
    {
        "group_size",
        "advantage",
        "scale_rewards",
        "gamma",
        "gae_lambda",
        "clip_range",
        "clip_range_high",
        "beta",
        "ent_coef",
        "max_grad_norm",
        "target_kl",
        "group_mode",
        "branch_interval",
        "branch_on",
        "lookahead",
        "mask_truncated",
        "tie_break",
        "nearest_fit",
        "use_sde",
        "sde_sample_freq",
        "ref_update_interval",
    }
)
# The API document's fields: on its own environment, CartPole-v1, they keep the document's defaults over the preset's.
DOCUMENT_ENV = "CartPole-v1"
DOCUMENT_FIELDS = frozenset(
    {"total_timesteps", "learning_rate", "n_steps", "batch_size", "n_epochs", "reward_function_type"}
)
# Preset keys (rl-baselines3-zoo's names) that fill a setting of another name; `policy_kwargs` is the preset's alone.
PRESET_KEYS = {
    "n_timesteps": "total_timesteps",
    "reward_function": "reward_function_type",
    "policy_kwargs": "policy_kwargs",
}
PolicyName = Literal["MlpPolicy", "CnnPolicy", "MultiInputPolicy"]
# A schedule as rl-baselines3-zoo writes it: linear from the number to 0 over the run.
ScheduleSpec = Annotated[str, Field(pattern=r"^lin_[0-9.]+(e-?[0-9]+)?$", max_length=32)]
# What a JSON object passed to gym.make may hold.
EnvKwarg = bool | int | float | str | None | list[bool | int | float | str | None]


class NormalizeOptions(BaseModel):
    """VecNormalize's options (the keys rl-baselines3-zoo's ``normalize`` takes)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    norm_obs: bool = True
    norm_reward: bool = True
    clip_obs: float = Field(10.0, gt=0, le=1e6)
    clip_reward: float = Field(10.0, gt=0, le=1e6)
    gamma: float | None = Field(
        None, ge=0, le=1, description="Discount of the returns rewards are scaled by (default: the job's gamma)"
    )
    epsilon: float = Field(1e-8, gt=0, le=1)


class TrainingSettings(BaseModel):
    """What a client asks a training job for; every field has a default. ``TrainingConfig`` resolves the defaults
    that depend on the rest (reward function, model name, checkpoint interval)."""

    # A misspelt field would otherwise be dropped without a word and train with the default instead.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    env_name: str = Field("CartPole-v1", min_length=1, max_length=200, description="Gymnasium environment id")
    total_timesteps: int = Field(10_000, ge=1, description="Environment steps to train for (the server caps it)")
    learning_rate: float = Field(3e-4, gt=0, le=1, description="Adam's step size for the policy")
    n_steps: int = Field(
        32,
        ge=1,
        le=100_000,
        description="Steps per environment per rollout, at least; a rollout goes on until its groups are complete",
    )
    batch_size: int = Field(
        64, ge=2, le=1_000_000, description="Steps per gradient step; each epoch goes through the rollout in batches"
    )
    n_epochs: int = Field(10, ge=1, le=1_000, description="Passes over each rollout's steps")
    reward_function_type: str = Field(
        "optimized_cartpole",
        max_length=100,
        description="A name from GET /reward-functions; 'env' is the environment's own reward. "
        "Omitted: 'optimized_cartpole' for CartPole, 'env' for other environments",
    )
    model_name: ModelName | None = Field(None, description="Name to save the model under (default: generated)")
    # GRPO's constructor arguments beyond the document's: null (the default) keeps GRPO's own default.
    group_size: int | None = Field(None, ge=2, le=1_024, description="Episodes per group compared with each other")
    advantage: Literal[ADVANTAGE_MODES] | None = Field(  # type: ignore[valid-type]
        None, description="How rewards become advantages (see grpo.GRPO)"
    )
    scale_rewards: Literal[SCALE_REWARDS] | None = Field(  # type: ignore[valid-type]
        None, description="Divide advantages by the std of the group (DeepSeekMath), the batch, or none (Dr. GRPO)"
    )
    gamma: float | None = Field(
        None, ge=0, le=1, description="Discount of later rewards in an episode's returns (1: all count alike)"
    )
    clip_range: float | None = Field(
        None, gt=0, le=1, description="PPO's clip: how far one update may move an action's probability ratio from 1"
    )
    clip_range_high: float | None = Field(None, gt=0, le=1, description="DAPO's upper clip (null: clip_range)")
    beta: float | None = Field(None, ge=0, le=10, description="Weight of the KL penalty to the reference policy")
    ent_coef: float | None = Field(
        None, ge=0, le=1, description="Weight of the entropy bonus, which keeps the policy exploring"
    )
    max_grad_norm: float | None = Field(None, gt=0, le=1_000)
    target_kl: float | None = Field(None, gt=0, le=10)
    n_envs: int | None = Field(
        None, ge=1, le=64, description="Environments stepped side by side (default: the preset's, else 1)"
    )
    vec_env: Literal["dummy", "subproc"] = Field(
        "dummy",
        description="'dummy': the environments step in turn in the job's process; 'subproc': each in a process of "
        "its own, so one job uses several cores (worth it when an environment step is slow)",
    )
    num_cpus: float | None = Field(
        None,
        gt=0,
        le=1_024,
        description="Ray executor: CPUs the job's actor reserves (default: n_envs for 'subproc', else 1)",
    )
    num_gpus: float | None = Field(
        None, ge=0, le=64, description="Ray executor: GPUs the job's actor reserves; above 0 it trains on CUDA"
    )
    seed: int | None = Field(
        None, ge=0, le=2**32 - 1, description="Seed of the environments and the policy, for a repeatable run"
    )
    net_arch: list[Annotated[int, Field(ge=1, le=4_096)]] | None = Field(
        None, max_length=8, description="Hidden layer sizes of the policy (default: SB3's [64, 64])"
    )
    policy: PolicyName | None = Field(
        None,
        description="Default: the preset's, else what the observation space calls for (CnnPolicy for images, "
        "MlpPolicy otherwise)",
    )
    normalize: bool | NormalizeOptions | None = Field(
        None,
        description="Normalise observations and rewards with VecNormalize (true, or its options); the statistics "
        "are saved with the model and applied when it serves (default: the preset's, else false)",
    )
    group_mode: Literal[GROUP_MODES] | None = Field(  # type: ignore[valid-type]
        None,
        description="'episode': a group is group_size episodes reset alike; 'state': the actions tried from one "
        "visited state, each in a fork of the environment (branching; environments must be deep-copyable)",
    )
    branch_interval: int | None = Field(None, ge=1, le=10_000, description="State mode: branch every this many states")
    lookahead: int | None = Field(
        None, ge=0, le=1_000, description="State mode: steps each branch follows the policy after its tried action"
    )
    branch_on: Literal["interval", "entropy"] | None = Field(
        None,
        description="State mode: branch at every branch_interval-th state ('interval'), or at as many states, "
        "those where the policy is least sure ('entropy'; not for Box actions)",
    )
    mask_truncated: bool | None = Field(
        None,
        description="Leave out of training the last steps of episodes a time limit cut short, whose returns miss "
        "what came after the cut (Pendulum's preset)",
    )
    gae_lambda: float | None = Field(
        None,
        ge=0,
        le=1,
        description="With advantage 'nearest': below 1, returns bootstrapped from the nearest states' mean return, "
        "as GAE does from a critic (HalfCheetah's preset); 1 keeps the plain return",
    )
    tie_break: Literal[TIE_BREAKS] | None = Field(  # type: ignore[valid-type]
        None,
        description="Episode mode: what tells apart a group's members when their rewards tie (every advantage 0, as "
        "a sparse reward's before the first success): 'none' leaves them at 0, 'novelty' compares how far their "
        "states lie from the other episodes' (Acrobot's preset)",
    )
    nearest_fit: Literal[NEAREST_FITS] | None = Field(  # type: ignore[valid-type]
        None,
        description="With advantage 'nearest': 'linear' carries each neighbour's return to the state it values along "
        "a linear fit of the rollout's returns on the observations (HalfCheetah's preset); 'none' averages them as "
        "they are",
    )
    use_sde: bool | None = Field(None, description="Generalized State-Dependent Exploration (Box actions)")
    sde_sample_freq: int | None = Field(None, ge=-1, le=100_000, description="gSDE: new noise every this many steps")
    ref_update_interval: int | None = Field(
        None, ge=1, le=1_000_000, description="Updates between refreshes of the KL reference policy (beta > 0)"
    )
    env_kwargs: dict[Annotated[str, Field(max_length=100)], EnvKwarg] | None = Field(
        None, max_length=32, description="Keyword arguments for gym.make, tried when the job is submitted"
    )
    init_model: ModelName | None = Field(
        None,
        description="Start from this saved model (and its normalisation statistics) instead of a fresh policy; "
        "the result is saved under model_name",
    )
    overwrite: bool = Field(False, description="Replace an existing model of the same name")
    checkpoint_interval: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="Timesteps between the job's checkpoints, which a resume continues from (default: the server's)",
    )


class TrainingConfig(TrainingSettings):
    """The settings a job runs with: its request with every default filled in; recorded with the job, shipped to
    the Ray actor that trains it, and read back when it resumes."""

    reward_function_type: str
    model_name: ModelName
    # A record from before checkpoints has none: such a job checkpoints only when it stops.
    checkpoint_interval: int = Field(0, ge=0, description="Timesteps between checkpoints (0: only when it stops)")
    n_envs: int = Field(1, ge=1, le=64)
    policy: PolicyName = "MlpPolicy"
    # A preset may give schedules (zoo-style `lin_<x>`) and the policy's keyword arguments (the zoo's dict text).
    learning_rate: float | ScheduleSpec = 3e-4  # type: ignore[assignment]
    clip_range: float | ScheduleSpec | None = None  # type: ignore[assignment]
    policy_kwargs: str | None = Field(None, max_length=1_000)
    sources: dict[str, Literal["request", "preset", "default"]] = Field(
        default_factory=dict, description="Where each setting came from: the request, the preset, or a default"
    )


class StopTraining(Exception):
    """Raised from inside ``train()`` so a stop takes effect within one gradient step."""


def finite_metrics(values: dict[str, Any]) -> dict[str, float]:
    """Keep the numeric, finite entries: JSON has no NaN, and a NaN loss says nothing a client can use."""
    kept = {}
    for key, value in values.items():
        if isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(float(value)):
            kept[key] = float(value)
    return kept


# environments and models


def resolve_settings(request: TrainingSettings, preset: presets.Preset | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The values a job runs with and where each came from: what the request set; else the environment's preset
    (except that on CartPole-v1 the API document's fields keep the document's defaults); else the default."""
    values = request.model_dump()
    given = request.model_fields_set
    from_preset = {PRESET_KEYS.get(key, key): value for key, value in (preset.values if preset else {}).items()}
    sources: dict[str, str] = {}
    for name in [*values, "policy_kwargs"]:
        keeps_document_default = request.env_name == DOCUMENT_ENV and name in DOCUMENT_FIELDS
        if name in given:
            sources[name] = "request"
        elif name in from_preset and not keeps_document_default:
            values[name] = from_preset[name]
            sources[name] = "preset"
        elif name in values:
            sources[name] = "default"
    if sources["normalize"] == "preset":  # the zoo's forms: true, or VecNormalize's options as a dict or its text
        options = presets.normalize_options(values["normalize"])
        values["normalize"] = False if options is None else NormalizeOptions(**options)
    if values["group_mode"] == "state":
        # A preset's advantage, its fit and tie-break are for episode groups; branches are judged by outcome alone.
        for name, default in (("advantage", "outcome"), ("nearest_fit", "none"), ("tie_break", "none")):
            if sources[name] != "request":
                values[name], sources[name] = default, "default"
    for name, default in _grpo_defaults().items():  # show the value GRPO will use, not null
        if values.get(name) is None:
            values[name] = default
    return values, sources


def _grpo_defaults() -> dict[str, Any]:
    parameters = inspect.signature(GRPO.__init__).parameters
    return {name: parameters[name].default for name in GRPO_ARGUMENTS if name in parameters}


def check_presets(book: dict[str, presets.Preset]) -> None:
    """Every key of every preset must be a setting the service takes: a typo would otherwise be dropped silently."""
    known = set(TrainingConfig.model_fields) | set(PRESET_KEYS)
    for env_id, preset in book.items():
        unknown = sorted(set(preset.values) - known)
        if unknown:
            raise presets.PresetError(f"preset {env_id!r}: the service takes no setting {unknown}")


def default_policy(observation_space: spaces.Space) -> PolicyName:
    """The policy an observation space calls for, as rl-baselines3-zoo users would pick it."""
    if isinstance(observation_space, spaces.Dict):
        return "MultiInputPolicy"
    if is_image_space(observation_space, check_channels=False):
        return "CnnPolicy"
    return "MlpPolicy"


def _make_registered(env_name: str, env_kwargs: dict[str, Any] | None = None) -> gym.Env:
    # Only registered ids: gym.make would import any "module:Env" string it is given.
    if env_name not in gym.registry:
        close = difflib.get_close_matches(env_name, list(gym.registry), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(name) for name in close)}?" if close else ""
        raise UnknownEnvironment(f"Unknown environment {env_name!r}{hint}")
    try:
        return gym.make(env_name, **(env_kwargs or {}))
    except Exception as error:  # anything a third-party constructor throws is a bad choice of environment
        with_kwargs = f" with env_kwargs {env_kwargs}" if env_kwargs else ""
        raise UnknownEnvironment(f"Environment {env_name!r} cannot be created here{with_kwargs}: {error}") from error


def environment_spaces(env_name: str, env_kwargs: dict[str, Any] | None = None) -> tuple[spaces.Space, spaces.Space]:
    """The observation and action spaces of a registered gymnasium environment, or a helpful error."""
    env = _make_registered(env_name, env_kwargs)
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


@dataclass
class EnvironmentProbe:
    """What a job's environment looks like before it trains: its spaces, and how long its episodes last."""

    observation_space: spaces.Space
    action_space: spaces.Space
    # Lengths of the episodes that ended under random actions (the untrained policy acts about as randomly).
    episode_lengths: list[int]
    max_episode_steps: int | None  # the spec's time limit: how long an episode can last at most

    @property
    def shortest_episode(self) -> int:
        # An episode takes at least one step; that is all that is known when none ended within the probe.
        return min(self.episode_lengths, default=1)


def probe_environment(
    env_name: str,
    seed: int | None,
    env_kwargs: dict[str, Any] | None = None,
    max_episodes: int = 16,
    max_steps: int = 2_000,
    max_seconds: float = 0.5,
) -> EnvironmentProbe:
    """Play the environment with random actions for a few episodes, within a few thousand steps and half a second."""
    env = _make_registered(env_name, env_kwargs)
    lengths: list[int] = []
    try:
        env.action_space.seed(seed)
        steps, deadline = 0, time.monotonic() + max_seconds
        while len(lengths) < max_episodes and steps < max_steps and time.monotonic() < deadline:
            env.reset(seed=(seed or 0) + len(lengths))
            length, ended = 0, False
            while not ended and steps < max_steps:
                _, _, terminated, truncated, _ = env.step(env.action_space.sample())
                length, steps, ended = length + 1, steps + 1, terminated or truncated
            if ended:
                lengths.append(length)
    except Exception as error:  # a third-party environment that fails here fails again, with its reason, in the job
        logger.info("probing %s with random actions failed: %s", env_name, error)
    finally:
        env.close()
    spec = env.spec
    return EnvironmentProbe(env.observation_space, env.action_space, lengths, spec.max_episode_steps if spec else None)


def default_group_size() -> int:
    """GRPO's own group size, for requests that leave it open."""
    return _grpo_defaults()["group_size"]


def rollout_bytes_per_step(probe: EnvironmentProbe, reward_function: str) -> int:
    """What one environment step costs GRPO's rollout at its peak: the observation (and the next one, which a
    reward function needs) in the in-flight episodes, again in the training batch and once more as tensors; the
    action twice; and about sixty bytes of per-step values (rewards, log-probabilities, episode ids, ...)."""
    observation_values = int(np.prod(probe.observation_space.shape or (1,)))
    action_values = int(np.prod(probe.action_space.shape or (1,)))
    observation_copies = 3 if REWARD_FUNCTIONS[reward_function] is None else 5
    return 4 * (observation_values * observation_copies + 2 * action_values) + 64


def make_environments(config: TrainingConfig, normalizer: bytes | None = None) -> VecEnv:
    """The job's ``n_envs`` environments: stepped in turn in this process (``dummy``) or each in a process of its
    own (``subproc``, wrapped so GRPO can reset a group's members alike); under VecNormalize when the config asks
    for it, or with ``normalizer``'s saved statistics (a checkpoint's or a model's to go on from)."""
    env = presets.make_env(
        config.env_name, config.n_envs, config.seed, env_kwargs=config.env_kwargs, subproc=config.vec_env == "subproc"
    )
    if normalizer is not None:
        return artifacts.wrap(env, normalizer, training=True)
    options = normalize_options(config)
    return env if options is None else VecNormalize(env, **options)


def normalize_options(config: TrainingConfig) -> dict[str, Any] | None:
    """VecNormalize's keyword arguments for the job, or None when it does not normalise."""
    value = config.normalize
    if not value:
        return None
    options = value.model_dump(exclude_none=True) if isinstance(value, NormalizeOptions) else True
    return presets.normalize_options(options, config.gamma)


def constructor_arguments(config: TrainingConfig) -> dict[str, Any]:
    """What GRPO's constructor (or ``GRPO.load``, for a model to go on from) gets from the config."""
    kwargs = presets.algorithm_kwargs(
        {
            "learning_rate": config.learning_rate,
            "n_steps": config.n_steps,
            "batch_size": config.batch_size,
            "n_epochs": config.n_epochs,
            **config.model_dump(include=GRPO_ARGUMENTS, exclude_none=True),
        }
    )
    kwargs["reward_function"] = REWARD_FUNCTIONS[config.reward_function_type]
    return kwargs


def _policy_kwargs(config: TrainingConfig) -> dict[str, Any] | None:
    policy_kwargs = presets.algorithm_kwargs({"policy_kwargs": config.policy_kwargs or "dict()"})["policy_kwargs"]
    if config.net_arch is not None:  # the request's layers win over the preset's
        policy_kwargs["net_arch"] = config.net_arch
    return policy_kwargs or None


def build_model(
    config: TrainingConfig, device: str, tensorboard_log: Path | None = None, init: bytes | None = None
) -> GRPO:
    """The GRPO model a job trains, on freshly made environments: a new policy, or the saved model ``init`` (its
    zip, normalisation statistics included) with the job's settings; SB3 writes TensorBoard logs to
    ``tensorboard_log``."""
    if init is not None:
        return load_checkpoint(config, io.BytesIO(init), device, tensorboard_log, **constructor_arguments(config))
    env = make_environments(config)
    try:
        return GRPO(
            config.policy,
            env,
            policy_kwargs=_policy_kwargs(config),
            seed=config.seed,
            device=device,
            tensorboard_log=str(tensorboard_log) if tensorboard_log is not None else None,
            **constructor_arguments(config),
        )
    except BaseException:
        env.close()  # a subproc env's worker processes would outlive the failed job
        raise


def load_checkpoint(
    config: TrainingConfig,
    path: Path | io.BytesIO,
    device: str,
    tensorboard_log: Path | None = None,
    **kwargs: Any,
) -> GRPO:
    """A job's model as its checkpoint (or a saved model) left it, ready to train on: in the environments the
    checkpoint carries, so that it goes on exactly (``checkpoints``), or on freshly made ones under the saved
    normalisation statistics (a subproc job, a saved model, an older checkpoint); ``kwargs`` replace saved
    settings."""
    data = path.read_bytes() if isinstance(path, Path) else path.getvalue()
    env = make_environments(config, artifacts.read_normalizer(io.BytesIO(data)))
    kwargs.setdefault("reward_function", REWARD_FUNCTIONS[config.reward_function_type])
    try:
        # Functions from the registry, not whatever the zip pickled: the same code the job started with.
        return checkpoints.load_checkpoint(
            io.BytesIO(data),
            env=env,
            device=device,
            tensorboard_log=str(tensorboard_log) if tensorboard_log is not None else None,
            **kwargs,
        )
    except BaseException:
        env.close()
        raise


def hyperparameters(config: TrainingConfig, model: GRPO) -> dict[str, Any]:
    """The job's settings, with the GRPO defaults it left open read back from the trained model."""
    values = config.model_dump(exclude={"model_name", "overwrite", "checkpoint_interval"})
    for name in GRPO_ARGUMENTS:
        actual = getattr(model, name, None)
        if values[name] is None and isinstance(actual, (bool, int, float, str)):
            values[name] = actual
    return values


# a job while it trains


@dataclass
class ActiveJob:
    """What the runner knows of a queued or running job beyond its database record."""

    record: JobRecord
    config: TrainingConfig
    stop_requested: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    started: bool = False
    shutting_down: bool = False
    timesteps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    started_at: float = 0.0  # time.monotonic() when training began
    timed_out: bool = False  # stopped because it ran past the server's job_timeout_s
    resume_from: Path | io.BytesIO | None = None  # the checkpoint a resumed job goes on from
    init_from: bytes | None = None  # the saved model (config.init_model) a new job starts from
    # Every point of this run, in memory for cheap reads while it runs; the first ``saved_points`` are in the database.
    history: list[MetricPoint] = field(default_factory=list)
    saved_points: int = 0

    def points_after(self, timesteps: int) -> list[MetricPoint]:
        # The history is sorted by timesteps: find the new points without walking all of them.
        return self.history[bisect.bisect_right(self.history, timesteps, key=lambda point: point.timesteps) :]


Report = Callable[[ActiveJob], None]
Checkpoint = Callable[[ActiveJob, GRPO], None]


class JobCallback(BaseCallback):
    """Reports a job's progress and metrics, and stops its training when asked or when it runs out of time."""

    def __init__(
        self,
        job: ActiveJob,
        report: Report,
        timeout_s: float | None = None,
        checkpoint: Checkpoint | None = None,
        checkpoint_interval: int = 0,
    ) -> None:
        super().__init__()
        self.job = job
        self.report = report
        self.timeout_s = timeout_s
        self.checkpoint = checkpoint
        self.checkpoint_interval = checkpoint_interval
        self._last_checkpoint = 0
        self._hook: Any = None
        self._start_time = 0.0
        self._start_timesteps = 0
        self._deadline = float("inf")

    def _init_callback(self) -> None:
        self._start_time = time.monotonic()
        self._start_timesteps = self._last_checkpoint = self.model.num_timesteps
        if self.timeout_s is not None:
            # From when the job first began: a resumed job's earlier running time (job.started_at is set back by
            # it) counts against its timeout, so resuming is no way around the limit.
            self._deadline = self.job.started_at + self.timeout_s
        # Callbacks only run during rollouts; this hook also stops a long update between two gradient steps.
        self._hook = self.model.policy.optimizer.register_step_pre_hook(self._stop_between_gradient_steps)

    def _check_deadline(self) -> None:
        if time.monotonic() > self._deadline and not self.job.stop_requested.is_set():
            self.job.timed_out = True
            self.job.stop_requested.set()

    def _stop_between_gradient_steps(self, *_: Any) -> None:
        self._check_deadline()
        if self.job.stop_requested.is_set():
            raise StopTraining

    def detach(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _on_step(self) -> bool:
        self.job.timesteps = self.num_timesteps
        self._check_deadline()
        return not self.job.stop_requested.is_set()

    def _on_rollout_start(self) -> None:
        # train() runs after the previous rollout's callbacks, so its train/* values are readable only now.
        self._read_metrics()
        self.report(self.job)
        # Between an update and the next rollout the model is whole: the time to checkpoint it.
        interval = self.checkpoint_interval
        if self.checkpoint and interval and self.model.num_timesteps - self._last_checkpoint >= interval:
            self.checkpoint(self.job, self.model)
            self._last_checkpoint = self.model.num_timesteps

    def _on_rollout_end(self) -> None:
        self._read_metrics()

    def _on_training_end(self) -> None:
        self._read_metrics()

    def _read_metrics(self) -> None:
        metrics = dict(self.job.metrics)
        metrics.update(finite_metrics(self.model.logger.name_to_value))
        # The logger dumps (and clears) the episode statistics before this can read them: recompute them.
        episodes = self.model.ep_info_buffer
        if episodes:
            metrics["rollout/ep_rew_mean"] = sum(ep["r"] for ep in episodes) / len(episodes)
            metrics["rollout/ep_len_mean"] = sum(ep["l"] for ep in episodes) / len(episodes)
        elapsed = time.monotonic() - self._start_time
        if elapsed > 0:
            metrics["time/fps"] = (self.model.num_timesteps - self._start_timesteps) / elapsed
        metrics["time/total_timesteps"] = self.model.num_timesteps
        self.job.metrics = finite_metrics(metrics)


def record_point(job: ActiveJob) -> None:
    """Add a learning-curve point from the latest metrics, if training moved on since the last one."""
    timesteps = int(job.metrics.get("time/total_timesteps", 0))
    if timesteps > (job.history[-1].timesteps if job.history else 0):
        job.history.append(MetricPoint.from_metrics(timesteps, time.monotonic() - job.started_at, job.metrics))


def train_model(
    job: ActiveJob,
    device: str,
    tensorboard_log: Path | None,
    report: Report,
    checkpoint: Checkpoint,
    timeout_s: float | None,
) -> GRPO:
    """Build the job's model (or load its checkpoint) and train it to its total_timesteps or until it stops, in
    the calling process; its environments are closed when this returns. Every executor trains through this."""
    config = job.config
    if job.resume_from is not None:
        model = load_checkpoint(config, job.resume_from, device, tensorboard_log=tensorboard_log)
    else:
        model = build_model(config, device, tensorboard_log=tensorboard_log, init=job.init_from)
    # A resumed job's learning curves go on from the wall time of its last point.
    job.started_at = time.monotonic() - (job.history[-1].wall_time_s if job.history else 0.0)
    callback = JobCallback(job, report, timeout_s, checkpoint, config.checkpoint_interval)
    resuming = job.resume_from is not None
    # A resumed model keeps its timestep count: learn the rest, in the same TensorBoard run. A model started from a
    # saved one (init_model) counts this job's steps from 0.
    remaining = config.total_timesteps - (model.num_timesteps if resuming else 0)
    try:
        model.learn(remaining, callback=callback, reset_num_timesteps=not resuming)
    except StopTraining:
        pass  # asked for between two gradient steps; the model is whole
    finally:
        callback.detach()
        model.env.close()  # before the job is recorded as ended: a subproc env's workers end with it
    job.timesteps = model.num_timesteps
    return model


def failure_message(error: Exception, config: TrainingConfig) -> str:
    """What a failed job's record says: what went wrong in a line or two, and what to try when the cause is
    known; the full traceback goes to the server's log."""
    text = str(error)
    if "nan" in text.lower() and "invalid values" in text:  # torch's distributions refuse NaN parameters
        return (
            "Training diverged: the policy's outputs became NaN (its weights overflowed in an update). Try a lower "
            f"learning_rate (this job: {config.learning_rate:g}), a smaller max_grad_norm, scale_rewards 'group', "
            "or a reward function with smaller values."
        )
    lines = text.splitlines()
    more = f" (+{len(lines) - 1} more lines in the server's log)" if len(lines) > 1 else ""
    return f"{type(error).__name__}: {lines[0] if lines else ''}{more}"


def release_memory() -> None:
    """Give the memory of a finished job back to the system: collect its reference cycles, then ask glibc to
    return the freed heap pages, which it otherwise keeps, leaving the process at its peak size."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
            pass
