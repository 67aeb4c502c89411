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
from access import KeyRing
from batching import MicroBatcher
from crosssite import CrossSiteGuard
from data_lock import DataLocks
from jobs import JobRunner
from lifecycle import on_exit_signals
from metrics import CacheStats, RequestMetrics, ServiceMetrics
from predictor import Predictor
from rate_limits import INFERENCE, MANAGEMENT, RateLimits
from replay import ReplayUnavailable
from rewards import REWARD_FUNCTIONS
from routes import docs, health, inference, models, replays, reward_functions, studies, training
from routes import metrics as metrics_route
from routes import presets as presets_routes
from routes.dependencies import require_management_key
from routes.responses import error_responses
from security_log import REFUSED_NAME, SecurityLog
from settings import Settings
from store import Database, ModelCache, ModelStore, is_disk_full
from studies import StudyManager, StudyNotActive, StudyNotFound
from training import check_presets

__all__ = ["REWARD_FUNCTIONS", "create_app"]

logger = logging.getLogger("grpo.api")

# Every domain error and the status code a client sees for it; the first matching class wins.
ERROR_STATUS: dict[type[errors.ServiceError], int] = {
    errors.NotAuthenticated: 401,
    errors.Forbidden: 403,
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
    errors.RateLimited: 429,
    ReplayUnavailable: 400,
    StudyNotFound: 404,
    StudyNotActive: 409,
}
# When to come back to a full training queue, in seconds (a rate limit says its own).
QUEUE_RETRY_AFTER_S = 30
# Answers the security log records, beside refused names.
SECURITY_STATUSES = {401, 403, 413, 429}
# What every guarded route may answer besides its own errors: no key or a wrong one, a rate limit.
GUARDED = error_responses(401, 429)


# error handlers


async def service_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.ServiceError)
    status = next((code for cls, code in ERROR_STATUS.items() if isinstance(exc, cls)), 400)
    body: dict[str, Any] = {"detail": exc.detail}
    headers = None
    if status == 429:
        limited = isinstance(exc, errors.RateLimited)
        body["limit"] = exc.limit if limited else None
        body["retry_after_s"] = exc.retry_after_s if limited else QUEUE_RETRY_AFTER_S
        headers = {"Retry-After": str(body["retry_after_s"])}
    if status in SECURITY_STATUSES or isinstance(exc, errors.InvalidName):
        event = REFUSED_NAME if isinstance(exc, errors.InvalidName) else None
        request.app.state.security_log.record(request.scope, status, exc.detail, event=event)
    return JSONResponse(body, status_code=status, headers=headers)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # FastAPI's own handler echoes the input, which fails to encode when it holds NaN and can be huge.
    details = [{"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]} for error in exc.errors()]
    # A path part or a model name that does not match its pattern: what probing for files looks like.
    refused = [d for d in details if d["loc"][:1] == ["path"] or d["loc"][-1:] == ["model_name"]]
    if refused:
        detail = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in refused)
        request.app.state.security_log.record(request.scope, 422, detail, event=REFUSED_NAME)
    return JSONResponse({"detail": details}, status_code=422)


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    if is_disk_full(exc):
        # A write of the request (an evaluation kept, a replay cached, a study's records) found no space; SQLite and
        # the store dropped it whole, and what was there before stands.
        logger.error("%s %s: the disk is full (%s: %s)", request.method, request.url.path, type(exc).__name__, exc)
        detail = "The server's disk is full: what this request would have written was dropped; free some space"
        return JSONResponse({"detail": detail}, status_code=507)
    logger.exception("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "Internal server error"}, status_code=500)


# middleware


class RequestSizeLimit:
    """Answers 413 to a request whose body is larger than ``max_bytes``: at once when its Content-Length says so,
    and while it is read when the body is streamed (chunked) or its Content-Length understates it."""

    def __init__(self, app: Any, max_bytes: int, security_log: SecurityLog) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.security_log = security_log

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        detail = f"Request body larger than this server's limit of {self.max_bytes} bytes"
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            self.security_log.record(scope, 413, f"Content-Length {int(length)} over {self.max_bytes}")
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                self.security_log.record(scope, 413, f"streamed body past {self.max_bytes} bytes")
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
    # Read now, so that a malformed key or rate stops the server before it listens.
    keys = KeyRing.from_settings(settings)
    rate_limits = RateLimits({INFERENCE: settings.rate_limit_inference, MANAGEMENT: settings.rate_limit_management})
    security_log = SecurityLog(settings.security_log)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One server per data folder (run_api.py took the lock already; other ways of starting the app take it here).
        locks = DataLocks(settings).acquire()
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
        if not keys.enabled and not is_loopback(settings.host):
            logger.warning(
                "no API key set while serving on %s: anyone who can reach it can train, serve and delete models; "
                "set GRPO_API_KEY (or --api-key) or GRPO_API_KEYS",
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
            security_log.close()
            locks.release()

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
    app.state.settings, app.state.metrics, app.state.keys = settings, metrics, keys
    app.state.rate_limits, app.state.security_log = rate_limits, security_log
    app.add_exception_handler(errors.ServiceError, service_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
    # The inference route first, and on the app itself: the router tries routes in order, an included router is
    # matched through a layer of its own (FastAPI 0.163: about a tenth of a small inference's time, measured), and it
    # is the route called thousands of times a second. It checks its key and its rate limit itself
    # (routes/inference.py, with the inference group's KeyCheck).
    app.router.routes.extend(inference.router.routes)
    app.include_router(health.public_router)
    app.include_router(docs.router)
    # Behind a key when the server has any, each router counted against the management group's rate limit (routes
    # that need an admin key say so themselves: routes.dependencies.ADMIN_ONLY).
    managed = (
        health.root_router,
        training.router,
        models.router,
        reward_functions.router,
        presets_routes.router,
        metrics_route.router,
        replays.router,
        studies.router,
    )
    for router in managed:
        app.include_router(router, dependencies=[Depends(require_management_key)], responses=GUARDED)
    app.mount("/static", StaticFiles(directory=health.STATIC_DIR), name="static")
    app.add_middleware(RequestSizeLimit, max_bytes=settings.max_request_bytes, security_log=security_log)
    # Inside CORS: an origin it allows gets the CORS headers on a refusal too, and can read why.
    app.add_middleware(CrossSiteGuard, allowed_origins=settings.cors_origins, security_log=security_log)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost but CORS: times the 413s too
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Content-Type", "X-API-Key", "Last-Event-ID"],
        )
    return app
