"""The security log: one JSON line per event, with the key's id and never the key."""

import json
import logging
from pathlib import Path

import pytest

from security_log import KEY_ID, MAX_DETAIL, SecurityLog


def _scope(**state: str) -> dict:
    return {"type": "http", "method": "POST", "path": "/inference", "client": ("10.1.2.3", 5555), "state": state}


def test_events_are_json_lines_in_their_own_file(tmp_path: Path) -> None:
    log = SecurityLog(tmp_path / "logs" / "security.jsonl")
    log.record(_scope(), 401, "Missing or wrong X-API-Key")
    log.record(_scope(**{KEY_ID: "web"}), 429, "limit 3 per 1 second")
    log.record(_scope(), 400, "x\n" * 5000, event="refused_name")
    log.close()
    lines = (tmp_path / "logs" / "security.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert [(event["event"], event["status"], event["key_id"]) for event in events] == [
        ("not_authenticated", 401, None),
        ("rate_limited", 429, "web"),
        ("refused_name", 400, None),
    ]
    assert events[0]["client"] == "10.1.2.3" and events[0]["method"] == "POST" and events[0]["path"] == "/inference"
    assert events[0]["time"].endswith("+00:00")
    assert len(events[2]["detail"]) == MAX_DETAIL  # an attacker's name cannot flood the log, nor break its lines


def test_without_a_file_events_go_to_the_server_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="grpo.security"):
        SecurityLog().record(_scope(), 403, "inference key")
    assert json.loads(caplog.records[-1].getMessage())["event"] == "forbidden"
