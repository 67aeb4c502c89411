"""How one job trains, in whichever process runs it: its settings, its environments and model, the callback that
reports its progress and stops it, checkpoints, and ``train_model``, which every executor calls.

Nothing here knows about HTTP: ``schemas.TrainRequest`` builds on ``TrainingSettings``, never the reverse, and
``TrainingConfig`` is what a job records and ships to a Ray actor.
"""

import bisect
import difflib
import io
import math
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
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnv

import checkpoints
from errors import UnknownEnvironment
from grpo import ADVANTAGE_MODES, GRPO, SCALE_REWARDS, GroupResetWrapper
from records import JobRecord, MetricPoint, ModelName
from rewards import REWARD_FUNCTIONS

# The settings that go to GRPO's constructor as they are, when given.
GRPO_ARGUMENTS = frozenset(
    {
        "group_size",
        "advantage",
        "scale_rewards",
        "gamma",
        "clip_range",
        "clip_range_high",
        "beta",
        "ent_coef",
        "max_grad_norm",
        "target_kl",
    }
)


class TrainingSettings(BaseModel):
    """What a client asks a training job for; every field has a default. ``TrainingConfig`` resolves the defaults
    that depend on the rest (reward function, model name, checkpoint interval)."""

    # A misspelt field would otherwise be dropped without a word and train with the default instead.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    env_name: str = Field("CartPole-v1", min_length=1, max_length=200, description="Gymnasium environment id")
    total_timesteps: int = Field(10_000, ge=1, description="Environment steps to train for (the server caps it)")
    learning_rate: float = Field(3e-4, gt=0, le=1)
    n_steps: int = Field(32, ge=1, le=100_000, description="Steps per environment per rollout")
    batch_size: int = Field(64, ge=2, le=1_000_000)
    n_epochs: int = Field(10, ge=1, le=1_000)
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
    gamma: float | None = Field(None, ge=0, le=1)
    clip_range: float | None = Field(None, gt=0, le=1)
    clip_range_high: float | None = Field(None, gt=0, le=1, description="DAPO's upper clip (null: clip_range)")
    beta: float | None = Field(None, ge=0, le=10, description="Weight of the KL penalty to the reference policy")
    ent_coef: float | None = Field(None, ge=0, le=1)
    max_grad_norm: float | None = Field(None, gt=0, le=1_000)
    target_kl: float | None = Field(None, gt=0, le=10)
    n_envs: int = Field(1, ge=1, le=64, description="Environments stepped side by side")
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
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    net_arch: list[Annotated[int, Field(ge=1, le=4_096)]] | None = Field(
        None, max_length=8, description="Hidden layer sizes of the policy (default: SB3's [64, 64])"
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


def environment_spaces(env_name: str) -> tuple[spaces.Space, spaces.Space]:
    """The observation and action spaces of a registered gymnasium environment, or a helpful error."""
    # Only registered ids: gym.make would import any "module:Env" string it is given.
    if env_name not in gym.registry:
        close = difflib.get_close_matches(env_name, list(gym.registry), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(name) for name in close)}?" if close else ""
        raise UnknownEnvironment(f"Unknown environment {env_name!r}{hint}")
    try:
        env = gym.make(env_name)
    except Exception as error:  # anything a third-party constructor throws is a bad choice of environment
        raise UnknownEnvironment(f"Environment {env_name!r} cannot be created here: {error}") from error
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def make_environments(config: TrainingConfig) -> VecEnv:
    """The job's ``n_envs`` environments: stepped in turn in this process (``dummy``) or each in a process of its
    own (``subproc``), where GRPO needs every one wrapped to reset the members of a group with the group's seed."""
    if config.vec_env == "subproc":
        return make_vec_env(
            config.env_name,
            n_envs=config.n_envs,
            seed=config.seed,
            vec_env_cls=SubprocVecEnv,
            wrapper_class=GroupResetWrapper,
        )
    return make_vec_env(config.env_name, n_envs=config.n_envs, seed=config.seed)


def build_model(config: TrainingConfig, device: str, tensorboard_log: Path | None = None) -> GRPO:
    """The GRPO model a job trains, on freshly made environments; SB3 writes TensorBoard logs to ``tensorboard_log``."""
    env = make_environments(config)
    try:
        return _new_model(config, env, device, tensorboard_log)
    except BaseException:
        env.close()  # a subproc env's worker processes would outlive the failed job
        raise


def _new_model(config: TrainingConfig, env: VecEnv, device: str, tensorboard_log: Path | None) -> GRPO:
    return GRPO(
        "MlpPolicy",
        env,
        learning_rate=config.learning_rate,
        n_steps=config.n_steps,
        batch_size=config.batch_size,
        n_epochs=config.n_epochs,
        reward_function=REWARD_FUNCTIONS[config.reward_function_type],
        policy_kwargs={"net_arch": config.net_arch} if config.net_arch is not None else None,
        seed=config.seed,
        device=device,
        tensorboard_log=str(tensorboard_log) if tensorboard_log is not None else None,
        # Only what the request set: GRPO's own defaults stay GRPO's.
        **config.model_dump(include=GRPO_ARGUMENTS, exclude_none=True),
    )


def load_checkpoint(
    config: TrainingConfig, path: Path | io.BytesIO, device: str, tensorboard_log: Path | None = None
) -> GRPO:
    """A job's model as its checkpoint left it, ready to train on: in the environments the checkpoint carries, so
    that it goes on exactly (``checkpoints``), or on freshly made ones (a subproc job, an older checkpoint)."""
    env = make_environments(config)
    try:
        return checkpoints.load_checkpoint(
            path,
            env=env,
            device=device,
            # Functions from the registry, not whatever the zip pickled: the same code the job started with.
            reward_function=REWARD_FUNCTIONS[config.reward_function_type],
            tensorboard_log=str(tensorboard_log) if tensorboard_log is not None else None,
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
        model = build_model(config, device, tensorboard_log=tensorboard_log)
    # A resumed job's learning curves go on from the wall time of its last point.
    job.started_at = time.monotonic() - (job.history[-1].wall_time_s if job.history else 0.0)
    callback = JobCallback(job, report, timeout_s, checkpoint, config.checkpoint_interval)
    try:
        # A resumed model keeps its timestep count: learn the rest, in the same TensorBoard run.
        model.learn(
            config.total_timesteps - model.num_timesteps, callback=callback, reset_num_timesteps=job.resume_from is None
        )
    except StopTraining:
        pass  # asked for between two gradient steps; the model is whole
    finally:
        callback.detach()
        model.env.close()  # before the job is recorded as ended: a subproc env's workers end with it
    job.timesteps = model.num_timesteps
    return model
