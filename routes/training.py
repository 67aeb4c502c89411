"""Training jobs: start one, follow it (status, learning curves, a live event stream), stop and resume it."""

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Body, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from jobs import JobRunner
from records import JobState
from routes.dependencies import ADMIN_ONLY, RunnerDep
from routes.listing import JobListQuery, jobs_page
from routes.responses import CHANGES_STATE, error_responses
from schemas import (
    JobList,
    JobMetricPoint,
    JobMetrics,
    JobProgress,
    JobStatus,
    JobSummary,
    ResumeRequest,
    ResumeResponse,
    StopResponse,
    TrainRequest,
    TrainResponse,
)

# How often an event stream looks for new points.
EVENT_POLL_INTERVAL_S = 0.5
# A stream ends at once when the server begins to shut down (app.state.closing), and after this long in any case,
# so that no proxy or client holds one forever; its client reconnects with Last-Event-ID (EventSource does so by
# itself, after EVENT_RETRY_MS) to continue where it was.
EVENT_STREAM_MAX_S = 15.0
EVENT_RETRY_MS = 1000
# The largest timestep a client may name (SQLite's largest INTEGER): past it, a 422 like any number out of range.
MAX_TIMESTEP = 2**63 - 1

router = APIRouter(tags=["training"])


# What Swagger UI offers to send: each one a request the server accepts.
TRAIN_EXAMPLES = {
    "document": {
        "summary": "The API document's example",
        "value": {"env_name": "CartPole-v1", "total_timesteps": 5000, "model_name": "test_model"},
    },
    "defaults": {"summary": "Every default: CartPole, 10,000 steps", "value": {}},
    "grpo": {
        "summary": "GRPO's own settings",
        "value": {
            "env_name": "CartPole-v1",
            "total_timesteps": 50_000,
            "n_envs": 4,
            "group_size": 8,
            "scale_rewards": "group",
            "learning_rate": 0.001,
            "seed": 0,
            "model_name": "cartpole_grpo",
        },
    },
}


@router.post(
    "/train",
    response_model=TrainResponse,
    responses=error_responses(400, 409, 413, 429, *CHANGES_STATE),
    dependencies=[ADMIN_ONLY],
)
def train(
    runner: RunnerDep, request: Annotated[TrainRequest | None, Body(openapi_examples=TRAIN_EXAMPLES)] = None
) -> TrainResponse:
    # No body at all trains with every default, like an empty one.
    record, config, position = runner.submit(request or TrainRequest())
    message = "Training started" if position == 0 else f"Training queued (position {position})"
    if record.message:  # notes on its settings
        message += f". {record.message}"
    return TrainResponse(job_id=record.job_id, message=message, config=config)


@router.get("/training/jobs", response_model=JobList, response_model_exclude_none=True, responses=error_responses(400))
def list_jobs(runner: RunnerDep, query: Annotated[JobListQuery, Query()]) -> JobList:
    """Every job in the order submitted; with ``limit`` (and ``cursor`` or ``offset``) one page of them, and with
    filters only the jobs that pass them, the answer then also giving ``total`` and ``next_cursor``."""
    if query.is_plain():
        return JobList(jobs=[JobSummary.model_validate(record) for record in runner.list()])
    return jobs_page(runner, query)


@router.get("/training/{job_id}/status", response_model=JobStatus, responses=error_responses(404))
def job_status(job_id: str, runner: RunnerDep) -> JobStatus:
    return JobStatus.model_validate(runner.get(job_id))


@router.get("/training/{job_id}/metrics", response_model=JobMetrics, responses=error_responses(404))
def job_metrics(
    job_id: str,
    runner: RunnerDep,
    since: Annotated[int, Query(ge=0, le=MAX_TIMESTEP, description="Only points after this timestep")] = -1,
) -> JobMetrics:
    """The job's learning curves: one point per rollout, oldest first."""
    points = runner.metrics(job_id, since)
    return JobMetrics(job_id=job_id, points=[JobMetricPoint.model_validate(point) for point in points])


@router.get(
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
        **error_responses(404),
    },
)
async def job_events(
    job_id: str,
    runner: RunnerDep,
    http_request: Request,
    since: Annotated[int, Query(ge=0, le=MAX_TIMESTEP, description="Send only the points after this timestep")] = -1,
    last_event_id: Annotated[str | None, Header(description="Sent by reconnecting EventSources")] = None,
) -> StreamingResponse:
    """Watch a job live: its learning-curve points as they are recorded, its progress, and how it ended."""
    since = max(since, _last_event_timestep(last_event_id))
    await anyio.to_thread.run_sync(runner.get, job_id)  # an unknown job is a 404, not an empty stream
    return StreamingResponse(
        _job_events(runner, job_id, since, http_request.app.state.closing),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _last_event_timestep(last_event_id: str | None) -> int:
    """The timestep a reconnecting client last saw: the id of a 'metrics' event. An id this server never sends is
    ignored (-1), as EventSource's own; a number out of range is a 422, as in ``since``."""
    if last_event_id is None or not re.fullmatch(r"[0-9]+", last_event_id):  # ASCII digits, not str.isdigit()'s
        return -1
    # Compared as text first: int() refuses strings of thousands of digits with a ValueError.
    if len(last_event_id.lstrip("0")) > len(str(MAX_TIMESTEP)) or int(last_event_id) > MAX_TIMESTEP:
        error = {
            "loc": ("header", "last-event-id"),
            "msg": f"Input should be less than or equal to {MAX_TIMESTEP}",
            "type": "less_than_equal",
        }
        raise RequestValidationError([error])
    return int(last_event_id)


async def _job_events(runner: JobRunner, job_id: str, since: int, closing: asyncio.Event) -> AsyncIterator[str]:
    # Each stream polls what the job keeps in memory: training never waits for a watcher.
    progress = None
    closes_at = time.monotonic() + EVENT_STREAM_MAX_S
    yield f"retry: {EVENT_RETRY_MS}\n\n"
    while True:
        # An active job is read from memory, right here; only a finished one needs the database, on a thread.
        live = runner.live_snapshot(job_id, since)
        record, points = live or await anyio.to_thread.run_sync(runner.snapshot, job_id, since)
        events = [_event("metrics", JobMetricPoint.model_validate(point), point.timesteps) for point in points]
        if points:
            since = points[-1].timesteps
        current = JobProgress.model_validate(record)
        if current != progress:
            events.append(_event("progress", current))
            progress = current
        if record.status not in (JobState.QUEUED, JobState.RUNNING):
            yield "".join(events) + _event("end", JobStatus.model_validate(record))
            return
        if events:
            yield "".join(events)
        if time.monotonic() > closes_at or closing.is_set():
            return
        # The next poll, or the server's shutdown, whichever comes first.
        with anyio.move_on_after(EVENT_POLL_INTERVAL_S):
            await closing.wait()


def _event(name: str, data: BaseModel, event_id: int | None = None) -> str:
    id_line = f"id: {event_id}\n" if event_id is not None else ""
    return f"event: {name}\n{id_line}data: {data.model_dump_json()}\n\n"


@router.post(
    "/training/{job_id}/stop",
    response_model=StopResponse,
    responses=error_responses(404, 409, *CHANGES_STATE),
    dependencies=[ADMIN_ONLY],
)
def stop_job(job_id: str, runner: RunnerDep) -> StopResponse:
    record = runner.stop(job_id)
    message = "Training job stopped"
    if record.model_saved:
        message += f"; the model trained so far ({record.current_timesteps} timesteps) is saved"
    return StopResponse.model_validate({**vars(record), "message": message})


@router.post(
    "/training/{job_id}/resume",
    response_model=ResumeResponse,
    responses=error_responses(400, 404, 409, 429, *CHANGES_STATE),
    dependencies=[ADMIN_ONLY],
)
def resume_job(
    job_id: str, runner: RunnerDep, request: Annotated[ResumeRequest | None, Body()] = None
) -> ResumeResponse:
    """Go on training an interrupted, stopped or failed job, under the same id, from its last checkpoint to its
    total_timesteps with the same settings; the model is saved under the job's model_name as before. A model saved
    under that name by another job since is a 409, unless the body says {"overwrite": true}."""
    record, position = runner.resume(job_id, overwrite=(request or ResumeRequest()).overwrite)
    where = f"the checkpoint at {record.current_timesteps} timesteps" if record.current_timesteps else "the start"
    message = f"Training resumed from {where}" + (f"; queued (position {position})" if position else "")
    return ResumeResponse.model_validate({**vars(record), "message": message})
