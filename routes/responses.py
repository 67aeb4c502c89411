"""The error answers a route can give, as its OpenAPI declaration lists them."""

from typing import Any

from schemas import ErrorMessage, TooManyRequestsMessage

_ERROR_DESCRIPTIONS = {
    400: "Invalid parameters",
    401: "Missing or wrong X-API-Key (only when the server has keys)",
    403: "The key's scope does not cover this route (it needs an admin key), or, for a route that changes state, a "
    "web page of another origin sent it (crosssite.py): allowed are clients that are no browser, the server's own "
    "pages and the origins of GRPO_CORS_ORIGINS",
    404: "No such job or model",
    409: "Conflicts with the current state (name taken, job finished, model in training)",
    413: "The request body, or its batch of observations, is larger than this server takes",
    415: "The request has a body that is not JSON (Content-Type: application/json)",
    429: "Over this client's rate limit, or every training slot is busy and the queue is full; try again after "
    "Retry-After seconds",
    500: "A stored model cannot be read",
}

# What every route that changes state (any method but GET) may also answer: the cross-site refusals.
CHANGES_STATE = (403, 415)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI declarations of the error answers a route can give (422 FastAPI declares itself)."""
    models = {429: TooManyRequestsMessage}
    return {code: {"model": models.get(code, ErrorMessage), "description": _ERROR_DESCRIPTIONS[code]} for code in codes}
