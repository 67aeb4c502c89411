"""The tuned settings the service fills a training request's omitted fields with (``hyperparams/grpo.yml``)."""

from fastapi import APIRouter, Path

from errors import PresetNotFound
from routes.dependencies import PresetsDep
from routes.responses import error_responses
from schemas import PresetInfo, PresetList

router = APIRouter(tags=["presets"])


@router.get("/presets", response_model=PresetList)
def list_presets(book: PresetsDep) -> PresetList:
    """Every environment with tuned settings, as written in the presets file (rl-baselines3-zoo's format)."""
    return PresetList(presets=[PresetInfo(env_id=env_id, settings=dict(p.values)) for env_id, p in book.items()])


@router.get("/presets/{env_id:path}", response_model=PresetInfo, responses=error_responses(404))
def get_preset(env_id: str = Path(max_length=200), *, book: PresetsDep) -> PresetInfo:
    """The settings a job on ``env_id`` takes for every field its request omits."""
    preset = book.get(env_id)
    if preset is None:
        raise PresetNotFound(f"No preset for {env_id!r}; presets exist for {', '.join(book)}")
    return PresetInfo(env_id=env_id, settings=dict(preset.values))
