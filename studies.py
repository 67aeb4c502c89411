"""Optuna studies as jobs: a search over GRPO's settings in which every trial is a training job of the service.

A study lives in the service's SQLite file through Optuna's RDB storage; what the service adds (its request, its
status, the name of its best model) is kept in the study's user attributes, and which job ran which trial in the
``study_trials`` table. Each study has a driver thread here that asks Optuna for settings, submits a job through the
``JobRunner`` (so trials run on the same executor as any job: threads, or Ray actors across a cluster), reports the
job's episode return to Optuna at fixed timestep intervals so that the pruner can stop a poor trial early, and
scores a finished trial by evaluating its model. Trials that were running when the service went down become
failed trials marked ``interrupted``, the study ``interrupted``; ``resume`` goes on with the trials still owed.
"""

import json
import logging
import math
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import optuna
from optuna.trial import FrozenTrial, Trial, TrialState
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from errors import JobNotActive, ModelExists, ServiceError, TooManyJobs
from jobs import JobRunner
from records import EvaluationRecord, JobState, ModelName, utcnow
from rewards import REWARD_FUNCTIONS, fits
from settings import Settings
from store import ModelStore
from training import TrainingSettings, environment_spaces

logger = logging.getLogger("grpo.studies")
optuna.logging.set_verbosity(optuna.logging.WARNING)

DRIVER_POLL_S = 0.5
MAX_FAILURES_IN_A_ROW = 3
FINISHED_JOB_STATES = {JobState.COMPLETED, JobState.FAILED, JobState.STOPPED, JobState.INTERRUPTED}
# What a search space may vary: GRPO's settings, not where or under which name a job runs.
SEARCHABLE = frozenset(TrainingSettings.model_fields) - {
    "env_name",
    "total_timesteps",
    "model_name",
    "overwrite",
    "checkpoint_interval",
    "vec_env",
    "num_cpus",
    "num_gpus",
    "seed",
    "reward_function_type",
}
FIXABLE = frozenset(TrainingSettings.model_fields) - {"env_name", "total_timesteps", "model_name", "overwrite"}
DEFAULT_SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
    "n_steps": {"type": "categorical", "choices": [16, 32, 64]},
    "batch_size": {"type": "categorical", "choices": [64, 128, 256]},
    "n_epochs": {"type": "int", "low": 2, "high": 10},
    "group_size": {"type": "categorical", "choices": [4, 8, 16]},
    "gamma": {"type": "categorical", "choices": [0.95, 0.98, 0.99, 0.995]},
    "clip_range": {"type": "float", "low": 0.1, "high": 0.3},
    "ent_coef": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
}
DEFAULT_FIXED: dict[str, Any] = {"n_envs": 8}


class StudyFailed(Exception):
    """Ends a study's driver: too many of its trials failed in a row."""


class InvalidStudy(ServiceError):
    pass


class StudyNotFound(ServiceError):
    pass


class StudyNotActive(ServiceError):
    """Stop of a study that is not running, or resume of one that is, or has nothing left to do."""


class ParamSpec(BaseModel):
    """One searched setting: a float or int range (``log`` for a log scale) or a list of choices."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = Field(None, min_length=1, max_length=64)


class StudyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    env_name: str = Field("CartPole-v1", min_length=1, max_length=200)
    n_trials: int = Field(20, ge=1, le=1_000, description="Trials to finish (complete or pruned)")
    total_timesteps: int = Field(20_000, ge=1, description="Environment steps per trial")
    search_space: dict[str, ParamSpec | None] = Field(
        default_factory=dict,
        description="Overrides of the default space, by setting name; null drops a setting from the search",
    )
    fixed: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings every trial takes as they are (TrainRequest's fields), e.g. reward_function_type. "
        f"Default: {DEFAULT_FIXED}",
    )
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["median", "none"] = "median"
    pruner_startup_trials: int = Field(5, ge=0, le=1_000, description="Trials the median pruner never stops")
    pruner_warmup_steps: int = Field(0, ge=0, description="Timesteps of a trial before it can be pruned")
    report_interval: int | None = Field(
        None, ge=1, description="Timesteps between the returns reported for pruning (default: a tenth of a trial)"
    )
    n_eval_episodes: int = Field(5, ge=1, le=100, description="Episodes that score a finished trial")
    parallel_trials: int = Field(1, ge=1, le=64, description="Trials trained at once")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    model_name: ModelName | None = Field(None, description="Name of the best trial's model (default: generated)")


def resolved_space(request: StudyRequest) -> dict[str, ParamSpec]:
    space = {name: ParamSpec(**spec) for name, spec in DEFAULT_SEARCH_SPACE.items()}
    for name, spec in request.search_space.items():
        if spec is None:
            space.pop(name, None)
        else:
            space[name] = spec
    for name in request.fixed:
        space.pop(name, None)
    return space


def check_request(request: StudyRequest, settings: Settings) -> dict[str, ParamSpec]:
    """The search space the study will use; InvalidStudy (400) for anything outside TrainRequest's bounds."""
    observation_space, _ = environment_spaces(request.env_name)  # unknown: a 400 that names close matches
    reward = request.fixed.get("reward_function_type")
    if reward is not None and (
        reward not in REWARD_FUNCTIONS or not fits(REWARD_FUNCTIONS[reward], tuple(observation_space.shape or ()))
    ):
        raise InvalidStudy(
            f"fixed.reward_function_type {reward!r} is not a reward function for {request.env_name} "
            f"(GET /reward-functions lists them; 'env' is the environment's own)"
        )
    if request.total_timesteps > settings.max_total_timesteps:
        raise InvalidStudy(f"total_timesteps {request.total_timesteps} exceeds this server's maximum")
    unknown = set(request.fixed) - FIXABLE
    if unknown:
        raise InvalidStudy(f"fixed cannot set {sorted(unknown)}; it takes {sorted(FIXABLE)}")
    fixed = {**DEFAULT_FIXED, **request.fixed}
    _validate(fixed, "fixed")
    space = resolved_space(request)
    for name, spec in space.items():
        if name not in SEARCHABLE:
            raise InvalidStudy(f"{name!r} cannot be searched; the search space takes {sorted(SEARCHABLE)}")
        if spec.type == "categorical":
            if not spec.choices:
                raise InvalidStudy(f"search_space.{name}: a categorical setting needs choices")
            values = spec.choices
        else:
            if spec.low is None or spec.high is None or not spec.low < spec.high:
                raise InvalidStudy(f"search_space.{name}: give low < high")
            if spec.log and spec.low <= 0:
                raise InvalidStudy(f"search_space.{name}: a log scale needs low > 0")
            if spec.type == "int" and not (float(spec.low).is_integer() and float(spec.high).is_integer()):
                raise InvalidStudy(f"search_space.{name}: an int range needs whole bounds")
            values = [spec.low, spec.high] if spec.type == "float" else [int(spec.low), int(spec.high)]
        for value in values:
            _validate({**fixed, name: value}, f"search_space.{name}")
    return space


def _validate(values: dict[str, Any], where: str) -> None:
    try:
        TrainingSettings(**values)
    except ValidationError as error:
        first = error.errors()[0]
        raise InvalidStudy(f"{where}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def sample(trial: Trial, space: dict[str, ParamSpec]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, spec in space.items():
        if spec.type == "float":
            params[name] = trial.suggest_float(name, spec.low, spec.high, log=spec.log)
        elif spec.type == "int":
            params[name] = trial.suggest_int(name, int(spec.low), int(spec.high), log=spec.log)
        elif all(choice is None or isinstance(choice, (bool, int, float, str)) for choice in spec.choices):
            params[name] = trial.suggest_categorical(name, spec.choices)
        else:  # lists (net_arch): Optuna's choices are scalars, so search their JSON
            params[name] = json.loads(trial.suggest_categorical(name, [json.dumps(c) for c in spec.choices]))
    return params


def preset_yaml(env_name: str, settings: dict[str, Any]) -> str:
    """A trial's settings as an entry of hyperparams/grpo.yml (rl-baselines3-zoo's format)."""
    lines = [f"{env_name}:"]
    for key, value in settings.items():
        if key in ("env_name", "model_name", "overwrite", "checkpoint_interval", "seed") or value is None:
            continue
        if key == "total_timesteps":
            lines.append(f"  n_timesteps: !!float {value:g}")
            lines.append("  policy: 'MlpPolicy'")
        elif key == "net_arch":
            lines.append(f'  policy_kwargs: "dict(net_arch={list(value)})"')
        elif key == "reward_function_type":
            lines.append(f"  reward_function: '{value}'")
        elif isinstance(value, bool):
            lines.append(f"  {key}: {str(value).lower()}")
        elif isinstance(value, float):
            lines.append(f"  {key}: !!float {value:.4g}" if abs(value) < 1e-3 else f"  {key}: {value:.6g}")
        elif isinstance(value, str):
            lines.append(f"  {key}: '{value}'")
        else:
            lines.append(f"  {key}: {value}")
    return "\n".join(lines) + "\n"


def evaluate(store: ModelStore, model_name: str, env_name: str, n_episodes: int, seed: int) -> tuple[float, float]:
    """Mean and std of the deterministic return of a stored model; kept with the model like POST .../evaluate."""
    model = store.load(model_name)
    env = make_vec_env(env_name, n_envs=1, seed=seed)
    try:
        returns, lengths = evaluate_policy(
            model, env, n_eval_episodes=n_episodes, deterministic=True, return_episode_rewards=True, warn=False
        )
    finally:
        env.close()
    mean, std = float(np.mean(returns)), float(np.std(returns))
    store.db.add_evaluation(
        EvaluationRecord(model_name, env_name, n_episodes, seed, True, mean, std, float(np.mean(lengths)), utcnow())
    )
    return mean, std


@dataclass
class RunningTrial:
    trial: Trial
    settings: dict[str, Any]
    job_id: str | None = None
    seen: int = -1  # timesteps of the last learning-curve point looked at
    next_report: int = 0  # the last timestep boundary reported to Optuna
    pruned: bool = False


@dataclass
class Driver:
    study_id: str
    thread: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    shutting_down: bool = False


class StudyManager:
    """The service's studies: creates them, drives their trials through the job runner, stops and resumes them."""

    def __init__(self, runner: JobRunner, store: ModelStore, settings: Settings) -> None:
        self.runner = runner
        self.store = store
        self.settings = settings
        self.storage = optuna.storages.RDBStorage(
            f"sqlite:///{settings.db_path}", engine_kwargs={"connect_args": {"timeout": 60}}
        )
        self._drivers: dict[str, Driver] = {}
        self._lock = threading.Lock()

    # lifecycle

    def recover(self) -> None:
        """Mark the studies a previous run of the service left running as interrupted, and their trials."""
        for summary in optuna.get_all_study_summaries(self.storage, include_best_trial=False):
            if summary.user_attrs.get("status") == "running":
                study = self._load(summary.study_name)
                self._abandon_running_trials(study, "interrupted")
                study.set_user_attr("status", "interrupted")
                logger.info("study %s was running when the service went down: interrupted", summary.study_name)

    def shutdown(self) -> None:
        with self._lock:
            drivers = list(self._drivers.values())
            for driver in drivers:
                driver.shutting_down = True
                driver.stop.set()
        for driver in drivers:
            if driver.thread is not None:
                driver.thread.join(timeout=30)

    # requests

    def create(self, request: StudyRequest) -> str:
        space = check_request(request, self.settings)
        if request.model_name is not None and self.store.exists(request.model_name):
            raise ModelExists(f"Model {request.model_name!r} already exists; the best trial's model needs a free name")
        study_id = uuid.uuid4().hex[:12]
        sampler = (
            optuna.samplers.TPESampler(seed=request.seed)
            if request.sampler == "tpe"
            else optuna.samplers.RandomSampler(seed=request.seed)
        )
        study = optuna.create_study(
            storage=self.storage, study_name=study_id, direction="maximize", sampler=sampler, pruner=_pruner(request)
        )
        study.set_user_attr("request", request.model_dump(mode="json"))
        study.set_user_attr("search_space", {name: spec.model_dump() for name, spec in space.items()})
        study.set_user_attr("created_at", utcnow().isoformat())
        study.set_user_attr("best_model_name", request.model_name or f"study-{study_id}-best")
        self._start(study_id, study)
        return study_id

    def stop(self, study_id: str) -> None:
        study = self._load(study_id)
        with self._lock:
            driver = self._drivers.get(study_id)
        if driver is None or study.user_attrs.get("status") != "running":
            raise StudyNotActive(f"Study {study_id} is {study.user_attrs.get('status')}; only running studies stop")
        driver.stop.set()
        if driver.thread is not None:
            driver.thread.join(timeout=30)

    def resume(self, study_id: str) -> None:
        study = self._load(study_id)
        status = study.user_attrs.get("status")
        with self._lock:
            if study_id in self._drivers or status == "running":
                raise StudyNotActive(f"Study {study_id} is running already")
        if _owed(study) <= 0:
            raise StudyNotActive(f"Study {study_id} has finished all of its trials")
        study.set_user_attr("error", None)
        self._start(study_id, study)

    def get(self, study_id: str) -> optuna.Study:
        return self._load(study_id)

    def list(self) -> list[optuna.study.StudySummary]:
        return optuna.get_all_study_summaries(self.storage, include_best_trial=True)

    # the driver

    def _load(self, study_id: str) -> optuna.Study:
        try:
            study = optuna.load_study(study_name=study_id, storage=self.storage)
        except KeyError:
            raise StudyNotFound(f"Study {study_id!r} not found") from None
        request = StudyRequest(**study.user_attrs["request"])
        # The sampler and pruner are not stored with a study: made again from its request.
        if request.sampler == "random":
            study.sampler = optuna.samplers.RandomSampler(seed=request.seed)
        else:
            study.sampler = optuna.samplers.TPESampler(seed=request.seed)
        study.pruner = _pruner(request)
        return study

    def _start(self, study_id: str, study: optuna.Study) -> None:
        study.set_user_attr("status", "running")
        driver = Driver(study_id)
        driver.thread = threading.Thread(target=self._drive, args=(driver, study), name=f"study-{study_id}")
        with self._lock:
            self._drivers[study_id] = driver
        driver.thread.start()

    def _drive(self, driver: Driver, study: optuna.Study) -> None:
        request = StudyRequest(**study.user_attrs["request"])
        space = {name: ParamSpec(**spec) for name, spec in study.user_attrs["search_space"].items()}
        interval = request.report_interval or max(1, request.total_timesteps // 10)
        running: list[RunningTrial] = []
        status = "completed"
        failures = 0
        try:
            while True:
                if driver.stop.is_set():
                    status = "interrupted" if driver.shutting_down else "stopped"
                    for trial in running:
                        self._abandon(study, trial, status, stop_job=not driver.shutting_down)
                    break
                while len(running) < request.parallel_trials and _owed(study) > 0:
                    running.append(self._ask(study, request, space))
                for trial in list(running):
                    if self._advance(study, request, trial, interval):
                        running.remove(trial)
                        failed = self.storage.get_trial(trial.trial._trial_id).state == TrialState.FAIL
                        failures = failures + 1 if failed else 0
                if failures >= max(MAX_FAILURES_IN_A_ROW, 2 * request.parallel_trials):
                    # Failed trials are made up for: a setting that fails every job would otherwise never end.
                    study.set_user_attr("error", f"{failures} trials in a row failed; see the trials' errors")
                    raise StudyFailed
                if not running and _owed(study) <= 0:
                    break
                driver.stop.wait(DRIVER_POLL_S)
        except Exception as error:
            if not isinstance(error, StudyFailed):
                logger.exception("study %s failed", driver.study_id)
                study.set_user_attr("error", f"{type(error).__name__}: {error}")
            status = "failed"
            for trial in running:
                self._abandon(study, trial, "failed", stop_job=True)
        finally:
            study.set_user_attr("status", status)
            with self._lock:
                self._drivers.pop(driver.study_id, None)
            logger.info("study %s %s", driver.study_id, status)

    def _ask(self, study: optuna.Study, request: StudyRequest, space: dict[str, ParamSpec]) -> RunningTrial:
        trial = study.ask()
        settings = {
            **DEFAULT_FIXED,
            **request.fixed,
            **sample(trial, space),
            "env_name": request.env_name,
            "total_timesteps": request.total_timesteps,
            "model_name": f"study-{study.study_name}-{trial.number}",
            "overwrite": True,
        }
        if request.seed is not None and "seed" not in request.fixed:
            settings["seed"] = request.seed + trial.number
        trial.set_user_attr("settings", settings)
        return RunningTrial(trial, settings)

    def _advance(self, study: optuna.Study, request: StudyRequest, running: RunningTrial, interval: int) -> bool:
        """Move a trial on: submit its job, report its returns, prune it, or score it. True once it is told."""
        trial = running.trial
        if running.job_id is None:
            try:
                record, _, _ = self.runner.submit(TrainingSettings(**running.settings))
            except TooManyJobs:
                return False  # the queue is full: try again at the next poll
            except (ServiceError, ValidationError) as error:
                trial.set_user_attr("error", str(error))
                study.tell(trial, state=TrialState.FAIL)
                return True
            running.job_id = record.job_id
            trial.set_user_attr("job_id", record.job_id)
            self.store.db.add_study_trial(study.study_name, trial.number, record.job_id)
        record = self.runner.get(running.job_id)
        if not running.pruned:
            self._report(running, interval, record.status in FINISHED_JOB_STATES)
        if record.status not in FINISHED_JOB_STATES:
            return False
        if running.pruned:
            study.tell(trial, state=TrialState.PRUNED)
        elif record.status is JobState.COMPLETED and record.model_saved:
            seed = request.seed if request.seed is not None else 0
            value, std = evaluate(
                self.store, record.model_name, request.env_name, request.n_eval_episodes, seed + 10_000
            )
            trial.set_user_attr("value_std", std)
            study.tell(trial, value)
            if study.best_trial.number == trial.number:
                self._save_best(study, record.model_name)
        else:
            trial.set_user_attr("error", record.error_message or record.message or record.status.value)
            study.tell(trial, state=TrialState.FAIL)
        return True

    def _report(self, running: RunningTrial, interval: int, finished: bool) -> None:
        """Report the episode return at each boundary of ``interval`` timesteps the job passed; stop the job when
        the pruner says so (a job that already finished is scored instead)."""
        assert running.job_id is not None
        for point in self.runner.metrics(running.job_id, since=running.seen):
            running.seen = point.timesteps
            if point.episode_return_mean is None:
                continue
            while point.timesteps >= running.next_report + interval:
                running.next_report += interval
                running.trial.report(point.episode_return_mean, running.next_report)
                if not finished and running.trial.should_prune():
                    running.pruned = True
                    self._stop_job(running.job_id)
                    return

    def _save_best(self, study: optuna.Study, trial_model: str) -> None:
        name = study.user_attrs["best_model_name"]
        record = self.store.info(trial_model)
        record.name = name
        self.store.save(self.store.load(trial_model), record)
        logger.info("study %s: best model so far saved as %s", study.study_name, name)

    def _stop_job(self, job_id: str) -> None:
        try:
            self.runner.stop(job_id, wait_s=0)
        except JobNotActive:
            pass

    def _abandon(self, study: optuna.Study, running: RunningTrial, why: str, stop_job: bool) -> None:
        if stop_job and running.job_id is not None:
            self._stop_job(running.job_id)
        running.trial.set_user_attr("error", why)
        study.tell(running.trial, state=TrialState.FAIL)

    def _abandon_running_trials(self, study: optuna.Study, why: str) -> None:
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self.storage.set_trial_user_attr(trial._trial_id, "error", why)
            study.tell(trial.number, state=TrialState.FAIL)


def _pruner(request: StudyRequest) -> optuna.pruners.BasePruner:
    if request.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=request.pruner_startup_trials, n_warmup_steps=request.pruner_warmup_steps
    )


def _owed(study: optuna.Study) -> int:
    """Trials still to start: n_trials less those that completed, were pruned or are running (failed ones are made
    up for)."""
    request = StudyRequest(**study.user_attrs["request"])
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    return request.n_trials - len(done)


def trial_view(trial: FrozenTrial) -> dict[str, Any]:
    value = trial.value if trial.value is not None and math.isfinite(trial.value) else None
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "params": trial.params,
        "value": value,
        "value_std": trial.user_attrs.get("value_std"),
        "intermediate_values": {int(step): float(v) for step, v in trial.intermediate_values.items()},
        "job_id": trial.user_attrs.get("job_id"),
        "model_name": trial.user_attrs.get("settings", {}).get("model_name"),
        "error": trial.user_attrs.get("error"),
        "started_at": trial.datetime_start,
        "finished_at": trial.datetime_complete,
        "settings": trial.user_attrs.get("settings"),
    }
