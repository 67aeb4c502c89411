"""Actions from a trained model, for one observation or a batch."""

from typing import Any

import numpy as np
import torch as th
from fastapi import APIRouter
from gymnasium import spaces

from errors import BatchTooLarge, InvalidObservation, ModelNotFound
from grpo import GRPO
from routes.dependencies import RunnerDep, SettingsDep, StoreDep
from routes.responses import error_responses
from schemas import BatchInferenceResponse, InferenceRequest, InferenceResponse

router = APIRouter(tags=["inference"])


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


def predict(model: GRPO, batch: np.ndarray, deterministic: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Actions for a batch of observations, and each action's probability where the space is Discrete."""
    if isinstance(model.action_space, spaces.Discrete):
        # One forward pass gives both the action and the probabilities the document returns with it.
        observation, _ = model.policy.obs_to_tensor(batch)
        with th.no_grad():
            distribution = model.policy.get_distribution(observation)
            actions = distribution.get_actions(deterministic=deterministic)
            probabilities = distribution.distribution.probs
        return actions.cpu().numpy(), probabilities.cpu().numpy()
    actions, _ = model.predict(batch, deterministic=deterministic)
    return actions, None


def action_json(action: np.ndarray, space: spaces.Space) -> Any:
    if isinstance(space, spaces.Discrete):
        return int(action)
    if isinstance(space, spaces.Box):
        return action.astype(float).tolist()
    return action.astype(int).tolist()


@router.post(
    "/inference",
    response_model=InferenceResponse | BatchInferenceResponse,
    responses=error_responses(400, 404, 413, 500),
)
def inference(
    request: InferenceRequest, store: StoreDep, runner: RunnerDep, settings: SettingsDep
) -> InferenceResponse | BatchInferenceResponse:
    if request.observations is not None and len(request.observations) > settings.max_inference_batch:
        raise BatchTooLarge(
            f"{len(request.observations)} observations in one request; this server takes at most "
            f"{settings.max_inference_batch} (send several requests)"
        )
    try:
        model = store.load(request.model_name)
    except ModelNotFound:
        job = runner.training_job_for(request.model_name)
        if job is None:
            raise
        # The document's example asks for a prediction right after starting training: say when to come back.
        raise ModelNotFound(
            f"Model {request.model_name!r} is not trained yet: job {job.job_id} is {job.status.value} "
            f"({job.progress:.0%} done)"
        ) from None
    single = request.observations is None
    raw = [request.observation] if single else request.observations
    batch = observation_batch(model, raw, request.model_name)
    actions, probabilities = predict(model, batch, request.deterministic)
    if single:
        return InferenceResponse(
            action=action_json(actions[0], model.action_space),
            action_probs=probabilities[0].tolist() if probabilities is not None else None,
            value=None,  # GRPO has no critic
        )
    return BatchInferenceResponse(
        actions=[action_json(action, model.action_space) for action in actions],
        action_probs=probabilities.tolist() if probabilities is not None else None,
    )
