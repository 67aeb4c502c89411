"""Optuna studies as jobs: start a search over GRPO's settings, watch its trials, stop and resume it."""

from datetime import datetime
from typing import Annotated, Any

import optuna
from fastapi import APIRouter, Body, Path, Request
from optuna.trial import TrialState
from pydantic import BaseModel, Field

from routes.dependencies import ADMIN_ONLY
from routes.responses import CHANGES_STATE, error_responses
from studies import StudyManager, StudyRequest, preset_yaml, trial_view

router = APIRouter(tags=["studies"])
StudyId = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")]


def get_studies(request: Request) -> StudyManager:
    return request.app.state.studies


class StudyCreated(BaseModel):
    study_id: str
    message: str
    search_space: dict[str, Any] = Field(description="The space searched: the defaults with the request's overrides")
    best_model_name: str


class StudySummary(BaseModel):
    study_id: str
    env_name: str
    status: str = Field(description="running, completed, stopped, interrupted (by a restart: resume goes on), failed")
    n_trials: int = Field(description="Trials the study is to finish")
    trials: dict[str, int] = Field(description="Trials by state: complete, pruned, fail, running")
    best_value: float | None
    best_trial: int | None
    best_model_name: str
    created_at: datetime | None
    error: str | None = Field(None, description="Why a failed study failed")


class StudyList(BaseModel):
    studies: list[StudySummary]


class TrialInfo(BaseModel):
    number: int
    state: str = Field(description="running, complete, pruned or fail (error says why: stopped, interrupted, ...)")
    params: dict[str, Any]
    value: float | None = Field(description="Mean evaluated return of the trial's model")
    value_std: float | None
    intermediate_values: dict[int, float] = Field(description="Episode return at each reported timestep")
    job_id: str | None
    model_name: str | None
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    settings: dict[str, Any] | None = Field(description="The trial's training request")


class StudyDetail(StudySummary):
    request: dict[str, Any]
    search_space: dict[str, Any]
    trials_list: list[TrialInfo] = Field(description="Every trial, by number")
    best_preset_yaml: str | None = Field(description="The best trial's settings as a hyperparams/grpo.yml entry")


class StudyAction(BaseModel):
    study_id: str
    status: str
    message: str


def _summary(study_id: str, attrs: dict[str, Any], trials: list[optuna.trial.FrozenTrial]) -> dict[str, Any]:
    request = StudyRequest(**attrs["request"])
    counts = {state.name.lower(): 0 for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    counts["running"] = 0
    for trial in trials:
        key = trial.state.name.lower()
        counts[key] = counts.get(key, 0) + 1
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE and trial.value is not None]
    best = max(complete, key=lambda trial: trial.value) if complete else None
    created = attrs.get("created_at")
    return {
        "study_id": study_id,
        "env_name": request.env_name,
        "status": attrs.get("status", "unknown"),
        "n_trials": request.n_trials,
        "trials": counts,
        "best_value": best.value if best else None,
        "best_trial": best.number if best else None,
        "best_model_name": attrs["best_model_name"],
        "created_at": datetime.fromisoformat(created) if created else None,
        "error": attrs.get("error"),
    }


@router.post(
    "/studies",
    response_model=StudyCreated,
    responses=error_responses(400, 409, *CHANGES_STATE),
    dependencies=[ADMIN_ONLY],
)
def create_study(request: Request, body: Annotated[StudyRequest | None, Body()] = None) -> StudyCreated:
    studies = get_studies(request)
    study_id = studies.create(body or StudyRequest())
    study = studies.get(study_id)
    return StudyCreated(
        study_id=study_id,
        message="Study started",
        search_space=study.user_attrs["search_space"],
        best_model_name=study.user_attrs["best_model_name"],
    )


@router.get("/studies", response_model=StudyList)
def list_studies(request: Request) -> StudyList:
    studies = get_studies(request)
    summaries = []
    for summary in studies.list():
        if "request" not in summary.user_attrs:
            continue  # an Optuna study not made by this service
        trials = studies.storage.get_all_trials(summary._study_id, deepcopy=False)
        summaries.append(StudySummary(**_summary(summary.study_name, summary.user_attrs, trials)))
    return StudyList(studies=summaries)


@router.get("/studies/{study_id}", response_model=StudyDetail, responses=error_responses(404))
def get_study(study_id: StudyId, request: Request) -> StudyDetail:
    study = get_studies(request).get(study_id)
    trials = study.get_trials(deepcopy=False)
    summary = _summary(study_id, study.user_attrs, trials)
    best = trials[summary["best_trial"]] if summary["best_trial"] is not None else None
    settings = best.user_attrs.get("settings") if best else None
    return StudyDetail(
        **summary,
        request=study.user_attrs["request"],
        search_space=study.user_attrs["search_space"],
        trials_list=[TrialInfo(**trial_view(trial)) for trial in trials],
        best_preset_yaml=preset_yaml(summary["env_name"], settings) if settings else None,
    )


@router.post(
    "/studies/{study_id}/stop",
    response_model=StudyAction,
    responses=error_responses(404, 409, *CHANGES_STATE),
    dependencies=[ADMIN_ONLY],
)
def stop_study(study_id: StudyId, request: Request) -> StudyAction:
    """Stop a running study: its running trials' jobs are stopped and the trials marked failed ('stopped')."""
    studies = get_studies(request)
    studies.stop(study_id)
    return StudyAction(study_id=study_id, status=studies.get(study_id).user_attrs["status"], message="Study stopped")


@router.post(
    "/studies/{study_id}/resume",
    response_model=StudyAction,
    responses=error_responses(404, 409, *CHANGES_STATE),
    dependencies=[ADMIN_ONLY],
)
def resume_study(study_id: StudyId, request: Request) -> StudyAction:
    """Go on with a stopped or interrupted study: new trials until n_trials have completed or been pruned."""
    studies = get_studies(request)
    studies.resume(study_id)
    return StudyAction(study_id=study_id, status="running", message="Study resumed")
