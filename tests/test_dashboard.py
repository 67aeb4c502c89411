"""The dashboard in a real headless Chromium, against the real server: start a job from the form, watch its
progress bar reach 100% and its learning curves fill from the event stream, and keep a screenshot.

Chromium is driven over the Chrome DevTools Protocol (``browser.py``, whose ``browser`` fixture is in conftest.py).
"""

import base64
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from browser import DevTools, chromium_path
from harness import Server, free_port


def test_a_missing_chromium_is_a_skip_here_and_a_failure_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(os.path, "exists", lambda path: False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium is not installed"):
        chromium_path()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run"):
        chromium_path()


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
    assert all(r["headers"].get("X-API-Key") == "key-from-the-browser" for r in api_requests), [
        (r["url"], r["method"]) for r in api_requests if r["headers"].get("X-API-Key") != "key-from-the-browser"
    ]

    # The whole page, from the top.
    browser.evaluate("window.scrollTo(0, 0)")
    size = browser.send("Page.getLayoutMetrics")["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    screenshot = browser.send("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
    path = tmp_path / "dashboard.png"
    path.write_bytes(base64.b64decode(screenshot["data"]))
    assert path.stat().st_size > 10_000
    print(f"dashboard screenshot: {path} ({len(points)} points, {time.monotonic() - started:.1f}s)")


def test_entering_the_key_reloads_what_the_page_could_not_read(browser: DevTools, tmp_path: Path) -> None:
    # Issue 17, 10: on a keyed server the page kept an empty reward list and the 401 message until a reload.
    server = Server(tmp_path, free_port(), api_key="dashboard-key")
    server.start()
    try:
        browser.send("Page.enable")
        browser.send("Page.navigate", url=f"{server.base}/dashboard")
        browser.wait_for("document.readyState === 'complete'", 30, "the page to load")
        error = browser.wait_for("document.querySelector('#train-result.error')?.textContent", 30, "the 401 to show")
        assert "X-API-Key" in error
        named = "select[name=reward_function_type] option:not([value=''])"  # beside 'default for the env'
        options = f'document.querySelectorAll("{named}").length'
        assert browser.evaluate(options) == 0

        browser.type_into("#api-key", "dashboard-key")
        browser.evaluate("document.querySelector('#api-key').dispatchEvent(new Event('change'))")
        browser.wait_for(f"{options} >= 3", 30, "the reward functions to load with the key")
        browser.wait_for("document.querySelector('#train-result').textContent === ''", 30, "the 401 message to go")
        assert browser.evaluate("document.querySelector('#train-result').classList.contains('error')") is False
        # Entering it again lists each reward function once.
        browser.evaluate("document.querySelector('#api-key').dispatchEvent(new Event('change'))")
        time.sleep(1.0)
        names = browser.evaluate(f'[...document.querySelectorAll("{named}")].map((o) => o.value)')
        assert sorted(names) == sorted(set(names)) and "optimized_cartpole" in names
    finally:
        server.kill()
        # Chromium keeps the key it was given: the next page starts without one.
        browser.evaluate("localStorage.clear()")
