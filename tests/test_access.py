"""Keys with scopes: how they are configured (GRPO_API_KEY, GRPO_API_KEYS, a keys file) and how a sent key is
recognised."""

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from harness import CARTPOLE_OBS, TINY, make_settings, wait_for_job

from access import DEFAULT_KEY_ID, InvalidKeys, KeyRing, allows, configured_keys, read_keys_file
from api import create_app
from settings import ApiKey, Scope, Settings


def test_keys_come_from_the_single_key_the_list_and_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# id scope key\n\nops admin ops-secret-1  # the on-call team\nweb inference web-secret-2\n")
    monkeypatch.setenv("GRPO_API_KEY", "old-single-key")
    monkeypatch.setenv("GRPO_API_KEYS", '[{"id": "shop", "scope": "inference", "key": "shop-secret-3"}]')
    monkeypatch.setenv("GRPO_API_KEYS_FILE", str(keys_file))
    keys = {key.id: key for key in configured_keys(Settings())}
    assert {key_id: key.scope for key_id, key in keys.items()} == {
        "shop": Scope.INFERENCE,
        DEFAULT_KEY_ID: Scope.ADMIN,  # the single key of earlier versions keeps opening everything
        "ops": Scope.ADMIN,
        "web": Scope.INFERENCE,
    }
    ring = KeyRing(list(keys.values()))
    assert ring.enabled
    assert ring.identify("old-single-key").id == DEFAULT_KEY_ID
    assert ring.identify("web-secret-2").id == "web"
    assert ring.identify("web-secret-") is None and ring.identify("") is None and ring.identify(None) is None
    # Any printable ASCII key works, punctuation included.
    punctuation = "!#$%&'()*+,-./:;<=>?@[]^_`{|}~"
    assert KeyRing([ApiKey(id="p", scope="admin", key=punctuation)]).identify(punctuation)


def test_no_key_configured_leaves_the_api_open() -> None:
    assert not KeyRing.from_settings(Settings()).enabled


def test_an_inference_key_allows_inference_only_and_an_admin_key_everything() -> None:
    inference = ApiKey(id="web", scope="inference", key="a")
    admin = ApiKey(id="ops", scope="admin", key="b")
    assert allows(inference, Scope.INFERENCE) and not allows(inference, Scope.ADMIN)
    assert allows(admin, Scope.INFERENCE) and allows(admin, Scope.ADMIN)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("ops admin", "line 1: expected '<id> <scope> <key>', got 2"),
        ("ops root secret", "line 1: scope"),
        ("\nbad/id admin secret", "line 2: id"),
    ],
)
def test_a_malformed_keys_file_is_refused_without_echoing_the_key(tmp_path: Path, content: str, problem: str) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(content)
    with pytest.raises(InvalidKeys, match=problem) as refused:
        read_keys_file(keys_file)
    assert "secret" not in str(refused.value)


def test_repeated_ids_or_keys_are_refused() -> None:
    with pytest.raises(InvalidKeys, match="more than once: a"):
        KeyRing([ApiKey(id="a", scope="admin", key="x"), ApiKey(id="a", scope="inference", key="y")])
    with pytest.raises(InvalidKeys, match="a, b are the same key"):
        KeyRing([ApiKey(id="a", scope="admin", key="x"), ApiKey(id="b", scope="inference", key="x")])


# over HTTP

# Every route an inference key may not call: what changes the server's state, hands out its files or makes it
# compute for seconds (evaluations, replays, studies).
MANAGEMENT_ROUTES = {
    ("post", "/train"),
    ("post", "/training/{job_id}/stop"),
    ("post", "/training/{job_id}/resume"),
    ("delete", "/models/{model_name}"),
    ("get", "/models/{model_name}/download"),
    ("get", "/models/{model_name}/export"),
    ("get", "/models/{model_name}/replay"),
    ("post", "/models/{model_name}/evaluate"),
    ("post", "/studies"),
    ("post", "/studies/{study_id}/stop"),
    ("post", "/studies/{study_id}/resume"),
}
KEYS = {"ops": "ops-admin-key", "web": "web-inference-key", DEFAULT_KEY_ID: "the-old-single-key"}


def _keyed_app(root: Path, **overrides: Any) -> Any:
    keys = [
        {"id": "ops", "scope": "admin", "key": KEYS["ops"]},
        {"id": "web", "scope": "inference", "key": KEYS["web"]},
    ]
    settings = make_settings(root, api_key=KEYS[DEFAULT_KEY_ID], api_keys=keys, **overrides)
    return create_app(settings)


def test_roles_401_without_a_key_403_for_an_inference_key_on_every_management_route(tmp_path: Path) -> None:
    security_log = tmp_path / "security.jsonl"
    with TestClient(_keyed_app(tmp_path, security_log=security_log)) as client:
        schema = client.get("/openapi.json").json()
        operations = [
            (method, path, operation)
            for path, methods in schema["paths"].items()
            for method, operation in methods.items()
            if path not in ("/health", "/ready")
        ]
        declaring_403 = {(method, path) for method, path, operation in operations if "403" in operation["responses"]}
        # Every admin route declares its 403; so does every other route that changes state (the cross-site guard's).
        assert MANAGEMENT_ROUTES <= declaring_403
        assert {(method, path) for method, path in declaring_403 if method == "get"} < MANAGEMENT_ROUTES
        forbidden = 0
        for method, path, operation in operations:
            # Swagger's Authorize button fills this one header for every guarded route.
            assert operation["security"] == [{"APIKeyHeader": []}], path
            url = path.replace("{job_id}", "nope").replace("{model_name}", "nope")
            # A body no route takes (422): an admin key getting through starts no job.
            body = {"json": {"total_timesteps": -1}} if method == "post" else {}
            assert client.request(method, url, **body).status_code == 401, (method, path)
            as_inference = client.request(method, url, headers={"X-API-Key": KEYS["web"]}, **body)
            if (method, path) in MANAGEMENT_ROUTES:
                assert as_inference.status_code == 403, (method, path)
                assert "needs an admin key" in as_inference.json()["detail"]
                forbidden += 1
            else:
                assert as_inference.status_code not in (401, 403), (method, path, as_inference.text)
            for admin in ("ops", DEFAULT_KEY_ID):
                as_admin = client.request(method, url, headers={"X-API-Key": KEYS[admin]}, **body)
                assert as_admin.status_code not in (401, 403), (admin, method, path, as_admin.text)
        assert forbidden == len(MANAGEMENT_ROUTES)
        # The inference key follows a job the admin key started, then serves its model.
        job = client.post("/train", json={**TINY, "total_timesteps": 256}, headers={"X-API-Key": KEYS["ops"]})
        client.headers["X-API-Key"] = KEYS["web"]
        status = wait_for_job(client, job.json()["job_id"])
        prediction = client.post("/inference", json={"model_name": status["model_name"], "observation": CARTPOLE_OBS})
        assert prediction.status_code == 200
    events = [json.loads(line) for line in security_log.read_text().splitlines()]
    refused = {(event["event"], event["key_id"]) for event in events}
    assert ("not_authenticated", None) in refused and ("forbidden", "web") in refused
    assert len([event for event in events if event["event"] == "forbidden"]) == len(MANAGEMENT_ROUTES)
    text = security_log.read_text()
    assert not any(secret in text for secret in KEYS.values())  # ids, never keys
