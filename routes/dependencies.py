"""What routes are handed: the state made in the app's lifespan, as typed dependencies (tests swap them with
``app.dependency_overrides``), and the API-key check.

They are ``async def`` because none of them blocks: FastAPI runs a plain ``def`` dependency in its thread pool, and
four thread hops per request cost more than everything else a small inference does."""

import hmac
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import APIKeyHeader

from errors import NotAuthenticated
from jobs import JobRunner
from predictor import Predictor
from presets import Preset
from records import MODEL_NAME_PATTERN
from settings import Settings
from store import ModelStore


async def get_store(request: Request) -> ModelStore:
    return request.app.state.store


async def get_runner(request: Request) -> JobRunner:
    return request.app.state.runner


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_presets(request: Request) -> dict[str, Preset]:
    return request.app.state.presets


async def get_predictor(request: Request) -> Predictor:
    return request.app.state.predictor


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
RunnerDep = Annotated[JobRunner, Depends(get_runner)]
PresetsDep = Annotated[dict[str, Preset], Depends(get_presets)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
ModelNameParam = Annotated[str, Path(pattern=MODEL_NAME_PATTERN)]


class APIKeyCheck(APIKeyHeader):
    """The X-API-Key header, declared as OpenAPI's security scheme (Swagger UI's "Authorize" button) and checked
    against the server's key in the same step: one dependency on every guarded request instead of three, each of
    which costs FastAPI tens of microseconds to solve."""

    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        """Let the request through when the server has no key, or when it sent the key."""
        expected = request.app.state.settings.api_key
        if expected is None:
            return
        key = request.headers.get(self.model.name)
        # Constant time: how long a wrong key takes to refuse says nothing about how much of it was right.
        if key is None or not hmac.compare_digest(key.encode(), expected.get_secret_value().encode()):
            raise NotAuthenticated("Missing or wrong X-API-Key")


require_api_key = APIKeyCheck(
    name="X-API-Key",
    scheme_name="APIKeyHeader",  # the scheme's name in the OpenAPI document, as it was
    auto_error=False,
    description="The server's GRPO_API_KEY, when it has one",
)
