"""Keeps web pages of other origins from changing the server's state through the visitor's browser.

A page anywhere can make a browser send a POST or a DELETE to ``http://127.0.0.1:8000`` without asking first (no
CORS preflight) when the request has no body, a form or a ``text/plain`` one, or a body of no type (``mode:
"no-cors"``): the page never reads the answer, but a job starts or a model is deleted all the same. On a server
without an API key, nothing else stops it; with a key, the page cannot send the header, but the check costs nothing.

So every state-changing request (any method but GET, HEAD and OPTIONS) must

- come from no browser at all (no ``Origin`` and no ``Sec-Fetch-Site``, as curl, httpx and requests send), from
  the server's own pages (``Origin`` naming the host the request was sent to; ``Sec-Fetch-Site: same-origin``), or
  from an origin of ``GRPO_CORS_ORIGINS``; else it is a 403;
- carry its body, if it has one, as ``application/json``, which a browser sends cross-site only after a preflight
  that CORS answers; else it is a 415. A POST with no body at all stays fine (``curl -X POST .../train``).
"""

from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from security_log import CROSS_SITE, SecurityLog

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# What a browser says of a request from a page of the origin it goes to, or from no page (typed in, a bookmark).
SAME_ORIGIN_FETCH_SITES = frozenset({"same-origin", "none"})
NOT_JSON = "Send the request body as JSON, with Content-Type: application/json"


def is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";")[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


def has_body(headers: Headers) -> bool:
    return headers.get("content-length", "0").strip() not in ("", "0") or "transfer-encoding" in headers


class CrossSiteGuard:
    """ASGI middleware: refuses (403, 415) the state-changing requests a page of another origin could send without
    a preflight. ``allowed_origins`` are the origins whose pages may (``GRPO_CORS_ORIGINS``; ``*``: any)."""

    def __init__(self, app: Any, allowed_origins: list[str], security_log: SecurityLog | None = None) -> None:
        self.app = app
        self.allowed_origins = {origin.rstrip("/").lower() for origin in allowed_origins}
        self.security_log = security_log

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            refusal = self.refusal(Headers(scope=scope))
            if refusal is not None:
                status, detail = refusal
                if self.security_log is not None:
                    self.security_log.record(scope, status, detail, event=CROSS_SITE)
                await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, headers: Headers) -> tuple[int, str] | None:
        """Why a state-changing request with these headers is refused (status, detail); None when it is not."""
        origin, fetch_site = headers.get("origin"), headers.get("sec-fetch-site")
        if origin is not None:
            if not self.origin_allowed(origin, headers.get("host", "")):
                return 403, (
                    f"Cross-site request refused: pages of {origin} may not change this server's state "
                    "(an operator can allow an origin with GRPO_CORS_ORIGINS)"
                )
        elif fetch_site is not None and fetch_site.lower() not in SAME_ORIGIN_FETCH_SITES:
            return 403, f"Cross-site request refused (Sec-Fetch-Site: {fetch_site})"
        if has_body(headers) and not is_json(headers.get("content-type")):
            return 415, NOT_JSON
        return None

    def origin_allowed(self, origin: str, host: str) -> bool:
        origin = origin.rstrip("/").lower()
        if "*" in self.allowed_origins or origin in self.allowed_origins:
            return True
        # The server's own pages: the origin names the host the browser sent the request to. The scheme is left
        # out, so that a TLS-terminating proxy in front (https outside, http here) keeps the dashboard working.
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and bool(host) and parts.netloc == host.lower()
