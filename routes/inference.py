"""Actions from a trained model, for one observation or a batch."""

from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from gymnasium import spaces
from pydantic import ValidationError
from starlette.routing import request_response

from errors import BatchTooLarge, InvalidObservation
from grpo import GRPO
from predictor import Predictor
from routes.dependencies import require_inference_key
from routes.responses import CHANGES_STATE, error_responses
from schemas import BatchInferenceResponse, InferenceRequest, InferenceResponse


class PlainRoute(APIRoute):
    """A route documented in OpenAPI like any other, whose endpoint takes the ``Request`` and returns a ``Response``,
    run as Starlette runs such an endpoint: without FastAPI's request handler around it, which would solve
    dependencies and serialize nothing here, at a fifth of a small inference's time. Exceptions still reach the
    app's handlers (Starlette's ``request_response`` hands them on)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = request_response(self.endpoint)


router = APIRouter(tags=["inference"], route_class=PlainRoute)
FLOAT32_MAX = float(np.finfo(np.float32).max)
# What Swagger UI offers to send: one observation or a batch, never both (that is a 422).
INFERENCE_EXAMPLES = {
    "single": {
        "summary": "One observation (the API document's example)",
        "value": {"model_name": "test_model", "observation": [0.1, 0.0, 0.05, 0.0]},
    },
    "batch": {
        "summary": "A batch of observations",
        "value": {"model_name": "test_model", "observations": [[0.1, 0.0, 0.05, 0.0], [0.0, 0.1, -0.02, 0.3]]},
    },
}


def observation_batch(model: GRPO, observations: Any, model_name: str) -> np.ndarray:
    """Check observations against the model's observation space; returns them as one batch array."""
    space = model.observation_space
    try:
        # As float64 first: values beyond float32's range are then refused below instead of becoming inf in a cast
        # (and np.errstate around the cast costs more than the rest of the check).
        batch = np.asarray(observations, dtype=np.float64)
    except (ValueError, OverflowError):
        raise InvalidObservation("Observations must be arrays of numbers, all of the same shape") from None
    expected = tuple(space.shape or ())
    shape = batch.shape[1:]
    if isinstance(space, spaces.Discrete) and shape == (1,):
        batch, shape = batch[:, 0], ()  # [3] for a Discrete observation 3
    if shape != expected:
        raise InvalidObservation(
            f"Model {model_name!r} expects observations of shape {list(expected)}, got {list(shape)}"
        )
    if not (np.abs(batch) <= FLOAT32_MAX).all():  # NaN fails it too
        raise InvalidObservation("Observations must be finite numbers within float32 range")
    batch = batch.astype(np.float32)
    if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        if not (batch == np.round(batch)).all():
            raise InvalidObservation(f"Model {model_name!r} expects integer observations")
        batch = batch.astype(space.dtype)
        if not all(space.contains(observation) for observation in batch):
            raise InvalidObservation(f"Observations out of the range of {space}")
    return batch


def action_json(action: np.ndarray, space: spaces.Space) -> Any:
    if isinstance(space, spaces.Discrete):
        return int(action)
    if isinstance(space, spaces.Box):
        return action.astype(float).tolist()
    return action.astype(int).tolist()


VALIDATION_ERROR = {
    "description": "Validation Error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
}


def _request_body_schema() -> dict[str, Any]:
    """The body's OpenAPI description, as FastAPI would write it for an ``InferenceRequest`` parameter."""
    schema = InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    return {
        "required": True,
        "content": {"application/json": {"schema": schema, "examples": INFERENCE_EXAMPLES}},
    }


async def parse_request(request: Request) -> InferenceRequest:
    """The body checked as FastAPI checks a body parameter (same 422s), in one call into pydantic-core."""
    try:
        return InferenceRequest.model_validate_json(await request.body())
    except ValidationError as error:
        raise RequestValidationError(
            [{**detail, "loc": ("body", *detail["loc"])} for detail in error.errors(include_url=False)]
        ) from None


@router.post(
    "/inference",
    response_model=InferenceResponse | BatchInferenceResponse,
    # 422 too: FastAPI declares it only for routes whose parameters it checks itself.
    responses={**error_responses(400, 401, 404, 413, 429, 500, *CHANGES_STATE), 422: VALIDATION_ERROR},
    openapi_extra={"requestBody": _request_body_schema(), "security": [{"APIKeyHeader": []}]},
)
async def inference(request: Request) -> Response:
    # The hottest route takes the Request alone and does by hand what dependencies and a body parameter would: FastAPI
    # solving them was 40% of a small model's inference (profiled); the body's schema is declared above for /docs.
    await require_inference_key(request)  # the key (401) and the inference group's rate limit (429)
    body = await parse_request(request)
    predictor: Predictor = request.app.state.predictor
    if body.observations is not None and len(body.observations) > predictor.max_observations:
        raise BatchTooLarge(
            f"{len(body.observations)} observations in one request; this server takes at most "
            f"{predictor.max_observations} (send several requests)"
        )
    # A cached tiny model answers on the event loop without a thread hop; a cold model's load and a large forward
    # pass go to a thread (predictor.py).
    trained = await predictor.model(body.model_name)
    model = trained.model
    single = body.observations is None
    raw = [body.observation] if single else body.observations
    batch = observation_batch(model, raw, body.model_name)
    # Clients send the environment's own observations; a model trained under VecNormalize has its statistics applied.
    actions, probabilities = await predictor.predict(trained, batch, body.deterministic)
    # The answer as JSON right away: FastAPI would validate and convert it against the response model again.
    if single:
        return json_response(
            {
                "action": action_json(actions[0], model.action_space),
                "action_probs": probabilities[0].tolist() if probabilities is not None else None,
                "value": None,  # GRPO has no critic
            }
        )
    return json_response(
        {
            "actions": [action_json(action, model.action_space) for action in actions],
            "action_probs": probabilities.tolist() if probabilities is not None else None,
        }
    )


def json_response(content: dict[str, Any]) -> Response:
    # orjson: a tenth of the json module's time for an answer this small, which was a tenth of the whole request.
    return Response(orjson.dumps(content), media_type="application/json")
