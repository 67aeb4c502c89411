"""The job runner: the queue and its limits, stop, failures, timeouts, restarts, checkpoints and resume."""

import gc
import sqlite3
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch as th
from fastapi.testclient import TestClient
from harness import CARTPOLE_OBS, TINY, make_settings, train, wait_for_job

import api
import jobs
import training
from api import create_app
from grpo import GRPO
from records import JobRecord, JobState, utcnow
from schemas import TrainRequest
from settings import Settings
from store import Database

# queue, stop and failures


def test_live_progress_and_stop_keep_the_model(client: TestClient) -> None:
    job_id = train(client, model_name="stopped", total_timesteps=150_000, net_arch=[64, 64], n_epochs=10)
    running = wait_for_job(client, job_id, until=lambda s: s["status"] == "running" and s["current_timesteps"] > 300)
    assert 0 < running["progress"] < 1

    started = time.monotonic()
    response = client.post(f"/training/{job_id}/stop")
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    body = response.json()
    assert elapsed < 2.0, f"stop took {elapsed:.2f}s"
    assert body["job_id"] == job_id
    assert body["message"].startswith("Training job stopped")
    assert body["status"] == "stopped" and body["model_saved"] is True
    assert 0 < body["current_timesteps"] < 150_000

    status = client.get(f"/training/{job_id}/status").json()
    assert status["status"] == "stopped" and status["end_time"]
    assert client.post("/inference", json={"model_name": "stopped", "observation": CARTPOLE_OBS}).status_code == 200
    # A finished job cannot be stopped again.
    assert client.post(f"/training/{job_id}/stop").status_code == 409


def test_queue_runs_jobs_in_order_and_stops_queued_ones(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, max_concurrent_jobs=1))) as client:
        first = train(client, model_name="q1", total_timesteps=3000)  # still running when q2 and q3 arrive
        second_response = client.post("/train", json={**TINY, "model_name": "q2", "total_timesteps": 300})
        third = train(client, model_name="q3", total_timesteps=300)
        second = second_response.json()["job_id"]
        assert second_response.json()["message"].startswith("Training queued (position 1)")
        assert client.get("/health").json()["queued_jobs"] >= 1

        stopped = client.post(f"/training/{third}/stop").json()
        assert stopped["status"] == "stopped" and stopped["model_saved"] is False

        statuses = [wait_for_job(client, job_id) for job_id in (first, second)]
        assert [status["status"] for status in statuses] == ["completed", "completed"]
        assert statuses[0]["end_time"] <= statuses[1]["start_time"]
        third_status = client.get(f"/training/{third}/status").json()
        assert third_status["status"] == "stopped" and third_status["start_time"] is None
        assert "q3" not in {model["name"] for model in client.get("/models").json()["models"]}


def test_a_failing_job_reports_its_error(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(state: th.Tensor, action: th.Tensor, next_state: th.Tensor) -> th.Tensor:
        raise ValueError("this reward function is broken")

    # The document's extension point: add a reward function to api.REWARD_FUNCTIONS.
    monkeypatch.setitem(api.REWARD_FUNCTIONS, "broken", broken)
    job_id = train(client, reward_function_type="broken", total_timesteps=500)
    status = wait_for_job(client, job_id)
    assert status["status"] == "failed"
    assert "this reward function is broken" in status["error_message"]
    assert status["model_saved"] is False


def test_a_full_queue_is_429_with_retry_after(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, max_concurrent_jobs=1, max_queued_jobs=1))) as client:
        running = train(client, model_name="l1", total_timesteps=100_000)
        queued = train(client, model_name="l2", total_timesteps=100_000)
        refused = client.post("/train", json={**TINY, "model_name": "l3"})
        assert refused.status_code == 429 and refused.headers["Retry-After"].isdigit()
        assert "1 training slots are busy and 1 job(s) are queued" in refused.json()["detail"]
        # The refused request left no trace; a freed place in the queue takes the next job.
        assert len(client.get("/training/jobs").json()["jobs"]) == 2
        client.post(f"/training/{queued}/stop")
        assert client.post("/train", json={**TINY, "model_name": "l3", "total_timesteps": 256}).status_code == 200
        client.post(f"/training/{running}/stop")


def test_a_job_past_its_wall_clock_timeout_fails_and_keeps_its_model(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, job_timeout_s=0.5))) as client:
        job_id = train(client, model_name="slow", total_timesteps=200_000)
        status = wait_for_job(client, job_id, timeout=30)
        assert status["status"] == "failed" and status["model_saved"] is True
        assert status["error_message"].startswith("Timed out: the job trained for longer than this server's ")
        assert "job_timeout_s of 0.5 s" in status["error_message"]
        assert 0 < status["current_timesteps"] < 200_000
        assert client.post("/inference", json={"model_name": "slow", "observation": CARTPOLE_OBS}).status_code == 200


def test_a_resumed_jobs_timeout_counts_its_earlier_running_time(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, job_timeout_s=6.0))) as client:
        job_id = train(client, model_name="budget", total_timesteps=200_000)
        wait_for_job(client, job_id, until=lambda status: status["current_timesteps"] > 0)
        time.sleep(4.5)
        stopped = client.post(f"/training/{job_id}/stop").json()
        assert stopped["status"] == "stopped"
        earlier = client.get(f"/training/{job_id}/metrics").json()["points"][-1]["wall_time_s"]
        assert earlier >= 4.5
        resumed_at = time.monotonic()
        assert client.post(f"/training/{job_id}/resume").status_code == 200
        status = wait_for_job(client, job_id, timeout=30)
        resumed_for = time.monotonic() - resumed_at
        print(f"\nran {earlier:.1f} s, resumed: timed out after {resumed_for:.1f} s more (limit 6 s in all)")
        assert status["status"] == "failed" and status["error_message"].startswith("Timed out")
        # The second run was given what was left of the 6 s, not 6 s of its own.
        assert resumed_for < 6.0
        assert client.get(f"/training/{job_id}/metrics").json()["points"][-1]["wall_time_s"] >= 6.0


# model names


def test_overwrite_replaces_the_model(client: TestClient) -> None:
    first = wait_for_job(client, train(client, model_name="m", total_timesteps=300))
    assert first["status"] == "completed"
    client.post("/inference", json={"model_name": "m", "observation": CARTPOLE_OBS})  # now cached
    job_id = train(client, model_name="m", total_timesteps=400, overwrite=True)
    assert wait_for_job(client, job_id)["status"] == "completed"
    info = client.get("/models/m").json()
    assert info["job_id"] == job_id and info["timesteps"] >= 400
    # The old model, cached before, is not served any more.
    assert info["status"] == "saved"


def test_a_name_being_trained_is_busy(client: TestClient) -> None:
    job_id = train(client, model_name="busy", total_timesteps=150_000)
    assert client.post("/train", json={"model_name": "busy", "overwrite": True}).status_code == 409
    assert client.delete("/models/busy").status_code == 409
    client.post(f"/training/{job_id}/stop")
    assert client.delete("/models/busy").status_code == 200


# restarts


def test_history_and_models_survive_a_restart(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        job_id = train(client, model_name="kept", total_timesteps=300)
        assert wait_for_job(client, job_id)["status"] == "completed"
    with TestClient(create_app(settings)) as client:
        status = client.get(f"/training/{job_id}/status").json()
        assert status["status"] == "completed" and status["model_saved"] is True
        assert [model["name"] for model in client.get("/models").json()["models"]] == ["kept"]
        assert client.get("/models/kept").json()["status"] == "saved"  # on disk, not loaded yet
        assert client.post("/inference", json={"model_name": "kept", "observation": CARTPOLE_OBS}).status_code == 200


def test_metric_history_and_tensorboard_logs_survive_a_restart(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        job_id = train(client, model_name="curves", total_timesteps=300)
        assert wait_for_job(client, job_id)["status"] == "completed"
        before = client.get(f"/training/{job_id}/metrics").json()
    assert before["points"]
    with TestClient(create_app(settings)) as client:
        assert client.get(f"/training/{job_id}/metrics").json() == before
    # SB3's own TensorBoard output, one run folder per job.
    assert list((settings.jobs_dir / job_id).glob("GRPO_1/events.out.tfevents.*"))
    with sqlite3.connect(settings.db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM metrics WHERE job_id = ?", (job_id,)).fetchone()[0] == len(
            before["points"]
        )


def test_shutdown_interrupts_running_jobs(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        job_id = train(client, model_name="cut", total_timesteps=150_000)
        wait_for_job(client, job_id, until=lambda s: s["status"] == "running")
    with TestClient(create_app(settings)) as client:
        status = client.get(f"/training/{job_id}/status").json()
        assert status["status"] == "interrupted" and status["end_time"]


def test_jobs_left_running_by_a_crash_become_interrupted(settings: Settings) -> None:
    db = Database(settings.db_path)
    for job_id, state in (("crashed-running", JobState.RUNNING), ("crashed-queued", JobState.QUEUED)):
        db.add_job(
            JobRecord(
                job_id=job_id,
                status=state,
                model_name="x",
                env_name="CartPole-v1",
                config=TrainRequest().model_dump() | {"model_name": "x"},
                total_timesteps=10,
                created_at=utcnow(),
            )
        )
    db.close()
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    half_written = settings.models_dir / ".x.0123.tmp.zip"
    half_written.write_bytes(b"PK\x03\x04 half a zip")
    with TestClient(create_app(settings)) as client:
        for job_id in ("crashed-running", "crashed-queued"):
            assert client.get(f"/training/{job_id}/status").json()["status"] == "interrupted"
        assert client.get("/models").json()["models"] == []
    assert not half_written.exists()


# checkpoints and resume


def _points(client: TestClient, job_id: str) -> list[int]:
    return [point["timesteps"] for point in client.get(f"/training/{job_id}/metrics").json()["points"]]


def test_jobs_checkpoint_and_a_stopped_job_resumes_to_its_total(client: TestClient, settings: Settings) -> None:
    job_id = train(client, model_name="resumed", total_timesteps=3072, checkpoint_interval=256, seed=1)
    assert client.get(f"/training/{job_id}/status").json()["config"]["checkpoint_interval"] == 256
    checkpointed = wait_for_job(client, job_id, until=lambda s: (s["checkpoint_timesteps"] or 0) >= 512)
    checkpoint = settings.jobs_dir / job_id / "checkpoint.zip"
    assert checkpoint.is_file() and GRPO.load(checkpoint).num_timesteps >= 256
    assert not list(checkpoint.parent.glob(".*.tmp.zip"))
    assert client.post(f"/training/{job_id}/resume").status_code == 409  # still running
    stopped = client.post(f"/training/{job_id}/stop").json()
    assert stopped["status"] == "stopped"
    status = client.get(f"/training/{job_id}/status").json()
    # Stopping checkpoints where it stopped: a resume loses no step.
    assert status["checkpoint_timesteps"] == stopped["current_timesteps"] >= checkpointed["checkpoint_timesteps"]
    points_before = _points(client, job_id)

    response = client.post(f"/training/{job_id}/resume")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["job_id"] == job_id and body["status"] in ("queued", "running")
    assert body["current_timesteps"] == stopped["current_timesteps"] and body["total_timesteps"] == 3072
    assert body["message"] == f"Training resumed from the checkpoint at {stopped['current_timesteps']} timesteps"
    done = wait_for_job(client, job_id)
    assert done["status"] == "completed" and done["current_timesteps"] >= 3072 and done["model_saved"]
    assert done["config"] == status["config"]
    points = _points(client, job_id)
    assert points[: len(points_before)] == points_before and points == sorted(set(points))
    assert client.get("/models/resumed").json()["timesteps"] == done["current_timesteps"]
    prediction = client.post("/inference", json={"model_name": "resumed", "observation": CARTPOLE_OBS})
    assert prediction.status_code == 200 and prediction.json()["action"] in (0, 1)
    assert not checkpoint.exists()  # a completed job's model is whole; its checkpoint is gone
    assert len(client.get("/training/jobs").json()["jobs"]) == 1  # the same job, not a new one

    again = client.post(f"/training/{job_id}/resume")
    assert again.status_code == 409 and "only interrupted, stopped and failed jobs resume" in again.json()["detail"]
    assert client.post("/training/nope/resume").status_code == 404


def test_a_job_cut_by_shutdown_resumes_after_the_restart(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        job_id = train(client, model_name="cut", total_timesteps=2048, checkpoint_interval=100_000)
        wait_for_job(client, job_id, until=lambda s: s["current_timesteps"] >= 256)
    with TestClient(create_app(settings)) as client:
        status = client.get(f"/training/{job_id}/status").json()
        assert status["status"] == "interrupted" and status["checkpoint_timesteps"] >= 256
        assert status["current_timesteps"] == status["checkpoint_timesteps"]
        assert client.post(f"/training/{job_id}/resume").json()["current_timesteps"] == status["current_timesteps"]
        done = wait_for_job(client, job_id)
        assert done["status"] == "completed" and done["current_timesteps"] >= 2048
        assert client.post("/inference", json={"model_name": "cut", "observation": CARTPOLE_OBS}).status_code == 200


def test_a_crashed_job_shows_its_checkpoint_and_one_without_resumes_from_the_start(settings: Settings) -> None:
    db = Database(settings.db_path)
    config = TrainRequest(**TINY, total_timesteps=128).model_dump() | {"model_name": "fresh"}
    db.add_job(
        JobRecord(
            job_id="crashed",
            status=JobState.RUNNING,
            model_name="fresh",
            env_name="CartPole-v1",
            config=config,
            total_timesteps=128,
            created_at=utcnow(),
            current_timesteps=96,  # progress written after the last checkpoint: lost with the process
            checkpoint_timesteps=64,
        )
    )
    db.close()
    with TestClient(create_app(settings)) as client:
        status = client.get("/training/crashed/status").json()
        assert status["status"] == "interrupted" and status["current_timesteps"] == 64
        assert "resume goes on from its last checkpoint" in status["message"]
        # The record names a checkpoint that is not on disk: the job starts over rather than fail.
        response = client.post("/training/crashed/resume").json()
        assert response["message"] == "Training resumed from the start" and response["current_timesteps"] == 0
        assert wait_for_job(client, "crashed")["status"] == "completed"


def test_resume_refuses_to_overwrite_a_newer_model_unless_asked(client: TestClient) -> None:
    # Issue 17, 1: X trains m and is stopped; Y replaces m; resuming X must not silently put X's model back.
    x = train(client, model_name="m", total_timesteps=150_000)
    wait_for_job(client, x, until=lambda s: s["current_timesteps"] > 100)
    assert client.post(f"/training/{x}/stop").json()["model_saved"]
    y = train(client, model_name="m", total_timesteps=300, overwrite=True)
    assert wait_for_job(client, y)["status"] == "completed"
    # Its record says completed a moment before it leaves the runner; until then the name is busy, not newer.
    deadline = time.monotonic() + 10
    while client.get("/health").json()["active_jobs"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)

    refused = client.post(f"/training/{x}/resume")
    assert refused.status_code == 409, refused.text
    assert "newer" in refused.json()["detail"] and '"overwrite": true' in refused.json()["detail"]
    assert client.get(f"/training/{x}/status").json()["status"] == "stopped"
    assert client.get("/models/m").json()["job_id"] == y

    resumed = client.post(f"/training/{x}/resume", json={"overwrite": True})
    assert resumed.status_code == 200, resumed.text
    # Stopped while it trains (a job stopped while still queued saves nothing), so that it saves its model.
    start = resumed.json()["current_timesteps"]
    wait_for_job(client, x, until=lambda s: s["status"] == "running" and s["current_timesteps"] > start)
    assert client.post(f"/training/{x}/stop").json()["model_saved"]
    assert client.get("/models/m").json()["job_id"] == x


@pytest.mark.parametrize("rounds", [1, 2])
def test_a_stopped_queued_job_resumed_while_the_slots_are_busy_runs_once(tmp_path: Path, rounds: int) -> None:
    # Issue 17, 2: one job, one queue entry, however often it was stopped and resumed while it waited.
    with TestClient(create_app(make_settings(tmp_path, max_concurrent_jobs=1))) as client:
        busy = train(client, model_name="qA", total_timesteps=150_000)
        queued = train(client, model_name="qB", total_timesteps=512, seed=0)
        for _ in range(rounds):
            assert client.post(f"/training/{queued}/stop").json()["status"] == "stopped"
            resumed = client.post(f"/training/{queued}/resume").json()
            assert resumed["status"] == "queued" and resumed["current_timesteps"] == 0
        assert client.get("/health").json()["queued_jobs"] == 1
        client.post(f"/training/{busy}/stop")
        done = wait_for_job(client, queued)
        assert done["status"] == "completed" and done["current_timesteps"] >= 512, done
        assert client.get("/models/qB").json()["timesteps"] >= 512


# admission: what a job needs to be worth starting


def test_a_rollout_larger_than_the_memory_bound_is_refused(service: TestClient) -> None:
    # Issue 17, 9: 64 environments x 100,000 steps took hundreds of MB before a single update.
    response = service.post("/train", json={"n_envs": 64, "n_steps": 100_000})
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert "6,400,000 steps" in detail and "4 values" in detail, detail
    assert "GRPO_MAX_ROLLOUT_BYTES" in detail and "n_steps" in detail and "n_envs" in detail, detail
    assert service.post("/train", json={"n_envs": 64, "n_steps": 100_000, "model_name": "x"}).status_code == 400


def test_a_finished_job_gives_its_memory_back(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    released: list[str] = []
    models: list[weakref.ref[GRPO]] = []
    build = training.build_model

    def tracked(*args: Any, **kwargs: Any) -> GRPO:
        model = build(*args, **kwargs)
        models.append(weakref.ref(model))
        return model

    monkeypatch.setattr(training, "build_model", tracked)
    monkeypatch.setattr(jobs, "release_memory", lambda: released.append("released"))
    job_id = train(client, model_name="freed", total_timesteps=300)
    assert wait_for_job(client, job_id)["status"] == "completed"
    deadline = time.monotonic() + 10  # the record says completed just before the job's thread lets go of it
    while not released:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    gc.collect()
    # Nothing keeps the trained model (and its rollout) alive, and the allocator was asked to give the pages back.
    assert models and all(ref() is None for ref in models)
    assert released == ["released"]


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"total_timesteps": 1}, ["cannot complete one group", "total_timesteps", "group_size"]),
        ({"group_size": 1024, "total_timesteps": 5000}, ["cannot complete one group", "1024 episodes", "group_size"]),
        (  # Pendulum's preset compares groups of 8 episodes of 200 steps
            {"env_name": "Pendulum-v1", "total_timesteps": 1500},
            ["cannot complete one group", "200 steps", "at least 1,600"],
        ),
    ],
)
def test_jobs_that_cannot_complete_one_group_are_refused(
    service: TestClient, body: dict[str, Any], fragments: list[str]
) -> None:
    # Issue 17, 10 (and issue 16, 3): such jobs used to end 'completed' with an untrained model.
    response = service.post("/train", json=body)
    assert response.status_code == 400, response.text
    for fragment in fragments:
        assert fragment in response.json()["detail"], response.json()["detail"]


def test_a_batch_larger_than_the_rollout_is_noted(client: TestClient) -> None:
    response = client.post("/train", json={**TINY, "batch_size": 100_000, "total_timesteps": 512})
    assert response.status_code == 200, response.text
    assert "batch_size 100000" in response.json()["message"]
    status = client.get(f"/training/{response.json()['job_id']}/status").json()
    assert "batch_size 100000" in status["message"]
    assert "batch_size" not in client.post("/train", json={**TINY, "total_timesteps": 512}).json()["message"]


def test_a_diverged_job_says_what_diverged_and_what_to_try(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def exploding(state: th.Tensor, action: th.Tensor, next_state: th.Tensor) -> th.Tensor:
        # Finite, but at the edge of float32: unscaled advantages overflow and the policy's weights turn NaN.
        return th.full((state.shape[0], 1), 3e38) * th.sign(th.randn(state.shape[0], 1))

    monkeypatch.setitem(api.REWARD_FUNCTIONS, "exploding", exploding)
    body = {"reward_function_type": "exploding", "scale_rewards": "none", "learning_rate": 1.0, "seed": 0}
    job_id = train(client, total_timesteps=4096, **body)
    status = wait_for_job(client, job_id)
    assert status["status"] == "failed", status
    error = status["error_message"]
    assert "NaN" in error and "learning_rate" in error and "reward" in error, error
    assert len(error.splitlines()) <= 3 and len(error) < 600, error
