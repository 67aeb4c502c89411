"""Training jobs: checking a request, queueing it, running GRPO in the background, and stopping it on demand.

A job goes ``queued`` -> ``running`` -> ``completed`` | ``failed`` | ``stopped``; a job the server was running or
holding when it went down is ``interrupted``. A running job checkpoints its model every ``checkpoint_interval``
timesteps and when it stops; an interrupted, stopped or failed job resumes from that checkpoint under its own id.
Jobs run on an ``Executor``: a thread pool of ``max_concurrent_jobs`` threads whose queue is first in, first out
(``ThreadExecutor``, training in those threads), or the same pool of threads each driving a Ray actor that trains
the job in a worker process, on this machine or a cluster (``RayExecutor``). Both train through ``train_model``
and feed the runner's bookkeeping the same way; another backend implements ``submit``, ``train`` and ``shutdown``.
"""

import bisect
import difflib
import io
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

import gymnasium as gym
from gymnasium import spaces
from pydantic import ValidationError
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnv

from grpo import GRPO, GroupResetWrapper
from rewards import REWARD_FUNCTIONS, fits
from schemas import GRPO_ARGUMENTS, TrainingConfig, TrainRequest
from settings import Settings
from store import (
    Database,
    JobRecord,
    JobState,
    MetricPoint,
    ModelBusy,
    ModelExists,
    ModelRecord,
    ModelStore,
    ServiceError,
    finite_metrics,
    remove_temporary_files,
    save_atomically,
    utcnow,
)

logger = logging.getLogger("grpo.jobs")

# Progress reaches the database at most this often; status requests read the live values in between.
PROGRESS_WRITE_INTERVAL_S = 1.0
# How often the service asks a job's Ray actor for its progress.
ACTOR_POLL_INTERVAL_S = 0.5
CHECKPOINT_FILE = "checkpoint.zip"
# The service's own modules travel to Ray's workers (they need only the requirements); its data stays here.
RAY_RUNTIME_ENV = {
    "working_dir": str(Path(__file__).resolve().parent),
    "excludes": [
        *("/models/", "/tests/", "/docs/", "/benchmarks/", "/static/", "/runs/", "*.db*", "__pycache__/"),
        *("/.pytest_cache/", "/.ruff_cache/", "/.hypothesis/"),
    ],
}
# A job in one of these states can go on from its checkpoint (or from the start, when it has none).
RESUMABLE_STATES = (JobState.INTERRUPTED, JobState.STOPPED, JobState.FAILED)
SUPPORTED_OBSERVATION_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
SUPPORTED_ACTION_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


class InvalidTrainingRequest(ServiceError):
    pass


class UnknownEnvironment(ServiceError):
    pass


class JobNotFound(ServiceError):
    pass


class JobNotActive(ServiceError):
    pass


class JobNotResumable(ServiceError):
    pass


class TooManyJobs(ServiceError):
    """Every training slot is busy and the queue is full."""

    headers: ClassVar[dict[str, str]] = {"Retry-After": "30"}


class StopTraining(Exception):
    """Raised from inside ``train()`` so a stop takes effect within one gradient step."""


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


def _check_request(request: TrainRequest, settings: Settings) -> spaces.Space:
    if request.total_timesteps > settings.max_total_timesteps:
        raise InvalidTrainingRequest(
            f"total_timesteps {request.total_timesteps} exceeds this server's maximum of {settings.max_total_timesteps}"
        )
    observation_space, action_space = environment_spaces(request.env_name)
    if not isinstance(observation_space, SUPPORTED_OBSERVATION_SPACES):
        raise InvalidTrainingRequest(f"Observation space {observation_space} is not supported")
    if not isinstance(action_space, SUPPORTED_ACTION_SPACES):
        raise InvalidTrainingRequest(f"Action space {action_space} is not supported")
    return observation_space


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
    """A job's model as its checkpoint left it, on freshly made environments, ready to train on."""
    env = make_environments(config)
    try:
        return GRPO.load(
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


class JobCallback(BaseCallback):
    """Reports a job's progress and metrics, and stops its training when asked or when it runs out of time."""

    def __init__(
        self,
        job: ActiveJob,
        report: Callable[[ActiveJob], None],
        timeout_s: float | None = None,
        checkpoint: Callable[[ActiveJob, GRPO], None] | None = None,
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
            self._deadline = self._start_time + self.timeout_s
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


Report = Callable[[ActiveJob], None]
Checkpoint = Callable[[ActiveJob, GRPO], None]


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


class Executor(Protocol):
    """Where jobs run. ``submit`` must start work in the order given once capacity frees up; the work calls
    ``train`` for the job's model."""

    def submit(self, work: Callable[[], None]) -> None: ...

    def train(self, job: ActiveJob, settings: Settings, report: Report, checkpoint: Checkpoint) -> GRPO:
        """Train the job's model until its total_timesteps or until ``job.stop_requested``; keep ``job``'s
        timesteps, metrics and history current, calling ``report(job)`` at each rollout and ``checkpoint(job,
        model)`` every ``checkpoint_interval`` timesteps. Returns the model, in this process. Raises
        ``StopTraining`` when stopped before training began."""
        ...

    def shutdown(self) -> None:
        """Drop work not yet started and wait for the running work to return."""
        ...


def lower_thread_priority(niceness: int) -> None:
    """Make the calling thread yield the CPU to the server's threads (Linux schedules threads one by one)."""
    if niceness <= 0 or not hasattr(os, "setpriority"):
        return
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + niceness))
    except OSError as error:  # e.g. a container that forbids it: training still runs, only at full priority
        logger.warning("could not lower the priority of a training thread: %s", error)


class ThreadExecutor:
    """Jobs on background threads of this process, at most ``max_workers`` at once, the rest in FIFO order.

    The threads run at a lower priority (``niceness``) so that inference requests keep their latency while
    jobs train: on a machine with as many busy jobs as cores, the scheduler otherwise splits the CPU evenly.
    """

    def __init__(self, max_workers: int, niceness: int = 0) -> None:
        self._pool = ThreadPoolExecutor(
            max_workers=max_workers,
            thread_name_prefix="grpo-job",
            initializer=lower_thread_priority,
            initargs=(niceness,),
        )

    def submit(self, work: Callable[[], None]) -> None:
        self._pool.submit(work)

    def train(self, job: ActiveJob, settings: Settings, report: Report, checkpoint: Checkpoint) -> GRPO:
        logs = settings.jobs_dir / job.record.job_id
        return train_model(job, settings.device, logs, report, checkpoint, settings.job_timeout_s)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class ActorProgress:
    """What a job's Ray actor has to tell at one poll."""

    timesteps: int
    metrics: dict[str, float]
    points: list[MetricPoint]  # learning-curve points past the ones the service has
    checkpoint: bytes | None  # the model zip of a checkpoint newer than the service has
    checkpoint_timesteps: int


class ActorLost(Exception):
    """The Ray actor training a job died (its worker process or its node went down)."""


class TrainingActor:
    """One job's training in a Ray worker process (``ray.remote`` makes it an actor with two threads).

    ``train`` runs the job, as ``ThreadExecutor`` would, through ``train_model``; the service calls ``progress``
    from its other thread twice a second, and ``stop``. Checkpoints stay in the actor as zip bytes until the
    service fetches them and writes them to its own ``jobs_dir``: workers need no shared disk, and resume reads
    the service's copy.
    """

    def __init__(
        self,
        record: JobRecord,
        config: TrainingConfig,
        checkpoint: bytes | None,
        history: list[MetricPoint],
        device: str,
        timeout_s: float | None,
        torch_threads: int,
    ) -> None:
        import torch as th

        th.set_num_threads(torch_threads)
        self.job = ActiveJob(
            record=record,
            config=config,
            resume_from=io.BytesIO(checkpoint) if checkpoint is not None else None,
            history=history,
        )
        self.device = device
        self.timeout_s = timeout_s
        self._checkpoint = b""
        self._checkpoint_timesteps = 0
        self._lock = threading.Lock()

    def train(self) -> tuple[bytes, bool]:
        """The trained model as a zip, and whether it ran out of time."""
        model = train_model(self.job, self.device, None, record_point, self._keep_checkpoint, self.timeout_s)
        return model_bytes(model), self.job.timed_out

    def progress(self, since_timesteps: int, checkpoint_timesteps: int) -> ActorProgress:
        job = self.job
        first = bisect.bisect_right(job.history, since_timesteps, key=lambda point: point.timesteps)
        with self._lock:
            newer = self._checkpoint_timesteps > checkpoint_timesteps
            return ActorProgress(
                timesteps=job.timesteps,
                metrics=dict(job.metrics),
                points=job.history[first:],
                checkpoint=self._checkpoint if newer else None,
                checkpoint_timesteps=self._checkpoint_timesteps,
            )

    def stop(self) -> None:
        self.job.stop_requested.set()

    def _keep_checkpoint(self, job: ActiveJob, model: GRPO) -> None:
        record_point(job)
        data = model_bytes(model)
        with self._lock:
            self._checkpoint, self._checkpoint_timesteps = data, model.num_timesteps


def model_bytes(model: GRPO) -> bytes:
    buffer = io.BytesIO()
    model.save(buffer)
    return buffer.getvalue()


class RayExecutor:
    """Jobs as Ray actors, on a local Ray or a cluster; the service keeps one thread per running job (at most
    ``max_concurrent_jobs``) that polls its actor and feeds the runner's bookkeeping, as a thread job would.

    With no ``ray_address`` it starts a local Ray of ``ray_num_cpus`` CPUs, and stops it at shutdown; a Ray already
    started in this process is used as it is (``ray.init(runtime_env=RAY_RUNTIME_ENV)``, for the workers to find
    the service's modules).
    """

    def __init__(self, settings: Settings) -> None:
        import ray

        self._ray = ray
        self._threads = ThreadExecutor(settings.max_concurrent_jobs)
        self._actors: dict[str, Any] = {}
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            if settings.ray_address:
                ray.init(address=settings.ray_address, runtime_env=RAY_RUNTIME_ENV)
            else:
                ray.init(
                    # "local": a Ray of its own, even where `ray start` left a cluster to find
                    address="local",
                    num_cpus=settings.ray_num_cpus,
                    include_dashboard=False,
                    runtime_env=RAY_RUNTIME_ENV,
                )
        logger.info("training on Ray: %s", ray.cluster_resources())

    def submit(self, work: Callable[[], None]) -> None:
        self._threads.submit(work)

    def actor(self, job_id: str) -> Any:
        """The Ray actor handle training a job, while it runs (for operators and tests)."""
        return self._actors[job_id]

    def train(self, job: ActiveJob, settings: Settings, report: Report, checkpoint: Checkpoint) -> GRPO:
        ray = self._ray
        config = job.config
        num_cpus = config.num_cpus or (config.n_envs if config.vec_env == "subproc" else 1)
        num_gpus = config.num_gpus or 0
        device = "cuda" if num_gpus else ("cpu" if settings.device == "auto" else settings.device)
        resume = job.resume_from.read_bytes() if isinstance(job.resume_from, Path) else None
        actor = (
            ray.remote(TrainingActor)
            .options(
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                max_concurrency=2,
                max_restarts=0,
            )
            .remote(job.record, config, resume, job.history[-1:], device, settings.job_timeout_s, max(1, int(num_cpus)))
        )
        self._actors[job.record.job_id] = actor
        job.started_at = time.monotonic() - (job.history[-1].wall_time_s if job.history else 0.0)
        result = actor.train.remote()
        answered = stop_sent = False
        checkpoint_timesteps = job.record.checkpoint_timesteps or 0
        try:
            while True:
                done, _ = ray.wait([result], timeout=ACTOR_POLL_INTERVAL_S)
                if job.stop_requested.is_set() and not stop_sent:
                    if not answered:  # still waiting for a worker: nothing to keep
                        raise StopTraining
                    actor.stop.remote()
                    stop_sent = True
                try:
                    last_point = job.history[-1].timesteps if job.history else 0
                    progress = ray.get(actor.progress.remote(last_point, checkpoint_timesteps), timeout=10)
                except ray.exceptions.GetTimeoutError:
                    continue  # not placed yet, or busy: ask again
                answered = True
                job.timesteps, job.metrics = progress.timesteps, progress.metrics
                job.history.extend(progress.points)
                if progress.checkpoint is not None:
                    checkpoint(job, load_model_bytes(progress.checkpoint, config, settings.device))
                    checkpoint_timesteps = progress.checkpoint_timesteps
                report(job)
                if done:
                    break
            data, job.timed_out = ray.get(result)
        except ray.exceptions.RayActorError as error:
            raise ActorLost(f"the Ray actor training the job died: {str(error).splitlines()[0]}") from error
        finally:
            self._actors.pop(job.record.job_id, None)
            ray.kill(actor)
        return load_model_bytes(data, config, settings.device)

    def shutdown(self) -> None:
        self._threads.shutdown()
        if self._owns_ray:
            self._ray.shutdown()


def load_model_bytes(data: bytes, config: TrainingConfig, device: str) -> GRPO:
    return GRPO.load(io.BytesIO(data), device=device, reward_function=REWARD_FUNCTIONS[config.reward_function_type])


def make_executor(settings: Settings) -> Executor:
    if settings.executor == "ray":
        return RayExecutor(settings)
    return ThreadExecutor(settings.max_concurrent_jobs, settings.job_niceness)


class JobRunner:
    """Accepts training requests, runs them on an executor, and keeps their records up to date."""

    def __init__(self, db: Database, store: ModelStore, settings: Settings, executor: Executor | None = None) -> None:
        self.db = db
        self.store = store
        self.settings = settings
        self.executor = executor or make_executor(settings)
        self._active: dict[str, ActiveJob] = {}
        self._lock = threading.Lock()
        self._last_write: dict[str, float] = {}

    def recover(self) -> None:
        """Mark what a previous run of the server left unfinished."""
        count = self.db.interrupt_unfinished(
            "The server went down while the job was queued or running; resume goes on from its last checkpoint"
        )
        if count:
            logger.info("%d job(s) left unfinished by the previous run marked interrupted", count)
        self.store.remove_temporary_files()
        for folder in self.settings.jobs_dir.glob("*/"):
            remove_temporary_files(folder)

    # requests

    def submit(self, request: TrainRequest) -> tuple[JobRecord, TrainingConfig, int]:
        """Queue a job; returns its record, its full settings and its place in the queue (0: starts now)."""
        observation_space = _check_request(request, self.settings)
        reward_function = request.reward_function_type
        if "reward_function_type" not in request.model_fields_set:
            reward_function = _default_reward_function(request.env_name)
        _check_reward_function(reward_function, observation_space)

        job_id = str(uuid.uuid4())
        model_name = request.model_name or _generated_model_name(request.env_name, job_id)
        config = TrainingConfig(
            **request.model_dump(exclude={"reward_function_type", "model_name", "checkpoint_interval"}),
            reward_function_type=reward_function,
            model_name=model_name,
            checkpoint_interval=request.checkpoint_interval or self.settings.checkpoint_interval,
        )
        record = JobRecord(
            job_id=job_id,
            status=JobState.QUEUED,
            model_name=model_name,
            env_name=config.env_name,
            config=config.model_dump(),
            total_timesteps=config.total_timesteps,
            created_at=utcnow(),
        )
        job = ActiveJob(record=record, config=config)
        with self._lock:
            # Under the lock, so two requests for one name cannot both pass the check.
            self._check_model_name_free(model_name, config.overwrite)
            position = self._queue_position()
            self.db.add_job(record)
            self._active[job_id] = job
        logger.info(
            "job %s queued: %s for %d timesteps -> model %s",
            job_id,
            config.env_name,
            config.total_timesteps,
            model_name,
        )
        self.executor.submit(lambda: self._run(job))
        return self.get(job_id), config, position

    def _queue_position(self) -> int:
        """Where a job submitted now would wait (0: a training slot is free); 429 when the queue is full."""
        position = max(0, len(self._active) - self.settings.max_concurrent_jobs + 1)
        if position > self.settings.max_queued_jobs:
            raise TooManyJobs(
                f"All {self.settings.max_concurrent_jobs} training slots are busy and "
                f"{self.settings.max_queued_jobs} job(s) are queued, this server's limit; try again later"
            )
        return position

    def resume(self, job_id: str) -> tuple[JobRecord, int]:
        """Queue an interrupted, stopped or failed job again, under its own id, from its last checkpoint (from the
        start when it has none) to its total_timesteps; returns its record and its place in the queue."""
        with self._lock:
            record = self.get(job_id)
            if job_id in self._active or record.status not in RESUMABLE_STATES:
                raise JobNotResumable(
                    f"Training job {job_id} is {record.status.value}; only interrupted, stopped and failed jobs resume"
                )
            config = self._recorded_config(record)
            if any(job.record.model_name == config.model_name for job in self._active.values()):
                raise ModelBusy(f"A queued or running job is already training model {config.model_name!r}")
            position = self._queue_position()
            checkpoint = self._checkpoint_path(job_id)
            timesteps = (record.checkpoint_timesteps or 0) if checkpoint.is_file() else 0
            # The points past the checkpoint belong to training the resume redoes.
            self.db.delete_metrics_after(job_id, timesteps)
            self.db.update_job(
                job_id,
                status=JobState.QUEUED,
                current_timesteps=timesteps,
                end_time=None,
                error_message=None,
                message=f"Resumed from {timesteps} timesteps" if timesteps else "Resumed from the start",
            )
            record = self.db.get_job(job_id) or record
            history = self.db.list_metrics(job_id)
            job = ActiveJob(
                record=record,
                config=config,
                timesteps=timesteps,
                metrics=record.metrics,
                resume_from=checkpoint if timesteps else None,
                history=history,
                saved_points=len(history),
            )
            self._active[job_id] = job
        logger.info("job %s resumed from %d timesteps", job_id, timesteps)
        self.executor.submit(lambda: self._run(job))
        return self.get(job_id), position

    def _recorded_config(self, record: JobRecord) -> TrainingConfig:
        values = dict(record.config)
        if values.get("checkpoint_interval") is None:  # recorded before checkpoints
            values["checkpoint_interval"] = self.settings.checkpoint_interval
        try:
            return TrainingConfig(**values)
        except ValidationError as error:
            raise JobNotResumable(
                f"Training job {record.job_id}'s recorded settings are no longer valid: {error.errors()[0]['msg']}"
            ) from None

    def _checkpoint_path(self, job_id: str) -> Path:
        return self.settings.jobs_dir / job_id / CHECKPOINT_FILE

    def _checkpoint(self, job: ActiveJob, model: GRPO) -> None:
        """Save the job's model where a resume finds it; the record names it only once it is whole on disk."""
        path = self._checkpoint_path(job.record.job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomically(model, path)
        record_point(job)
        self._save_points(job)
        self.db.update_job(
            job.record.job_id,
            checkpoint_timesteps=model.num_timesteps,
            current_timesteps=model.num_timesteps,
            metrics=job.metrics,
        )

    def _check_model_name_free(self, name: str, overwrite: bool) -> None:
        if any(job.record.model_name == name for job in self._active.values()):
            raise ModelBusy(f"A queued or running job is already training model {name!r}")
        if not overwrite and self.store.exists(name):
            raise ModelExists(f'Model {name!r} already exists; pass "overwrite": true to replace it')

    def training_job_for(self, model_name: str) -> JobRecord | None:
        """The queued or running job that will save ``model_name``, if any."""
        with self._lock:
            job_id = next((job_id for job_id, job in self._active.items() if job.record.model_name == model_name), None)
        return self.get(job_id) if job_id else None

    def ensure_not_training(self, model_name: str) -> None:
        if self.training_job_for(model_name) is not None:
            raise ModelBusy(f"A queued or running job is training model {model_name!r}; stop it first")

    def get(self, job_id: str) -> JobRecord:
        record = self.db.get_job(job_id)
        if record is None:
            raise JobNotFound(f"Training job {job_id!r} not found")
        return self._with_live_progress(record)

    def snapshot(self, job_id: str, since: int = -1) -> tuple[JobRecord, list[MetricPoint]]:
        """A job's record and its learning-curve points after timestep ``since``.

        A queued or running job is read from memory (``live_snapshot``); a finished one from the database, which
        holds all of its points by the time the job leaves memory.
        """
        live = self.live_snapshot(job_id, since)
        if live is not None:
            return live
        return self.get(job_id), self.db.list_metrics(job_id, since)

    def live_snapshot(self, job_id: str, since: int = -1) -> tuple[JobRecord, list[MetricPoint]] | None:
        """``snapshot`` of a queued or running job, from memory alone: it never waits for a lock or the disk, so
        any number of watchers can call it from the event loop. None once the job is no longer active."""
        job = self._active.get(job_id)  # one dict read is atomic: no lock to contend for with the job's thread
        if job is None:
            return None
        record = replace(
            job.record,
            status=JobState.RUNNING if job.started else JobState.QUEUED,
            current_timesteps=job.timesteps,
            metrics=dict(job.metrics),
        )
        # The history is sorted by timesteps: find the new points without walking all of them.
        first = bisect.bisect_right(job.history, since, key=lambda point: point.timesteps)
        return record, job.history[first:]

    def metrics(self, job_id: str, since: int = -1) -> list[MetricPoint]:
        return self.snapshot(job_id, since)[1]

    def list(self) -> list[JobRecord]:
        return [self._with_live_progress(record) for record in self.db.list_jobs()]

    def _with_live_progress(self, record: JobRecord) -> JobRecord:
        job = self._active.get(record.job_id)
        if job is not None and record.status is JobState.RUNNING:
            record.current_timesteps = max(record.current_timesteps, job.timesteps)
            record.metrics = dict(job.metrics)
        return record

    def counts(self) -> tuple[int, int]:
        """(running, queued) jobs."""
        with self._lock:
            running = sum(job.started for job in self._active.values())
            return running, len(self._active) - running

    def stop(self, job_id: str, wait_s: float = 10.0) -> JobRecord:
        """Stop a job; a running one keeps the model it trained so far. Waits up to ``wait_s`` for it."""
        with self._lock:
            job = self._active.get(job_id)
            if job is None:
                record = self.get(job_id)
                raise JobNotActive(f"Training job {job_id} is already {record.status.value}")
            job.stop_requested.set()
            cancel_queued = not job.started
            if cancel_queued:
                del self._active[job_id]
        if cancel_queued:
            self._finish(job, JobState.STOPPED, message="Stopped before it started; no model was trained")
            job.finished.set()
        job.finished.wait(wait_s)
        return self.get(job_id)

    def shutdown(self) -> None:
        """Stop every job: running ones within about a second, queued ones before they start."""
        with self._lock:
            jobs = list(self._active.values())
            for job in jobs:
                job.shutting_down = True
                job.stop_requested.set()
        self.executor.shutdown()
        with self._lock:
            # Work the executor dropped before it started never reached _run.
            leftovers = [job for job in self._active.values() if not job.started]
            for job in leftovers:
                del self._active[job.record.job_id]
        for job in leftovers:
            self._finish(job, JobState.INTERRUPTED, message="The server shut down before the job started")
            job.finished.set()

    # the job itself

    def _run(self, job: ActiveJob) -> None:
        with self._lock:
            if job.record.job_id not in self._active:
                return  # stopped or shut down while queued, and already recorded so
            job.started = True
        job_id = job.record.job_id
        self._transition(job_id, JobState.RUNNING, start_time=utcnow())
        try:
            model = self.executor.train(job, self.settings, self._report_progress, self._checkpoint)
            job.timesteps = model.num_timesteps
            self._conclude(job, model)
        except StopTraining:  # stopped before its training began anywhere
            state = JobState.INTERRUPTED if job.shutting_down else JobState.STOPPED
            self._finish(job, state, message="Stopped before its training started; no model was trained")
        except Exception as error:  # a job's failure is recorded on the job; the server goes on
            logger.exception("job %s failed", job_id)
            self._finish(job, JobState.FAILED, error_message=f"{type(error).__name__}: {error}")
        finally:
            with self._lock:
                self._active.pop(job_id, None)
            self._last_write.pop(job_id, None)
            job.finished.set()

    def _conclude(self, job: ActiveJob, model: GRPO) -> None:
        stopped = job.stop_requested.is_set() and model.num_timesteps < job.config.total_timesteps
        if stopped and model.num_timesteps > 0:
            self._checkpoint(job, model)  # a resume then loses nothing
        if job.shutting_down and stopped:
            self._finish(
                job,
                JobState.INTERRUPTED,
                message=f"The server shut down while the job ran; resume goes on from {model.num_timesteps} timesteps",
            )
            return
        saved = model.num_timesteps > 0
        kept = f"the model trained so far is saved as {job.config.model_name!r}" if saved else "no model was saved"
        if saved:
            self.store.save(
                model,
                ModelRecord(
                    name=job.config.model_name,
                    size_bytes=0,
                    created_at=utcnow(),
                    env_name=job.config.env_name,
                    job_id=job.record.job_id,
                    hyperparameters=hyperparameters(job.config, model),
                    metrics=job.metrics,
                    timesteps=model.num_timesteps,
                ),
            )
        if stopped and job.timed_out:
            error = (
                f"Timed out: the job trained for longer than this server's job_timeout_s of "
                f"{self.settings.job_timeout_s:g} s; stopped at {model.num_timesteps} timesteps, {kept}"
            )
            self._finish(job, JobState.FAILED, error_message=error, model_saved=saved)
        elif stopped:
            message = (
                f"Stopped at {model.num_timesteps} timesteps; {kept}"
                if saved
                else "Stopped before any training step; no model was saved"
            )
            self._finish(job, JobState.STOPPED, message=message, model_saved=saved)
        else:
            self._finish(job, JobState.COMPLETED, model_saved=saved)
            # Done: the model is saved in full, and the checkpoint has no more use.
            self._checkpoint_path(job.record.job_id).unlink(missing_ok=True)

    def _report_progress(self, job: ActiveJob) -> None:
        record_point(job)
        now = time.monotonic()
        if now - self._last_write.get(job.record.job_id, 0.0) >= PROGRESS_WRITE_INTERVAL_S:
            self._last_write[job.record.job_id] = now
            self.db.update_job(job.record.job_id, current_timesteps=job.timesteps, metrics=job.metrics)
            self._save_points(job)

    def _save_points(self, job: ActiveJob) -> None:
        # Batched with the progress writes: one transaction a second, however short the rollouts are.
        points = job.history[job.saved_points :]
        self.db.add_metrics(job.record.job_id, points)
        job.saved_points += len(points)

    def _finish(self, job: ActiveJob, status: JobState, **values: Any) -> None:
        # Before the job leaves the active set: from then on, readers find all of its points in the database.
        record_point(job)
        self._save_points(job)
        self._transition(
            job.record.job_id,
            status,
            end_time=utcnow(),
            current_timesteps=job.timesteps,
            metrics=job.metrics,
            **values,
        )

    def _transition(self, job_id: str, status: JobState, **values: Any) -> None:
        self.db.update_job(job_id, status=status, **values)
        detail = values.get("error_message") or values.get("message") or ""
        logger.info("job %s %s%s", job_id, status.value, f": {detail}" if detail else "")
