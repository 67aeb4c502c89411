"""Where jobs train: threads of this process (``ThreadExecutor``), or Ray actors in worker processes on this
machine or a cluster (``RayExecutor``). Both train through ``training.train_model`` and feed the runner's
bookkeeping the same way; another backend implements the ``Executor`` protocol.
"""

import io
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import artifacts
import plugins
from grpo import GRPO
from lifecycle import keep_signal_handlers
from reaper import MARKER as REAPER_MARKER
from records import JobRecord, MetricPoint
from rewards import REWARD_FUNCTIONS
from settings import Settings
from training import (
    ActiveJob,
    Checkpoint,
    Report,
    StopTraining,
    TrainingConfig,
    load_checkpoint,
    record_point,
    train_model,
)

logger = logging.getLogger("grpo.executors")

# How often the service asks a job's Ray actor for its progress.
ACTOR_POLL_INTERVAL_S = 0.5
# The service's own modules travel to Ray's workers (they need only the requirements); its data stays here.
RAY_RUNTIME_ENV = {
    "working_dir": str(Path(__file__).resolve().parent),
    "excludes": [
        *("/models/", "/tests/", "/docs/", "/benchmarks/", "/static/", "/runs/", "*.db*", "__pycache__/"),
        *("/.pytest_cache/", "/.ruff_cache/", "/.hypothesis/"),
    ],
}


class Executor(Protocol):
    """Where jobs run. ``submit`` must start work in the order given once capacity frees up; the work calls
    ``train`` for the job's model."""

    def submit(self, work: Callable[[], None]) -> Future[None]:
        """Queue ``work``; cancelling the returned future takes it out of the queue if it has not started."""
        ...

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

    def submit(self, work: Callable[[], None]) -> Future[None]:
        return self._pool.submit(work)

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
        init: bytes | None,
        history: list[MetricPoint],
        device: str,
        timeout_s: float | None,
        torch_threads: int,
        plugin_modules: list[str],
    ) -> None:
        import torch as th

        th.set_num_threads(torch_threads)
        # The worker is another process: the environments and reward functions plugins register must be here too.
        plugins.load_plugins(plugin_modules)
        self.job = ActiveJob(
            record=record,
            config=config,
            resume_from=io.BytesIO(checkpoint) if checkpoint is not None else None,
            init_from=init,
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
        with self._lock:
            newer = self._checkpoint_timesteps > checkpoint_timesteps
            return ActorProgress(
                timesteps=job.timesteps,
                metrics=dict(job.metrics),
                points=job.points_after(since_timesteps),
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
    artifacts.save_trained(model, buffer)  # normalisation statistics included
    return buffer.getvalue()


def local_ray_cpus(settings: Settings) -> int:
    """CPUs a local Ray gets: ``ray_num_cpus`` when set, else this machine's less the ``ray_server_cpus`` kept for
    the server (so that it answers quickly while every actor trains), at least one."""
    if settings.ray_num_cpus is not None:
        return settings.ray_num_cpus
    return max(1, (os.cpu_count() or 1) - settings.ray_server_cpus)


class RayExecutor:
    """Jobs as Ray actors, on a local Ray or a cluster; the service keeps one thread per running job (at most
    ``max_concurrent_jobs``) that polls its actor and feeds the runner's bookkeeping, as a thread job would.

    With no ``ray_address`` it starts a local Ray of ``local_ray_cpus`` CPUs, and stops it at shutdown; a Ray already
    started in this process is used as it is (``ray.init(runtime_env=RAY_RUNTIME_ENV)``, for the workers to find
    the service's modules).
    """

    def __init__(self, settings: Settings) -> None:
        import ray

        self._ray = ray
        self._threads = ThreadExecutor(settings.max_concurrent_jobs)
        self._actors: dict[str, Any] = {}
        self._owns_ray = not ray.is_initialized()
        self._reaper: subprocess.Popen[bytes] | None = None
        # Ray's driver makes SIGTERM a sys.exit(), which cut requests off and skipped the graceful shutdown: the
        # server keeps uvicorn's handler (and lifecycle.on_exit_signals on top of it).
        with keep_signal_handlers():
            if self._owns_ray and settings.ray_address:
                ray.init(address=settings.ray_address, runtime_env=RAY_RUNTIME_ENV)
            elif self._owns_ray:
                self._reaper = start_reaper()
                ray.init(
                    # "local": a Ray of its own, even where `ray start` left a cluster to find
                    address="local",
                    num_cpus=local_ray_cpus(settings),
                    include_dashboard=False,
                    runtime_env=RAY_RUNTIME_ENV,
                )
        logger.info("training on Ray: %s", ray.cluster_resources())

    def submit(self, work: Callable[[], None]) -> Future[None]:
        return self._threads.submit(work)

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
            .remote(
                job.record,
                config,
                resume,
                job.init_from,
                job.history[-1:],
                device,
                settings.job_timeout_s,
                max(1, int(num_cpus)),
                settings.plugins,
            )
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
        if self._reaper is not None and self._reaper.stdin is not None:
            self._reaper.stdin.close()  # it ends whatever of the local Ray is left, and exits
            self._reaper = None


def start_reaper() -> subprocess.Popen[bytes] | None:
    """Start ``reaper.py``, which ends every process of the local Ray about to start once this process ends, even
    by kill -9; marks this process's environment for the Ray processes to inherit. None where there is no /proc."""
    if not os.path.isdir("/proc"):
        return None
    token = uuid.uuid4().hex
    reaper = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("reaper.py")), token],
        stdin=subprocess.PIPE,  # never inherited by Ray's processes (PEP 446): it closes when this process ends
        start_new_session=True,
        env={key: value for key, value in os.environ.items() if key != REAPER_MARKER},
    )
    os.environ[REAPER_MARKER] = token
    return reaper


def load_model_bytes(data: bytes, config: TrainingConfig, device: str) -> GRPO:
    """A model an actor sent as zip bytes. One trained under VecNormalize comes back on one fresh environment under
    its statistics, so that saving it (``artifacts.save_trained``) keeps them."""
    if artifacts.read_normalizer(io.BytesIO(data)) is None:
        return GRPO.load(io.BytesIO(data), device=device, reward_function=REWARD_FUNCTIONS[config.reward_function_type])
    return load_checkpoint(config.model_copy(update={"n_envs": 1, "vec_env": "dummy"}), io.BytesIO(data), device)


def make_executor(settings: Settings) -> Executor:
    if settings.executor == "ray":
        return RayExecutor(settings)
    return ThreadExecutor(settings.max_concurrent_jobs, settings.job_niceness)
