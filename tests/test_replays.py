"""Replays of stored models: a Discrete (CartPole) and a Box (Pendulum) model rendered as GIF and MP4, decoded back
into frames within the cap; the cache; and the 400 of an environment that cannot draw itself."""

import shutil

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import pytest
from fastapi.testclient import TestClient
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from harness import train, wait_for_job

from records import ModelRecord, utcnow
from settings import Settings


class FramelessCartPole(CartPoleEnv):
    metadata = {"render_modes": [], "render_fps": 50}


def _frames(data: bytes, extension: str) -> np.ndarray:
    return iio.imread(data, index=None, extension=extension)


@pytest.mark.parametrize("model_name", ["cartpole", "pendulum"])
def test_a_gif_replay_decodes_within_the_cap_and_is_cached(service: TestClient, model_name: str) -> None:
    params = {"seed": 3, "max_frames": 40}
    first = service.get(f"/models/{model_name}/replay", params=params)
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "image/gif"
    assert first.headers["x-replay-cache"] == "miss"
    frames = _frames(first.content, ".gif")
    assert frames.ndim == 4 and frames.shape[-1] == 3
    # Pillow merges identical consecutive frames, so a GIF may hold fewer than were drawn, never more.
    assert 2 <= len(frames) <= int(first.headers["x-frames"]) <= 40
    assert frames.std() > 0, "blank frames"
    length = int(first.headers["x-episode-length"])
    assert length >= 1 and np.isfinite(float(first.headers["x-episode-return"]))
    if model_name == "pendulum":
        assert length == 200  # Pendulum's episodes are truncated at 200 steps: all of it was played
    again = service.get(f"/models/{model_name}/replay", params=params)
    assert again.headers["x-replay-cache"] == "hit" and again.content == first.content
    assert again.headers["x-episode-return"] == first.headers["x-episode-return"]
    other_seed = service.get(f"/models/{model_name}/replay", params={**params, "seed": 4})
    assert other_seed.headers["x-replay-cache"] == "miss"


def test_an_mp4_replay_decodes(service: TestClient) -> None:
    response = service.get("/models/pendulum/replay", params={"format": "mp4", "max_frames": 25})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "video/mp4"
    frames = _frames(response.content, ".mp4")
    assert 2 <= len(frames) <= 25 and frames.shape[-1] == 3


def test_replay_errors(service: TestClient) -> None:
    assert service.get("/models/missing/replay").status_code == 404
    assert service.get("/models/cartpole/replay", params={"format": "webm"}).status_code == 422
    assert service.get("/models/cartpole/replay", params={"max_frames": 1}).status_code == 422
    assert service.get("/models/cartpole/replay", params={"max_frames": 5000}).status_code == 422


def test_an_environment_that_cannot_draw_is_a_400(service: TestClient) -> None:
    gym.register("FramelessCartPole-v0", entry_point=FramelessCartPole, max_episode_steps=50)
    try:
        store = service.app.state.store
        shutil.copy(store.path_for("cartpole"), store.path_for("frameless"))
        record = ModelRecord(name="frameless", size_bytes=1, created_at=utcnow(), env_name="FramelessCartPole-v0")
        store.db.put_model(record)
        response = service.get("/models/frameless/replay")
        assert response.status_code == 400
        assert "cannot render" in response.json()["detail"] and "rgb_array" in response.json()["detail"]
    finally:
        gym.registry.pop("FramelessCartPole-v0", None)
        service.delete("/models/frameless")


def test_a_deleted_models_replays_go_with_it(client: TestClient, settings: Settings) -> None:
    assert wait_for_job(client, train(client, model_name="brief", total_timesteps=512))["status"] == "completed"
    assert client.get("/models/brief/replay", params={"max_frames": 5}).status_code == 200
    kept = settings.models_dir / "replays" / "brief"
    assert any(kept.iterdir())
    client.delete("/models/brief")
    assert not kept.exists()
