"""What routes are handed: the state made in the app's lifespan, as typed dependencies (tests swap them with
``app.dependency_overrides``), and the API-key check."""

import hmac
from typing import Annotated

from fastapi import Depends, Path, Request, Security
from fastapi.security import APIKeyHeader

from errors import NotAuthenticated
from jobs import JobRunner
from records import MODEL_NAME_PATTERN
from settings import Settings
from store import ModelStore


def get_store(request: Request) -> ModelStore:
    return request.app.state.store


def get_runner(request: Request) -> JobRunner:
    return request.app.state.runner


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
RunnerDep = Annotated[JobRunner, Depends(get_runner)]
ModelNameParam = Annotated[str, Path(pattern=MODEL_NAME_PATTERN)]

api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="The server's GRPO_API_KEY, when it has one"
)


def require_api_key(settings: SettingsDep, key: Annotated[str | None, Security(api_key_header)]) -> None:
    """Let the request through when the server has no key, or when it sent the key."""
    expected = settings.api_key
    if expected is None:
        return
    # Constant time: how long a wrong key takes to refuse says nothing about how much of it was right.
    if key is None or not hmac.compare_digest(key.encode(), expected.get_secret_value().encode()):
        raise NotAuthenticated("Missing or wrong X-API-Key")
