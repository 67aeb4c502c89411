"""The root, liveness, readiness and the dashboard page. /health, /ready and /dashboard are open to all (the page
holds no data; it asks for the key); the root needs the key like every other route."""

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse

from records import utcnow
from routes.dependencies import RunnerDep, StoreDep
from schemas import HealthResponse, ReadinessResponse, RootResponse
from store import ModelStore

VERSION = "1.0.0"
# The dashboard's page, scripts and styles, and the charting library they use: served as they are, no build step.
STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

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
