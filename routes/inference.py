"""Actions from a trained model, for one observation or a batch."""

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse
from gymnasium import spaces

from errors import BatchTooLarge, InvalidObservation
from grpo import GRPO
from routes.dependencies import PredictorDep
from routes.responses import CHANGES_STATE, error_responses
from schemas import BatchInferenceResponse, InferenceRequest, InferenceResponse

router = APIRouter(tags=["inference"])
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
        # Values beyond float32 become inf here and are refused below, with the NaNs.
        with np.errstate(over="ignore"):
            batch = np.asarray(observations, dtype=np.float32)
    except ValueError:
        raise InvalidObservation("Observations must be arrays of numbers, all of the same shape") from None
    expected = tuple(space.shape or ())
    shape = batch.shape[1:]
    if isinstance(space, spaces.Discrete) and shape == (1,):
        batch, shape = batch[:, 0], ()  # [3] for a Discrete observation 3
    if shape != expected:
        raise InvalidObservation(
            f"Model {model_name!r} expects observations of shape {list(expected)}, got {list(shape)}"
        )
    if not np.isfinite(batch).all():
        raise InvalidObservation("Observations must be finite numbers within float32 range")
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


@router.post(
    "/inference",
    response_model=InferenceResponse | BatchInferenceResponse,
    responses=error_responses(400, 404, 413, 500, *CHANGES_STATE),
)
async def inference(
    request: Annotated[InferenceRequest, Body(openapi_examples=INFERENCE_EXAMPLES)], predictor: PredictorDep
) -> JSONResponse:
    # async, with one dependency: a cached tiny model answers on the event loop without a thread hop; a cold
    # model's load and a large forward pass go to a thread (predictor.py).
    if request.observations is not None and len(request.observations) > predictor.max_observations:
        raise BatchTooLarge(
            f"{len(request.observations)} observations in one request; this server takes at most "
            f"{predictor.max_observations} (send several requests)"
        )
    trained = await predictor.model(request.model_name)
    model = trained.model
    single = request.observations is None
    raw = [request.observation] if single else request.observations
    batch = observation_batch(model, raw, request.model_name)
    # Clients send the environment's own observations; a model trained under VecNormalize has its statistics applied.
    actions, probabilities = await predictor.predict(trained, batch, request.deterministic)
    # The answer as JSON right away: FastAPI would validate and convert it against the response model again.
    if single:
        return JSONResponse(
            {
                "action": action_json(actions[0], model.action_space),
                "action_probs": probabilities[0].tolist() if probabilities is not None else None,
                "value": None,  # GRPO has no critic
            }
        )
    return JSONResponse(
        {
            "actions": [action_json(action, model.action_space) for action in actions],
            "action_probs": probabilities.tolist() if probabilities is not None else None,
        }
    )
