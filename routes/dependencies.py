"""What routes are handed: the state made in the app's lifespan, as typed dependencies (tests swap them with
``app.dependency_overrides``), and the checks of who is asking: the key (401), its rate (429), its scope (403).

They are ``async def`` because none of them blocks: FastAPI runs a plain ``def`` dependency in its thread pool, and
four thread hops per request cost more than everything else a small inference does."""

from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import APIKeyHeader

from access import allows
from errors import Forbidden, NotAuthenticated, RateLimited
from jobs import JobRunner
from predictor import Predictor
from presets import Preset
from rate_limits import INFERENCE, MANAGEMENT
from records import MODEL_NAME_PATTERN
from security_log import KEY_ID
from settings import ApiKey, Scope, Settings
from store import ModelStore

# Where the key check leaves the key a request sent (request.state), for the scope check after it.
API_KEY = "api_key"


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


class KeyCheck(APIKeyHeader):
    """The X-API-Key header, declared as OpenAPI's security scheme (Swagger UI's "Authorize" button), and the
    checks every guarded request passes, in the same step: which key it sent (401 for none or a wrong one, when the
    server has keys) and how many requests that key, or the client's address without keys, made to this route group
    (429 past its rate limit). One dependency on every guarded request instead of several, each of which costs
    FastAPI tens of microseconds to solve; the keys and limits are the app's (``api.create_app``)."""

    def __init__(self, group: str) -> None:
        super().__init__(
            name="X-API-Key",
            scheme_name="APIKeyHeader",  # the scheme's name in the OpenAPI document, as it was
            auto_error=False,
            description="One of the server's API keys, when it has any",
        )
        self.group = group

    async def __call__(self, request: Request) -> ApiKey | None:  # type: ignore[override]
        state = request.app.state
        key = None
        if state.keys.enabled:
            key = state.keys.identify(request.headers.get(self.model.name))
            if key is None:
                raise NotAuthenticated("Missing or wrong X-API-Key")
            # The id for the security log, the key for the scope check of an admin route.
            setattr(request.state, KEY_ID, key.id)
            setattr(request.state, API_KEY, key)
        client = f"key:{key.id}" if key is not None else f"address:{request.client.host if request.client else '?'}"
        refusal = state.rate_limits.hit(self.group, client)
        if refusal is not None:
            raise RateLimited(
                f"Rate limit of {refusal.limit} for {self.group} requests reached; try again in "
                f"{refusal.retry_after_s} s",
                limit=refusal.limit,
                retry_after_s=refusal.retry_after_s,
            )
        return key


# The routers' guards (api.create_app): POST /inference counts against the inference limit, every other guarded
# route against the management one.
require_inference_key = KeyCheck(INFERENCE)
require_management_key = KeyCheck(MANAGEMENT)


async def require_admin(request: Request) -> None:
    """403 for a known key whose scope stops short of this route (what trains, stops, deletes, or hands out or
    renders a model). Runs after its router's KeyCheck, which left the key in the request's state."""
    if not request.app.state.keys.enabled:
        return
    key: ApiKey | None = getattr(request.state, API_KEY, None)
    if key is None:  # a route that forgot its router's guard still lets no one through
        raise NotAuthenticated("Missing or wrong X-API-Key")
    if not allows(key, Scope.ADMIN):
        raise Forbidden(f"The key {key.id!r} is an {key.scope.value} key; this route needs an admin key")


# For the routes that change what the server holds or hand out what it keeps: `dependencies=[ADMIN_ONLY]`.
ADMIN_ONLY = Depends(require_admin)
