"""What the service records: jobs and their states, trained models, and the points of a job's learning curves.

Plain dataclasses shared by the store (which persists them), the job runner and training (which fill them in)
and the routes (whose response models are read from them).
"""

from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any

from pydantic import Field

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ModelName = Annotated[
    str,
    Field(
        pattern=MODEL_NAME_PATTERN,
        description="Letters, digits, '_', '.', '-'; starts with a letter or digit; at most 64 characters",
        examples=["my_model"],
    ),
]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"


# A job in one of these states can go on from its checkpoint (or from the start, when it has none).
RESUMABLE_STATES = (JobState.INTERRUPTED, JobState.STOPPED, JobState.FAILED)


@dataclass
class JobRecord:
    job_id: str
    status: JobState
    model_name: str
    env_name: str
    config: dict[str, Any]
    total_timesteps: int
    created_at: datetime
    current_timesteps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    start_time: datetime | None = None
    end_time: datetime | None = None
    error_message: str | None = None
    message: str | None = None
    model_saved: bool = False
    checkpoint_timesteps: int | None = None

    @property
    def progress(self) -> float:
        return min(1.0, self.current_timesteps / self.total_timesteps) if self.total_timesteps else 0.0


@dataclass
class ModelRecord:
    name: str
    size_bytes: int
    created_at: datetime
    env_name: str | None = None
    job_id: str | None = None
    observation_space: dict[str, Any] | None = None
    action_space: dict[str, Any] | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    timesteps: int | None = None


def _metric(logger_key: str, meaning: str = "") -> Any:
    """A learning-curve value read from SB3's logger key ``logger_key``; the API documents it with ``meaning``."""
    description = f"{logger_key}: {meaning}" if meaning else logger_key
    return field(default=None, metadata={"logger_key": logger_key, "description": description})


@dataclass
class MetricPoint:
    """One point of a job's learning curves, taken at the start of each rollout and when training ends.

    The one list of metric fields: the database's columns, the API's ``JobMetricPoint`` and the logger keys
    they are read from all come from these fields.
    """

    timesteps: int = field(metadata={"description": "Environment steps trained when the point was taken"})
    wall_time_s: float = field(metadata={"description": "Seconds since the job began training"})
    episode_return_mean: float | None = _metric("rollout/ep_rew_mean", "the environment's own return")
    episode_length_mean: float | None = _metric("rollout/ep_len_mean")
    policy_gradient_loss: float | None = _metric("train/policy_gradient_loss")
    entropy_loss: float | None = _metric("train/entropy_loss")
    loss: float | None = _metric("train/loss")
    approx_kl: float | None = _metric("train/approx_kl")
    clip_fraction: float | None = _metric("train/clip_fraction")
    fps: float | None = _metric("time/fps", "environment steps per second")
    frac_zero_std_groups: float | None = _metric("rollout/frac_zero_std_groups", "groups with no signal")

    @classmethod
    def from_metrics(cls, timesteps: int, wall_time_s: float, metrics: dict[str, float]) -> "MetricPoint":
        return cls(timesteps, wall_time_s, **{name: metrics.get(key) for name, key in METRIC_LOGGER_KEYS.items()})


# Each learning-curve value and the SB3 logger key it is read from.
METRIC_LOGGER_KEYS: dict[str, str] = {
    point_field.name: point_field.metadata["logger_key"]
    for point_field in fields(MetricPoint)
    if "logger_key" in point_field.metadata
}
