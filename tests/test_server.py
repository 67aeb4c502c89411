"""The real server, started as the API document says (``python run_api.py``), driven by the document's own
Python and curl examples, then restarted (cleanly and after a kill -9) to check that nothing was lost."""

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from harness import Server

REPO = Path(__file__).resolve().parents[1]

# The API document's Python client example, verbatim; only the port is changed when it runs.
DOC_PYTHON_EXAMPLE = """\
import requests

# 学習開始
response = requests.post("http://localhost:8000/train", json={
    "env_name": "CartPole-v1",
    "total_timesteps": 5000,
    "model_name": "test_model"
})
job_id = response.json()["job_id"]

# ステータス確認
status = requests.get(f"http://localhost:8000/training/{job_id}/status")
print(status.json())

# 予測実行
prediction = requests.post("http://localhost:8000/inference", json={
    "model_name": "test_model",
    "observation": [0.1, 0.0, 0.05, 0.0]
})
print(prediction.json())
"""

# The document's curl examples, verbatim but for the port.
DOC_CURL_EXAMPLES = [
    """curl -X POST "http://localhost:8000/train" \\
  -H "Content-Type: application/json" \\
  -d '{"env_name": "CartPole-v1", "total_timesteps": 5000}'""",
    'curl "http://localhost:8000/health"',
    'curl "http://localhost:8000/models"',
]


def run_python_example(code: str, base: str) -> tuple[dict[str, Any], str]:
    namespace: dict[str, Any] = {}
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code.replace("http://localhost:8000", base), "api_document_example", "exec"), namespace)
    return namespace, output.getvalue()


def test_document_examples_end_to_end_and_across_restarts(server: Server) -> None:
    # The whole example as written: it asks for a prediction right after starting the job, while the model is
    # still training, and must run through without an exception all the same.
    namespace, printed = run_python_example(DOC_PYTHON_EXAMPLE, server.base)
    job_id = namespace["job_id"]
    assert namespace["response"].status_code == 200
    assert namespace["status"].json()["status"] in ("queued", "running", "completed")
    assert printed.count("\n") == 2
    early = namespace["prediction"]
    if early.status_code == 404:
        assert "not trained yet" in early.json()["detail"]

    curl_job = None
    if shutil.which("curl"):
        outputs = [
            subprocess.run(
                command.replace("http://localhost:8000", server.base),
                shell=True,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            for command in DOC_CURL_EXAMPLES
        ]
        curl_job = json.loads(outputs[0])["job_id"]
        assert json.loads(outputs[1])["status"] == "healthy"
        assert "models" in json.loads(outputs[2])

    assert server.wait_for_job(job_id)["status"] == "completed"
    # Now that training is done, the example's prediction step answers with an action.
    prediction_step = DOC_PYTHON_EXAMPLE[DOC_PYTHON_EXAMPLE.index("# 予測実行") :]
    namespace, _ = run_python_example("import requests\n" + prediction_step, server.base)
    prediction = namespace["prediction"].json()
    assert namespace["prediction"].status_code == 200
    assert prediction["action"] in (0, 1) and len(prediction["action_probs"]) == 2
    if curl_job:
        assert server.wait_for_job(curl_job)["status"] == "completed"

    server.stop()
    server.start()
    jobs = {job["job_id"]: job for job in server.get("/training/jobs")["jobs"]}
    assert jobs[job_id]["status"] == "completed" and jobs[job_id]["progress"] == 1.0
    if curl_job:
        assert jobs[curl_job]["status"] == "completed"
    assert server.get(f"/training/{job_id}/status")["metrics"]["rollout/ep_rew_mean"] > 0
    models = {model["name"]: model for model in server.get("/models")["models"]}
    assert models["test_model"]["status"] == "saved"
    again = server.post("/inference", {"model_name": "test_model", "observation": [0.1, 0.0, 0.05, 0.0]}).json()
    assert again["action"] == prediction["action"] and again["action_probs"] == pytest.approx(
        prediction["action_probs"]
    )


def test_a_killed_server_marks_its_job_interrupted(server: Server) -> None:
    response = server.post("/train", {"model_name": "long", "total_timesteps": 500_000})
    job_id = response.json()["job_id"]
    deadline = time.monotonic() + 30
    while server.get(f"/training/{job_id}/status")["current_timesteps"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    server.stop(signal.SIGKILL)

    server.start()
    status = server.get(f"/training/{job_id}/status")
    assert status["status"] == "interrupted" and status["end_time"]
    assert "long" not in {model["name"] for model in server.get("/models")["models"]}
    assert not [name for name in os.listdir(server.root / "models") if name.endswith(".zip")]
