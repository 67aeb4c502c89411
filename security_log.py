"""Security events, one JSON object a line: requests refused for a missing or wrong key (401), a key outside its
scope (403), a body or batch too large (413), a rate or queue limit (429), names or paths refused as invalid, and
state-changing requests a web page of another origin sent (``crosssite.py``'s 403 and 415).

Each line holds the time (UTC, ISO 8601), the event, the status code, the client's address, the method and path,
the key's id when the request sent a known key (never the key itself) and a short detail. The lines go to a file
of their own (``GRPO_SECURITY_LOG``), appended and flushed one by one so that ``tail -f`` and log shippers see
each at once, or, by default, to the server's log under the logger ``grpo.security``.
"""

import json
import logging
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

logger = logging.getLogger("grpo.security")

# The event each refused status is logged as.
EVENTS = {
    401: "not_authenticated",
    403: "forbidden",
    413: "too_large",
    429: "rate_limited",
}
REFUSED_NAME = "refused_name"
# A state-changing request a page of another origin sent (crosssite.py): 403, or 415 for a body that is not JSON.
CROSS_SITE = "cross_site"
# Where authentication leaves the id of the key a request sent (request.state.key_id).
KEY_ID = "key_id"
# A detail longer than this is cut: a refused name may be an attacker's 5,000 characters.
MAX_DETAIL = 300


class SecurityLog:
    """Where security events are written; thread-safe, one line per event."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, scope: dict[str, Any], status: int, detail: str = "", event: str | None = None) -> dict[str, Any]:
        """Write one event about the request whose ASGI ``scope`` is given (``request.scope`` in a route); the key's
        id is the one authentication left in the request's state. Returns what was written."""
        client = scope.get("client")
        entry = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "event": event or EVENTS.get(status, "refused"),
            "status": status,
            "client": client[0] if client else None,
            "method": scope.get("method"),
            "path": str(scope.get("path", ""))[:MAX_DETAIL],
            "key_id": scope.get("state", {}).get(KEY_ID),
            "detail": detail[:MAX_DETAIL],
        }
        # ensure_ascii: a refused name with control characters or odd Unicode cannot break the line or the terminal.
        line = json.dumps(entry, ensure_ascii=True)
        if self.path is None:
            logger.warning(line)
            return entry
        with self._lock:
            try:
                if self._file is None:  # opened at the first event, again after close (an app started twice)
                    self._file = open(self.path, "a", encoding="utf-8")
                self._file.write(line + "\n")
                self._file.flush()
            except OSError as error:  # a full disk must not turn a refusal into a 500: the server's log has it
                logger.warning("%s (not written to %s: %s)", line, self.path, error)
        return entry

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
