"""Reward functions for GRPO and the registry the service picks them from.

A reward function is batched: ``fn(state, action, next_state) -> Tensor`` with ``state`` and ``next_state`` of
shape ``[batch, *obs_shape]``, ``action`` of shape ``[batch, *action_shape]`` (Discrete: ``[batch]``), all on
the algorithm's device; it returns one float reward per transition, shape ``[batch, 1]`` (``[batch]`` is
accepted too). GRPO calls it once per rollout on every transition, never once per step.

Register your own under a name (the service's ``reward_function_type``, GRPO's ``reward_function="centred"``)::

    @reward_function("Keeps the cart near the centre", observation_shape=(4,), name="centred")
    def centred(state, action, next_state):
        return -next_state[:, :1].abs()

A server picks such functions up from plugins (``GRPO_PLUGINS``, see ``plugins.py``). A plain function works too,
passed to GRPO directly; it then fits every observation shape and its docstring is its description.
"""

import re
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th

RewardFunction = Callable[[th.Tensor, th.Tensor, th.Tensor], th.Tensor]

# name -> reward function; ``None`` means the environment's own reward.
REWARD_FUNCTIONS: dict[str, RewardFunction | None] = {"env": None}

# Names a request can carry: short, no spaces or path characters.
REWARD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
# CartPole-v1 observation: [cart position, cart velocity, pole angle, pole angular velocity]
CARTPOLE_OBS_SHAPE = (4,)
# CartPole terminates once |pole angle| exceeds 12 degrees
CARTPOLE_ANGLE_LIMIT = 0.2095


def reward_function(
    description: str, observation_shape: tuple[int, ...] | None = None, name: str | None = None
) -> Callable[[RewardFunction], RewardFunction]:
    """Attach the registry's metadata to a reward function (``None`` shape: fits any observation); with ``name``,
    also register it in ``REWARD_FUNCTIONS`` under that name."""

    def decorate(fn: RewardFunction) -> RewardFunction:
        fn.description = description  # type: ignore[attr-defined]
        fn.observation_shape = observation_shape  # type: ignore[attr-defined]
        if name is not None:
            register(name, fn)
        return fn

    return decorate


def register(name: str, fn: RewardFunction) -> None:
    """Add ``fn`` to the registry; a name already taken by another function is refused, never silently replaced."""
    if not REWARD_NAME.fullmatch(name):
        raise ValueError(f"reward function name {name!r} must match {REWARD_NAME.pattern}")
    if REWARD_FUNCTIONS.get(name, fn) is not fn:
        raise ValueError(f"a reward function named {name!r} is already registered")
    REWARD_FUNCTIONS[name] = fn


def describe(fn: RewardFunction | None) -> str:
    """One-line description of a registry entry."""
    if fn is None:
        return "The environment's own reward."
    text = getattr(fn, "description", None) or (fn.__doc__ or "").strip()
    return text.splitlines()[0] if text else fn.__name__


def fits(fn: RewardFunction | None, observation_shape: tuple[int, ...]) -> bool:
    """Whether a registry entry can score observations of this shape."""
    expected = getattr(fn, "observation_shape", None)
    return expected is None or tuple(expected) == tuple(observation_shape)


@reward_function(
    "CartPole: survival bonus plus exponential pole-upright and cart-centred terms (the API document's default)",
    observation_shape=CARTPOLE_OBS_SHAPE,
)
def optimized_cartpole(state: th.Tensor, action: th.Tensor, next_state: th.Tensor) -> th.Tensor:
    cart_position, pole_angle = next_state[:, 0], next_state[:, 2]
    upright = 3.0 * th.exp(-8.0 * pole_angle.abs())
    centred = th.exp(-1.5 * cart_position**2)
    # Only near the track's edge (|x| > 2.0 of 2.4) does the position start to cost.
    edge_penalty = -2.0 * (cart_position.abs() - 2.0).clamp(min=0.0)
    reward = 1.5 + upright + centred + edge_penalty
    return reward.clamp(0.1, 6.0).unsqueeze(-1)


@reward_function(
    "CartPole: 1 when the pole is upright, falling linearly to 0.1 at the termination angle",
    observation_shape=CARTPOLE_OBS_SHAPE,
)
def simple_cartpole(state: th.Tensor, action: th.Tensor, next_state: th.Tensor) -> th.Tensor:
    pole_angle = next_state[:, 2]
    reward = 1.0 - pole_angle.abs() / CARTPOLE_ANGLE_LIMIT
    return reward.clamp(0.1, 1.0).unsqueeze(-1)


@reward_function(
    "Acrobot: height of the tip above the pivot, -cos(a1) - cos(a1 + a2); the goal line is at 1",
    observation_shape=(6,),
)
def acrobot_height(state: th.Tensor, action: th.Tensor, next_state: th.Tensor) -> th.Tensor:
    # Observation: [cos a1, sin a1, cos a2, sin a2, da1, da2]; cos(a1 + a2) = cos a1 cos a2 - sin a1 sin a2.
    cos1, sin1, cos2, sin2 = next_state[:, 0], next_state[:, 1], next_state[:, 2], next_state[:, 3]
    return (-cos1 - (cos1 * cos2 - sin1 * sin2)).unsqueeze(-1)


@reward_function(
    "MountainCar (both versions): the car's mechanical energy, which grows as it swings towards the flag",
    observation_shape=(2,),
)
def mountaincar_energy(state: th.Tensor, action: th.Tensor, next_state: th.Tensor) -> th.Tensor:
    # Observation: [position, velocity]. The dynamics accelerate by -0.0025 cos(3 x) per step, so the potential is
    # 0.0025 / 3 sin(3 x); scaled by 1000 so that the energies of a swing are of order 1.
    position, velocity = next_state[:, 0], next_state[:, 1]
    return (1000.0 * (0.5 * velocity**2 + 0.0025 / 3.0 * th.sin(3.0 * position))).unsqueeze(-1)


REWARD_FUNCTIONS.update(
    optimized_cartpole=optimized_cartpole,
    simple_cartpole=simple_cartpole,
    acrobot_height=acrobot_height,
    mountaincar_energy=mountaincar_energy,
)


def get_reward_function(name: str) -> RewardFunction | None:
    """The registry entry called ``name`` (``None``: the environment's own reward)."""
    if name not in REWARD_FUNCTIONS:
        raise ValueError(
            f"reward_function {name!r} is not a registered reward function: pass a callable, or one of "
            f"{', '.join(repr(key) for key in REWARD_FUNCTIONS)} (rewards.REWARD_FUNCTIONS)"
        )
    return REWARD_FUNCTIONS[name]


def reward_functions(reward_function: Any) -> list[RewardFunction]:
    """GRPO's ``reward_function`` argument as a list of callables (registry names looked up)."""
    if reward_function is None:
        return []
    single = callable(reward_function) or isinstance(reward_function, str)
    entries = [reward_function] if single else list(reward_function)
    functions = [get_reward_function(entry) if isinstance(entry, str) else entry for entry in entries]
    return [fn for fn in functions if fn is not None]  # the registry's "env": the environment's own reward


def score_transitions(
    functions: Sequence[RewardFunction],
    weights: Sequence[float] | None,
    state: Any,
    action: th.Tensor,
    next_state: Any,
) -> th.Tensor:
    """The weighted sum of the reward functions, each called once on the whole batch (float64, shape [batch])."""
    batch = len(action)
    total = th.zeros(batch, device=action.device, dtype=th.float64)
    with th.no_grad():
        for fn, weight in zip(functions, weights or [1.0] * len(functions), strict=True):
            total += weight * _checked_reward(fn, fn(state, action, next_state), batch, action.device)
    return total


def _checked_reward(fn: RewardFunction, reward: Any, batch: int, device: th.device) -> th.Tensor:
    name = getattr(fn, "__name__", repr(fn))
    if not isinstance(reward, th.Tensor):
        raise ValueError(f"reward function {name!r} returned {type(reward).__name__}, expected a torch.Tensor")
    if tuple(reward.shape) not in ((batch, 1), (batch,)):
        raise ValueError(
            f"reward function {name!r} returned shape {tuple(reward.shape)}, expected ({batch}, 1) "
            "(one reward per transition)"
        )
    if not reward.is_floating_point():
        raise ValueError(f"reward function {name!r} returned dtype {reward.dtype}, expected a float dtype")
    # A function written and tested on the CPU (th.ones(n), a numpy simulator's result) keeps working where
    # device="auto" picks a GPU: its answer is copied over (build it from the inputs to save the copy).
    try:
        reward = reward.to(device)
    except (RuntimeError, NotImplementedError) as error:  # a meta tensor has no values to copy
        raise ValueError(f"reward function {name!r} returned a tensor on {reward.device}: {error}") from error
    if not th.isfinite(reward).all():
        raise ValueError(f"reward function {name!r} returned NaN or infinite rewards")
    return reward.reshape(batch).to(th.float64)


class RewardFunctionWrapper(gym.Wrapper):
    """An environment whose reward is ``fn``'s, called on each transition as a batch of one: how another algorithm
    (PPO) learns from the same shaped reward GRPO is given, for a comparison on one signal. Episodes still end
    where the environment's do, and a ``Monitor`` inside it still records the environment's own returns."""

    def __init__(self, env: gym.Env, fn: RewardFunction | str):
        super().__init__(env)
        function = get_reward_function(fn) if isinstance(fn, str) else fn
        if function is None:
            raise ValueError("RewardFunctionWrapper needs a reward function, not the environment's own reward")
        self.fn = function
        self._obs: Any = None

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        self._obs, info = self.env.reset(**kwargs)
        return self._obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        next_obs, _, terminated, truncated, info = self.env.step(action)
        state, next_state = (th.as_tensor(np.asarray(obs, dtype=np.float32))[None] for obs in (self._obs, next_obs))
        with th.no_grad():
            reward = self.fn(state, th.as_tensor(np.asarray([action])), next_state)
        self._obs = next_obs
        return next_obs, float(reward.reshape(-1)[0]), terminated, truncated, info
