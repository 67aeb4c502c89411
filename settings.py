"""Configuration of the training and serving service: one class, read once, injected everywhere."""

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from presets import PRESETS_FILE

# What an API key may hold: what every HTTP client can send in a header, unchanged.
API_KEY_ALLOWED = "visible ASCII characters (and spaces between them), with no space at either end"
LogLevel = Literal["critical", "error", "warning", "info", "debug"]
# A rate in the `limits` package's notation: "100/second", "1000 per minute", "10/second;300/minute" (several at once).
RATE_EXAMPLE = "100/second"


class Scope(str, Enum):
    """What a key opens: ``inference`` asks for actions and reads models and jobs; ``admin`` does everything."""

    INFERENCE = "inference"
    ADMIN = "admin"


def check_sendable_key(value: SecretStr | None) -> SecretStr | None:
    """``value`` when every HTTP client can send it as it is; a ValueError saying why not otherwise."""
    # Clients send the key in an HTTP header: curl and httpx refuse anything but ASCII, requests sends Latin-1
    # and fails beyond it, browsers refuse control characters, and HTTP strips the spaces at either end (so a
    # padded key never matches). A key one of them cannot send would lock its users out: refuse it at start-up.
    key = value.get_secret_value() if value is not None else ""
    bad = next((char for char in key if not " " <= char <= "~"), None)
    if bad is not None or key != key.strip(" "):
        found = f"it has {bad!r}" if bad is not None else "it starts or ends with a space"
        raise ValueError(f"the API key must be {API_KEY_ALLOWED}; {found}")
    return value


class ApiKey(BaseModel):
    """One client's key; ``id`` names it in logs, where the key itself never appears."""

    model_config = ConfigDict(hide_input_in_errors=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    scope: Scope
    key: SecretStr = Field(min_length=1)

    _key_clients_can_send = field_validator("key")(check_sendable_key)


class Settings(BaseSettings):
    """Service settings; every field can be set through a ``GRPO_<FIELD>`` environment variable."""

    # A refused value (an API key above all) is not echoed into the error, which may end up in a log.
    model_config = SettingsConfigDict(env_prefix="GRPO_", extra="ignore", hide_input_in_errors=True)

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
    max_rollout_bytes: int = Field(
        512 * 2**20,
        ge=2**20,
        description="Memory one job's rollout may take, in bytes, as estimated from n_steps x n_envs x the size of "
        "an observation; a training request past it is a 400",
    )
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
    ray_num_cpus: int | None = Field(
        None, ge=1, description="CPUs of the local Ray (None: this machine's less ray_server_cpus, at least one)"
    )
    ray_server_cpus: int = Field(
        1,
        ge=0,
        description="CPUs a local Ray leaves to the server, so that it answers quickly while jobs train (0: none)",
    )
    api_key: SecretStr | None = Field(
        None,
        description="When set, every endpoint but /health, /ready and the docs requires it in the X-API-Key header",
    )

    api_keys: list[ApiKey] = Field(
        default_factory=list,
        description='Keys with scopes, e.g. [{"id": "web", "scope": "inference", "key": "..."}]; api_key, when set, '
        "is one more, an admin key with the id 'default'",
    )
    api_keys_file: Path | None = Field(
        None, description="A file of keys, one '<id> <scope> <key>' a line ('#' starts a comment), read at start-up"
    )
    rate_limit_inference: str = Field(
        "200/second",
        description="Requests to POST /inference one key (or one client address, without keys) may make, in the "
        f"`limits` package's notation, e.g. '{RATE_EXAMPLE}' (empty: no limit)",
    )
    rate_limit_management: str = Field(
        "50/second",
        description="Requests to every other keyed route one key (or client address) may make (empty: no limit)",
    )
    security_log: Path | None = Field(
        None,
        description="File that security events (401, 403, 413, 429, refused names) are appended to as JSON lines "
        "(None: the server's own log, under the logger 'grpo.security')",
    )
    ssl_certfile: Path | None = Field(None, description="Certificate (PEM) to serve HTTPS with; with ssl_keyfile")
    ssl_keyfile: Path | None = Field(None, description="Private key (PEM) of ssl_certfile")

    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_key_means_none(cls, value: object) -> object:
        # `GRPO_API_KEY=` in a shell or compose file means "no key", not "a key nobody can send".
        return None if isinstance(value, str) and not value.strip() else value

    presets_file: Path = Field(
        PRESETS_FILE,
        description="Tuned settings per environment (rl-baselines3-zoo's format) that fill a request's omitted fields",
    )
    plugins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Modules imported at start-up to register environments and reward functions, e.g. "
        "'mypkg.envs,mypkg.rewards' (installed packages' grpo.envs / grpo.rewards entry points are loaded too)",
    )

    @field_validator("plugins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        # GRPO_PLUGINS=mypkg.envs,mypkg.rewards, as an administrator would write it.
        if isinstance(value, str) and not value.lstrip().startswith("["):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("api_key")
    @classmethod
    def _key_clients_can_send(cls, value: SecretStr | None) -> SecretStr | None:
        return check_sendable_key(value)

    @model_validator(mode="after")
    def _certificate_and_key_together(self) -> "Settings":
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("HTTPS needs both ssl_certfile and ssl_keyfile")
        return self

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: LogLevel = "info"
