"""Configuration of the training and serving service: one class, read once, injected everywhere."""

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["critical", "error", "warning", "info", "debug"]


class Settings(BaseSettings):
    """Service settings; every field can be set through a ``GRPO_<FIELD>`` environment variable."""

    model_config = SettingsConfigDict(env_prefix="GRPO_", extra="ignore")

    models_dir: Path = Field(Path("models"), description="Where trained models are kept as SB3 zip files")
    # Beside the models by default, so all of the service's data sits in one folder to back up.
    db_path: Path = Field(
        default_factory=lambda data: data["models_dir"] / "grpo.db",
        description="SQLite database of jobs and model metadata (default: <models_dir>/grpo.db)",
    )
    jobs_dir: Path = Field(
        default_factory=lambda data: data["models_dir"] / "jobs",
        description="One folder per job, <jobs_dir>/<job_id>, holding SB3's TensorBoard logs "
        "(default: <models_dir>/jobs)",
    )
    max_concurrent_jobs: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1, description="Training jobs run at once"
    )
    max_queued_jobs: int = Field(
        16, ge=0, description="Jobs that may wait for a training slot; past it, POST /train answers 429"
    )
    max_total_timesteps: int = Field(10_000_000, ge=1, description="Largest total_timesteps one job may ask for")
    job_timeout_s: float | None = Field(
        24 * 3600.0,
        gt=0,
        description="Wall-clock seconds a job may train before it fails; its model so far is kept (None: no limit)",
    )
    checkpoint_interval: int = Field(
        10_000,
        ge=0,
        description="Timesteps between a running job's checkpoints (<jobs_dir>/<job_id>/checkpoint.zip), which "
        "POST /training/{job_id}/resume continues from; a request may ask for its own (0: only when a job stops)",
    )
    max_inference_batch: int = Field(1024, ge=1, description="Most observations one /inference request may carry")
    inference_engine: Literal["onnxruntime", "torch"] = Field(
        "onnxruntime",
        description="What runs a model's deterministic policy for /inference: its ONNX export in onnxruntime "
        "(fastest for small policies on a CPU) or torch (always for models on a GPU)",
    )
    inference_batching: bool = Field(
        False,
        description="Run concurrent deterministic /inference requests for the same model as one forward pass; pays "
        "when a forward pass is costly (the torch engine, a GPU, large policies), not for small policies in "
        "onnxruntime, whose pass costs less than batching's bookkeeping",
    )
    inference_max_batch: int = Field(64, ge=1, description="Most observations in one micro-batched forward pass")
    inference_max_wait_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="Longest a request waits for others to join its micro-batch (a lone request does not wait)",
    )
    inference_inline_max_work: int = Field(
        4_000_000,
        ge=0,
        description="Largest observations x policy parameters of a forward pass run on the event loop; larger "
        "ones go to a worker thread (0: always a thread)",
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Also serve the Prometheus metrics on this port, without the API key (None: only GET /metrics)",
    )
    max_request_bytes: int = Field(8 * 2**20, ge=1024, description="Largest request body, in bytes (413 beyond)")
    cors_origins: list[str] = Field(
        default_factory=list,
        description='Origins whose web pages may call the API, e.g. ["https://example.org"] (default: none)',
    )
    cache_max_models: int = Field(16, ge=1, description="Models kept loaded for inference")
    cache_max_bytes: int = Field(512 * 2**20, ge=1, description="Memory the loaded models may take, in bytes")
    device: str = Field("auto", description="torch device for training and inference ('auto': CUDA if present)")
    torch_threads: int | None = Field(
        1,
        ge=1,
        description="torch intra-op threads; small policies run fastest on one, and jobs then share the CPUs "
        "(None: torch's default)",
    )
    job_niceness: int = Field(
        10,
        ge=0,
        le=19,
        description="How much lower than the server's the training threads' CPU priority is (0: the same)",
    )
    executor: Literal["thread", "ray"] = Field(
        "thread", description="Where jobs train: threads of this process, or Ray actors (a local Ray or a cluster)"
    )
    ray_address: str = Field(
        "", description="Ray cluster to connect to, e.g. '10.0.0.5:6379' (empty: start a local Ray in the service)"
    )
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray (None: all of this machine's)")
    api_key: SecretStr | None = Field(
        None,
        description="When set, every endpoint but /health, /ready and the docs requires it in the X-API-Key header",
    )

    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_key_means_none(cls, value: object) -> object:
        # `GRPO_API_KEY=` in a shell or compose file means "no key", not "a key nobody can send".
        return None if isinstance(value, str) and not value.strip() else value

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: LogLevel = "info"
