"""Prometheus metrics of the service, made per app (a ``CollectorRegistry`` of its own, no module globals).

- ``grpo_http_requests_total`` and ``grpo_http_request_duration_seconds``: every request, by method, route
  template (``/models/{model_name}``, not the name: a bounded set of labels) and status code;
- ``grpo_inference_batch_size``: observations per forward pass of ``/inference`` (with micro-batching, a pass
  serves several requests);
- read from the service's state at each scrape: ``grpo_jobs`` by state, ``grpo_job_steps_per_second`` of each
  running job, ``grpo_model_cache_hits_total`` / ``_misses_total``, ``grpo_model_cache_bytes`` and
  ``grpo_model_cache_models``.

``app.add_middleware(RequestMetrics, metrics=...)`` counts the requests; ``ServiceMetrics.watch`` names where the
rest is read.
"""

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "CacheStats", "ServiceMetrics"]

# From a tenth of a millisecond (an inference on the event loop) to a minute (a long evaluation).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)
# Requests that matched no route (404s for made-up paths) share one label instead of one each.
UNMATCHED_ROUTE = "unmatched"


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    bytes: int
    models: int


class _StateCollector(Collector):
    """Reads the jobs and the model cache when Prometheus scrapes, so nothing is counted twice or goes stale."""

    def __init__(
        self,
        jobs_by_state: Callable[[], Mapping[str, int]],
        steps_per_second: Callable[[], Mapping[str, float]],
        cache_stats: Callable[[], CacheStats],
    ) -> None:
        self.jobs_by_state = jobs_by_state
        self.steps_per_second = steps_per_second
        self.cache_stats = cache_stats

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("grpo_jobs", "Training jobs by state", labels=["state"])
        for state, count in self.jobs_by_state().items():
            jobs.add_metric([state], count)
        yield jobs
        speed = GaugeMetricFamily(
            "grpo_job_steps_per_second", "Environment steps per second of each running job", labels=["job_id"]
        )
        for job_id, value in self.steps_per_second().items():
            speed.add_metric([job_id], value)
        yield speed
        cache = self.cache_stats()
        yield CounterMetricFamily("grpo_model_cache_hits", "Model loads served from the cache", value=cache.hits)
        yield CounterMetricFamily("grpo_model_cache_misses", "Model loads read from disk", value=cache.misses)
        yield GaugeMetricFamily("grpo_model_cache_bytes", "Memory the cached models take", value=cache.bytes)
        yield GaugeMetricFamily("grpo_model_cache_models", "Models in the cache", value=cache.models)


class ServiceMetrics:
    """The metrics of one app. ``render()`` gives the Prometheus text exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["method", "route", "status"]
        self.requests = Counter("grpo_http_requests", "HTTP requests answered", labels, registry=self.registry)
        self.latency = Histogram(
            "grpo_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "grpo_inference_batch_size",
            "Observations per forward pass of /inference",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self._state: _StateCollector | None = None
        # Each label set's counter and histogram, looked up once: ``labels()`` costs more than the counting itself, and
        # the label sets are few (routes are templates, not paths).
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def watch(
        self,
        jobs_by_state: Callable[[], Mapping[str, int]],
        steps_per_second: Callable[[], Mapping[str, float]],
        cache_stats: Callable[[], CacheStats],
    ) -> None:
        """Where the scrape-time metrics are read from (the app's lifespan calls it once its state exists)."""
        if self._state is not None:
            self.registry.unregister(self._state)
        self._state = _StateCollector(jobs_by_state, steps_per_second, cache_stats)
        self.registry.register(self._state)

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            labels = (method, route, str(status))
            children = self._children[key] = (self.requests.labels(*labels), self.latency.labels(*labels))
        requests, latency = children
        requests.inc()
        latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> Callable[[], None]:
        """Serve the metrics at ``http://host:port/`` (any path), without the API key, from a thread of their own;
        returns the function that stops it."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join()

        return stop


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP request by its route template and status."""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees when the app fails before it answers

        async def send_with_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            # The router leaves the matched route in the scope: its template, not the path, is the label.
            route = getattr(scope.get("route"), "path", UNMATCHED_ROUTE)
            self.metrics.observe_request(scope["method"], route, status, time.perf_counter() - started)
