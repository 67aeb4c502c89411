"""Prometheus metrics of the service (see ``metrics.py``), behind the API key like every route with data."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from metrics import CONTENT_TYPE_LATEST, ServiceMetrics

router = APIRouter(tags=["metrics"])


async def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text exposition format"}},
)
def scrape(metrics: Annotated[ServiceMetrics, Depends(get_metrics)]) -> Response:
    """Request counts and latencies, inference batch sizes, jobs by state, training speed and the model cache.
    A plain ``def``: reading the jobs by state asks the database."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
