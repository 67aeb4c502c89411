"""Trained models: list them, read their metadata, download, export, evaluate and delete them."""

from typing import Annotated, Literal, TypeVar

import numpy as np
from fastapi import APIRouter, Body, Query, Request, Response
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from errors import InvalidEvaluation, ModelNotExportable
from export import ExportUnsupported, export_onnx
from records import EvaluationRecord, ModelRecord, utcnow
from routes.dependencies import ADMIN_ONLY, ModelNameParam, RunnerDep, StoreDep
from routes.listing import ModelListQuery, models_page
from routes.replays import get_replays
from routes.responses import CHANGES_STATE, error_responses
from schemas import (
    DeleteResponse,
    EvaluateRequest,
    EvaluateResponse,
    EvaluationInfo,
    ModelInfo,
    ModelList,
    ModelSummary,
)
from store import ModelStore
from training import environment_spaces

router = APIRouter(tags=["models"])
Summary = TypeVar("Summary", bound=ModelSummary)


def _described(response_model: type[Summary], record: ModelRecord, store: ModelStore) -> Summary:
    # Whether it is loaded is the cache's to say, not the record's.
    return response_model.model_validate(
        {**vars(record), "status": "loaded" if store.is_loaded(record.name) else "saved"}
    )


@router.get("/models", response_model=ModelList, response_model_exclude_none=True)
def list_models(store: StoreDep, query: Annotated[ModelListQuery, Query()]) -> ModelList:
    """Every model; with ``limit``/``offset`` one page, with filters (env, a part of the name, study) only those
    that pass, the answer then also giving ``total`` and ``next_offset``."""
    if query.is_plain():
        return ModelList(models=[_described(ModelSummary, record, store) for record in store.list()])
    study_jobs = set(store.db.study_job_ids(query.study)) if query.study else None
    page, total = models_page(store.list(), query, study_jobs)
    end = query.offset + len(page)
    return ModelList(
        models=[_described(ModelSummary, record, store) for record in page],
        total=total,
        next_offset=end if end < total else None,
    )


@router.get("/models/{model_name}", response_model=ModelInfo, responses=error_responses(404, 500))
def model_info(model_name: ModelNameParam, store: StoreDep) -> ModelInfo:
    info = _described(ModelInfo, store.info(model_name), store)
    info.evaluations = [EvaluationInfo.model_validate(kept) for kept in store.db.list_evaluations(model_name)]
    return info


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


@router.get(
    "/models/{model_name}/export",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "An ONNX file of the model's deterministic policy: input 'observation' (float32, "
            "[batch, *observation_shape]); outputs 'action' (int64 for Discrete, MultiDiscrete and MultiBinary "
            "spaces, float32 and clipped for Box) and, for Discrete actions, 'action_probs'",
        },
        **error_responses(400, 403, 404, 500),
    },
    dependencies=[ADMIN_ONLY],
)
def export_model(
    model_name: ModelNameParam,
    store: StoreDep,
    format: Annotated[Literal["onnx"], Query(description="The file format; ONNX is the one there is")] = "onnx",
) -> Response:
    """The model's deterministic policy as an ONNX file, to run without this server (onnxruntime, TensorRT, a
    browser): the same actions as POST /inference with deterministic=true."""
    try:
        trained = store.load(model_name)
        data = export_onnx(trained.model, normalizer=trained.normalizer)
    except ExportUnsupported as error:
        raise ModelNotExportable(f"Model {model_name!r} cannot be exported to ONNX: {error}") from None
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{model_name}.onnx"'},
    )


@router.post(
    "/models/{model_name}/evaluate",
    response_model=EvaluateResponse,
    responses=error_responses(400, 404, 413, 500, *CHANGES_STATE),
    dependencies=[ADMIN_ONLY],
)
def evaluate_model(
    model_name: ModelNameParam,
    store: StoreDep,
    request: Annotated[EvaluateRequest | None, Body()] = None,
) -> EvaluateResponse:
    request = request or EvaluateRequest()
    trained = store.load(model_name)
    model, info = trained.model, store.info(model_name)
    env_name = request.env_name or info.env_name
    if env_name is None:
        raise InvalidEvaluation(f"Model {model_name!r} has no recorded environment; give env_name")
    # On its own environment, a model is evaluated with the env_kwargs it was trained with.
    env_kwargs = info.hyperparameters.get("env_kwargs") if env_name == info.env_name else None
    observation_space, action_space = environment_spaces(env_name, env_kwargs)
    if observation_space.shape != model.observation_space.shape or action_space != model.action_space:
        raise InvalidEvaluation(f"Model {model_name!r} does not fit the spaces of {env_name!r}")
    # Its normalisation statistics, frozen: returns are the environment's own.
    env = trained.wrap(make_vec_env(env_name, n_envs=1, seed=request.seed, env_kwargs=env_kwargs), training=False)
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
    store.db.add_evaluation(
        EvaluationRecord(
            model_name=model_name,
            env_name=env_name,
            n_episodes=request.n_episodes,
            seed=request.seed,
            deterministic=request.deterministic,
            mean_return=float(np.mean(returns)),
            std_return=float(np.std(returns)),
            mean_length=float(np.mean(lengths)),
            created_at=utcnow(),
        )
    )
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
    responses=error_responses(404, 409, *CHANGES_STATE),
    dependencies=[ADMIN_ONLY],
)
def delete_model(model_name: ModelNameParam, store: StoreDep, runner: RunnerDep, request: Request) -> DeleteResponse:
    runner.ensure_not_training(model_name)
    store.delete(model_name)
    get_replays(request).forget(model_name)
    return DeleteResponse(message=f"Model {model_name} deleted", model_name=model_name)
