"""Trained models: list them, read their metadata, download, evaluate and delete them."""

from typing import Annotated, TypeVar

import numpy as np
from fastapi import APIRouter, Body, Response
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from errors import InvalidEvaluation
from records import ModelRecord
from routes.dependencies import ADMIN_ONLY, ModelNameParam, RunnerDep, StoreDep
from routes.responses import error_responses
from schemas import DeleteResponse, EvaluateRequest, EvaluateResponse, ModelInfo, ModelList, ModelSummary
from store import ModelStore
from training import environment_spaces

router = APIRouter(tags=["models"])
Summary = TypeVar("Summary", bound=ModelSummary)


def _described(response_model: type[Summary], record: ModelRecord, store: ModelStore) -> Summary:
    # Whether it is loaded is the cache's to say, not the record's.
    return response_model.model_validate(
        {**vars(record), "status": "loaded" if store.is_loaded(record.name) else "saved"}
    )


@router.get("/models", response_model=ModelList)
def list_models(store: StoreDep) -> ModelList:
    return ModelList(models=[_described(ModelSummary, record, store) for record in store.list()])


@router.get("/models/{model_name}", response_model=ModelInfo, responses=error_responses(404, 500))
def model_info(model_name: ModelNameParam, store: StoreDep) -> ModelInfo:
    return _described(ModelInfo, store.info(model_name), store)


@router.get(
    "/models/{model_name}/download",
    response_class=Response,
    responses={
        200: {"content": {"application/zip": {}}, "description": "The model's SB3 zip"},
        **error_responses(403, 404),
    },
    dependencies=[ADMIN_ONLY],
)
def download_model(model_name: ModelNameParam, store: StoreDep) -> Response:
    return Response(
        store.read_bytes(model_name),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{model_name}.zip"'},
    )


@router.post(
    "/models/{model_name}/evaluate",
    response_model=EvaluateResponse,
    responses=error_responses(400, 403, 404, 413, 500),
    dependencies=[ADMIN_ONLY],
)
def evaluate_model(
    model_name: ModelNameParam,
    store: StoreDep,
    request: Annotated[EvaluateRequest | None, Body()] = None,
) -> EvaluateResponse:
    request = request or EvaluateRequest()
    model = store.load(model_name)
    env_name = request.env_name or store.info(model_name).env_name
    if env_name is None:
        raise InvalidEvaluation(f"Model {model_name!r} has no recorded environment; give env_name")
    observation_space, action_space = environment_spaces(env_name)
    if observation_space.shape != model.observation_space.shape or action_space != model.action_space:
        raise InvalidEvaluation(f"Model {model_name!r} does not fit the spaces of {env_name!r}")
    env = make_vec_env(env_name, n_envs=1, seed=request.seed)
    try:
        returns, lengths = evaluate_policy(
            model,
            env,
            n_eval_episodes=request.n_episodes,
            deterministic=request.deterministic,
            return_episode_rewards=True,
            warn=False,
        )
    finally:
        env.close()
    return EvaluateResponse(
        model_name=model_name,
        env_name=env_name,
        n_episodes=request.n_episodes,
        mean_return=float(np.mean(returns)),
        std_return=float(np.std(returns)),
        mean_length=float(np.mean(lengths)),
        returns=[float(value) for value in returns],
    )


@router.delete(
    "/models/{model_name}",
    response_model=DeleteResponse,
    responses=error_responses(403, 404, 409),
    dependencies=[ADMIN_ONLY],
)
def delete_model(model_name: ModelNameParam, store: StoreDep, runner: RunnerDep) -> DeleteResponse:
    runner.ensure_not_training(model_name)
    store.delete(model_name)
    return DeleteResponse(message=f"Model {model_name} deleted", model_name=model_name)
