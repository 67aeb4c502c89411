"""Replays: one episode of a stored model, drawn from its environment's frames, as a GIF or an MP4."""

from typing import Annotated

import anyio
from fastapi import APIRouter, Query, Request, Response

from errors import InvalidEvaluation
from replay import MEDIA_TYPES, ReplayCache, ReplayFormat
from routes.dependencies import ADMIN_ONLY, ModelNameParam, StoreDep
from routes.responses import error_responses

router = APIRouter(tags=["models"])


def get_replays(request: Request) -> ReplayCache:
    replays = getattr(request.app.state, "replays", None)
    if replays is None:  # made on first use: the cache needs nothing from the lifespan but the models folder
        replays = request.app.state.replays = ReplayCache(request.app.state.settings.models_dir / "replays")
    return replays


@router.get(
    "/models/{model_name}/replay",
    response_class=Response,
    responses={
        200: {
            "content": {"image/gif": {}, "video/mp4": {}},
            "description": "One episode as an animated GIF or an MP4. Headers: X-Episode-Return, X-Episode-Length, "
            "X-Frames, X-Replay-Cache (hit or miss)",
        },
        **error_responses(400, 403, 404, 500),
    },
    # An admin's, as evaluating is: the first request of a model and seed plays and draws for seconds.
    dependencies=[ADMIN_ONLY],
)
async def replay_model(
    model_name: ModelNameParam,
    store: StoreDep,
    request: Request,
    format: Annotated[ReplayFormat, Query(description="gif (an image any page shows) or mp4 (smaller)")] = "gif",
    seed: Annotated[int, Query(ge=0, le=2**32 - 1, description="The episode's reset seed")] = 0,
    deterministic: Annotated[bool, Query(description="The policy's most likely action at each step")] = True,
    max_frames: Annotated[int, Query(ge=2, le=1_000, description="At most this many frames (steps are skipped)")] = 150,
) -> Response:
    """Play one episode of the model on its training environment and answer it as an animation; the same model,
    seed, settings and format come from a cache after the first time. 400 when the environment cannot draw."""
    replays = get_replays(request)

    def render() -> tuple[bytes, dict[str, str]]:
        record = store.info(model_name)
        if record.env_name is None:
            raise InvalidEvaluation(f"Model {model_name!r} has no recorded environment to replay it in")
        replay = replays.replay(
            model_name,
            store.path_for(model_name),
            lambda: store.load(model_name),
            record.env_name,
            format,
            seed,
            deterministic,
            max_frames,
        )
        return replay.data, {
            "X-Episode-Return": f"{replay.episode_return:g}",
            "X-Episode-Length": str(replay.episode_length),
            "X-Frames": str(replay.frames),
            "X-Replay-Cache": "hit" if replay.cached else "miss",
            "Cache-Control": "private, max-age=3600",
        }

    data, headers = await anyio.to_thread.run_sync(render)
    return Response(data, media_type=MEDIA_TYPES[format], headers=headers)
