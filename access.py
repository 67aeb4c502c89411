"""Who may call what: the server's API keys, each with a scope, and the check of a key a request sent.

Keys come from three places, all read once at start-up: ``GRPO_API_KEY`` (one admin key, id ``default``),
``GRPO_API_KEYS`` (a JSON list of ``{"id", "scope", "key"}``) and ``GRPO_API_KEYS_FILE`` (one ``<id> <scope> <key>``
a line). An ``inference`` key asks for actions and reads models and jobs; an ``admin`` key may do everything
(train, stop, resume, delete, download, evaluate). Without any key the API is open.
"""

import hmac
from pathlib import Path

from pydantic import SecretStr, ValidationError

from settings import ApiKey, Scope, Settings

DEFAULT_KEY_ID = "default"


class InvalidKeys(ValueError):
    """The configured keys cannot be used: a malformed line, a repeated id or key."""


def read_keys_file(path: Path) -> list[ApiKey]:
    """Keys from a file of ``<id> <scope> <key>`` lines; blank lines and ``#`` comments are skipped."""
    keys = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 3:
            raise InvalidKeys(f"{path}, line {number}: expected '<id> <scope> <key>', got {len(fields)} field(s)")
        key_id, scope, key = fields
        try:
            keys.append(ApiKey(id=key_id, scope=scope, key=SecretStr(key)))
        except ValidationError as error:
            problem = error.errors()[0]
            # Never echo the line: it holds a key.
            raise InvalidKeys(f"{path}, line {number}: {problem['loc'][0]}: {problem['msg']}") from None
    return keys


def configured_keys(settings: Settings) -> list[ApiKey]:
    """Every key the settings give, the single ``api_key`` as the admin key ``default``."""
    keys = list(settings.api_keys)
    if settings.api_key is not None:
        keys.append(ApiKey(id=DEFAULT_KEY_ID, scope=Scope.ADMIN, key=settings.api_key))
    if settings.api_keys_file is not None:
        keys.extend(read_keys_file(settings.api_keys_file))
    return keys


class KeyRing:
    """The keys a server accepts; ``identify`` finds the one a request sent."""

    def __init__(self, keys: list[ApiKey]) -> None:
        ids = [key.id for key in keys]
        secrets = [key.key.get_secret_value() for key in keys]
        repeated = sorted({key_id for key_id in ids if ids.count(key_id) > 1})
        if repeated:
            raise InvalidKeys(f"API key id(s) given more than once: {', '.join(repeated)}")
        if len(set(secrets)) != len(secrets):
            clashing = [key.id for key, secret in zip(keys, secrets, strict=True) if secrets.count(secret) > 1]
            raise InvalidKeys(f"API keys {', '.join(clashing)} are the same key")
        self._keys = [(key, secret.encode()) for key, secret in zip(keys, secrets, strict=True)]

    @classmethod
    def from_settings(cls, settings: Settings) -> "KeyRing":
        return cls(configured_keys(settings))

    @property
    def enabled(self) -> bool:
        """Whether requests need a key at all."""
        return bool(self._keys)

    def identify(self, sent: str | None) -> ApiKey | None:
        """The key ``sent`` is, or None. Compares with every key in constant time, so how long a wrong key takes
        to refuse says nothing about how much of it was right, nor which key it was close to."""
        if sent is None:
            return None
        candidate = sent.encode()
        found = None
        for key, secret in self._keys:
            if hmac.compare_digest(candidate, secret):
                found = key
        return found


def allows(key: ApiKey, needed: Scope) -> bool:
    return key.scope is Scope.ADMIN or key.scope is needed
