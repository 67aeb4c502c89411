"""The GRPO training and serving service: ``create_app(settings)`` builds the FastAPI application.

The routes live in ``routes/``, one module per resource; the state they share (database, model store, job runner) is
made in the app's lifespan and reached through the typed dependencies of ``routes.dependencies``. Domain errors
(``errors.py``) raised anywhere below are turned into HTTP status codes and headers here, in one place.

Run it with ``python run_api.py``; Swagger UI is at ``/docs`` and ReDoc at ``/redoc``.
"""

import asyncio
import gc
import ipaddress
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import torch as th
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

import errors
import plugins
import presets
from batching import MicroBatcher
from crosssite import CrossSiteGuard
from jobs import JobRunner
from lifecycle import on_exit_signals
from metrics import CacheStats, RequestMetrics, ServiceMetrics
from predictor import Predictor
from replay import ReplayUnavailable
from rewards import REWARD_FUNCTIONS
from routes import docs, health, inference, models, replays, reward_functions, studies, training
from routes import metrics as metrics_route
from routes import presets as presets_routes
from routes.dependencies import require_api_key
from routes.responses import error_responses
from settings import Settings
from store import Database, ModelCache, ModelStore
from studies import StudyManager, StudyNotActive, StudyNotFound
from training import check_presets

__all__ = ["REWARD_FUNCTIONS", "create_app"]

logger = logging.getLogger("grpo.api")

# Every domain error and the status code a client sees for it; the first matching class wins.
ERROR_STATUS: dict[type[errors.ServiceError], int] = {
    errors.NotAuthenticated: 401,
    errors.ModelNotFound: 404,
    errors.JobNotFound: 404,
    errors.PresetNotFound: 404,
    errors.ModelUnreadable: 500,
    errors.ModelExists: 409,
    errors.ModelBusy: 409,
    errors.JobNotActive: 409,
    errors.JobNotResumable: 409,
    errors.InvalidName: 400,
    errors.InvalidTrainingRequest: 400,
    errors.UnknownEnvironment: 400,
    errors.InvalidObservation: 400,
    errors.InvalidEvaluation: 400,
    errors.ModelNotExportable: 400,
    errors.BatchTooLarge: 413,
    errors.TooManyJobs: 429,
    ReplayUnavailable: 400,
    StudyNotFound: 404,
    StudyNotActive: 409,
}
# Headers that go with some of those answers: when to come back to a full queue.
ERROR_HEADERS: dict[type[errors.ServiceError], dict[str, str]] = {errors.TooManyJobs: {"Retry-After": "30"}}


# error handlers


async def service_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.ServiceError)
    status = next((code for cls, code in ERROR_STATUS.items() if isinstance(exc, cls)), 400)
    headers = next((headers for cls, headers in ERROR_HEADERS.items() if isinstance(exc, cls)), None)
    return JSONResponse({"detail": exc.detail}, status_code=status, headers=headers)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # FastAPI's own handler echoes the input, which fails to encode when it holds NaN and can be huge.
    details = [{"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]} for error in exc.errors()]
    return JSONResponse({"detail": details}, status_code=422)


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "Internal server error"}, status_code=500)


# middleware


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


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may be reachable from anywhere
        return False


# the application


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # torch's thread count is process-wide: set it for the service's life, then give the old one back.
        previous_threads = th.get_num_threads()
        if settings.torch_threads is not None:
            th.set_num_threads(settings.torch_threads)
        # Plugins first: they register the environments and reward functions that presets and jobs may name. One
        # that fails to import stops the start-up with its error.
        plugins.load_plugins(settings.plugins)
        book = presets.read(settings.presets_file)
        check_presets(book)
        db = Database(settings.db_path)
        store = ModelStore(
            settings.models_dir, db, ModelCache(settings.cache_max_models, settings.cache_max_bytes), settings.device
        )
        runner = JobRunner(db, store, settings, presets=book)
        runner.recover()
        batcher = (
            MicroBatcher(settings.inference_max_batch, settings.inference_max_wait_ms / 1000)
            if settings.inference_batching
            else None
        )
        predictor = Predictor(
            store,
            runner,
            settings.max_inference_batch,
            batcher,
            settings.inference_inline_max_work,
            metrics.observe_batch,
            settings.inference_engine,
            settings.torch_threads or 1,
        )
        app.state.store, app.state.runner, app.state.predictor = store, runner, predictor
        app.state.presets = book
        metrics.watch(runner.count_by_state, runner.steps_per_second, lambda: CacheStats(**store.cache.stats()))
        stop_metrics_server = metrics.serve(settings.host, settings.metrics_port) if settings.metrics_port else None
        app.state.studies = await anyio.to_thread.run_sync(StudyManager, runner, store, settings)
        app.state.studies.recover()
        logger.info("serving models from %s, records in %s", settings.models_dir, settings.db_path)
        if settings.api_key is None and not is_loopback(settings.host):
            logger.warning(
                "no API key set while serving on %s: anyone who can reach it can train, serve and delete models; "
                "set GRPO_API_KEY (or --api-key)",
                settings.host,
            )
        # Set when the server begins to shut down: event streams end at once (routes/training.py), so that uvicorn,
        # which waits for open responses before it runs the code below, is not held up by them.
        app.state.closing = closing = asyncio.Event()

        def begin_shutdown() -> None:
            closing.set()
            runner.begin_shutdown()  # jobs checkpoint while uvicorn finishes the requests in flight

        # What startup made (torch, SB3, the app) lives as long as the server: out of every garbage collection, which
        # would otherwise walk it again and again (a third of a small request's CPU under load, measured).
        gc.collect()
        gc.freeze()
        try:
            with on_exit_signals(begin_shutdown):
                yield
        finally:
            begin_shutdown()
            gc.unfreeze()
            # Stopping jobs waits for their threads; keep the event loop free meanwhile. Studies first: their
            # drivers mark their running trials interrupted before the jobs are.
            await anyio.to_thread.run_sync(app.state.studies.shutdown)
            await anyio.to_thread.run_sync(runner.shutdown)
            if stop_metrics_server is not None:
                stop_metrics_server()
            db.close()
            th.set_num_threads(previous_threads)

    app = FastAPI(
        title="GRPO API",
        version=health.VERSION,
        description="Train GRPO (Group Relative Policy Optimization) policies on Gymnasium environments and "
        "serve their actions.",
        lifespan=lifespan,
        # Served by routes/docs.py from the app's own files instead of a CDN: they work offline.
        docs_url=None,
        redoc_url=None,
    )
    # Made with the app, not in its lifespan: the middleware that counts requests needs it before startup.
    metrics = ServiceMetrics()
    app.state.settings, app.state.metrics = settings, metrics
    app.add_exception_handler(errors.ServiceError, service_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
    # The inference route first, and on the app itself: the router tries routes in order, an included router is
    # matched through a layer of its own (FastAPI 0.163: about a tenth of a small inference's time, measured), and it
    # is the route called thousands of times a second. It checks its key itself (routes/inference.py).
    app.router.routes.extend(inference.router.routes)
    app.include_router(health.public_router)
    app.include_router(docs.router)
    guarded = (
        health.root_router,
        training.router,
        models.router,
        reward_functions.router,
        presets_routes.router,
        metrics_route.router,
    )
    guarded += (replays.router, studies.router)
    for router in guarded:
        app.include_router(router, dependencies=[Depends(require_api_key)], responses=error_responses(401))
    app.mount("/static", StaticFiles(directory=health.STATIC_DIR), name="static")
    app.add_middleware(RequestSizeLimit, max_bytes=settings.max_request_bytes)
    # Inside CORS: an origin it allows gets the CORS headers on a refusal too, and can read why.
    app.add_middleware(CrossSiteGuard, allowed_origins=settings.cors_origins)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost but CORS: times the 413s too
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Content-Type", "X-API-Key", "Last-Event-ID"],
        )
    return app
