"""Rate limits per route group and per client, counted by the `limits` package."""

import pytest

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
