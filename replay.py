"""Replays: one episode of a trained model, rendered from the environment's ``rgb_array`` frames into an animated
GIF or an MP4 video, and kept on disk per model, seed and format so that the second request is a file read.

Rendering is the cost (pygame draws every frame), so an episode is played in full (its return is the real one) but
only every ``stride``-th step is drawn, the stride chosen from the environment's step limit so that at most
``max_frames`` frames are kept; frames are halved in size (2x2 means) while they are wider than ``MAX_WIDTH``. GIFs
use a fixed 3-3-2 palette, which needs no per-frame colour quantisation (Pillow's own takes seconds for a few
hundred frames).
"""

import io
import json
import math
import shutil
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
from PIL import Image

from artifacts import TrainedModel
from errors import ServiceError
from grpo import GRPO

ReplayFormat = Literal["gif", "mp4"]
MEDIA_TYPES = {"gif": "image/gif", "mp4": "video/mp4"}
MAX_WIDTH = 320
# Steps played when the environment declares no limit of its own.
DEFAULT_MAX_STEPS = 1_000


class ReplayUnavailable(ServiceError):
    """The model's environment cannot draw itself (no ``rgb_array`` render mode), or it is gone."""


@dataclass
class Replay:
    data: bytes
    format: str
    episode_return: float
    episode_length: int
    frames: int
    fps: float
    cached: bool = False


def _palette() -> list[int]:
    colours = []
    for index in range(256):
        colours += [((index >> 5) & 7) * 255 // 7, ((index >> 2) & 7) * 255 // 7, (index & 3) * 255 // 3]
    return colours


PALETTE_332 = _palette()


def make_render_env(env_name: str) -> gym.Env:
    if env_name not in gym.registry:
        raise ReplayUnavailable(f"Environment {env_name!r} is not registered on this server: it cannot be replayed")
    try:
        env = gym.make(env_name, render_mode="rgb_array")
    except Exception as error:  # e.g. pygame missing, or a constructor that takes no render_mode
        raise ReplayUnavailable(f"Environment {env_name!r} cannot render here: {error}") from error
    modes = list(env.metadata.get("render_modes") or [])
    if "rgb_array" not in modes or env.render_mode != "rgb_array":
        env.close()
        raise ReplayUnavailable(
            f"Environment {env_name!r} cannot render frames (its render modes are {modes}, not 'rgb_array'), "
            "so it has no replay"
        )
    return env


def play_episode(
    model: GRPO | TrainedModel, env_name: str, seed: int, deterministic: bool, max_frames: int
) -> tuple[list[np.ndarray], float, int, float]:
    """Frames, return, length and frame rate of one episode of ``model``, reset with ``seed`` (a model loaded with
    its normalisation statistics acts on the environment's own observations)."""
    env = make_render_env(env_name)
    try:
        limit = env.spec.max_episode_steps if env.spec and env.spec.max_episode_steps else DEFAULT_MAX_STEPS
        stride = max(1, math.ceil((limit + 1) / max_frames))
        observation, _ = env.reset(seed=seed)
        frames, total, steps = [_frame(env)], 0.0, 0
        while True:
            action, _ = model.predict(observation, deterministic=deterministic)
            observation, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            steps += 1
            done = terminated or truncated or steps >= limit
            if (steps % stride == 0 or done) and len(frames) < max_frames:
                frames.append(_frame(env))
            if done:
                break
        fps = float(env.metadata.get("render_fps") or 30) / stride
    finally:
        env.close()
    return frames, total, steps, fps


def _frame(env: gym.Env) -> np.ndarray:
    frame = env.render()
    if not isinstance(frame, np.ndarray) or frame.ndim != 3:
        raise ReplayUnavailable(f"{env.spec.id if env.spec else 'The environment'} returned no rgb_array frame")
    # Even sides: halving needs them, and so do H.264's 4:2:0 colour planes.
    frame = frame[: frame.shape[0] // 2 * 2, : frame.shape[1] // 2 * 2, :3]
    while frame.shape[1] > MAX_WIDTH:
        # The mean of each 2x2 block: one-pixel lines (CartPole's track) fade instead of vanishing.
        height, width = frame.shape[0] // 2, frame.shape[1] // 2
        blocks = frame[: height * 2, : width * 2].reshape(height, 2, width, 2, 3).astype(np.uint16)
        frame = (blocks.sum(axis=(1, 3)) // 4).astype(np.uint8)
        frame = frame[: height // 2 * 2, : width // 2 * 2]
    return np.ascontiguousarray(frame)


def encode(frames: list[np.ndarray], fmt: ReplayFormat, fps: float) -> bytes:
    if fmt == "mp4":
        import imageio.v3 as iio

        return iio.imwrite("<bytes>", np.stack(frames), extension=".mp4", plugin="FFMPEG", fps=fps, macro_block_size=2)
    stack = np.stack(frames)
    indices = ((stack[..., 0] >> 5) << 5) | ((stack[..., 1] >> 5) << 2) | (stack[..., 2] >> 6)
    images = []
    for index_frame in indices.astype(np.uint8):
        image = Image.fromarray(index_frame, "P")
        image.putpalette(PALETTE_332)
        images.append(image)
    buffer = io.BytesIO()
    duration = max(20, round(1000 / fps))
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
    return buffer.getvalue()


class ReplayCache:
    """Replays on disk: ``<root>/<model>/<model file's mtime>-<seed>-<d|s>-<max_frames>.<format>`` with a JSON
    sidecar; a model saved anew has a new mtime, so its old replays are never served (and are removed)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    def replay(
        self,
        model_name: str,
        model_file: Path,
        load: Callable[[], GRPO | TrainedModel],
        env_name: str,
        fmt: ReplayFormat,
        seed: int,
        deterministic: bool,
        max_frames: int,
    ) -> Replay:
        version = model_file.stat().st_mtime_ns
        folder = self.root / model_name
        stem = f"{version}-{seed}-{'d' if deterministic else 's'}-{max_frames}"
        path, meta = folder / f"{stem}.{fmt}", folder / f"{stem}.{fmt}.json"
        # One rendering at a time: two requests for the same replay render it once, and the CPU is not split.
        with self._lock:
            if path.is_file() and meta.is_file():
                return Replay(data=path.read_bytes(), **{**json.loads(meta.read_text()), "cached": True})
            frames, episode_return, length, fps = play_episode(load(), env_name, seed, deterministic, max_frames)
            replay = Replay(encode(frames, fmt, fps), fmt, episode_return, length, len(frames), fps)
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.iterdir():
                if not old.name.startswith(f"{version}-"):
                    old.unlink(missing_ok=True)
            described = {key: value for key, value in asdict(replay).items() if key not in ("data", "cached")}
            try:
                path.write_bytes(replay.data)
                meta.write_text(json.dumps(described))
            except OSError:
                # A full disk cut a write short: no half-written entry is served later (the next request renders).
                path.unlink(missing_ok=True)
                meta.unlink(missing_ok=True)
                raise
            return replay

    def forget(self, model_name: str) -> None:
        """Drop a deleted model's replays."""
        with self._lock:
            shutil.rmtree(self.root / model_name, ignore_errors=True)
