"""The dashboard's newer views in headless Chromium against the real server: the comparison view (two jobs that
differ in their learning rate, ticked in the jobs table, overlaid on one chart whose legend names the differing
setting; the selection in the page's address, so that opening that address shows the same view; a table of their
returns), the studies panel (a finished study's row and its chart of trial values), and a model's details (its
replay with the episode's return, its kept evaluations).

``GRPO_DOCS_SCREENSHOTS=1`` also writes the comparison view to docs/compare.png (the README's picture).
"""

import base64
import os
import time
from pathlib import Path

from browser import DevTools
from harness import REPO, TINY, Server


def _open(page: DevTools, url: str) -> None:
    page.send("Page.navigate", url=url)
    page.wait_for("document.readyState === 'complete' && typeof renderCompare === 'function'", 30, "the page")


def test_two_jobs_overlaid_with_the_differing_setting_named(browser: DevTools, server: Server, tmp_path: Path) -> None:
    jobs = []
    for rate in (1e-3, 3e-4):
        body = {**TINY, "total_timesteps": 1500, "learning_rate": rate, "seed": 1, "model_name": f"lr_{rate:g}"}
        response = server.post("/train", body)
        assert response.status_code == 200, response.text
        jobs.append(response.json()["job_id"])
    for job_id in jobs:
        assert server.wait_for_job(job_id)["status"] == "completed"
    server.post(f"/models/lr_{1e-3:g}/evaluate", {"n_episodes": 2, "seed": 0})
    browser.send("Page.enable")
    browser.send("Runtime.enable")

    # Tick both jobs in the table, as a person would: the address takes the selection.
    _open(browser, f"{server.base}/dashboard")
    for job_id in jobs:
        tick = f'tr[data-job-id="{job_id}"] input.compare-tick'
        browser.wait_for(f"document.querySelector('#jobs {tick}') !== null", 30, "the job's row")
        browser.click(f"#jobs {tick}")
    browser.wait_for("document.querySelector('#chart-compare').dataset.series === '2'", 30, "two curves")
    assert browser.evaluate("new URLSearchParams(location.search).get('compare')") == ",".join(jobs)
    shared = browser.evaluate("location.href")

    # The shared address shows the same view in a fresh page.
    _open(browser, shared)
    browser.wait_for("document.querySelector('#chart-compare').dataset.series === '2'", 30, "two curves again")
    legend = browser.evaluate(
        "[...document.querySelectorAll('#chart-compare .u-legend .u-series .u-label')].map((e) => e.textContent)"
    )
    assert legend[1:] == ["lr=1e-3", "lr=3e-4"], legend
    data = browser.evaluate("compareState.chart.data")
    for index, job_id in enumerate(jobs, start=1):
        points = server.get(f"/training/{job_id}/metrics")["points"]
        by_step = dict(zip(data[0], data[index], strict=True))
        assert [by_step[p["timesteps"]] for p in points] == [p["episode_return_mean"] for p in points]
    rows = browser.evaluate(
        "[...document.querySelectorAll('#compare-table tbody tr')].map((r) => [...r.cells].map((c) => c.textContent))"
    )
    assert [row[0] for row in rows] == ["lr=1e-3", "lr=3e-4"]
    final = server.get(f"/training/{jobs[1]}/metrics")["points"][-1]["episode_return_mean"]
    # One decimal, as the page's toFixed(1) rounds it (which can differ from Python's format on a half).
    assert abs(float(rows[1][4]) - final) <= 0.05 + 1e-9 and rows[1][5] != ""
    assert "± " in rows[0][6] and rows[1][6] == ""  # the kept evaluation of the first model

    # Untick one: the other stays, and so does the address.
    browser.evaluate(f"document.querySelector('#compare-table tr[data-job-id=\"{jobs[0]}\"] button').click()")
    browser.wait_for("document.querySelector('#chart-compare').dataset.series === '1'", 30, "one curve")
    assert browser.evaluate("new URLSearchParams(location.search).get('compare')") == jobs[1]

    _open(browser, shared)
    browser.wait_for("document.querySelector('#chart-compare').dataset.series === '2'", 30, "the view for the picture")
    browser.evaluate("document.querySelector('#compare-section').scrollIntoView()")
    box = browser.evaluate(
        "(() => { const r = document.querySelector('#compare-section').getBoundingClientRect();"
        " return [r.x, r.y + window.scrollY, r.width, r.height]; })()"
    )
    clip = {"x": box[0], "y": box[1], "width": box[2], "height": box[3], "scale": 1}
    shot = browser.send("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
    targets = [tmp_path / "compare.png"]
    if os.environ.get("GRPO_DOCS_SCREENSHOTS"):
        targets.append(REPO / "docs" / "compare.png")
    for target in targets:
        target.write_bytes(base64.b64decode(shot["data"]))
    assert targets[0].stat().st_size > 5_000


def test_the_studies_panel_charts_trial_values(browser: DevTools, server: Server) -> None:
    from test_studies import study_body

    answer = server.post("/studies", study_body(n_trials=2, total_timesteps=384, report_interval=128))
    assert answer.status_code == 200, answer.text
    study_id = answer.json()["study_id"]
    deadline = time.monotonic() + 120
    while server.get(f"/studies/{study_id}")["status"] == "running":
        assert time.monotonic() < deadline, "the study did not finish"
        time.sleep(0.5)
    browser.send("Page.enable")
    browser.send("Runtime.enable")
    _open(browser, f"{server.base}/dashboard")
    row = f'#studies tr[data-study-id="{study_id}"]'
    browser.wait_for(f"document.querySelector('{row}') !== null", 30, "the study's row")
    assert browser.evaluate(f"document.querySelector('{row}').dataset.status") == "completed"
    browser.evaluate(f"document.querySelector('{row} button').click()")
    browser.wait_for("document.querySelector('#chart-study').dataset.trials === '2'", 30, "the trials' chart")
    values = browser.evaluate("studyState.chart.data")
    study = server.get(f"/studies/{study_id}")
    assert values[0] == [0, 1]
    complete = [t["value"] if t["state"] == "complete" else None for t in study["trials_list"]]
    assert values[1] == complete
    assert browser.evaluate("document.querySelector('#study-preset').textContent").startswith("CartPole-v1:")


def test_a_models_details_show_its_replay_and_kept_evaluations(browser: DevTools, server: Server) -> None:
    response = server.post("/train", {**TINY, "total_timesteps": 256, "model_name": "watched"})
    assert server.wait_for_job(response.json()["job_id"])["status"] == "completed"
    server.post("/models/watched/evaluate", {"n_episodes": 2, "seed": 5})
    browser.send("Page.enable")
    browser.send("Runtime.enable")
    _open(browser, f"{server.base}/dashboard")
    browser.wait_for("document.querySelector('tr[data-model=watched]') !== null", 30, "the model's row")
    browser.evaluate("document.querySelector('tr[data-model=watched] button').click()")
    caption = browser.wait_for(
        "document.querySelector('#replay-caption').dataset.return !== undefined"
        " && document.querySelector('#replay-caption').textContent",
        60,
        "the replay",
    )
    replay = server.http.get("/models/watched/replay", params={"format": "gif", "seed": 0})
    assert replay.headers["x-replay-cache"] == "hit"  # the page's request rendered it
    assert f"return {float(replay.headers['x-episode-return']):.1f}" in caption
    size = browser.evaluate(
        "[document.querySelector('#replay-image').naturalWidth, document.querySelector('#replay-image').complete]"
    )
    assert size[0] > 0 and size[1]
    rows = browser.evaluate(
        "[...document.querySelectorAll('#evaluations tbody tr')].map((r) => r.cells[2].textContent)"
    )
    assert rows == ["5"]
    # The page's own "evaluate" adds a kept evaluation and shows it.
    browser.evaluate("document.querySelector('#evaluate-button').click()")
    browser.wait_for("document.querySelectorAll('#evaluations tbody tr').length === 2", 60, "the new evaluation")
    assert len(server.get("/models/watched")["evaluations"]) == 2
