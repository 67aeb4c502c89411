"""Request and response bodies of the service, one model per purpose.

The fields, defaults and names of the API document are kept as they are; everything added is optional.
"""

from dataclasses import fields
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from records import EvaluationRecord, JobState, MetricPoint, ModelName
from training import TrainingConfig, TrainingSettings

# JSON has no NaN or infinity, but Python's parser accepts them; a model cannot act on them either.
Number = Annotated[float, Field(allow_inf_nan=False)]
# One observation: a scalar (Discrete spaces) or a nested array (Box spaces, up to images with channels).
Observation = Number | list[Number] | list[list[Number]] | list[list[list[Number]]]
# Matches the document's "ACTION: a single integer" for Discrete, floats for Box, integers for Multi* spaces.
Action = int | list[float] | list[int] | list[Any]

MAX_INFERENCE_BATCH = 65_536


class StrictModel(BaseModel):
    # A misspelt field would otherwise be dropped without a word and train with the default instead.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ErrorMessage(BaseModel):
    """Every 4xx/5xx answer but 422's: what went wrong, in words."""

    detail: str


class TooManyRequestsMessage(ErrorMessage):
    """A 429: a rate limit (``limit`` says which) or a full training queue (no ``limit``); Retry-After says when
    to come back, in seconds, as ``retry_after_s`` does."""

    limit: str | None = None
    retry_after_s: int


# root and health


class RootResponse(BaseModel):
    message: str
    version: str
    endpoints: dict[str, str]


CheckResult = Literal["ok", "failing"]


class HealthResponse(BaseModel):
    status: Literal["healthy", "unhealthy"] = Field(description="'healthy' when every check is 'ok'")
    timestamp: datetime
    active_jobs: int = Field(description="Jobs training right now")
    queued_jobs: int = Field(description="Jobs waiting for a free training slot")
    loaded_models: int
    database: CheckResult = Field(description="Whether the SQLite database answers a query")
    model_store: CheckResult = Field(description="Whether the models folder can be listed and written to")
    problems: list[str] = Field(default_factory=list, description="What the failing checks found")


class ReadinessResponse(BaseModel):
    """GET /ready: 200 when the service can take requests, 503 (same body) while a check fails."""

    ready: bool
    database: CheckResult
    model_store: CheckResult
    problems: list[str] = Field(default_factory=list)


# training


class TrainRequest(TrainingSettings):
    """A training job. Every field is optional; the first eight are the API document's, with its defaults."""


class TrainResponse(BaseModel):
    job_id: str
    message: str = Field(examples=["Training started"], description="'Training started', or queued behind others")
    config: TrainingConfig


class JobBrief(BaseModel):
    """What every view of a job starts with; read from its record."""

    model_config = ConfigDict(from_attributes=True)

    job_id: str
    status: JobState
    progress: float = Field(ge=0, le=1)


class JobSummary(JobBrief):
    model_name: str
    env_name: str
    created_at: datetime


class JobList(BaseModel):
    jobs: list[JobSummary]
    # Only in answers to a paged or filtered request: the unparameterised call keeps the document's shape.
    total: int | None = Field(None, description="Jobs that pass the filters, on all pages")
    next_cursor: str | None = Field(None, description="Pass as cursor for the next page; absent on the last")


class JobStatus(JobSummary):
    current_timesteps: int
    total_timesteps: int
    start_time: datetime | None
    end_time: datetime | None
    error_message: str | None = Field(description="Why a failed job failed")
    message: str | None = Field(None, description="What happened, for stopped and interrupted jobs")
    model_saved: bool = Field(description="Whether the job's model is saved under model_name")
    checkpoint_timesteps: int | None = Field(
        None, description="Timesteps of the job's last checkpoint, which POST /training/{job_id}/resume continues from"
    )
    metrics: dict[str, float] = Field(
        description="Latest values of SB3's logger keys: rollout/ep_rew_mean (the environment's own return), "
        "train/policy_loss, train/entropy_loss, train/approx_kl, train/clip_fraction, time/fps, ..."
    )
    # Plain values: a record written by an older version must still be readable.
    config: dict[str, Any] = Field(description="The settings the job runs with (TrainingConfig)")


# One point of a job's learning curves, with the fields and descriptions of records.MetricPoint.
JobMetricPoint = create_model(
    "JobMetricPoint",
    __doc__="One point of a job's learning curves: recorded at each rollout and when training ends.",
    __config__=ConfigDict(from_attributes=True),
    **{
        point_field.name: (point_field.type, Field(description=point_field.metadata["description"]))
        for point_field in fields(MetricPoint)
    },
)


class JobMetrics(BaseModel):
    job_id: str
    points: list[JobMetricPoint] = Field(description="Oldest first")


class JobProgress(JobBrief):
    """The data of a 'progress' event of GET /training/{job_id}/events."""

    current_timesteps: int
    total_timesteps: int


class StopResponse(BaseModel):
    message: str = Field(examples=["Training job stopped"])
    job_id: str
    status: JobState
    current_timesteps: int
    model_saved: bool = Field(description="Whether the model trained so far was saved under model_name")
    model_name: str


class ResumeRequest(StrictModel):
    """The optional body of POST /training/{job_id}/resume."""

    overwrite: bool = Field(
        False, description="Replace a model saved under the job's model_name by another job since this one stopped"
    )


class ResumeResponse(BaseModel):
    job_id: str = Field(description="The same job: it goes on under its own id")
    message: str = Field(examples=["Training resumed from the checkpoint at 20000 timesteps"])
    status: JobState
    current_timesteps: int = Field(description="Where training goes on from")
    total_timesteps: int


# inference


class InferenceRequest(StrictModel):
    model_name: ModelName
    observation: Observation | None = Field(None, description="One observation", examples=[[0.1, 0.0, 0.05, 0.0]])
    observations: list[Observation] | None = Field(
        None, min_length=1, max_length=MAX_INFERENCE_BATCH, description="A batch of observations"
    )
    deterministic: bool = True

    @model_validator(mode="after")
    def _one_of_observation_or_batch(self) -> "InferenceRequest":
        if (self.observation is None) == (self.observations is None):
            raise ValueError("give exactly one of 'observation' and 'observations'")
        return self


class InferenceResponse(BaseModel):
    action: Action
    action_probs: list[float] | None = Field(None, description="Probability of each action (Discrete models)")
    value: float | None = Field(
        None, description="Always null: GRPO has no critic, so there is no state-value estimate to report"
    )


class BatchInferenceResponse(BaseModel):
    actions: list[Action]
    action_probs: list[list[float]] | None = Field(None, description="Per observation (Discrete models)")


# models


class ModelSummary(BaseModel):
    name: str
    status: Literal["loaded", "saved"] = Field(description="'loaded': in memory, ready to serve")
    env_name: str | None = None
    size_bytes: int
    created_at: datetime


class ModelList(BaseModel):
    models: list[ModelSummary]
    total: int | None = Field(None, description="Models that pass the filters (paged or filtered requests only)")
    next_offset: int | None = Field(None, description="Pass as offset for the next page; absent on the last")


# One evaluation kept with a model: the fields of records.EvaluationRecord but the model's name.
EvaluationInfo = create_model(
    "EvaluationInfo",
    __doc__="One POST /models/{name}/evaluate, as kept with the model.",
    __config__=ConfigDict(from_attributes=True),
    **{kept.name: (kept.type, ...) for kept in fields(EvaluationRecord) if kept.name != "model_name"},
)


class ModelInfo(ModelSummary):
    job_id: str | None = None
    observation_space: dict[str, Any] | None
    action_space: dict[str, Any] | None
    hyperparameters: dict[str, Any] = Field(description="The training job's settings")
    metrics: dict[str, float] = Field(description="The training job's last metrics")
    timesteps: int | None = Field(None, description="Environment steps the model was trained for")
    evaluations: list[EvaluationInfo] = Field(
        default_factory=list, description="Every POST /models/{name}/evaluate of this model, newest first"
    )


class DeleteResponse(BaseModel):
    message: str
    model_name: str


class EvaluateRequest(StrictModel):
    n_episodes: int = Field(10, ge=1, le=1_000)
    deterministic: bool = True
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    env_name: str | None = Field(
        None, min_length=1, max_length=200, description="Environment to evaluate on (default: the training one)"
    )


class EvaluateResponse(BaseModel):
    model_name: str
    env_name: str
    n_episodes: int
    mean_return: float
    std_return: float
    mean_length: float
    returns: list[float]


# reward functions


class RewardFunctionInfo(BaseModel):
    name: str
    description: str
    observation_shape: list[int] | None = Field(description="The observation shape it fits; null: any shape")


class RewardFunctionList(BaseModel):
    reward_functions: list[RewardFunctionInfo]


# presets


class PresetInfo(BaseModel):
    env_id: str
    settings: dict[str, Any] = Field(
        description="As written in the presets file: rl-baselines3-zoo's keys (n_envs, n_timesteps, normalize, "
        "policy, policy_kwargs, lin_<x> schedules) and GRPO's arguments"
    )


class PresetList(BaseModel):
    presets: list[PresetInfo]
