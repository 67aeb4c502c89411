"""The GRPO training and serving service: ``create_app(settings)`` builds the FastAPI application.

The routes live in ``routes/``, one module per resource; the state they share (database, model store, job runner) is
made in the app's lifespan and reached through the typed dependencies of ``routes.dependencies``. Domain errors
(``errors.py``) raised anywhere below are turned into HTTP status codes and headers here, in one place.

Run it with ``python run_api.py``; Swagger UI is at ``/docs`` and ReDoc at ``/redoc``.
"""

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
from jobs import JobRunner
from rewards import REWARD_FUNCTIONS
from routes import health, inference, models, reward_functions, training
from routes.dependencies import require_api_key
from routes.responses import error_responses
from settings import Settings
from store import Database, ModelCache, ModelStore

__all__ = ["REWARD_FUNCTIONS", "create_app"]

logger = logging.getLogger("grpo.api")

# Every domain error and the status code a client sees for it; the first matching class wins.
ERROR_STATUS: dict[type[errors.ServiceError], int] = {
    errors.NotAuthenticated: 401,
    errors.ModelNotFound: 404,
    errors.JobNotFound: 404,
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
    errors.BatchTooLarge: 413,
    errors.TooManyJobs: 429,
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
        version=health.VERSION,
        description="Train GRPO (Group Relative Policy Optimization) policies on Gymnasium environments and "
        "serve their actions.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_exception_handler(errors.ServiceError, service_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
    app.include_router(health.public_router)
    guarded = (health.root_router, training.router, inference.router, models.router, reward_functions.router)
    for router in guarded:
        app.include_router(router, dependencies=[Depends(require_api_key)], responses=error_responses(401))
    app.mount("/static", StaticFiles(directory=health.STATIC_DIR), name="static")
    app.add_middleware(RequestSizeLimit, max_bytes=settings.max_request_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Content-Type", "X-API-Key", "Last-Event-ID"],
        )
    return app
