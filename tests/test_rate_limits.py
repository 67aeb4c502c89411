"""Rate limits per route group and per client, counted by the `limits` package."""

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from harness import CARTPOLE_OBS, make_settings

from api import create_app
from rate_limits import INFERENCE, MANAGEMENT, RateLimits, parse_rate


def test_each_client_and_each_group_is_counted_on_its_own() -> None:
    limits = RateLimits({INFERENCE: "3/second", MANAGEMENT: "1/minute"})
    assert [limits.hit(INFERENCE, "key:web") for _ in range(3)] == [None] * 3
    refusal = limits.hit(INFERENCE, "key:web")
    assert refusal is not None and refusal.limit == "3 per 1 second" and refusal.retry_after_s == 1
    # Another client, and another group of the same client, have their own counts.
    assert limits.hit(INFERENCE, "key:shop") is None
    assert limits.hit(MANAGEMENT, "key:web") is None
    refusal = limits.hit(MANAGEMENT, "key:web")
    assert refusal is not None and 55 <= refusal.retry_after_s <= 60


def test_an_empty_rate_is_no_limit_and_a_wrong_one_is_refused() -> None:
    limits = RateLimits({INFERENCE: "", MANAGEMENT: " "})
    assert all(limits.hit(INFERENCE, "a") is None for _ in range(1000))
    assert limits.hit("unknown group", "a") is None
    assert [str(item) for item in parse_rate("10/second;300/minute")] == ["10 per 1 second", "300 per 1 minute"]
    with pytest.raises(ValueError):
        parse_rate("ten a second")


def test_a_client_over_its_limit_gets_429_with_retry_after_and_the_limit(tmp_path: Path) -> None:
    keys = [{"id": "web", "scope": "inference", "key": "web-key"}, {"id": "shop", "scope": "inference", "key": "shop"}]
    settings = make_settings(
        tmp_path,
        api_keys=keys,
        rate_limit_inference="3/minute",
        rate_limit_management="5/minute",
        security_log=tmp_path / "security.jsonl",
    )
    request = {"model_name": "nope", "observation": CARTPOLE_OBS}
    with TestClient(create_app(settings)) as client:
        web, shop = {"X-API-Key": "web-key"}, {"X-API-Key": "shop"}
        assert [client.post("/inference", json=request, headers=web).status_code for _ in range(3)] == [404] * 3
        refused = client.post("/inference", json=request, headers=web)
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        body = refused.json()
        assert body["limit"] == "3 per 1 minute" and body["retry_after_s"] == int(refused.headers["Retry-After"])
        assert "Rate limit of 3 per 1 minute for inference requests" in body["detail"]
        # Another key has its own count, and the same key its own count per group.
        assert client.post("/inference", json=request, headers=shop).status_code == 404
        assert [client.get("/models", headers=web).status_code for _ in range(6)] == [200] * 5 + [429]
        # Health probes are never limited.
        assert all(client.get("/health").status_code == 200 for _ in range(10))
    events = [json.loads(line) for line in (tmp_path / "security.jsonl").read_text().splitlines()]
    assert [(event["event"], event["key_id"], event["path"]) for event in events] == [
        ("rate_limited", "web", "/inference"),
        ("rate_limited", "web", "/models"),
    ]


def test_without_keys_each_client_address_is_counted(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, rate_limit_management="2/minute"))
    with TestClient(app, client=("10.0.0.1", 1000)) as first:
        other = TestClient(app, client=("10.0.0.2", 1000))  # the same running app, from another address
        assert [first.get("/models").status_code for _ in range(3)] == [200, 200, 429]
        assert other.get("/models").status_code == 200
