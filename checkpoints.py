"""Checkpoints a GRPO run goes on from exactly as if it had never stopped.

SB3's zip holds the parameters, the optimizer's state, the bookkeeping (timesteps, updates, the last observations,
episode statistics) and, through ``GRPO.save``, the group-seed scheduler; ``artifacts.save_trained`` adds a
VecNormalize's statistics, as it does for every model the service keeps. A run also needs what it had in flight,
which ``save_checkpoint`` adds to the zip as one more member, ``training_state.pkl``: the environments as they are
(their episodes half played, their random streams, a ``VecNormalize``'s statistics), the episodes and groups in
the rollout buffer, the reference policy, and the torch, NumPy and Python random states. ``load_checkpoint`` puts
all of it back, so ``learn`` continues without resetting anything: on CPU the resumed run ends with the same
parameters as the uninterrupted one.

Take a checkpoint between two updates (a callback's ``_on_rollout_start``, or after ``learn`` returned), as the
service does. Environments in processes of their own (``SubprocVecEnv``) cannot be copied: such a run resumes with
freshly reset environments, its generator and random states restored, close to but not exactly the uninterrupted
run. So does a model loaded and not yet stepped (the copy of a Ray actor's model the service saves): it has
nothing in flight. SB3's loader ignores the extra member, so a checkpoint is also an ordinary model zip.
"""

import io
import random
import zipfile
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import torch as th
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize

from artifacts import save_trained
from grpo import GRPO

STATE_MEMBER = "training_state.pkl"


def _environments(env: VecEnv | None) -> dict[str, Any] | None:
    """The env as it is, where it can be copied: a DummyVecEnv, under a VecNormalize or not."""
    if isinstance(env, VecNormalize):
        inner = _environments(env.venv)
        # VecNormalize pickles its statistics without the env it wraps: the two travel side by side.
        return None if inner is None else {"normalize": env, "returns": env.returns, **inner}
    if isinstance(env, DummyVecEnv):
        return {"venv": env}
    return None


def _restored_environments(saved: dict[str, Any]) -> VecEnv:
    venv: VecEnv = saved["venv"]
    normalize: VecNormalize | None = saved.get("normalize")
    if normalize is None:
        return venv
    normalize.set_venv(venv)
    normalize.returns = saved["returns"]
    return normalize


def training_state(model: GRPO) -> bytes:
    """What ``model``'s run has in flight, pickled."""
    env = model.get_env()
    # No observation yet: the model was loaded on environments it never stepped, whose episodes are nobody's run.
    environments = _environments(env) if model._last_obs is not None else None
    # Episode groups count the envs' steps to tell whether someone else moved them; branching has no such count.
    counts_touches = environments is not None and getattr(model.groups, "schedule", None) is not None
    state = {
        "environments": environments,
        "rollout_buffer": model.rollout_buffer if environments is not None else None,
        "env_touches": env.env_method("touch_count") if counts_touches else None,
        "last_env_obs": model._last_env_obs,
        "ref_policy": model.ref_policy.state_dict() if model.ref_policy is not None else None,
        "random": (th.get_rng_state(), np.random.get_state(), random.getstate()),
    }
    return cloudpickle.dumps(state)


def save_checkpoint(model: GRPO, target: Path | io.BufferedIOBase) -> None:
    """``artifacts.save_trained(model, target)``, with the run's training state in the zip."""
    if isinstance(target, Path) and not target.suffix:
        target = target.with_suffix(".zip")  # as SB3 names it, so the members below go into the same file
    save_trained(model, target)
    if not isinstance(target, Path):
        target.seek(0)
    with zipfile.ZipFile(target, mode="a") as archive:
        archive.writestr(STATE_MEMBER, training_state(model))


def read_training_state(source: Path | io.BufferedIOBase) -> dict[str, Any] | None:
    """The training state in a checkpoint, or None for a zip without one (a model, or an older checkpoint)."""
    with zipfile.ZipFile(source) as archive:
        if STATE_MEMBER not in archive.namelist():
            return None
        state = cloudpickle.loads(archive.read(STATE_MEMBER))
    if not isinstance(source, Path):
        source.seek(0)
    return state


def load_checkpoint(source: Path | io.BufferedIOBase, env: VecEnv | None = None, **kwargs: Any) -> GRPO:
    """The model of a checkpoint, ready for ``learn(..., reset_num_timesteps=False)`` to go on exactly.

    ``env`` is used only when the checkpoint holds no copy of the environments (a ``SubprocVecEnv`` run, or a
    plain model zip); otherwise it is closed and the saved ones go on. ``kwargs`` go to ``GRPO.load``.
    """
    state = read_training_state(source)
    environments = state["environments"] if state is not None else None
    if environments is None:
        model = GRPO.load(source, env=env, **kwargs)
    else:
        if env is not None:
            env.close()
        model = GRPO.load(source, env=_restored_environments(environments), force_reset=False, **kwargs)
    if state is not None:
        _restore(model, state, continues=environments is not None)
    return model


def _restore(model: GRPO, state: dict[str, Any], continues: bool) -> None:
    if continues:
        model.rollout_buffer = state["rollout_buffer"]
        model._last_env_obs = state["last_env_obs"]
    schedule = getattr(model.groups, "schedule", None)  # GRPO.load restored it, without the envs it knew
    if continues and schedule is not None:
        # The saved envs are the ones it knew: learn goes on with their episodes instead of resetting them.
        schedule.env_touches = state["env_touches"]
    if state["ref_policy"] is not None and model.ref_policy is not None:
        model.ref_policy.load_state_dict(state["ref_policy"])
    torch_state, numpy_state, python_state = state["random"]
    th.set_rng_state(torch_state)
    np.random.set_state(numpy_state)
    random.setstate(python_state)
