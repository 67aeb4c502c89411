"""Reward functions for GRPO and the registry the service picks them from.

A reward function is batched: ``fn(state, action, next_state) -> Tensor`` with ``state`` and ``next_state`` of
shape ``[batch, *obs_shape]``, ``action`` of shape ``[batch, *action_shape]`` (Discrete: ``[batch]``), all on
the algorithm's device; it returns one float reward per transition, shape ``[batch, 1]`` (``[batch]`` is
accepted too). GRPO calls it once per rollout on every transition, never once per step.

Add your own to ``REWARD_FUNCTIONS`` (also importable from ``api``)::

    @reward_function("Keeps the cart near the centre", observation_shape=(4,))
    def centred(state, action, next_state):
        return -next_state[:, :1].abs()

    REWARD_FUNCTIONS["centred"] = centred

A plain function works too; it then fits every observation shape and its docstring is its description.
"""

from collections.abc import Callable

import torch as th

RewardFunction = Callable[[th.Tensor, th.Tensor, th.Tensor], th.Tensor]

# CartPole-v1 observation: [cart position, cart velocity, pole angle, pole angular velocity]
CARTPOLE_OBS_SHAPE = (4,)
# CartPole terminates once |pole angle| exceeds 12 degrees
CARTPOLE_ANGLE_LIMIT = 0.2095


def reward_function(
    description: str, observation_shape: tuple[int, ...] | None = None
) -> Callable[[RewardFunction], RewardFunction]:
    """Attach the registry's metadata to a reward function (``None`` shape: fits any observation)."""

    def decorate(fn: RewardFunction) -> RewardFunction:
        fn.description = description  # type: ignore[attr-defined]
        fn.observation_shape = observation_shape  # type: ignore[attr-defined]
        return fn

    return decorate


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


# name -> reward function; ``None`` means the environment's own reward.
REWARD_FUNCTIONS: dict[str, RewardFunction | None] = {
    "env": None,
    "optimized_cartpole": optimized_cartpole,
    "simple_cartpole": simple_cartpole,
}


def get_reward_function(name: str) -> RewardFunction | None:
    """The registry entry called ``name`` (``None``: the environment's own reward)."""
    if name not in REWARD_FUNCTIONS:
        raise ValueError(
            f"reward_function {name!r} is not a registered reward function: pass a callable, or one of "
            f"{', '.join(repr(key) for key in REWARD_FUNCTIONS)} (rewards.REWARD_FUNCTIONS)"
        )
    return REWARD_FUNCTIONS[name]
