"""The GRPO training and serving service: ``create_app(settings)`` builds the FastAPI application.

Routes are grouped by resource (root and health, training, inference, models, reward functions). The state they
share (database, model store, job runner) is made in the app's lifespan and reached through typed dependencies.
Domain errors raised anywhere below are turned into HTTP status codes in one place, ``ERROR_STATUS``.

Run it with ``python run_api.py``; Swagger UI is at ``/docs`` and ReDoc at ``/redoc``.
"""

import hmac
import ipaddress
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path as FilePath
from typing import Annotated, Any

import anyio
import numpy as np
import torch as th
from fastapi import APIRouter, Body, Depends, FastAPI, Header, HTTPException, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from gymnasium import spaces
from pydantic import BaseModel
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from grpo import GRPO
from jobs import (
    InvalidTrainingRequest,
    JobNotActive,
    JobNotFound,
    JobNotResumable,
    JobRunner,
    TooManyJobs,
    UnknownEnvironment,
    environment_spaces,
)
from rewards import REWARD_FUNCTIONS, describe
from schemas import (
    BatchInferenceResponse,
    DeleteResponse,
    ErrorMessage,
    EvaluateRequest,
    EvaluateResponse,
    HealthResponse,
    InferenceRequest,
    InferenceResponse,
    JobList,
    JobMetricPoint,
    JobMetrics,
    JobProgress,
    JobStatus,
    JobSummary,
    ModelInfo,
    ModelList,
    ModelSummary,
    ReadinessResponse,
    ResumeResponse,
    RewardFunctionInfo,
    RewardFunctionList,
    RootResponse,
    StopResponse,
    TrainRequest,
    TrainResponse,
)
from settings import Settings
from store import (
    MODEL_NAME_PATTERN,
    Database,
    InvalidName,
    JobRecord,
    JobState,
    ModelBusy,
    ModelCache,
    ModelExists,
    ModelNotFound,
    ModelRecord,
    ModelStore,
    ModelUnreadable,
    ServiceError,
    utcnow,
)

__all__ = ["REWARD_FUNCTIONS", "create_app"]

VERSION = "1.0.0"
logger = logging.getLogger("grpo.api")
# The dashboard's page, scripts and styles, and the charting library they use: served as they are, no build step.
STATIC_DIR = FilePath(__file__).resolve().parent / "static"
# How often an event stream looks for new points.
EVENT_POLL_INTERVAL_S = 0.5
# uvicorn waits for open responses before it shuts down: a stream ends after this long, and its client reconnects
# with Last-Event-ID (EventSource does so by itself, after EVENT_RETRY_MS) to continue where it was.
EVENT_STREAM_MAX_S = 15.0
EVENT_RETRY_MS = 1000


class InvalidObservation(ServiceError):
    pass


class NotAuthenticated(ServiceError):
    pass


class BatchTooLarge(ServiceError):
    pass


class InvalidEvaluation(ServiceError):
    pass


# Every domain error and the status code a client sees for it; the first matching class wins.
ERROR_STATUS: dict[type[ServiceError], int] = {
    NotAuthenticated: 401,
    ModelNotFound: 404,
    JobNotFound: 404,
    ModelUnreadable: 500,
    ModelExists: 409,
    ModelBusy: 409,
    JobNotActive: 409,
    JobNotResumable: 409,
    InvalidName: 400,
    InvalidTrainingRequest: 400,
    UnknownEnvironment: 400,
    InvalidObservation: 400,
    InvalidEvaluation: 400,
    BatchTooLarge: 413,
    TooManyJobs: 429,
}


_ERROR_DESCRIPTIONS = {
    400: "Invalid parameters",
    401: "Missing or wrong X-API-Key (only when the server has a key)",
    404: "No such job or model",
    409: "Conflicts with the current state (name taken, job finished, model in training)",
    413: "The request body, or its batch of observations, is larger than this server takes",
    429: "Every training slot is busy and the queue is full; try again after Retry-After seconds",
    500: "A stored model cannot be read",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI declarations of the error answers a route can give (422 FastAPI declares itself)."""
    return {code: {"model": ErrorMessage, "description": _ERROR_DESCRIPTIONS[code]} for code in codes}


# dependencies


def get_store(request: Request) -> ModelStore:
    return request.app.state.store


def get_runner(request: Request) -> JobRunner:
    return request.app.state.runner


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="The server's GRPO_API_KEY, when it has one"
)


def require_api_key(request: Request, key: Annotated[str | None, Security(api_key_header)]) -> None:
    """Let the request through when the server has no key, or when it sent the key."""
    expected = get_settings(request).api_key
    if expected is None:
        return
    # Constant time: how long a wrong key takes to refuse says nothing about how much of it was right.
    if key is None or not hmac.compare_digest(key.encode(), expected.get_secret_value().encode()):
        raise NotAuthenticated("Missing or wrong X-API-Key")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may be reachable from anywhere
        return False


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
RunnerDep = Annotated[JobRunner, Depends(get_runner)]
ModelNameParam = Annotated[str, Path(pattern=MODEL_NAME_PATTERN)]


# error handlers


async def service_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    status = next((code for cls, code in ERROR_STATUS.items() if isinstance(exc, cls)), 400)
    return JSONResponse({"detail": exc.detail}, status_code=status, headers=exc.headers or None)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # FastAPI's own handler echoes the input, which fails to encode when it holds NaN and can be huge.
    errors = [{"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]} for error in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=422)


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "Internal server error"}, status_code=500)


# request size


class RequestSizeLimit:
    """Answers 413 to a request whose body is larger than ``max_bytes``: at once when its Content-Length says so,
    and while it is read when the body is streamed (chunked) or its Content-Length understates it."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        detail = f"Request body larger than this server's limit of {self.max_bytes} bytes"
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # FastAPI passes an HTTPException raised while it reads the body on to its handler: a clean 413.
                raise HTTPException(status_code=413, detail=detail)
            return message

        await self.app(scope, limited_receive, send)


# root and health: /health and /dashboard are open to all (the page holds no data; it asks for the key)

root_router = APIRouter(tags=["health"])
public_router = APIRouter(tags=["health"])


@root_router.get("/", response_model=RootResponse)
async def root() -> RootResponse:
    return RootResponse(
        message="GRPO API Server",
        version=VERSION,
        endpoints={
            "train": "POST /train",
            "inference": "POST /inference",
            "health": "GET /health",
            "ready": "GET /ready",
            "models": "GET /models",
            "jobs": "GET /training/jobs",
            "job_status": "GET /training/{job_id}/status",
            "stop": "POST /training/{job_id}/stop",
            "resume": "POST /training/{job_id}/resume",
            "job_metrics": "GET /training/{job_id}/metrics",
            "job_events": "GET /training/{job_id}/events",
            "model": "GET /models/{model_name}",
            "download": "GET /models/{model_name}/download",
            "evaluate": "POST /models/{model_name}/evaluate",
            "delete": "DELETE /models/{model_name}",
            "reward_functions": "GET /reward-functions",
            "docs": "GET /docs",
            "dashboard": "GET /dashboard",
        },
    )


@public_router.get("/dashboard", response_class=FileResponse, include_in_schema=False)
async def dashboard() -> FileResponse:
    """A page to watch and start training, see learning curves, manage models and try inference."""
    return FileResponse(STATIC_DIR / "dashboard.html")


def _checks(store: ModelStore) -> dict[str, Any]:
    database, model_store = store.db.check(), store.check()
    return {
        "database": "failing" if database else "ok",
        "model_store": "failing" if model_store else "ok",
        "problems": [problem for problem in (database, model_store) if problem],
    }


@public_router.get("/health", response_model=HealthResponse)
def health(runner: RunnerDep, store: StoreDep) -> HealthResponse:
    """Liveness and the state of the database and the model store; always 200 while the server answers."""
    running, queued = runner.counts()
    checks = _checks(store)
    return HealthResponse(
        status="unhealthy" if checks["problems"] else "healthy",
        timestamp=utcnow(),
        active_jobs=running,
        queued_jobs=queued,
        loaded_models=len(store.cache),
        **checks,
    )


@public_router.get(
    "/ready",
    response_model=ReadinessResponse,
    responses={503: {"model": ReadinessResponse, "description": "The database or the model store is failing"}},
)
def ready(store: StoreDep, response: Response) -> ReadinessResponse:
    """Readiness for a load balancer or an orchestrator: 503 while the database or the models folder is unusable."""
    checks = _checks(store)
    if checks["problems"]:
        response.status_code = 503
    return ReadinessResponse(ready=not checks["problems"], **checks)


# training

training_router = APIRouter(tags=["training"])


@training_router.post("/train", response_model=TrainResponse, responses=errors(400, 409, 413, 429))
def train(runner: RunnerDep, request: Annotated[TrainRequest | None, Body()] = None) -> TrainResponse:
    # No body at all trains with every default, like an empty one.
    record, config, position = runner.submit(request or TrainRequest())
    message = "Training started" if position == 0 else f"Training queued (position {position})"
    return TrainResponse(job_id=record.job_id, message=message, config=config)


@training_router.get("/training/jobs", response_model=JobList)
def list_jobs(runner: RunnerDep) -> JobList:
    return JobList(jobs=[JobSummary(**_summary_fields(record)) for record in runner.list()])


@training_router.get("/training/{job_id}/status", response_model=JobStatus, responses=errors(404))
def job_status(job_id: str, runner: RunnerDep) -> JobStatus:
    return _job_status(runner.get(job_id))


def _job_status(record: JobRecord) -> JobStatus:
    return JobStatus(
        **_summary_fields(record),
        current_timesteps=record.current_timesteps,
        total_timesteps=record.total_timesteps,
        start_time=record.start_time,
        end_time=record.end_time,
        error_message=record.error_message,
        message=record.message,
        model_saved=record.model_saved,
        checkpoint_timesteps=record.checkpoint_timesteps,
        metrics=record.metrics,
        config=record.config,
    )


@training_router.get("/training/{job_id}/metrics", response_model=JobMetrics, responses=errors(404))
def job_metrics(
    job_id: str,
    runner: RunnerDep,
    since: Annotated[int, Query(ge=0, description="Only points after this timestep")] = -1,
) -> JobMetrics:
    """The job's learning curves: one point per rollout, oldest first."""
    points = runner.metrics(job_id, since)
    return JobMetrics(job_id=job_id, points=[JobMetricPoint(**vars(point)) for point in points])


@training_router.get(
    "/training/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "Server-Sent Events: 'metrics' (a JobMetricPoint, id = its timesteps) for every point, "
            "the missed ones first; 'progress' (JobProgress) when it changes; a last 'end' (JobStatus) once the "
            "job is finished, and the stream closes. A stream without 'end' closed after "
            f"{EVENT_STREAM_MAX_S:.0f} s: reconnect with Last-Event-ID (EventSource does) to go on",
        },
        **errors(404),
    },
)
async def job_events(
    job_id: str,
    runner: RunnerDep,
    since: Annotated[int, Query(ge=0, description="Send only the points after this timestep")] = -1,
    last_event_id: Annotated[str | None, Header(description="Sent by reconnecting EventSources")] = None,
) -> StreamingResponse:
    """Watch a job live: its learning-curve points as they are recorded, its progress, and how it ended."""
    if last_event_id is not None and last_event_id.isdigit():
        since = max(since, int(last_event_id))
    await anyio.to_thread.run_sync(runner.get, job_id)  # an unknown job is a 404, not an empty stream
    return StreamingResponse(
        _job_events(runner, job_id, since),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _job_events(runner: JobRunner, job_id: str, since: int) -> AsyncIterator[str]:
    # Each stream polls what the job keeps in memory: training never waits for a watcher.
    progress = None
    closes_at = time.monotonic() + EVENT_STREAM_MAX_S
    yield f"retry: {EVENT_RETRY_MS}\n\n"
    while True:
        # An active job is read from memory, right here; only a finished one needs the database, on a thread.
        live = runner.live_snapshot(job_id, since)
        record, points = live or await anyio.to_thread.run_sync(runner.snapshot, job_id, since)
        events = [_event("metrics", JobMetricPoint(**vars(point)), point.timesteps) for point in points]
        if points:
            since = points[-1].timesteps
        current = JobProgress(
            job_id=job_id,
            status=record.status,
            progress=record.progress,
            current_timesteps=record.current_timesteps,
            total_timesteps=record.total_timesteps,
        )
        if current != progress:
            events.append(_event("progress", current))
            progress = current
        if record.status not in (JobState.QUEUED, JobState.RUNNING):
            yield "".join(events) + _event("end", _job_status(record))
            return
        if events:
            yield "".join(events)
        if time.monotonic() > closes_at:
            return
        await anyio.sleep(EVENT_POLL_INTERVAL_S)


def _event(name: str, data: BaseModel, event_id: int | None = None) -> str:
    id_line = f"id: {event_id}\n" if event_id is not None else ""
    return f"event: {name}\n{id_line}data: {data.model_dump_json()}\n\n"


@training_router.post("/training/{job_id}/stop", response_model=StopResponse, responses=errors(404, 409))
def stop_job(job_id: str, runner: RunnerDep) -> StopResponse:
    record = runner.stop(job_id)
    message = "Training job stopped"
    if record.model_saved:
        message += f"; the model trained so far ({record.current_timesteps} timesteps) is saved"
    return StopResponse(
        message=message,
        job_id=record.job_id,
        status=record.status,
        current_timesteps=record.current_timesteps,
        model_saved=record.model_saved,
        model_name=record.model_name,
    )


@training_router.post("/training/{job_id}/resume", response_model=ResumeResponse, responses=errors(404, 409, 429))
def resume_job(job_id: str, runner: RunnerDep) -> ResumeResponse:
    """Go on training an interrupted, stopped or failed job, under the same id, from its last checkpoint to its
    total_timesteps with the same settings; the model is saved under the job's model_name as before."""
    record, position = runner.resume(job_id)
    where = f"the checkpoint at {record.current_timesteps} timesteps" if record.current_timesteps else "the start"
    message = f"Training resumed from {where}" + (f"; queued (position {position})" if position else "")
    return ResumeResponse(
        job_id=record.job_id,
        message=message,
        status=record.status,
        current_timesteps=record.current_timesteps,
        total_timesteps=record.total_timesteps,
    )


def _summary_fields(record: JobRecord) -> dict[str, Any]:
    return {
        "job_id": record.job_id,
        "status": record.status,
        "progress": record.progress,
        "model_name": record.model_name,
        "env_name": record.env_name,
        "created_at": record.created_at,
    }


# inference

inference_router = APIRouter(tags=["inference"])


def observation_batch(model: GRPO, observations: Any, model_name: str) -> np.ndarray:
    """Check observations against the model's observation space; returns them as one batch array."""
    space = model.observation_space
    try:
        # Values beyond float32 become inf here and are refused below, with the NaNs.
        with np.errstate(over="ignore"):
            batch = np.asarray(observations, dtype=np.float32)
    except ValueError:
        raise InvalidObservation("Observations must be arrays of numbers, all of the same shape") from None
    expected = tuple(space.shape or ())
    shape = batch.shape[1:]
    if isinstance(space, spaces.Discrete) and shape == (1,):
        batch, shape = batch[:, 0], ()  # [3] for a Discrete observation 3
    if shape != expected:
        raise InvalidObservation(
            f"Model {model_name!r} expects observations of shape {list(expected)}, got {list(shape)}"
        )
    if not np.isfinite(batch).all():
        raise InvalidObservation("Observations must be finite numbers within float32 range")
    if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        if not (batch == np.round(batch)).all():
            raise InvalidObservation(f"Model {model_name!r} expects integer observations")
        batch = batch.astype(space.dtype)
        if not all(space.contains(observation) for observation in batch):
            raise InvalidObservation(f"Observations out of the range of {space}")
    return batch


def predict(model: GRPO, batch: np.ndarray, deterministic: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Actions for a batch of observations, and each action's probability where the space is Discrete."""
    if isinstance(model.action_space, spaces.Discrete):
        # One forward pass gives both the action and the probabilities the document returns with it.
        observation, _ = model.policy.obs_to_tensor(batch)
        with th.no_grad():
            distribution = model.policy.get_distribution(observation)
            actions = distribution.get_actions(deterministic=deterministic)
            probabilities = distribution.distribution.probs
        return actions.cpu().numpy(), probabilities.cpu().numpy()
    actions, _ = model.predict(batch, deterministic=deterministic)
    return actions, None


def action_json(action: np.ndarray, space: spaces.Space) -> Any:
    if isinstance(space, spaces.Discrete):
        return int(action)
    if isinstance(space, spaces.Box):
        return action.astype(float).tolist()
    return action.astype(int).tolist()


@inference_router.post(
    "/inference", response_model=InferenceResponse | BatchInferenceResponse, responses=errors(400, 404, 413, 500)
)
def inference(
    request: InferenceRequest, store: StoreDep, runner: RunnerDep, settings: SettingsDep
) -> InferenceResponse | BatchInferenceResponse:
    if request.observations is not None and len(request.observations) > settings.max_inference_batch:
        raise BatchTooLarge(
            f"{len(request.observations)} observations in one request; this server takes at most "
            f"{settings.max_inference_batch} (send several requests)"
        )
    try:
        model = store.load(request.model_name)
    except ModelNotFound:
        job = runner.training_job_for(request.model_name)
        if job is None:
            raise
        # The document's example asks for a prediction right after starting training: say when to come back.
        raise ModelNotFound(
            f"Model {request.model_name!r} is not trained yet: job {job.job_id} is {job.status.value} "
            f"({job.progress:.0%} done)"
        ) from None
    single = request.observations is None
    raw = [request.observation] if single else request.observations
    batch = observation_batch(model, raw, request.model_name)
    actions, probabilities = predict(model, batch, request.deterministic)
    if single:
        return InferenceResponse(
            action=action_json(actions[0], model.action_space),
            action_probs=probabilities[0].tolist() if probabilities is not None else None,
            value=None,  # GRPO has no critic
        )
    return BatchInferenceResponse(
        actions=[action_json(action, model.action_space) for action in actions],
        action_probs=probabilities.tolist() if probabilities is not None else None,
    )


# models

models_router = APIRouter(tags=["models"])


def _model_summary(record: ModelRecord, store: ModelStore) -> dict[str, Any]:
    return {
        "name": record.name,
        "status": "loaded" if store.is_loaded(record.name) else "saved",
        "env_name": record.env_name,
        "size_bytes": record.size_bytes,
        "created_at": record.created_at,
    }


@models_router.get("/models", response_model=ModelList)
def list_models(store: StoreDep) -> ModelList:
    return ModelList(models=[ModelSummary(**_model_summary(record, store)) for record in store.list()])


@models_router.get("/models/{model_name}", response_model=ModelInfo, responses=errors(404, 500))
def model_info(model_name: ModelNameParam, store: StoreDep) -> ModelInfo:
    record = store.info(model_name)
    return ModelInfo(
        **_model_summary(record, store),
        job_id=record.job_id,
        observation_space=record.observation_space,
        action_space=record.action_space,
        hyperparameters=record.hyperparameters,
        metrics=record.metrics,
        timesteps=record.timesteps,
    )


@models_router.get(
    "/models/{model_name}/download",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}, "description": "The model's SB3 zip"}, **errors(404)},
)
def download_model(model_name: ModelNameParam, store: StoreDep) -> Response:
    return Response(
        store.read_bytes(model_name),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{model_name}.zip"'},
    )


@models_router.post(
    "/models/{model_name}/evaluate", response_model=EvaluateResponse, responses=errors(400, 404, 413, 500)
)
def evaluate_model(
    model_name: ModelNameParam,
    store: StoreDep,
    request: Annotated[EvaluateRequest | None, Body()] = None,
) -> EvaluateResponse:
    request = request or EvaluateRequest()
    model = store.load(model_name)
    env_name = request.env_name or store.info(model_name).env_name
    if env_name is None:
        raise InvalidEvaluation(f"Model {model_name!r} has no recorded environment; give env_name")
    observation_space, action_space = environment_spaces(env_name)
    if observation_space.shape != model.observation_space.shape or action_space != model.action_space:
        raise InvalidEvaluation(f"Model {model_name!r} does not fit the spaces of {env_name!r}")
    env = make_vec_env(env_name, n_envs=1, seed=request.seed)
    try:
        returns, lengths = evaluate_policy(
            model,
            env,
            n_eval_episodes=request.n_episodes,
            deterministic=request.deterministic,
            return_episode_rewards=True,
            warn=False,
        )
    finally:
        env.close()
    return EvaluateResponse(
        model_name=model_name,
        env_name=env_name,
        n_episodes=request.n_episodes,
        mean_return=float(np.mean(returns)),
        std_return=float(np.std(returns)),
        mean_length=float(np.mean(lengths)),
        returns=[float(value) for value in returns],
    )


@models_router.delete("/models/{model_name}", response_model=DeleteResponse, responses=errors(404, 409))
def delete_model(model_name: ModelNameParam, store: StoreDep, runner: RunnerDep) -> DeleteResponse:
    runner.ensure_not_training(model_name)
    store.delete(model_name)
    return DeleteResponse(message=f"Model {model_name} deleted", model_name=model_name)


# reward functions

reward_functions_router = APIRouter(tags=["reward functions"])


@reward_functions_router.get("/reward-functions", response_model=RewardFunctionList)
async def reward_functions() -> RewardFunctionList:
    return RewardFunctionList(
        reward_functions=[
            RewardFunctionInfo(
                name=name,
                description=describe(fn),
                observation_shape=_shape(getattr(fn, "observation_shape", None)),
            )
            for name, fn in REWARD_FUNCTIONS.items()
        ]
    )


def _shape(shape: tuple[int, ...] | None) -> list[int] | None:
    return list(shape) if shape is not None else None


# the application


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # torch's thread count is process-wide: set it for the service's life, then give the old one back.
        previous_threads = th.get_num_threads()
        if settings.torch_threads is not None:
            th.set_num_threads(settings.torch_threads)
        db = Database(settings.db_path)
        store = ModelStore(
            settings.models_dir, db, ModelCache(settings.cache_max_models, settings.cache_max_bytes), settings.device
        )
        runner = JobRunner(db, store, settings)
        runner.recover()
        app.state.store, app.state.runner = store, runner
        logger.info("serving models from %s, records in %s", settings.models_dir, settings.db_path)
        if settings.api_key is None and not is_loopback(settings.host):
            logger.warning(
                "no API key set while serving on %s: anyone who can reach it can train, serve and delete models; "
                "set GRPO_API_KEY (or --api-key)",
                settings.host,
            )
        try:
            yield
        finally:
            # Stopping jobs waits for their threads; keep the event loop free meanwhile.
            await anyio.to_thread.run_sync(runner.shutdown)
            db.close()
            th.set_num_threads(previous_threads)

    app = FastAPI(
        title="GRPO API",
        version=VERSION,
        description="Train GRPO (Group Relative Policy Optimization) policies on Gymnasium environments and "
        "serve their actions.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_exception_handler(ServiceError, service_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
    app.include_router(public_router)
    for router in (root_router, training_router, inference_router, models_router, reward_functions_router):
        app.include_router(router, dependencies=[Depends(require_api_key)], responses=errors(401))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(RequestSizeLimit, max_bytes=settings.max_request_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Content-Type", "X-API-Key", "Last-Event-ID"],
        )
    return app
