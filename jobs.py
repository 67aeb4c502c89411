"""Training jobs: admitting a request, queueing it, and keeping the records of its states up to date.

A job goes ``queued`` -> ``running`` -> ``completed`` | ``failed`` | ``stopped``; a job the server was running or
holding when it went down is ``interrupted``. A running job checkpoints its model every ``checkpoint_interval``
timesteps and when it stops; an interrupted, stopped or failed job resumes from that checkpoint under its own id.
Jobs run on an ``executors.Executor`` (threads, or Ray actors), which trains them through ``training.train_model``.
"""

import logging
import sqlite3
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

from admission import init_model, job_config, recorded_config, resumed_init_model
from checkpoints import save_checkpoint
from errors import (
    JobNotActive,
    JobNotFound,
    JobNotResumable,
    ModelBusy,
    ModelExists,
    TooManyJobs,
)
from executors import Executor, make_executor
from grpo import GRPO
from presets import Preset
from records import RESUMABLE_STATES, JobRecord, JobState, MetricPoint, ModelRecord, utcnow
from settings import Settings
from store import Database, JobFilters, ModelStore, is_disk_full, remove_temporary_files, save_atomically
from training import (
    ActiveJob,
    StopTraining,
    TrainingConfig,
    TrainingSettings,
    failure_message,
    hyperparameters,
    record_point,
    release_memory,
)

logger = logging.getLogger("grpo.jobs")

# Progress reaches the database at most this often; status requests read the live values in between.
PROGRESS_WRITE_INTERVAL_S = 1.0
CHECKPOINT_FILE = "checkpoint.zip"
# A page of job records, how many pass the filters in all, and the position of the page's last job.
JobPage = tuple[list[JobRecord], int, int | None]


class JobRunner:
    """Accepts training requests, runs them on an executor, and keeps their records up to date."""

    def __init__(
        self,
        db: Database,
        store: ModelStore,
        settings: Settings,
        executor: Executor | None = None,
        presets: dict[str, Preset] | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.settings = settings
        self.presets = presets or {}  # env id -> the settings a request's omitted fields take
        self.executor = executor or make_executor(settings)
        self._active: dict[str, ActiveJob] = {}
        # Each queued job's one entry in the executor's queue, cancelled when the job is stopped before it starts.
        self._queue_entries: dict[str, Future[None]] = {}
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

    def submit(self, request: TrainingSettings) -> tuple[JobRecord, TrainingConfig, int]:
        """Queue a job; returns its record (whose message holds any notes on its settings), its full settings and
        its place in the queue (0: starts now)."""
        job_id = str(uuid.uuid4())
        config, notes = job_config(request, job_id, self.presets.get(request.env_name), self.settings)
        model_name = config.model_name
        init = init_model(config, self.store)
        record = JobRecord(
            job_id=job_id,
            status=JobState.QUEUED,
            model_name=model_name,
            env_name=config.env_name,
            config=config.model_dump(),
            total_timesteps=config.total_timesteps,
            created_at=utcnow(),
            message="; ".join(notes) or None,
        )
        job = ActiveJob(record=record, config=config, init_from=init)
        with self._lock:
            position = self._admit(model_name, config.overwrite)
            self.db.add_job(record)
            self._active[job_id] = job
        logger.info(
            "job %s queued: %s for %d timesteps -> model %s",
            job_id,
            config.env_name,
            config.total_timesteps,
            model_name,
        )
        self._enqueue(job)
        return self.get(job_id), config, position

    def _admit(self, model_name: str, overwrite: bool, resumed: JobRecord | None = None) -> int:
        """The admission check of every job that joins the queue, new or ``resumed``; called under the lock, so
        two requests for one name cannot both pass. Returns where the job would wait (0: a training slot is free)."""
        if any(job.record.model_name == model_name for job in self._active.values()):
            raise ModelBusy(f"A queued or running job is already training model {model_name!r}")
        if not overwrite and self.store.exists(model_name):
            if resumed is None:
                raise ModelExists(f'Model {model_name!r} already exists; pass "overwrite": true to replace it')
            raise ModelExists(
                f"Model {model_name!r} is newer than training job {resumed.job_id}: another job (or a copied file) "
                f'replaced it since; resume with {{"overwrite": true}} in the body to replace it with this job\'s'
            )
        position = max(0, len(self._active) - self.settings.max_concurrent_jobs + 1)
        if position > self.settings.max_queued_jobs:
            raise TooManyJobs(
                f"All {self.settings.max_concurrent_jobs} training slots are busy and "
                f"{self.settings.max_queued_jobs} job(s) are queued, this server's limit; try again later"
            )
        return position

    def resume(self, job_id: str, overwrite: bool = False) -> tuple[JobRecord, int]:
        """Queue an interrupted, stopped or failed job again, under its own id, from its last checkpoint (from the
        start when it has none) to its total_timesteps; returns its record and its place in the queue. A model
        saved under its name since (by another job) is replaced only with ``overwrite``, as /train would."""
        with self._lock:
            record = self.get(job_id)
            if job_id in self._active or record.status not in RESUMABLE_STATES:
                raise JobNotResumable(
                    f"Training job {job_id} is {record.status.value}; only interrupted, stopped and failed jobs resume"
                )
            config = recorded_config(record, self.settings)
            may_replace = overwrite or self._model_is_the_jobs_to_replace(record, config)
            position = self._admit(config.model_name, may_replace, resumed=record)
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
                init_from=None if timesteps else resumed_init_model(job_id, config, self.store),
                history=history,
                saved_points=len(history),
            )
            self._active[job_id] = job
        logger.info("job %s resumed from %d timesteps", job_id, timesteps)
        self._enqueue(job)
        return self.get(job_id), position

    def _enqueue(self, job: ActiveJob) -> None:
        entry = self.executor.submit(lambda: self._run(job))
        with self._lock:
            if self._active.get(job.record.job_id) is job and not job.started:
                self._queue_entries[job.record.job_id] = entry

    def _model_is_the_jobs_to_replace(self, record: JobRecord, config: TrainingConfig) -> bool:
        """Whether the model under the job's name is its own (saved when it stopped), or the one its request
        already agreed to replace (older than the job, submitted with overwrite); true when there is none."""
        if not self.store.exists(config.model_name):
            return True
        model = self.store.record(config.model_name)
        return model.job_id == record.job_id or (config.overwrite and model.created_at <= record.created_at)

    def _checkpoint_path(self, job_id: str) -> Path:
        return self.settings.jobs_dir / job_id / CHECKPOINT_FILE

    def _checkpoint(self, job: ActiveJob, model: GRPO) -> None:
        """Save the job's model where a resume finds it; the record names it only once it is whole on disk."""
        path = self._checkpoint_path(job.record.job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        # With what the run has in flight: a resume goes on as if it had never stopped.
        save_atomically(model, path, write=save_checkpoint)
        record_point(job)
        self._save_points(job)
        self.db.update_job(
            job.record.job_id,
            checkpoint_timesteps=model.num_timesteps,
            current_timesteps=model.num_timesteps,
            metrics=job.metrics,
        )

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
        return record, job.points_after(since)

    def metrics(self, job_id: str, since: int = -1) -> list[MetricPoint]:
        return self.snapshot(job_id, since)[1]

    def list(self) -> list[JobRecord]:
        return [self._with_live_progress(record) for record in self.db.list_jobs()]

    def page(self, filters: JobFilters, limit: int | None, offset: int = 0) -> JobPage:
        """``Database.page_jobs``, with the live progress of the running jobs."""
        records, total, last = self.db.page_jobs(filters, limit, offset)
        return [self._with_live_progress(record) for record in records], total, last

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

    def count_by_state(self) -> dict[str, int]:
        """Jobs in each state, every state named (0 included), for the metrics."""
        return {state.value: 0 for state in JobState} | self.db.count_jobs()

    def steps_per_second(self) -> dict[str, float]:
        """Environment steps per second (SB3's time/fps) of each running job that has logged it."""
        with self._lock:
            running = [job for job in self._active.values() if job.started]
        speeds = {job.record.job_id: job.metrics.get("time/fps") for job in running}
        return {job_id: speed for job_id, speed in speeds.items() if speed is not None}

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
                # Its place in the queue goes too: a resume queues it again, once.
                entry = self._queue_entries.pop(job_id, None)
                if entry is not None:
                    entry.cancel()
        if cancel_queued:
            self._finish(job, JobState.STOPPED, message="Stopped before it started; no model was trained")
            job.finished.set()
        job.finished.wait(wait_s)
        return self.get(job_id)

    def begin_shutdown(self) -> None:
        """Ask every job to stop for the server's shutdown, without waiting: running ones checkpoint at their next
        rollout and become interrupted. Takes no lock, so that a signal handler may call it at any time; a job
        admitted meanwhile is caught by ``shutdown``."""
        for job in list(self._active.values()):
            job.shutting_down = True
            job.stop_requested.set()

    def shutdown(self) -> None:
        """Stop every job: running ones within about a second, queued ones before they start."""
        with self._lock:
            self.begin_shutdown()
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
            if self._active.get(job.record.job_id) is not job:
                return  # stopped or shut down while queued, and already recorded so (or resumed as a new entry)
            job.started = True
            self._queue_entries.pop(job.record.job_id, None)
        job_id = job.record.job_id
        try:
            # Space for the records of a failure: taken back here once a full disk has room again.
            self.store.reserve.ensure()
            self._transition(job_id, JobState.RUNNING, start_time=utcnow())
            self._conclude(job, self.executor.train(job, self.settings, self._report_progress, self._checkpoint))
        except StopTraining:  # stopped before its training began anywhere
            state = JobState.INTERRUPTED if job.shutting_down else JobState.STOPPED
            self._finish(job, state, message="Stopped before its training started; no model was trained")
        except Exception as error:  # a job's failure is recorded on the job; the server goes on
            if is_disk_full(error):
                self._fail_on_full_disk(job, error)
            else:
                logger.exception("job %s failed", job_id)
                self._finish(job, JobState.FAILED, error_message=failure_message(error, job.config))
        finally:
            with self._lock:
                if self._active.get(job_id) is job:
                    del self._active[job_id]
            self._last_write.pop(job_id, None)
            job.finished.set()
            release_memory()  # nothing holds the job's model and rollout any more

    def _conclude(self, job: ActiveJob, model: GRPO) -> None:
        job.timesteps = model.num_timesteps
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
                f"{self.settings.job_timeout_s:g} s (its runs before a resume count too); stopped at "
                f"{model.num_timesteps} timesteps, {kept}"
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

    def _fail_on_full_disk(self, job: ActiveJob, error: Exception) -> None:
        """Record that a write of the job (model, checkpoint, metrics, logs) found the disk full."""
        logger.error("job %s failed: the disk is full (%s: %s)", job.record.job_id, type(error).__name__, error)
        self.store.reserve.release()  # room for the records below
        checkpoint = self.get(job.record.job_id).checkpoint_timesteps
        try:
            self._finish(job, JobState.FAILED, error_message=full_disk_message(error, checkpoint))
        except sqlite3.Error as again:
            # Even the reserve did not make room: the restart after space is freed marks the job interrupted.
            logger.error("job %s: its failure could not be recorded either (%s)", job.record.job_id, again)

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


def full_disk_message(error: Exception, checkpoint_timesteps: int | None) -> str:
    """What the record of a job that found the disk full says: what it was writing was dropped whole (the files and
    records from before are as they were), what it keeps, what to do."""
    kept = f"its last checkpoint ({checkpoint_timesteps} timesteps)" if checkpoint_timesteps else "no checkpoint"
    return (
        f"The disk is full: {type(error).__name__}: {error}. What was being written was dropped whole; "
        f"the job keeps {kept} and the models saved before are intact. Free some space, then resume the job"
    )
