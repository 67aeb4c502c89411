"""Training jobs: start one, follow it (status, learning curves, a live event stream), stop and resume it."""

import time
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Body, Header, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from jobs import JobRunner
from records import JobState
from routes.dependencies import ADMIN_ONLY, RunnerDep
from routes.responses import error_responses
from schemas import (
    JobList,
    JobMetricPoint,
    JobMetrics,
    JobProgress,
    JobStatus,
    JobSummary,
    ResumeResponse,
    StopResponse,
    TrainRequest,
    TrainResponse,
)

# How often an event stream looks for new points.
EVENT_POLL_INTERVAL_S = 0.5
# uvicorn waits for open responses before it shuts down: a stream ends after this long, and its client reconnects
# with Last-Event-ID (EventSource does so by itself, after EVENT_RETRY_MS) to continue where it was.
EVENT_STREAM_MAX_S = 15.0
EVENT_RETRY_MS = 1000

router = APIRouter(tags=["training"])


@router.post(
    "/train", response_model=TrainResponse, responses=error_responses(400, 403, 409, 413), dependencies=[ADMIN_ONLY]
)
def train(runner: RunnerDep, request: Annotated[TrainRequest | None, Body()] = None) -> TrainResponse:
    # No body at all trains with every default, like an empty one.
    record, config, position = runner.submit(request or TrainRequest())
    message = "Training started" if position == 0 else f"Training queued (position {position})"
    return TrainResponse(job_id=record.job_id, message=message, config=config)


@router.get("/training/jobs", response_model=JobList)
def list_jobs(runner: RunnerDep) -> JobList:
    return JobList(jobs=[JobSummary.model_validate(record) for record in runner.list()])


@router.get("/training/{job_id}/status", response_model=JobStatus, responses=error_responses(404))
def job_status(job_id: str, runner: RunnerDep) -> JobStatus:
    return JobStatus.model_validate(runner.get(job_id))


@router.get("/training/{job_id}/metrics", response_model=JobMetrics, responses=error_responses(404))
def job_metrics(
    job_id: str,
    runner: RunnerDep,
    since: Annotated[int, Query(ge=0, description="Only points after this timestep")] = -1,
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
        if time.monotonic() > closes_at:
            return
        await anyio.sleep(EVENT_POLL_INTERVAL_S)


def _event(name: str, data: BaseModel, event_id: int | None = None) -> str:
    id_line = f"id: {event_id}\n" if event_id is not None else ""
    return f"event: {name}\n{id_line}data: {data.model_dump_json()}\n\n"


@router.post(
    "/training/{job_id}/stop",
    response_model=StopResponse,
    responses=error_responses(403, 404, 409),
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
    responses=error_responses(403, 404, 409),
    dependencies=[ADMIN_ONLY],
)
def resume_job(job_id: str, runner: RunnerDep) -> ResumeResponse:
    """Go on training an interrupted, stopped or failed job, under the same id, from its last checkpoint to its
    total_timesteps with the same settings; the model is saved under the job's model_name as before."""
    record, position = runner.resume(job_id)
    where = f"the checkpoint at {record.current_timesteps} timesteps" if record.current_timesteps else "the start"
    message = f"Training resumed from {where}" + (f"; queued (position {position})" if position else "")
    return ResumeResponse.model_validate({**vars(record), "message": message})
