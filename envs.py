"""The environment machinery GRPO needs, without any of its math.

- Group starts (episode mode): :class:`GroupResetWrapper` lets GRPO choose a sub-environment's next reset seed,
  :class:`EpisodeGroups` decides which group each slot's next episode joins and with which seed.
- Branches (state mode): forks of a sub-environment at its current state (:func:`fork_env`), and
  :func:`step_branches`, which steps a set of forks with actions chosen by the caller.
- Group modes: :class:`EpisodeGroupMode` and :class:`StateGroupMode` drive the env to fill the rollout buffer's
  groups, each its own way; GRPO holds one, picked from ``group_mode``.
- Observations: as the policy sees them (through the VecEnv wrappers) or as the environment made them.
"""

import collections
import copy
from collections.abc import Callable, Generator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from gymnasium.utils import seeding
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    VecCheckNan,
    VecEnv,
    VecEnvWrapper,
    VecMonitor,
    VecNormalize,
    VecTransposeImage,
)

if TYPE_CHECKING:
    from grpo import GRPO

Observation = np.ndarray | dict[str, np.ndarray]


# --------------------------------------------------------------------------------------------------------------
# Observations
# --------------------------------------------------------------------------------------------------------------


def obs_map(fn: Callable[[np.ndarray], Any], obs: Observation) -> Any:
    return {key: fn(value) for key, value in obs.items()} if isinstance(obs, dict) else fn(obs)


def obs_concat(chunks: Sequence[Observation]) -> Observation:
    if isinstance(chunks[0], dict):
        return {key: np.concatenate([chunk[key] for chunk in chunks]) for key in chunks[0]}
    return np.concatenate(chunks)


def stack_observations(observations: Sequence[Any]) -> Observation:
    if isinstance(observations[0], dict):
        return {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}
    return np.stack(observations)


def true_next_obs(new_obs: Observation, dones: np.ndarray, infos: list[dict]) -> Observation:
    """``new_obs`` holds the first observation of the next episode where one ended: put the real last one."""
    next_obs = obs_map(np.copy, new_obs)
    for slot in np.flatnonzero(dones):
        terminal = infos[slot].get("terminal_observation")
        if terminal is None:
            continue
        if isinstance(next_obs, dict):
            for key in next_obs:
                next_obs[key][slot] = terminal[key]
        else:
            next_obs[slot] = terminal
    return next_obs


# VecEnv wrappers whose observation transform GRPO replays on branch observations (None: they pass obs as is).
_VEC_OBS_TRANSFORMS: dict[type[VecEnvWrapper], str | None] = {
    VecMonitor: None,
    VecCheckNan: None,
    VecTransposeImage: "transpose_observations",
    VecNormalize: "normalize_obs",  # with the running statistics, which branches never update
}


def vec_observations(env: VecEnv, obs: Observation) -> Observation:
    """Stacked sub-environment observations as the policy sees them: through the VecEnv wrappers' transforms."""
    wrappers = []
    while isinstance(env, VecEnvWrapper):
        wrappers.append(env)
        env = env.venv
    for wrapper in reversed(wrappers):  # the innermost wrapper transforms first
        method = _VEC_OBS_TRANSFORMS[type(wrapper)]
        if method is not None:
            obs = getattr(wrapper, method)(obs)
    return obs


def env_observations(env: VecEnv, obs: Observation) -> Observation:
    """The inverse: observations as the sub-environments made them, with VecNormalize's scaling (current
    statistics, so call it right after the step) and VecTransposeImage's channel-first layout undone."""
    while isinstance(env, VecEnvWrapper):
        if isinstance(env, VecNormalize):
            obs = env.unnormalize_obs(obs)
        elif isinstance(env, VecTransposeImage):
            keys = getattr(env, "image_space_keys", None)
            obs = (
                {k: np.transpose(v, (0, 2, 3, 1)) if k in keys else v for k, v in obs.items()}  # type: ignore[union-attr]
                if isinstance(obs, dict)
                else np.transpose(obs, (0, 2, 3, 1))
            )
        env = env.venv
    return obs


# --------------------------------------------------------------------------------------------------------------
# Group starts (episode mode): every member of a group is reset with the group's seed
# --------------------------------------------------------------------------------------------------------------


class GroupResetWrapper(gym.Wrapper):
    """Lets GRPO choose the seed of an environment's next reset, including the VecEnv's automatic resets.

    GRPO installs it itself on ``DummyVecEnv`` environments. For ``SubprocVecEnv`` build the envs with it:
    ``make_vec_env(env_id, n_envs, vec_env_cls=SubprocVecEnv, wrapper_class=GroupResetWrapper)``.
    Outside ``learn`` it is transparent: GRPO takes back its pending seed and the env's own random stream
    (seeded by the user's seed, if any) is back in place.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._next_seed: int | None = None
        self._user_rng: np.random.Generator | None = None  # the env's own stream, set aside while groups run
        self._group_rng: np.random.Generator | None = None  # the group episode's stream, set aside between learns
        self._touches = 0  # steps and resets: tells GRPO whether someone else moved the env between learns

    def set_next_reset_seed(self, seed: int | None) -> None:
        self._next_seed = seed

    def touch_count(self) -> int:
        return self._touches

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict]:
        self._touches += 1
        return self.env.step(action)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        self._touches += 1
        if self._next_seed is not None:
            # GRPO's group seed wins; the user's seed still seeds the env's own stream, in use again after learn.
            if seed is not None:
                self._user_rng = seeding.np_random(seed)[0]
            elif self._user_rng is None:
                self._user_rng = self.unwrapped.np_random
            seed, self._next_seed = self._next_seed, None
        # Old-style envs take no options: pass them only when set, as SB3's VecEnvs do.
        return self.env.reset(seed=seed, **({} if options is None else {"options": options}))

    def pause_group_resets(self) -> None:
        """Hand the env back to its user: no pending seed, its own random stream in place."""
        self._next_seed = None
        if self._user_rng is not None:
            self._group_rng, self.unwrapped.np_random = self.unwrapped.np_random, self._user_rng
            self._user_rng = None

    def resume_group_resets(self) -> None:
        """The group episode in flight goes on with its own random stream."""
        if self._group_rng is not None:
            self._user_rng, self.unwrapped.np_random = self.unwrapped.np_random, self._group_rng
            self._group_rng = None


def install_group_reset(env: VecEnv) -> None:
    """Make sure every sub-environment of ``env`` is wrapped in :class:`GroupResetWrapper`."""
    if all(env.env_is_wrapped(GroupResetWrapper)):
        return
    base = env.unwrapped
    if not isinstance(base, DummyVecEnv):
        raise ValueError(
            f"GRPO resets every member of a group with the group's seed, and cannot add that hook to the "
            f"sub-environments of a {type(base).__name__}. Create it with "
            "`make_vec_env(env_id, n_envs, vec_env_cls=SubprocVecEnv, wrapper_class=grpo.GroupResetWrapper)`."
        )
    base.envs = [env_i if _is_wrapped(env_i) else GroupResetWrapper(env_i) for env_i in base.envs]


def _is_wrapped(env: gym.Env) -> bool:
    while isinstance(env, gym.Wrapper):
        if isinstance(env, GroupResetWrapper):
            return True
        env = env.env
    return False


class EpisodeGroups:
    """Which group each slot's next episode joins, and the seed all members of that group are reset with.

    Groups are filled in order: a slot whose episode ends starts the next member of the open group, or opens a
    new group with a fresh seed from its own generator (so the same seed gives the same groups). A slot's next
    start is chosen as soon as its episode starts, because a VecEnv resets a finished env inside ``step``.
    Plain data, no env: what a saved run needs to resume its groups.

    :param group_size: Episodes per group
    :param seed: Seed of the generator of group seeds
    """

    def __init__(self, group_size: int, seed: int | None):
        self.group_size = group_size
        self.rng = np.random.default_rng(seed)
        self.open_group = -1
        self.open_seed = 0
        self.open_left = 0
        self.next_start: list[tuple[int, int]] = []  # (group, seed) of each slot's next episode
        self.env_touches: list[int] | None = None  # the envs' touch counts when GRPO last let go of them

    def _reserve(self) -> tuple[int, int]:
        if self.open_left == 0:
            self.open_group += 1
            self.open_seed = int(self.rng.integers(0, 2**31 - 1))
            self.open_left = self.group_size
        self.open_left -= 1
        return self.open_group, self.open_seed

    def restart(self, n_envs: int) -> None:
        """Every slot is about to be reset: drop the half-filled group (it would mix seeds), reserve n starts."""
        self.open_left = 0
        self.next_start = [self._reserve() for _ in range(n_envs)]

    def start(self, slot: int) -> int:
        """The slot just reset into its reserved start: return that episode's group, reserve the next one."""
        group = self.next_start[slot][0]
        self.next_start[slot] = self._reserve()
        return group

    def next_seed(self, slot: int) -> int:
        return self.next_start[slot][1]


# --------------------------------------------------------------------------------------------------------------
# Branches (state mode): forks of a sub-environment at its current state
# --------------------------------------------------------------------------------------------------------------

# Wrappers that only keep books (episode statistics, reset seeds): a fork leaves them out, so that a branch
# neither copies their history nor writes to their files.
_BOOKKEEPING_WRAPPERS: tuple[type[gym.Wrapper], ...] = (GroupResetWrapper, Monitor)


class Branch:
    """One tried action's private copy of an environment; ``state`` is only used by :class:`StateSwapFork`."""

    def __init__(self, env: gym.Env, state: Any = None):
        self.env = env
        self.state = state


class DeepCopyFork:
    """Branches are deep copies of the environment (its ``np_random`` included); the original is never touched.

    Gymnasium's classic control, box2d and toy text environments copy out of the box.
    """

    def __init__(self, env: gym.Env):
        self.env = env

    def branch(self) -> Branch:
        return Branch(copy.deepcopy(self.env))

    def step(self, branch: Branch, action: Any) -> tuple[Any, float, bool, bool, dict]:
        return branch.env.step(action)

    def restore(self) -> None:
        """Nothing to put back: only the copies were stepped."""


class StateSwapFork:
    """For environments whose ``unwrapped`` offers ``get_state()`` / ``set_state(state)``: the wrappers are
    copied, the simulator is shared. Each branch keeps its own state (and ``np_random`` state) and swaps it in
    for each step; :meth:`restore` puts the original back."""

    def __init__(self, env: gym.Env):
        self.env = env
        self.core = env.unwrapped
        self.saved = self._snapshot()

    def branch(self) -> Branch:
        # Wrapper state (a TimeLimit's step count, ...) is copied; the simulator itself is shared.
        return Branch(copy.deepcopy(self.env, memo={id(self.core): self.core}), self.saved)

    def step(self, branch: Branch, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self._load(branch.state)
        result = branch.env.step(action)
        branch.state = self._snapshot()
        return result

    def restore(self) -> None:
        self._load(self.saved)

    def _snapshot(self) -> tuple[Any, dict | None]:
        rng = getattr(self.core, "_np_random", None)
        return self.core.get_state(), None if rng is None else copy.deepcopy(rng.bit_generator.state)  # type: ignore[attr-defined]

    def _load(self, snapshot: tuple[Any, dict | None]) -> None:
        state, rng_state = snapshot
        self.core.set_state(state)  # type: ignore[attr-defined]
        if rng_state is not None:
            self.core._np_random.bit_generator.state = rng_state  # type: ignore[attr-defined]


EnvFork = DeepCopyFork | StateSwapFork


def fork_target(env: gym.Env) -> gym.Env:
    """The part of a sub-environment a branch copies: without its outer bookkeeping wrappers."""
    while isinstance(env, _BOOKKEEPING_WRAPPERS):
        env = env.env
    return env


def _offers_state(env: gym.Env) -> bool:
    return callable(getattr(env, "get_state", None)) and callable(getattr(env, "set_state", None))


def fork_env(env: gym.Env) -> EnvFork:
    """A fork of ``env`` at its current state, by ``get_state()``/``set_state()`` where offered, else deepcopy."""
    target = fork_target(env)
    return StateSwapFork(target) if _offers_state(target.unwrapped) else DeepCopyFork(target)


def check_forkable(env: VecEnv) -> None:
    """Fail now, with what to do, if state mode could not fork ``env``'s sub-environments at every branch point."""
    wrapper = env
    while isinstance(wrapper, VecEnvWrapper):
        if type(wrapper) not in _VEC_OBS_TRANSFORMS:
            supported = ", ".join(t.__name__ for t in _VEC_OBS_TRANSFORMS)
            raise ValueError(
                f"group_mode='state' feeds branch observations to the policy as the VecEnv would, and cannot "
                f"replay what {type(wrapper).__name__} does to them. Use it without that wrapper, or "
                f"group_mode='episode'. Supported VecEnv wrappers: {supported}."
            )
        wrapper = wrapper.venv
    if not isinstance(wrapper, DummyVecEnv):
        raise ValueError(
            f"group_mode='state' forks each sub-environment at the states it branches from, and cannot reach the "
            f"sub-environments of a {type(wrapper).__name__} (a SubprocVecEnv runs them in other processes). Use a "
            "DummyVecEnv (make_vec_env's default), or group_mode='episode'."
        )
    for index, sub_env in enumerate(wrapper.envs):
        target = fork_target(sub_env)
        core = target.unwrapped
        try:  # what a branch copies: everything, or the wrappers around a simulator that swaps its state
            copy.deepcopy(target, memo={id(core): core} if _offers_state(core) else {})
        except Exception as error:  # whatever the copy raises, this env cannot be branched
            raise ValueError(
                f"group_mode='state' tries actions in copies of the environment, and sub-environment {index} "
                f"({fork_target(sub_env)}) cannot be copied: copy.deepcopy raised {type(error).__name__}: {error}. "
                "Make it deep-copyable, or give its unwrapped env get_state()/set_state(state) methods that "
                "capture and restore its whole state, or use group_mode='episode'."
            ) from error


@contextmanager
def private_torch_rng(seed: int, device: th.device) -> Generator[None, None, None]:
    """Sample with torch's global generator reseeded, then give it back untouched: branches must not change the
    random numbers the real trajectory draws."""
    index = (device.index if device.index is not None else th.cuda.current_device()) if device.type == "cuda" else None
    with th.random.fork_rng(devices=[] if index is None else [index], device_type="cuda"):
        th.default_generator.manual_seed(seed)
        if index is not None:
            th.cuda.default_generators[index].manual_seed(seed)
        yield


# --------------------------------------------------------------------------------------------------------------
# Group modes: how the environment is driven to fill groups (GRPO picks one, from group_mode)
# --------------------------------------------------------------------------------------------------------------


class GroupMode:
    """What a group is, and how the environment is driven to fill groups. The defaults do nothing."""

    def __init__(self, model: "GRPO"):
        self.model = model

    def prepare_env(self, env: VecEnv) -> None:
        """Check or wrap a new training env."""

    def env_continues(self, env: VecEnv) -> bool:
        """Whether ``learn`` can go on from where the last one left the env (else it resets it)."""
        return True

    def forget_env(self) -> None:
        """The training env was replaced."""

    def before_reset(self, env: VecEnv) -> None:
        """``learn`` is about to reset the env: whatever was in flight is lost."""
        self.model.rollout_buffer.clear_in_flight()

    def after_reset(self, env: VecEnv) -> None:
        """The env was just reset."""

    def resume(self, env: VecEnv) -> None:
        """``learn`` goes on without a reset."""

    def pause(self, env: VecEnv) -> None:
        """``learn`` returns: leave the env as the user's."""

    def before_step(self, env: VecEnv, distribution: Distribution) -> None:
        """About to step the env with the actions just sampled from ``distribution`` (the policy's at each slot)."""

    def record_step(
        self,
        env: VecEnv,
        actions: np.ndarray,
        rewards: np.ndarray,
        log_probs: th.Tensor,
        new_obs: Any,
        dones: np.ndarray,
        infos: list[dict],
    ) -> None:
        """Book one real step of the env."""

    def rollout_full(self, n_steps: int, n_rollout_steps: int) -> bool:
        raise NotImplementedError

    def budget_warning(self, total_timesteps: int) -> str | None:
        """Why ``total_timesteps`` might not complete a group, if it might not."""
        return None


class EpisodeGroupMode(GroupMode):
    """``group_mode="episode"``: a group is ``group_size`` episodes reset with one seed; every real step is a
    training sample, and a rollout lasts until complete groups hold ``n_steps * n_envs`` steps."""

    def __init__(self, model: "GRPO"):
        super().__init__(model)
        # Kept in the model's __dict__, so GRPO.save saves it and GRPO.load hands it back: a loaded model's groups
        # go on from its generator instead of the seed's first groups again.
        saved: EpisodeGroups | None = getattr(model, "_group_schedule", None)
        # A saved model loaded with another group_size (a job's init_model) starts a schedule of that size.
        if saved is None or saved.group_size != model.group_size:
            saved = EpisodeGroups(model.group_size, model.seed)
        self.schedule = saved
        self.schedule.env_touches = None  # the envs it last saw are not this model's
        model._group_schedule = self.schedule

    def prepare_env(self, env: VecEnv) -> None:
        install_group_reset(env)

    def env_continues(self, env: VecEnv) -> bool:
        # Someone else stepped or reset the env since (evaluate_policy, a seed): its episodes left their groups.
        touches = env.env_method("touch_count")
        return touches == self.schedule.env_touches and self.model.rollout_buffer.has_open_episodes()

    def forget_env(self) -> None:
        self.schedule.env_touches = None

    def before_reset(self, env: VecEnv) -> None:
        super().before_reset(env)
        self.schedule.restart(env.num_envs)
        self._send_seeds(env, range(env.num_envs))

    def after_reset(self, env: VecEnv) -> None:
        for slot in range(env.num_envs):
            self._start_episode(env, slot)

    def resume(self, env: VecEnv) -> None:
        env.env_method("resume_group_resets")
        self._send_seeds(env, range(env.num_envs))

    def pause(self, env: VecEnv) -> None:
        self.schedule.env_touches = env.env_method("touch_count")
        env.env_method("pause_group_resets")

    def record_step(
        self,
        env: VecEnv,
        actions: np.ndarray,
        rewards: np.ndarray,
        log_probs: th.Tensor,
        new_obs: Any,
        dones: np.ndarray,
        infos: list[dict],
    ) -> None:
        model, buffer = self.model, self.model.rollout_buffer
        env_obs = next_obs = None
        if buffer.store_next_obs:  # reward functions see the env's own observations
            env_obs = model._last_env_obs
            next_obs = env_observations(env, true_next_obs(new_obs, dones, infos))
        buffer.add(model._last_obs, actions, rewards, log_probs, env_obs, next_obs)  # type: ignore[arg-type]
        for slot in np.flatnonzero(dones):
            buffer.finish_episode(slot, truncated=bool(infos[slot].get("TimeLimit.truncated", False)))
            self._start_episode(env, slot)

    def rollout_full(self, n_steps: int, n_rollout_steps: int) -> bool:
        buffer = self.model.rollout_buffer
        return buffer.ready_steps >= n_rollout_steps * buffer.n_envs

    def budget_warning(self, total_timesteps: int) -> str | None:
        env, group_size = self.model.env, self.model.group_size
        assert env is not None
        lengths = [info["l"] for info in self.model.ep_info_buffer or []]
        spec = env.get_attr("spec", indices=[0])[0]
        length = np.mean(lengths) if lengths else getattr(spec, "max_episode_steps", None)
        if not length:
            return None
        # Slots fill the first group together: it completes after ceil(G / n_envs) episodes on every slot.
        needed = int(np.ceil(group_size / env.num_envs) * env.num_envs * length)
        if total_timesteps >= needed:
            return None
        return (
            f"learn(total_timesteps={total_timesteps}) may not complete a single group, and then trains nothing: "
            f"a group is group_size={group_size} episodes of about {length:.0f} steps, and on n_envs={env.num_envs} "
            f"slots the first group needs about {needed} steps. Raise total_timesteps, or lower group_size (at "
            "least 2); more n_envs does not complete a group sooner."
        )

    def _start_episode(self, env: VecEnv, slot: int) -> None:
        self.model.rollout_buffer.start_episode(slot, self.schedule.start(slot))
        self._send_seeds(env, [slot])  # a VecEnv resets a finished env within the same step call

    def _send_seeds(self, env: VecEnv, slots: Sequence[int]) -> None:
        for slot in slots:
            env.env_method("set_next_reset_seed", self.schedule.next_seed(slot), indices=[slot])


class StateGroupMode(GroupMode):
    """``group_mode="state"``: a group is the actions tried from one state of the real trajectory, each in its
    own fork of the env; the real steps are not trained on, and a rollout is ``n_steps`` real steps, as in PPO."""

    # branch_on="entropy" ranks a state's policy entropy among this many recent states' (all slots).
    ENTROPY_WINDOW = 1024

    def __init__(self, model: "GRPO"):
        super().__init__(model)
        # Branch actions and lookaheads draw from their own stream, never the real trajectory's.
        self.rng = np.random.default_rng(None if model.seed is None else [model.seed, 1])
        self.slot_steps = np.zeros(model.n_envs, dtype=np.int64)  # real steps into each slot's episode
        self.recent_entropies: collections.deque[float] = collections.deque(maxlen=self.ENTROPY_WINDOW)

    def prepare_env(self, env: VecEnv) -> None:
        check_forkable(env)

    def before_reset(self, env: VecEnv) -> None:
        super().before_reset(env)
        self.slot_steps = np.zeros(env.num_envs, dtype=np.int64)

    def before_step(self, env: VecEnv, distribution: Distribution) -> None:
        # Fork the due slots before the real step moves them on.
        self._branch(env, self._due_slots(distribution))

    def _due_slots(self, distribution: Distribution) -> np.ndarray:
        """Every ``branch_interval``-th state of each slot's episode, or (``branch_on="entropy"``) the states
        where the policy is least sure: entropy in the top ``1 / branch_interval`` of the recent states', the
        same budget spent where the tried actions are likeliest to differ (TRL's ``top_entropy_quantile``)."""
        model = self.model
        if model.branch_on == "interval":
            return np.flatnonzero(self.slot_steps % model.branch_interval == 0)
        with th.no_grad():  # the distribution the real step's actions were sampled from: no second forward pass
            entropy = distribution.entropy().cpu().numpy().reshape(-1)
        self.recent_entropies.extend(entropy.tolist())
        threshold = np.quantile(np.fromiter(self.recent_entropies, float), 1.0 - 1.0 / model.branch_interval)
        # Strictly above: a policy sure everywhere (equal entropies) is not branched everywhere.
        return np.flatnonzero(entropy > threshold)

    def record_step(
        self,
        env: VecEnv,
        actions: np.ndarray,
        rewards: np.ndarray,
        log_probs: th.Tensor,
        new_obs: Any,
        dones: np.ndarray,
        infos: list[dict],
    ) -> None:
        self.slot_steps = np.where(dones, 0, self.slot_steps + 1)

    def rollout_full(self, n_steps: int, n_rollout_steps: int) -> bool:
        return n_steps >= n_rollout_steps

    def _branch(self, env: VecEnv, slots: np.ndarray) -> None:
        """Try a group of actions from the current state of each of ``slots``, each in its own fork of the
        sub-environment, then follow the current policy for ``lookahead`` steps. Every branch is an episode of
        its state's group: its first step is the training sample, its later steps only add their rewards."""
        if not len(slots):
            return
        model, buffer = self.model, self.model.rollout_buffer
        sub_envs = env.unwrapped.envs  # type: ignore[attr-defined]  # a DummyVecEnv: check_forkable made sure
        forks = [fork_env(sub_envs[slot]) for slot in slots]
        try:
            with th.no_grad(), private_torch_rng(int(self.rng.integers(2**62)), model.device):
                obs, actions, log_probs, members = self._tried_actions(obs_map(lambda a: a[slots], model._last_obs))
                env_obs = (
                    None
                    if model._last_env_obs is None
                    else obs_map(lambda a: np.repeat(a[slots], members, axis=0), model._last_env_obs)
                )
                fork_of = np.repeat(np.arange(len(slots)), members)
                branches = [forks[f].branch() for f in fork_of]
                episodes = np.concatenate([buffer.start_branch_group(members) for _ in slots])
                live = np.arange(len(branches))
                for depth in range(model.lookahead + 1):
                    if depth > 0:  # after the tried action, the branch follows the current policy
                        distribution = model.policy.get_distribution(obs_as_tensor(obs, model.device))  # type: ignore[arg-type]
                        actions_t = distribution.get_actions()
                        log_probs = distribution.log_prob(actions_t)
                        actions = actions_t.cpu().numpy()
                    env_actions = model._env_actions(actions)
                    steps = [forks[fork_of[b]].step(branches[b], env_actions[i]) for i, b in enumerate(live)]
                    raw_next = stack_observations([step[0] for step in steps])  # the env's own observations
                    rewards = np.array([step[1] for step in steps], dtype=np.float32)
                    ended = np.array([step[2] or step[3] for step in steps])  # terminated or truncated
                    buffer.add_transitions(
                        episodes[live], obs, actions, rewards, log_probs, env_obs, raw_next, trainable=depth == 0
                    )
                    model.num_branch_steps += len(live)
                    live = live[~ended]
                    obs = obs_map(lambda a, keep=~ended: a[keep], vec_observations(env, raw_next))
                    env_obs = obs_map(lambda a, keep=~ended: a[keep], raw_next)
                    if not len(live):
                        break
        finally:
            for fork in forks:
                fork.restore()
        buffer.finish_episodes(episodes)

    def _tried_actions(self, root_obs: Observation) -> tuple[Observation, np.ndarray, th.Tensor, int]:
        """Each root state repeated once per tried action, the actions (every action of a Discrete space, else
        ``group_size`` samples of the policy), their log-probabilities under the behaviour policy, and how many
        were tried per state."""
        model = self.model
        n_roots = len(next(iter(root_obs.values())) if isinstance(root_obs, dict) else root_obs)
        discrete = isinstance(model.action_space, spaces.Discrete)
        members = int(model.action_space.n) if discrete else model.group_size  # type: ignore[attr-defined]
        obs = obs_map(lambda a: np.repeat(a, members, axis=0), root_obs)
        distribution = model.policy.get_distribution(obs_as_tensor(obs, model.device))  # type: ignore[arg-type]
        actions = th.arange(members, device=model.device).repeat(n_roots) if discrete else distribution.get_actions()
        return obs, actions.cpu().numpy(), distribution.log_prob(actions), members
