"""Requests a web page of another origin can send without a CORS preflight must not change a keyless server's
state: a body-less POST or a DELETE, a form or a text/plain body, in ``no-cors`` mode. Checked rule by rule
through the TestClient, then as a browser sends them: a page served from another 127.0.0.1 port in headless
Chromium, and the dashboard (same origin), which must keep working."""

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import DevTools
from fastapi.testclient import TestClient
from harness import TINY, Server, free_port, make_settings, train, wait_for_job

from api import create_app

EVIL = "http://127.0.0.1:1"  # another port of the same host: same site, another origin
SELF = "http://testserver"  # the TestClient's own origin (its Host header)


@pytest.fixture
def keyless(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, cors_origins=["https://ops.example.org"])
    with TestClient(create_app(settings)) as client:
        yield client


def _jobs(client: Any) -> list[dict[str, Any]]:
    return client.get("/training/jobs").json()["jobs"]


def test_cross_site_requests_cannot_change_state(keyless: TestClient) -> None:
    running = train(keyless, model_name="running", total_timesteps=150_000)
    unsafe = [
        ("POST", "/train"),
        ("POST", f"/training/{running}/stop"),
        ("POST", f"/training/{running}/resume"),
        ("DELETE", "/models/running"),
        ("POST", "/models/running/evaluate"),
        ("POST", "/inference"),
    ]
    for method, path in unsafe:
        for headers in [
            {"Origin": EVIL},
            {"Origin": "null"},  # a sandboxed frame, a file:// page
            {"Origin": "https://ops.example.org.evil.example"},
            {"Origin": EVIL, "Sec-Fetch-Site": "same-site"},
            {"Sec-Fetch-Site": "cross-site"},  # no Origin, yet a browser's cross-site request
        ]:
            response = keyless.request(method, path, headers=headers)
            assert response.status_code == 403, (method, path, headers, response.text)
            assert "Cross-site request refused" in response.json()["detail"], response.text
    # Bodies a browser sends without a preflight: a form, text/plain, or a Blob with no type at all.
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None]:
        headers = {"Content-Type": content_type} if content_type else {}
        response = keyless.post("/train", content=json.dumps(TINY), headers=headers)
        assert response.status_code == 415, (content_type, response.text)
        assert response.json()["detail"] == "Send the request body as JSON, with Content-Type: application/json"
    assert [job["job_id"] for job in _jobs(keyless)] == [running]
    assert keyless.get(f"/training/{running}/status").json()["status"] == "running"
    # Reading is not changing: a cross-site GET is answered (the browser keeps the answer from the page).
    assert keyless.get("/training/jobs", headers={"Origin": EVIL}).status_code == 200

    # Clients that are no browser (curl, httpx, requests) send no Origin: a POST /train with no body still trains.
    assert keyless.post("/train", json={**TINY, "model_name": "json_body"}).status_code == 200
    stopped = keyless.post(f"/training/{running}/stop")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    bare = keyless.post("/train", headers={"Content-Type": "application/json; charset=utf-8"})
    assert bare.status_code == 200
    # The server's own pages, and the origins of GRPO_CORS_ORIGINS, may.
    for headers in [{"Origin": SELF, "Sec-Fetch-Site": "same-origin"}, {"Origin": "https://ops.example.org"}]:
        response = keyless.post(f"/training/{running}/resume", headers=headers)
        assert response.status_code == 200, (headers, response.text)
        assert keyless.post(f"/training/{running}/stop", headers=headers).status_code == 200
    assert len(_jobs(keyless)) == 3


def test_the_openapi_document_declares_the_refusals(keyless: TestClient) -> None:
    paths = keyless.get("/openapi.json").json()["paths"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            declared = {"403", "415"} <= set(operation["responses"])
            assert declared == (method in ("post", "delete")), (method, path)


# in a real browser


@pytest.fixture
def other_site(tmp_path: Path) -> Iterator[str]:
    """Another origin: a plain static file server on another 127.0.0.1 port, serving an empty page."""
    root = tmp_path / "other-site"
    root.mkdir()
    (root / "index.html").write_text("<!doctype html><title>another site</title><p>nothing to see</p>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _fetch_all(browser: DevTools, calls: list[str]) -> list[str]:
    """Run fetch() calls in the page and wait for all of them; what each came to ('opaque' in no-cors mode)."""
    script = f"Promise.allSettled([{', '.join(calls)}]).then((all) => all.map((r) => r.value?.type ?? 'failed'))"
    return browser.evaluate(script)


def test_a_page_of_another_origin_cannot_start_or_stop_jobs(browser: DevTools, server: Server, other_site: str) -> None:
    running = server.post("/train", {**TINY, "model_name": "running", "total_timesteps": 150_000}).json()["job_id"]
    kept = server.post("/train", {**TINY, "model_name": "kept", "total_timesteps": 512}).json()["job_id"]
    assert server.wait_for_job(kept)["status"] == "completed"

    browser.send("Page.enable")
    browser.send("Page.navigate", url=f"{other_site}/index.html")
    browser.wait_for("document.readyState === 'complete' && document.title === 'another site'", 30, "the page")
    api, no_cors = json.dumps(server.base), '{method: "POST", mode: "no-cors"}'
    results = _fetch_all(
        browser,
        [
            f"fetch({api} + '/train', {no_cors})",
            f"fetch({api} + '/train', {{method: 'POST', mode: 'no-cors', body: '{{}}'}})",  # text/plain
            f"fetch({api} + '/train', {{method: 'POST', mode: 'no-cors', body: new Blob(['{{}}'])}})",  # no type
            f"fetch({api} + '/training/{running}/stop', {no_cors})",
            f"fetch({api} + '/models/kept', {{method: 'DELETE', mode: 'no-cors'}})",
        ],
    )
    # The browser sends them all (a no-cors answer is opaque either way; the DELETE it refuses itself).
    assert results.count("opaque") >= 4, results
    assert [job["job_id"] for job in _jobs(server.http)] == [running, kept]
    assert server.get(f"/training/{running}/status")["status"] == "running"
    assert server.http.get("/models/kept").status_code == 200

    # The dashboard is the server's own page: from there, the same calls work.
    browser.send("Page.navigate", url=f"{server.base}/dashboard")
    browser.wait_for("document.readyState === 'complete' && typeof api === 'function'", 30, "the dashboard")
    body = json.dumps({**TINY, "model_name": "from_the_dashboard", "total_timesteps": 512})
    assert browser.evaluate(f"api('POST', '/train', {body}).then((job) => job.job_id)")
    assert browser.evaluate(f"api('POST', '/training/{running}/stop').then((job) => job.status)") == "stopped"
    assert browser.evaluate("api('DELETE', '/models/kept').then((answer) => answer.model_name)") == "kept"
    created = [job for job in _jobs(server.http) if job["model_name"] == "from_the_dashboard"]
    assert len(created) == 1 and wait_for_job(server.http, created[0]["job_id"])["status"] == "completed"
