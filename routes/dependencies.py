"""What routes are handed: the state made in the app's lifespan, as typed dependencies (tests swap them with
``app.dependency_overrides``), and the checks of who is asking: the key (401), its scope (403), its rate (429)."""

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Path, Request, Security
from fastapi.security import APIKeyHeader

from access import KeyRing, allows
from errors import Forbidden, NotAuthenticated, RateLimited
from jobs import JobRunner
from rate_limits import RateLimits
from records import MODEL_NAME_PATTERN
from security_log import KEY_ID
from settings import ApiKey, Scope, Settings
from store import ModelStore


def get_store(request: Request) -> ModelStore:
    return request.app.state.store


def get_runner(request: Request) -> JobRunner:
    return request.app.state.runner


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_keys(request: Request) -> KeyRing:
    return request.app.state.keys


def get_rate_limits(request: Request) -> RateLimits:
    return request.app.state.rate_limits


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
RunnerDep = Annotated[JobRunner, Depends(get_runner)]
ModelNameParam = Annotated[str, Path(pattern=MODEL_NAME_PATTERN)]

api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="One of the server's API keys, when it has any"
)


def authenticate(
    request: Request, keys: Annotated[KeyRing, Depends(get_keys)], sent: Annotated[str | None, Security(api_key_header)]
) -> ApiKey | None:
    """The key the request sent (None when the server has no keys); 401 when it sent none or a wrong one. The key's
    id stays in the request's state, for the security log."""
    if not keys.enabled:
        return None
    key = keys.identify(sent)
    if key is None:
        raise NotAuthenticated("Missing or wrong X-API-Key")
    setattr(request.state, KEY_ID, key.id)
    return key


KeyDep = Annotated[ApiKey | None, Depends(authenticate)]


def require_admin(key: KeyDep) -> None:
    """403 for a known key whose scope stops short of this route (training, stopping, deleting, exporting)."""
    if key is not None and not allows(key, Scope.ADMIN):
        raise Forbidden(f"The key {key.id!r} is an {key.scope.value} key; this route needs an admin key")


# For the routes that change what the server holds or hand out what it keeps: `dependencies=[ADMIN_ONLY]`.
ADMIN_ONLY = Depends(require_admin)


def rate_limit(group: str) -> Callable[..., None]:
    """A dependency that counts each request against ``group``'s limit, per key (per client address when the
    server has no keys), and answers 429 past it."""

    def limit_rate(request: Request, key: KeyDep, limits: Annotated[RateLimits, Depends(get_rate_limits)]) -> None:
        client = f"key:{key.id}" if key is not None else f"address:{request.client.host if request.client else '?'}"
        refusal = limits.hit(group, client)
        if refusal is not None:
            raise RateLimited(
                f"Rate limit of {refusal.limit} for {group} requests reached; try again in {refusal.retry_after_s} s",
                limit=refusal.limit,
                retry_after_s=refusal.retry_after_s,
            )

    return limit_rate
