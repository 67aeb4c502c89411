"""Prometheus metrics: per app, by route template and status, and readable by Prometheus' own text parser."""

from fastapi import FastAPI, HTTPException, Response
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from metrics import CONTENT_TYPE_LATEST, CacheStats, RequestMetrics, ServiceMetrics


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)], through prometheus_client's parser (which refuses malformed text)."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    matches = [v for sample_labels, v in samples.get(name, []) if labels.items() <= sample_labels.items()]
    assert len(matches) == 1, (name, labels, samples.get(name))
    return matches[0]


def make_app(metrics: ServiceMetrics) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{name}")
    async def item(name: str) -> dict[str, str]:
        if name == "missing":
            raise HTTPException(404, "no such item")
        return {"name": name}

    @app.get("/metrics")
    def scrape() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


def test_requests_are_counted_by_route_template_and_status() -> None:
    metrics = ServiceMetrics()
    with TestClient(make_app(metrics)) as client:
        for name in ("a", "b", "c", "missing"):
            client.get(f"/items/{name}")
        client.get("/no/such/path")
        response = client.get("/metrics")
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    samples = parse(response.text)
    route = {"method": "GET", "route": "/items/{name}"}
    assert value(samples, "grpo_http_requests_total", **route, status="200") == 3
    assert value(samples, "grpo_http_requests_total", **route, status="404") == 1
    assert value(samples, "grpo_http_requests_total", route="unmatched", status="404") == 1
    assert value(samples, "grpo_http_request_duration_seconds_count", **route, status="200") == 3
    assert value(samples, "grpo_http_request_duration_seconds_bucket", **route, status="200", le="+Inf") == 3
    # one label set per template, never per name
    assert not [labels for labels, _ in samples["grpo_http_requests_total"] if "/items/a" in labels["route"]]


def test_state_is_read_at_each_scrape() -> None:
    metrics = ServiceMetrics()
    jobs = {"running": 1, "queued": 2, "completed": 0}
    cache = CacheStats(hits=5, misses=2, bytes=4096, models=1)
    metrics.watch(lambda: jobs, lambda: {"job-1": 1234.5}, lambda: cache)
    for size in (1, 3, 64):
        metrics.observe_batch(size)
    samples = parse(metrics.render().decode())
    assert value(samples, "grpo_jobs", state="queued") == 2
    assert value(samples, "grpo_job_steps_per_second", job_id="job-1") == 1234.5
    assert value(samples, "grpo_model_cache_hits_total") == 5
    assert value(samples, "grpo_model_cache_misses_total") == 2
    assert value(samples, "grpo_model_cache_bytes") == 4096
    assert value(samples, "grpo_model_cache_models") == 1
    assert value(samples, "grpo_inference_batch_size_count") == 3
    assert value(samples, "grpo_inference_batch_size_sum") == 68
    jobs["queued"] = 0
    assert value(parse(metrics.render().decode()), "grpo_jobs", state="queued") == 0


def test_each_app_has_its_own_metrics() -> None:
    first, second = ServiceMetrics(), ServiceMetrics()
    first.observe_request("GET", "/", 200, 0.001)
    assert value(parse(first.render().decode()), "grpo_http_requests_total", route="/") == 1
    assert "grpo_http_requests_total{" not in second.render().decode()
    # watching again replaces the sources instead of registering a duplicate
    second.watch(dict, dict, lambda: CacheStats(0, 0, 0, 0))
    second.watch(lambda: {"running": 3}, dict, lambda: CacheStats(0, 0, 0, 0))
    assert value(parse(second.render().decode()), "grpo_jobs", state="running") == 3
