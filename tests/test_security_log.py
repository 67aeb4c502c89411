"""The security log: one JSON line per event, with the key's id and never the key."""

import json
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from harness import CARTPOLE_OBS, make_settings

from api import create_app
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


def test_a_log_is_reopened_after_close_and_a_failed_write_goes_to_the_server_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = SecurityLog(tmp_path / "security.jsonl")
    log.record(_scope(), 401, "first run")
    log.close()  # an app's lifespan ended; the same app may start again (tests, uvicorn reloads)
    log.record(_scope(), 401, "second run")
    log.close()
    assert len((tmp_path / "security.jsonl").read_text().splitlines()) == 2
    (tmp_path / "unwritable").mkdir()  # opening a folder fails as a full disk's write does: with an OSError
    with caplog.at_level(logging.WARNING, logger="grpo.security"):
        SecurityLog(tmp_path / "unwritable").record(_scope(), 429, "a refusal is still logged")
    assert "a refusal is still logged" in caplog.records[-1].getMessage()


def test_without_a_file_events_go_to_the_server_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="grpo.security"):
        SecurityLog().record(_scope(), 403, "inference key")
    assert json.loads(caplog.records[-1].getMessage())["event"] == "forbidden"


def test_the_server_logs_oversized_bodies_and_refused_names(tmp_path: Path) -> None:
    path = tmp_path / "security.jsonl"
    settings = make_settings(tmp_path, security_log=path, max_request_bytes=2048, max_inference_batch=2)
    with TestClient(create_app(settings)) as client:
        oversized = client.post("/inference", content=b"x" * 4096, headers={"Content-Type": "application/json"})
        assert oversized.status_code == 413
        batch = {"model_name": "m", "observations": [CARTPOLE_OBS] * 3}
        assert client.post("/inference", json=batch).status_code == 413
        assert client.get("/models/.hidden").status_code == 422
        assert client.post("/train", json={"model_name": "../../etc/passwd"}).status_code == 422
        assert client.get("/models").status_code == 200  # an ordinary request leaves no trace
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(event["event"], event["status"], event["path"]) for event in events] == [
        ("too_large", 413, "/inference"),
        ("too_large", 413, "/inference"),
        ("refused_name", 422, "/models/.hidden"),
        ("refused_name", 422, "/train"),
    ]
    assert "model_name" in events[2]["detail"] and "body.model_name" in events[3]["detail"]
    assert all(event["client"] == "testclient" for event in events)


def test_the_server_logs_cross_site_refusals(tmp_path: Path) -> None:
    path = tmp_path / "security.jsonl"
    with TestClient(create_app(make_settings(tmp_path, security_log=path))) as client:
        page = {"Origin": "https://evil.example"}
        assert client.post("/train", json={}, headers=page).status_code == 403
        form = {"Content-Type": "text/plain"}
        assert client.request("DELETE", "/models/kept", content=b"x", headers=form).status_code == 415
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(event["event"], event["status"], event["path"]) for event in events] == [
        ("cross_site", 403, "/train"),
        ("cross_site", 415, "/models/kept"),
    ]
    assert "evil.example" in events[0]["detail"]
