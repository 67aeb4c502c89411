"""Admission: what a training request becomes before it joins the queue, and why one is refused.

A request's omitted fields take the environment's preset, then the defaults (``training.resolve_settings``); the
result is checked against the environment it names (tried with random actions: spaces, episode lengths), this
server's limits (budget, rollout memory) and what GRPO can do with it (policy, reward function, branching, one
complete group). Each refusal is an ``InvalidTrainingRequest`` that says what to change. A resumed job is admitted
again from its record (``recorded_config``).
"""

import math
import re

from gymnasium import spaces
from pydantic import ValidationError
from stable_baselines3.common.preprocessing import is_image_space

from envs import check_forkable
from errors import InvalidTrainingRequest, JobNotResumable
from grpo import check_arguments
from presets import Preset
from records import JobRecord
from rewards import REWARD_FUNCTIONS, fits
from settings import Settings
from store import ModelStore, describe_space
from training import (
    EnvironmentProbe,
    TrainingConfig,
    TrainingSettings,
    constructor_arguments,
    default_group_size,
    default_policy,
    environment_spaces,
    make_environments,
    probe_environment,
    resolve_settings,
    rollout_bytes_per_step,
)

SUPPORTED_OBSERVATION_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
SUPPORTED_ACTION_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def _check_config(config: TrainingConfig, settings: Settings) -> EnvironmentProbe:
    if config.total_timesteps > settings.max_total_timesteps:
        raise InvalidTrainingRequest(
            f"total_timesteps {config.total_timesteps} exceeds this server's maximum of {settings.max_total_timesteps}"
        )
    probe = probe_environment(config.env_name, config.seed, config.env_kwargs)
    if not isinstance(probe.observation_space, SUPPORTED_OBSERVATION_SPACES):
        raise InvalidTrainingRequest(f"Observation space {probe.observation_space} is not supported")
    if not isinstance(probe.action_space, SUPPORTED_ACTION_SPACES):
        raise InvalidTrainingRequest(f"Action space {probe.action_space} is not supported")
    return probe


def _check_rollout_memory(config: TrainingConfig, probe: EnvironmentProbe, settings: Settings) -> None:
    # A rollout holds at least n_steps x n_envs steps before GRPO updates, all in memory at once.
    steps = config.n_steps * config.n_envs
    per_step = rollout_bytes_per_step(probe, config.reward_function_type)
    if steps * per_step > settings.max_rollout_bytes:
        values = math.prod(probe.observation_space.shape or (1,))
        raise InvalidTrainingRequest(
            f"A rollout of n_steps x n_envs = {config.n_steps:,} x {config.n_envs} = {steps:,} steps would hold "
            f"about {steps * per_step / 2**20:,.0f} MiB ({per_step} bytes a step for observations of {values} values), "
            f"more than this server's {settings.max_rollout_bytes / 2**20:,.0f} MiB (GRPO_MAX_ROLLOUT_BYTES); lower "
            f"n_steps or n_envs to at most {settings.max_rollout_bytes // per_step:,} steps a rollout"
        )


def _check_one_group_fits(config: TrainingConfig, probe: EnvironmentProbe) -> list[str]:
    """Refuse a job whose budget cannot complete even one group, which would end without a single update; returns
    notes for a job that may fall short later, as its episodes grow towards the time limit. Branching (state
    mode) completes its groups as it goes: they need no whole episodes."""
    if config.group_mode == "state":
        return []
    group, budget, shortest = config.group_size or default_group_size(), config.total_timesteps, probe.shortest_episode
    # The first group is played by the untrained policy, which acts about as randomly as the probe did.
    if group * shortest > budget:
        smaller = f", or lower group_size to at most {budget // shortest}" if budget // shortest >= 2 else ""
        raise InvalidTrainingRequest(
            f"total_timesteps {budget:,} cannot complete one group, so the job would end without a single update: "
            f"a group is {group} episodes (group_size), and {config.env_name}'s episodes lasted at least {shortest} "
            f"steps under random actions, as the untrained policy acts; raise total_timesteps to at least "
            f"{group * shortest:,}{smaller}"
        )
    longest = probe.max_episode_steps
    if longest is not None and group * longest > budget:
        return [
            f"Note: {config.env_name}'s episodes can last up to {longest} steps; once the policy makes them that "
            f"long, a group of {group} takes {group * longest:,} steps, more than total_timesteps {budget:,}"
        ]
    return []


def _check_batch_size(config: TrainingConfig, probe: EnvironmentProbe) -> list[str]:
    # A rollout is at least n_steps x n_envs steps, and at least one whole group of episodes (episode mode).
    if config.group_mode == "state":
        return []
    group = config.group_size or default_group_size()
    episode = sum(probe.episode_lengths) / len(probe.episode_lengths) if probe.episode_lengths else 1.0
    rollout = max(config.n_steps * config.n_envs, round(group * episode))
    if config.batch_size > rollout:
        return [
            f"Note: batch_size {config.batch_size} is larger than a rollout of about {rollout:,} steps, so each "
            "epoch trains on the whole rollout as one batch; lower batch_size, or raise n_steps or n_envs"
        ]
    return []


def _check_policy(policy: str, observation_space: spaces.Space) -> None:
    if policy == "CnnPolicy" and not is_image_space(observation_space, check_channels=False):
        raise InvalidTrainingRequest(f"CnnPolicy needs image observations; {observation_space} is not one")
    if policy == "MultiInputPolicy" and not isinstance(observation_space, spaces.Dict):
        raise InvalidTrainingRequest(f"MultiInputPolicy is for Dict observations; {observation_space} is not one")


def _check_algorithm(config: TrainingConfig, probe: EnvironmentProbe) -> None:
    """GRPO's own checks of the settings (advantage 'nearest' on Dict observations, branch_on 'entropy' on Box
    actions, ...) on the environment's spaces, before the job is queued."""
    try:
        check_arguments(probe.observation_space, probe.action_space, **constructor_arguments(config))
    except ValueError as error:
        raise InvalidTrainingRequest(str(error)) from None


def _check_branching(config: TrainingConfig) -> None:
    """State mode forks the environments at the states it branches from: refuse, before any job starts, what it
    could not fork (GRPO's own check, on one environment of the job's kind)."""
    if config.group_mode != "state":
        return
    if config.vec_env == "subproc":
        raise InvalidTrainingRequest(
            "group_mode 'state' forks each environment where it branches and cannot reach environments in other "
            "processes; use vec_env 'dummy'"
        )
    env = make_environments(config.model_copy(update={"n_envs": 1}))
    try:
        check_forkable(env)
    except ValueError as error:
        raise InvalidTrainingRequest(str(error)) from None
    finally:
        env.close()


def _default_reward_function(env_name: str) -> str:
    # The document's default is a CartPole reward; on any other environment it would score nonsense.
    return "optimized_cartpole" if env_name.startswith("CartPole") else "env"


def _check_reward_function(name: str, observation_space: spaces.Space) -> None:
    if name not in REWARD_FUNCTIONS:
        raise InvalidTrainingRequest(
            f"Unknown reward function {name!r}; available: {', '.join(sorted(REWARD_FUNCTIONS))}"
        )
    shape = tuple(observation_space.shape or ())
    if not fits(REWARD_FUNCTIONS[name], shape):
        raise InvalidTrainingRequest(
            f"Reward function {name!r} does not fit observations of shape {list(shape)}; "
            "use 'env' for the environment's own reward"
        )


def _generated_model_name(env_name: str, job_id: str) -> str:
    return f"grpo_{re.sub(r'[^A-Za-z0-9_.-]', '_', env_name)[:40]}_{job_id[:8]}"


def job_config(
    request: TrainingSettings, job_id: str, preset: Preset | None, settings: Settings
) -> tuple[TrainingConfig, list[str]]:
    """The request with every value filled in (the environment's preset, then the defaults), checked against the
    environment it names and this server's limits; and notes on settings that may disappoint (said in the answer)."""
    values, sources = resolve_settings(request, preset)
    if sources["reward_function_type"] == "default":
        values["reward_function_type"] = _default_reward_function(request.env_name)
    values["model_name"] = request.model_name or _generated_model_name(request.env_name, job_id)
    values["checkpoint_interval"] = request.checkpoint_interval or settings.checkpoint_interval
    values["n_envs"] = values["n_envs"] or 1
    values["policy"] = values["policy"] or "MlpPolicy"
    try:
        config = TrainingConfig(**values, sources=sources)
    except ValidationError as error:  # a preset value the service cannot take
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidTrainingRequest(f"Setting {where} ({sources.get(where, 'preset')}): {first['msg']}") from None
    probe = _check_config(config, settings)
    observation_space = probe.observation_space
    if sources["policy"] == "default":
        config.policy = default_policy(observation_space)
    _check_policy(config.policy, observation_space)
    _check_reward_function(config.reward_function_type, observation_space)
    _check_algorithm(config, probe)
    _check_branching(config)
    _check_rollout_memory(config, probe, settings)
    return config, _check_one_group_fits(config, probe) + _check_batch_size(config, probe)


def init_model(config: TrainingConfig, store: ModelStore) -> bytes | None:
    """The zip of the saved model a job starts from (RL Zoo's ``-i``), checked against the job's environment."""
    if config.init_model is None:
        return None
    if not store.exists(config.init_model):
        raise InvalidTrainingRequest(f"init_model {config.init_model!r}: no model of that name is saved")
    saved = store.info(config.init_model)
    observation_space, action_space = environment_spaces(config.env_name, config.env_kwargs)
    if (saved.observation_space, saved.action_space) != (
        describe_space(observation_space),
        describe_space(action_space),
    ):
        raise InvalidTrainingRequest(
            f"init_model {config.init_model!r} was trained on other observation or action spaces than "
            f"{config.env_name!r} has"
        )
    return store.read_bytes(config.init_model)


# a job resumed: what its record becomes before it is queued again


def recorded_config(record: JobRecord, settings: Settings) -> TrainingConfig:
    """A job's settings as its record keeps them, to resume it with."""
    # A null is an unset value: the config's default fills it (a record from before a field had one).
    values = {key: value for key, value in record.config.items() if value is not None}
    if values.get("checkpoint_interval") is None:  # recorded before checkpoints
        values["checkpoint_interval"] = settings.checkpoint_interval
    try:
        return TrainingConfig(**values)
    except ValidationError as error:
        raise JobNotResumable(
            f"Training job {record.job_id}'s recorded settings are no longer valid: {error.errors()[0]['msg']}"
        ) from None


def resumed_init_model(job_id: str, config: TrainingConfig, store: ModelStore) -> bytes | None:
    """The saved model a job resumed without a checkpoint starts from again, if it started from one."""
    try:
        return init_model(config, store)
    except InvalidTrainingRequest as error:
        raise JobNotResumable(f"Training job {job_id} cannot start again: {error.detail}") from None
