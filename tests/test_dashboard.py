"""The dashboard in a real headless Chromium, against the real server: start a job from the form, watch its
progress bar reach 100% and its learning curves fill from the event stream, and keep a screenshot.

Chromium is driven over the Chrome DevTools Protocol (a websocket; ``websocket-client``). The test needs Debian's
``chromium``: ``.ci/run`` installs it, so in CI (``CI=true``) a missing browser is a failure, not a skip.
"""

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websocket
from harness import Server

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
    "--window-size=1400,1300",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing: CI must run the dashboard's browser test (.ci/run installs chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium); CI runs this test")
    return path


def test_a_missing_chromium_is_a_skip_here_and_a_failure_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(os.path, "exists", lambda path: False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium is not installed"):
        chromium_path()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run"):
        chromium_path()


class DevTools:
    """A page of a headless Chromium, commanded over the DevTools Protocol."""

    def __init__(self, url: str) -> None:
        self.socket = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self._ids = itertools.count(1)
        self.requests: list[dict[str, Any]] = []  # what the page asked for, from Network.requestWillBeSent

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:  # events arrive in between; only the answer to this command matters here
            message = json.loads(self.socket.recv())
            if message.get("method") == "Network.requestWillBeSent":
                self.requests.append(message["params"]["request"])
            if message.get("id") == message_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element."""
        box = self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def type_into(self, selector: str, text: str) -> None:
        """Replace an input's value by typing, as a person would."""
        self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.focus(); e.select(); }})()"
        )
        self.send("Input.insertText", text=text)

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def browser() -> Iterator[DevTools]:
    executable = chromium_path()
    profile = tempfile.mkdtemp(prefix="grpo-chromium-")
    process = subprocess.Popen(
        [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Chromium writes the port it chose for the protocol into the profile folder.
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert process.poll() is None, "chromium exited at start-up"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(target for target in targets if target["type"] == "page")
        devtools = DevTools(page["webSocketDebuggerUrl"])
        try:
            yield devtools
        finally:
            devtools.close()
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        if process.poll() is None:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)


def test_train_from_the_dashboard_and_watch_the_curves(browser: DevTools, server: Server, tmp_path: Path) -> None:
    started = time.monotonic()
    browser.send("Page.enable")
    browser.send("Runtime.enable")
    browser.send("Network.enable")
    browser.send("Page.navigate", url=f"{server.base}/dashboard")
    browser.wait_for("document.readyState === 'complete' && typeof uPlot === 'function'", 30, "the page to load")
    # The reward functions come from the API: the form is ready once they are listed.
    browser.wait_for("document.querySelectorAll('select[name=reward_function_type] option').length > 1", 30, "the form")

    # The API key (enforced by a later version of the service) goes along with every request from now on.
    browser.type_into("#api-key", "key-from-the-browser")
    browser.evaluate("document.querySelector('#api-key').dispatchEvent(new Event('change'))")
    browser.requests.clear()

    # A bad value first: the API's validation error is shown in words.
    browser.type_into("input[name=learning_rate]", "5")
    browser.click("#train-button")
    error = browser.wait_for(
        "document.querySelector('#train-result.error')?.textContent", 30, "the validation error to show"
    )
    assert "learning_rate" in error and "less than or equal to 1" in error

    for name, value in {
        "learning_rate": "0.001",
        "total_timesteps": "6000",
        "n_epochs": "2",
        "net_arch": "16",
        "model_name": "from_the_browser",
    }.items():
        browser.type_into(f"input[name={name}]", value)
    browser.click("#train-button")
    browser.wait_for("document.querySelector('#train-result:not(.error)')?.textContent", 30, "the job to start")
    job_id = server.get("/training/jobs")["jobs"][-1]["job_id"]
    assert server.get(f"/training/{job_id}/status")["model_name"] == "from_the_browser"

    row = f"document.querySelector('tr[data-job-id=\"{job_id}\"]')"
    # Watch the page as a person would: the bar fills and the curves grow while the job runs.
    seen = []
    deadline = time.monotonic() + 120
    while not seen or seen[-1][0] != 100:
        assert time.monotonic() < deadline, f"the progress bar stopped at {seen[-1] if seen else None}"
        percent, status, points = browser.evaluate(
            f"[Number({row}?.querySelector('[role=progressbar]').getAttribute('aria-valuenow') ?? 0), "
            f"{row}?.dataset.status, state.points.length]"
        )
        seen.append((percent, status, points))
        time.sleep(0.1)
    assert any(status == "running" and 0 < points for _, status, points in seen), f"no live points: {seen}"
    assert [percent for percent, _, _ in seen] == sorted(percent for percent, _, _ in seen)
    browser.wait_for(
        "state.points.length > 0 && document.querySelector('#curves-status').textContent.startsWith('completed')",
        30,
        "the stream's end",
    )
    points = server.get(f"/training/{job_id}/metrics")["points"]
    assert points, "the job recorded no learning-curve points"
    # Every point reached the charts through the event stream, and uPlot holds them.
    assert browser.evaluate("state.points.map((p) => p.timesteps)") == [p["timesteps"] for p in points]
    assert browser.evaluate("document.querySelector('#chart-return').dataset.points") == str(len(points))
    chart_data = browser.evaluate("state.charts.return.data")
    assert chart_data[0] == [p["timesteps"] for p in points]
    assert chart_data[1] == pytest.approx([p["episode_return_mean"] for p in points])
    assert browser.evaluate("state.charts.loss.data[1].filter((v) => v !== null).length") > 0
    browser.wait_for("document.querySelector('tr[data-model=from_the_browser]') !== null", 30, "the model to be listed")

    # Try the trained model from the inference panel.
    browser.click("tr[data-model=from_the_browser] button:nth-child(2)")
    browser.click("#inference-form button[type=submit]")
    answer = browser.wait_for("document.querySelector('#inference-result').textContent", 30, "a prediction")
    assert json.loads(answer)["action"] in (0, 1)

    browser.send("Runtime.evaluate", expression="1")  # collect the last network events
    api_requests = [r for r in browser.requests if "/static/" not in r["url"] and not r["url"].endswith("/dashboard")]
    assert {r["url"].split("?")[0].replace(server.base, "") for r in api_requests} >= {
        "/train",
        "/training/jobs",
        f"/training/{job_id}/events",
        "/models",
        "/inference",
    }
    assert all(r["headers"].get("X-API-Key") == "key-from-the-browser" for r in api_requests), api_requests

    # The whole page, from the top.
    browser.evaluate("window.scrollTo(0, 0)")
    size = browser.send("Page.getLayoutMetrics")["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    screenshot = browser.send("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
    path = tmp_path / "dashboard.png"
    path.write_bytes(base64.b64decode(screenshot["data"]))
    assert path.stat().st_size > 10_000
    print(f"dashboard screenshot: {path} ({len(points)} points, {time.monotonic() - started:.1f}s)")
