"""The serving side of the API: the inference fast path and its engines, micro-batching through HTTP, the ONNX
export route and the Prometheus metrics."""

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from harness import CARTPOLE_OBS, free_port, make_settings, train, wait_for_job
from prometheus_client.parser import text_string_to_metric_families
from stable_baselines3.common.envs import SimpleMultiObsEnv
from stable_baselines3.common.vec_env import DummyVecEnv

from api import create_app
from grpo import GRPO

ort = pytest.importorskip("onnxruntime")


def observations(count: int, seed: int = 0) -> list[list[float]]:
    return np.random.default_rng(seed).normal(0, 0.5, size=(count, 4)).round(4).tolist()


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


# the fast path


@pytest.mark.parametrize("engine", ["onnxruntime", "torch"])
@pytest.mark.parametrize("batching", [True, False])
def test_every_engine_answers_like_predict(tmp_path: Path, engine: str, batching: bool) -> None:
    settings = make_settings(tmp_path, inference_engine=engine, inference_batching=batching)
    with TestClient(create_app(settings)) as client:
        assert wait_for_job(client, train(client, model_name="cp", total_timesteps=256, seed=0))["model_saved"]
        model = GRPO.load(tmp_path / "models" / "cp.zip", device="cpu")
        batch = observations(200)
        expected, _ = model.predict(np.array(batch, dtype=np.float32), deterministic=True)
        body = client.post("/inference", json={"model_name": "cp", "observations": batch}).json()
        assert body["actions"] == expected.tolist()
        assert np.allclose(np.array(body["action_probs"]).sum(axis=1), 1, atol=1e-5)
        single = client.post("/inference", json={"model_name": "cp", "observation": batch[7]}).json()
        assert single["action"] == expected[7] and single["value"] is None
        assert single["action_probs"] == pytest.approx(body["action_probs"][7], abs=1e-6)


def test_models_that_cannot_be_exported_say_why(tmp_path: Path) -> None:
    """Dict observations have no ONNX export (nor a way through /inference's arrays): a 400, not a 500."""
    settings = make_settings(tmp_path)
    model = GRPO("MultiInputPolicy", DummyVecEnv([SimpleMultiObsEnv]), n_steps=16, batch_size=16, seed=0)
    (tmp_path / "models").mkdir()
    model.save(tmp_path / "models" / "dict.zip")
    with TestClient(create_app(settings)) as client:
        response = client.get("/models/dict/export")
        assert response.status_code == 400 and "cannot be exported" in response.json()["detail"]
        assert client.post("/inference", json={"model_name": "dict", "observation": [0.0]}).status_code == 400


def test_a_large_forward_pass_leaves_the_event_loop(tmp_path: Path) -> None:
    """inline_max_work 0: every pass in a worker thread; answers are the same."""
    with TestClient(create_app(make_settings(tmp_path, inference_inline_max_work=0))) as client:
        assert wait_for_job(client, train(client, model_name="cp", total_timesteps=512, seed=0))["model_saved"]
        model = GRPO.load(tmp_path / "models" / "cp.zip", device="cpu")
        expected, _ = model.predict(np.array(CARTPOLE_OBS, dtype=np.float32), deterministic=True)
        assert client.post("/inference", json={"model_name": "cp", "observation": CARTPOLE_OBS}).json()["action"] == (
            int(expected)
        )


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(tmp_path: Path) -> None:
    """Through the whole app: 64 concurrent single-observation requests, fewer forward passes, right answers."""
    settings = make_settings(tmp_path, inference_batching=True, inference_max_wait_ms=50.0)
    app = create_app(settings)
    with TestClient(app) as client:
        assert wait_for_job(client, train(client, model_name="cp", total_timesteps=512, seed=0))["model_saved"]
        client.post("/inference", json={"model_name": "cp", "observation": CARTPOLE_OBS})  # load and compile
    model = GRPO.load(tmp_path / "models" / "cp.zip", device="cpu")
    batch = observations(64, seed=3)
    expected, _ = model.predict(np.array(batch, dtype=np.float32), deterministic=True)

    async def concurrently() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await asyncio.gather(
                *(c.post("/inference", json={"model_name": "cp", "observation": obs}) for obs in batch)
            )

    responses = asyncio.run(concurrently())
    assert [response.json()["action"] for response in responses] == expected.tolist()
    with TestClient(app) as client:
        metrics = samples(client.get("/metrics").text)
    passes = dict((labels["le"], value) for labels, value in metrics["grpo_inference_batch_size_bucket"])
    assert metrics["grpo_inference_batch_size_sum"][0][1] >= 64
    assert passes["1.0"] < 64  # some passes served several requests


# export


def test_export_route_gives_the_deterministic_policy(service: TestClient) -> None:
    response = service.get("/models/cartpole/export", params={"format": "onnx"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == 'attachment; filename="cartpole.onnx"'
    session = ort.InferenceSession(response.content, providers=["CPUExecutionProvider"])
    batch = observations(100, seed=1)
    actions, probabilities = session.run(None, {"observation": np.array(batch, dtype=np.float32)})
    served = service.post("/inference", json={"model_name": "cartpole", "observations": batch}).json()
    assert actions.tolist() == served["actions"]
    np.testing.assert_allclose(probabilities, served["action_probs"], atol=1e-6)


def test_export_route_box_actions_are_clipped(service: TestClient) -> None:
    data = service.get("/models/pendulum/export").content  # format=onnx is the default
    batch = np.random.default_rng(2).normal(0, 1, size=(50, 3)).astype(np.float32)
    (actions,) = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"observation": batch})
    served = service.post("/inference", json={"model_name": "pendulum", "observations": batch.tolist()}).json()
    np.testing.assert_allclose(actions, served["actions"], atol=1e-5)
    assert np.abs(actions).max() <= 2.0


@pytest.mark.parametrize(
    ("path", "status"),
    [("/models/nope/export", 404), ("/models/cartpole/export?format=tflite", 422), ("/models/bad%20name/export", 422)],
)
def test_export_route_errors(service: TestClient, path: str, status: int) -> None:
    assert service.get(path).status_code == status


# metrics


def test_metrics_parse_and_count_what_happened(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path))) as client:
        job_id = train(client, model_name="cp", total_timesteps=256, seed=0)
        wait_for_job(client, job_id)
        for _ in range(3):
            assert client.post("/inference", json={"model_name": "cp", "observation": CARTPOLE_OBS}).status_code == 200
        client.post("/inference", json={"model_name": "nope", "observation": CARTPOLE_OBS})
        response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)  # prometheus_client's own parser: refuses malformed exposition text

    def value(name: str, **labels: str) -> float:
        matching = [v for sample, v in found[name] if labels.items() <= sample.items()]
        assert len(matching) == 1, (name, labels, found.get(name))
        return matching[0]

    route = {"method": "POST", "route": "/inference"}
    assert value("grpo_http_requests_total", **route, status="200") == 3
    assert value("grpo_http_requests_total", **route, status="404") == 1
    assert value("grpo_http_request_duration_seconds_count", **route, status="200") == 3
    assert value("grpo_http_requests_total", method="GET", route="/training/{job_id}/status", status="200") >= 1
    assert value("grpo_jobs", state="completed") == 1 and value("grpo_jobs", state="running") == 0
    assert value("grpo_model_cache_misses_total") == 1 and value("grpo_model_cache_hits_total") >= 2
    assert value("grpo_model_cache_models") == 1 and value("grpo_model_cache_bytes") > 0
    assert value("grpo_inference_batch_size_count") == 3


def test_running_jobs_report_their_speed(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path))) as client:
        job_id = train(client, model_name="slow", total_timesteps=150_000)
        wait_for_job(client, job_id, until=lambda status: status["metrics"].get("time/fps", 0) > 0)
        found = samples(client.get("/metrics").text)
        client.post(f"/training/{job_id}/stop")
    speeds = {labels["job_id"]: value for labels, value in found["grpo_job_steps_per_second"]}
    assert speeds[job_id] > 0
    assert ({"state": "running"}, 1.0) in found["grpo_jobs"]


def test_metrics_need_the_key_and_can_have_a_port_of_their_own(tmp_path: Path) -> None:
    port = free_port()
    settings = make_settings(tmp_path, api_key="secret", metrics_port=port)
    with TestClient(create_app(settings)) as client:
        assert client.get("/metrics").status_code == 401
        scraped = client.get("/metrics", headers={"X-API-Key": "secret"})
        assert scraped.status_code == 200 and "grpo_jobs" in scraped.text
        separate = httpx.get(f"http://127.0.0.1:{port}/metrics")  # no key: the port is for the scraper
        assert separate.status_code == 200 and "grpo_http_requests_total" in samples(separate.text)
    with pytest.raises(httpx.ConnectError):  # closed with the app
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
