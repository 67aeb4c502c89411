"""A trained model as the service stores and ships it: one SB3 zip, with VecNormalize's statistics inside it when
the model was trained on normalised observations.

A policy trained under ``VecNormalize`` acts on normalised observations; served without the statistics it would
act on the wrong inputs. So they travel in the model's own zip, as the member ``vec_normalize.pkl`` (what
``VecNormalize.save`` writes, without the environments), and everything that serves or continues the model reads
them from there::

    from artifacts import load_trained

    agent = load_trained("my_model.zip")  # what GET /models/my_model/download gives
    action, _ = agent.predict(observation, deterministic=True)  # normalised as in training, then the policy

``GRPO.load("my_model.zip")`` still loads the model alone (SB3 ignores the extra member); ``agent.wrap(venv,
training=False)`` puts the frozen statistics around an evaluation env, ``training=True`` around new environments
to go on training.
"""

import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecNormalize

from grpo import GRPO

NORMALIZER_MEMBER = "vec_normalize.pkl"

Source = str | Path | IO[bytes]


def find_normalizer(env: VecEnv | None) -> VecNormalize | None:
    """The VecNormalize among ``env``'s wrappers, if any."""
    while isinstance(env, VecEnvWrapper):
        if isinstance(env, VecNormalize):
            return env
        env = env.venv
    return None


def save_trained(model: "GRPO | TrainedModel", destination: Source) -> None:
    """``model.save(destination)``, plus the statistics of the VecNormalize it trains under (or, for a loaded
    :class:`TrainedModel`, the ones it was loaded with), in the same zip."""
    if isinstance(model, TrainedModel):
        model, normalizer = model.model, model.normalizer_bytes
    else:
        found = find_normalizer(model.get_env())
        # VecNormalize pickles without its environments (its __getstate__ drops them), as VecNormalize.save does.
        normalizer = None if found is None else pickle.dumps(found)
    model.save(destination)
    if normalizer is None:
        return
    if hasattr(destination, "seek"):
        destination.seek(0)  # type: ignore[union-attr]
    with zipfile.ZipFile(destination, mode="a") as archive:  # type: ignore[arg-type]
        archive.writestr(NORMALIZER_MEMBER, normalizer)


def read_normalizer(source: Source) -> bytes | None:
    """The pickled VecNormalize saved with a model (as training left it, without environments); None if none."""
    if hasattr(source, "seek"):
        source.seek(0)  # type: ignore[union-attr]
    with zipfile.ZipFile(source) as archive:  # type: ignore[arg-type]
        if NORMALIZER_MEMBER not in archive.namelist():
            return None
        return archive.read(NORMALIZER_MEMBER)


def unpickle_normalizer(data: bytes, training: bool) -> VecNormalize:
    """A VecNormalize from its saved bytes: for training (statistics update, rewards as saved) or frozen for acting
    and evaluating (no updates, rewards as the env gives them). A fresh object each time: an unpickled
    VecNormalize, without environments, cannot be deep-copied."""
    normalizer = pickle.loads(data)
    if not isinstance(normalizer, VecNormalize):
        raise ValueError(f"{NORMALIZER_MEMBER} in the zip holds a {type(normalizer).__name__}, not a VecNormalize")
    normalizer.training = training
    if not training:
        normalizer.norm_reward = False
    return normalizer


@dataclass
class TrainedModel:
    """A model with the observation normalisation it was trained under (``normalizer``, frozen; None: it has none).

    ``normalizer_bytes`` is the statistics as training left them, to go on training from."""

    model: GRPO
    normalizer_bytes: bytes | None = None

    def __post_init__(self) -> None:
        self.normalizer = None if self.normalizer_bytes is None else unpickle_normalizer(self.normalizer_bytes, False)

    def normalize(self, observation: Any) -> Any:
        """Observations as the policy saw them in training."""
        if self.normalizer is None:
            return observation
        return self.normalizer.normalize_obs(observation)

    def predict(
        self,
        observation: Any,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """SB3's ``predict`` on raw observations."""
        return self.model.predict(self.normalize(observation), state, episode_start, deterministic)

    def wrap(self, venv: VecEnv, training: bool) -> VecEnv:
        """``venv`` under the model's statistics (see :func:`wrap`)."""
        return wrap(venv, self.normalizer_bytes, training)


def wrap(venv: VecEnv, normalizer: bytes | None, training: bool) -> VecEnv:
    """``venv`` under saved statistics (as ``VecNormalize.load`` does): updating them as training goes on, or frozen
    to evaluate; ``venv`` itself when there are none."""
    if normalizer is None:
        return venv
    wrapper = unpickle_normalizer(normalizer, training)
    wrapper.set_venv(venv)
    return wrapper


def load_trained(source: Source, device: str = "auto", **kwargs: Any) -> TrainedModel:
    """A model saved by :func:`save_trained` (or any GRPO zip), with its normalisation; ``kwargs`` go to
    ``GRPO.load``."""
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else source.read()
    model = GRPO.load(io.BytesIO(data), device=device, **kwargs)
    return TrainedModel(model, read_normalizer(io.BytesIO(data)))
