"""Group Relative Policy Optimization (GRPO) for Stable-Baselines3.

GRPO (Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300) replaces PPO's learned critic with a group baseline:
several samples that share a starting point are compared with each other, and each one's advantage is its
reward normalised within the group. In an environment a *group* is ``group_size`` episodes reset with one
shared seed, so they start from the same state and differ only by the actions the policy sampled; or, in
branching mode (``group_mode="state"``), the actions tried from one visited state, each in its own copy of the
environment. The environment side (group-reset wrapper, forks) lives in ``envs.py``, the loss in ``losses.py``.
"""

import copy
import inspect
import warnings
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import (
    ActorCriticCnnPolicy,
    ActorCriticPolicy,
    BasePolicy,
    MultiInputActorCriticPolicy,
)
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule, TensorDict
from stable_baselines3.common.utils import FloatSchedule, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch import nn

from advantages import (
    ADVANTAGE_FUNCTIONS,
    ADVANTAGE_MODES,
    BASELINES,
    MAX_FIT_FEATURES,
    NEAREST_FITS,
    SCALE_REWARDS,
    TIE_BREAKS,
    GroupStats,
    discounted_cumsum,
    novelty_for_tied_groups,
    outcome_advantages,
    process_advantages,
    timestep_advantages,
    truncated_tail,
    zero_spread_rows,
)
from buffers import GroupRolloutBuffer
from envs import EpisodeGroupMode, GroupMode, GroupResetWrapper, Observation, StateGroupMode, env_observations
from losses import clipped_surrogate_loss, exact_kl, k3_kl, minibatch_loss
from rewards import reward_functions, score_transitions

__all__ = [  # GroupResetWrapper and GroupRolloutBuffer live beside, and are imported from here as well
    "ADVANTAGE_MODES",
    "BASELINES",
    "GROUP_MODES",
    "GRPO",
    "NEAREST_FITS",
    "SCALE_REWARDS",
    "TIE_BREAKS",
    "GroupResetWrapper",
    "GroupRolloutBuffer",
    "clipped_surrogate_loss",
    "discounted_cumsum",
    "exact_kl",
    "k3_kl",
    "outcome_advantages",
    "process_advantages",
    "timestep_advantages",
]

SelfGRPO = TypeVar("SelfGRPO", bound="GRPO")

RewardFunction = Callable[[Any, th.Tensor, Any], th.Tensor]

GROUP_MODES = ("episode", "state")
BRANCH_ON = ("interval", "entropy")


# --------------------------------------------------------------------------------------------------------------
# Policies: SB3's actor-critic policies, minus the critic
# --------------------------------------------------------------------------------------------------------------


class _NoValue(nn.Module):
    """Stands where SB3's policies keep their value head: no parameters, and a value of 0 for ``forward``."""

    def forward(self, latent_vf: th.Tensor) -> th.Tensor:
        return th.zeros(len(latent_vf), 1, device=latent_vf.device)


_CRITIC_KEYS = ("value_net.", "mlp_extractor.value_net.")  # where SB3's actor-critic policies keep the critic


def _without_critic_moments(optimizer: th.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state saved with the value head's parameters (models saved before GRPO dropped it) does not fit
    the actor's optimizer: start that model's moments afresh rather than refuse to load it."""
    saved = [len(group["params"]) for group in state_dict["param_groups"]]
    if saved == [len(group["params"]) for group in optimizer.param_groups]:
        return state_dict
    warnings.warn("the saved optimizer state holds a value head GRPO lacks: moments start afresh", stacklevel=2)
    return optimizer.state_dict()


class _NoCritic:
    """GRPO never trains a critic, so its policies build none (whatever ``net_arch`` says about ``vf``) and
    refuse to answer for one."""

    default_net_arch: ClassVar[list[int] | dict[str, list[int]] | None] = {"pi": [64, 64], "vf": []}

    def __init__(self, *args: Any, net_arch: list[int] | dict[str, list[int]] | None = None, **kwargs: Any):
        if isinstance(net_arch, list) and net_arch and isinstance(net_arch[0], dict):
            warnings.warn("net_arch=[dict(pi=..., vf=...)] is SB3's old format: pass the dict", stacklevel=3)
            net_arch = net_arch[0]
        if net_arch is None:
            net_arch = self.default_net_arch
        elif isinstance(net_arch, dict):  # SB3's dict(pi=..., vf=...): the actor's part only
            net_arch = {"pi": list(net_arch.get("pi", [])), "vf": []}
        else:  # SB3's shared list: it becomes the actor's layers
            net_arch = {"pi": list(net_arch), "vf": []}
        if kwargs.get("share_features_extractor") is False:
            warnings.warn("GRPO has no critic to give a features extractor of its own: sharing it", stacklevel=3)
        kwargs["share_features_extractor"] = True  # a separate extractor would only feed the absent critic
        super().__init__(*args, net_arch=net_arch, **kwargs)

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)  # type: ignore[misc]
        self.value_net = _NoValue()
        # Rebuilt without the value head's parameters, which the base class had handed to it.
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[attr-defined]
        self.optimizer.register_load_state_dict_pre_hook(_without_critic_moments)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        # Models saved before GRPO dropped its value head hold the head's weights: nothing here takes them.
        kept = {key: value for key, value in state_dict.items() if not key.startswith(_CRITIC_KEYS)}
        return super().load_state_dict(kept, strict, assign)  # type: ignore[misc]

    def predict_values(self, obs: th.Tensor | TensorDict) -> th.Tensor:
        raise NotImplementedError(
            "GRPO trains no critic: its advantages come from group comparisons, so the policy has no value "
            "estimate. Use PPO or A2C if you need V(s)."
        )


def frozen_copy(policy: BasePolicy) -> BasePolicy:
    """A copy of ``policy`` that is never trained: the reference of the KL penalty."""
    reference = copy.deepcopy(policy)
    reference.set_training_mode(False)
    return reference.requires_grad_(False)


class GRPOPolicy(_NoCritic, ActorCriticPolicy):
    """``MlpPolicy``: SB3's ``ActorCriticPolicy`` without a value head."""


class GRPOCnnPolicy(_NoCritic, ActorCriticCnnPolicy):
    """``CnnPolicy``: SB3's ``ActorCriticCnnPolicy`` without a value head."""

    default_net_arch = None  # SB3's CNN default: the action head right on the CNN's features


class GRPOMultiInputPolicy(_NoCritic, MultiInputActorCriticPolicy):
    """``MultiInputPolicy`` (Dict observations): SB3's ``MultiInputActorCriticPolicy`` without a value head."""


# --------------------------------------------------------------------------------------------------------------
# Rewards: the env's, or the reward functions' on the env's own observations
# --------------------------------------------------------------------------------------------------------------


def batch_rewards(model: "GRPO", buffer: GroupRolloutBuffer) -> np.ndarray:
    """Per-step rewards of the batch: the env's, or the reward functions' in one batched call each."""
    functions = reward_functions(model.reward_function)
    if not functions:
        return buffer.env_rewards.astype(np.float64)
    assert buffer.env_observations is not None and buffer.next_observations is not None
    env_actions = model._env_actions(buffer.actions)
    if isinstance(model.action_space, spaces.Discrete):
        env_actions = env_actions.reshape(-1)
    action = th.as_tensor(env_actions, device=model.device)
    if isinstance(model.action_space, (spaces.Discrete, spaces.MultiDiscrete)):
        action = action.long()
    state = obs_as_tensor(buffer.env_observations, model.device)
    next_state = obs_as_tensor(buffer.next_observations, model.device)
    return score_transitions(functions, model.reward_weights, state, action, next_state).cpu().numpy()


def warn_if_process_is_flat(model: "GRPO", outcome: Any) -> None:
    """Process advantages were all zero: say so once, when the returns (``outcome``'s groups) did differ."""
    if outcome.zero_std_groups < outcome.n_groups and not getattr(model, "_warned_flat_process", False):
        model._warned_flat_process = True
        warnings.warn(
            "advantage='process' gives every step an advantage of exactly 0: each group's step rewards are all "
            "equal (a survival reward, the same on every step), although its members' returns differ. Use "
            "advantage='timestep' or 'outcome', which compare returns.",
            stacklevel=3,
        )


def compute_advantages(model: "GRPO", buffer: GroupRolloutBuffer) -> None:
    """Score the released groups and fill in their advantages; rows that cannot teach anything leave training."""
    buffer.rewards = batch_rewards(model, buffer)
    batch = (buffer.rewards, buffer.episodes, buffer.episode_groups, model.gamma, model.scale_rewards)
    cut = truncated_tail(buffer.episodes, buffer.truncated, model.gamma) if model.mask_truncated else None
    nearest = {"observations": buffer.observations, "exclude": cut, "gae_lambda": model.gae_lambda}
    nearest["fit"] = model.nearest_fit
    states = nearest if model.advantage == "nearest" else {}
    advantages, stats = ADVANTAGE_FUNCTIONS[model.advantage](*batch, model.baseline, **states)
    if model.tie_break == "novelty":
        advantages, rescored = novelty_for_tied_groups(advantages, buffer.observations, *batch[1:], model.baseline)
        model.logger.record("rollout/novelty_groups", rescored)
    buffer.advantages = advantages.astype(np.float32)
    if model.advantage == "process" and stats.zero_std_groups == stats.n_groups:
        warn_if_process_is_flat(model, outcome_advantages(*batch)[1])
    if cut is not None:
        model.logger.record("rollout/truncated_rows", int((cut & buffer.trainable).sum()))
        buffer.trainable &= ~cut
    if model.dynamic_sampling:
        dropped = zero_spread_rows(advantages, buffer.episode_groups[buffer.episodes]) & buffer.trainable
        buffer.trainable &= ~dropped
        model.logger.record("rollout/dropped_rows", int(dropped.sum()))
    if model.ref_policy is not None:
        buffer.ref_log_probs = buffer.log_probs_under(model.ref_policy, model._policy_actions)
    record_groups(model.logger, stats, buffer)


def record_groups(logger: Logger, stats: GroupStats, buffer: GroupRolloutBuffer) -> None:
    """The rollout's groups, in SB3's ``rollout/`` namespace."""
    logger.record("rollout/groups", stats.n_groups)
    logger.record("rollout/zero_std_groups", stats.zero_std_groups)
    logger.record("rollout/frac_zero_std_groups", stats.zero_std_groups / max(stats.n_groups, 1))
    logger.record("rollout/group_steps", buffer.size)
    logger.record("rollout/step_reward_mean", float(buffer.rewards.mean()))


def refresh_reference(model: "GRPO") -> None:
    """Iterative GRPO (DeepSeekMath 4.2): after each update, the reference follows the policy every few updates."""
    if model.ref_policy is None or model.ref_update_interval is None:
        return
    model._n_policy_updates += 1
    if model._n_policy_updates % model.ref_update_interval == 0:
        model.ref_policy.load_state_dict(model.policy.state_dict())


def _check_arguments(self: "GRPO") -> None:
    """Fail at construction (and at load, on the overrides given there) with what to change."""
    if self.group_size < 2:
        raise ValueError(f"group_size must be at least 2 to compare episodes, got {self.group_size}")
    if self.advantage not in ADVANTAGE_MODES:
        raise ValueError(f"advantage must be one of {ADVANTAGE_MODES}, got {self.advantage!r}")
    for option, value in (("advantage", "nearest"), ("tie_break", "novelty")):
        if getattr(self, option) == value and isinstance(getattr(self, "observation_space", None), spaces.Dict):
            raise ValueError(f"{option}={value!r} compares observations as vectors: it needs a Box observation space")
    if self.nearest_fit not in NEAREST_FITS:
        raise ValueError(f"nearest_fit must be one of {NEAREST_FITS}, got {self.nearest_fit!r}")
    if self.nearest_fit != "none" and self.advantage != "nearest":
        raise ValueError(
            f"nearest_fit={self.nearest_fit!r} corrects the nearest states' values: it needs advantage='nearest', "
            f"got advantage={self.advantage!r}"
        )
    space = getattr(self, "observation_space", None)
    if self.nearest_fit == "linear" and isinstance(space, spaces.Box) and int(np.prod(space.shape)) > MAX_FIT_FEATURES:
        raise ValueError(
            f"nearest_fit='linear' fits a weight per observation feature, at most {MAX_FIT_FEATURES}: got "
            f"{int(np.prod(space.shape))} (images?); use nearest_fit='none'"
        )
    if self.tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {self.tie_break!r}")
    if self.tie_break == "novelty" and self.group_mode == "state":
        raise ValueError(
            "tie_break='novelty' compares the states of episodes: it needs group_mode='episode' (set tie_break='none' "
            "for group_mode='state')"
        )
    if self.group_mode not in GROUP_MODES:
        raise ValueError(f"group_mode must be one of {GROUP_MODES}, got {self.group_mode!r}")
    if self.branch_interval < 1 or self.lookahead < 0:
        raise ValueError(
            f"branch_interval must be positive and lookahead non-negative, got {self.branch_interval} "
            f"and {self.lookahead}"
        )
    if self.branch_on not in BRANCH_ON:
        raise ValueError(f"branch_on must be one of {BRANCH_ON}, got {self.branch_on!r}")
    if self.branch_on == "entropy" and isinstance(getattr(self, "action_space", None), spaces.Box):
        raise ValueError(
            "branch_on='entropy' ranks states by the policy's entropy, which for Box actions (a Gaussian with "
            "a learned, state-independent std) is the same everywhere: use branch_on='interval'"
        )
    if self.group_mode == "state" and self.advantage != "outcome":
        raise ValueError(
            f"group_mode='state' judges each tried action by its branch's return (advantage='outcome'), "
            f"got advantage={self.advantage!r}"
        )
    if self.group_mode == "state" and self.use_sde:
        raise ValueError(
            "group_mode='state' cannot use gSDE: its exploration noise is fixed for a state, so the actions "
            "tried there would all be the same"
        )
    if not 0.0 <= self.gae_lambda <= 1.0:
        raise ValueError(f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
    if self.gae_lambda < 1.0 and self.advantage != "nearest":
        raise ValueError(
            f"gae_lambda < 1 bootstraps from the nearest states' mean return (there is no critic): it needs "
            f"advantage='nearest', got advantage={self.advantage!r} (set gae_lambda=1 for the plain return)"
        )
    if self.baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
    if self.scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {self.scale_rewards!r}")
    if self.n_steps < 1 or self.batch_size < 1 or self.n_epochs < 1:
        raise ValueError("n_steps, batch_size and n_epochs must all be positive")
    if self.beta < 0:
        raise ValueError(f"beta must be non-negative, got {self.beta}")
    if self.ref_update_interval is not None and self.ref_update_interval < 1:
        raise ValueError(f"ref_update_interval must be positive or None, got {self.ref_update_interval}")
    functions = reward_functions(self.reward_function)  # names are looked up here: an unknown one fails now
    for fn in functions:
        if not callable(fn):
            raise ValueError(f"reward_function entries must be callable or registry names, got {fn!r}")
    if self.reward_weights is not None and len(self.reward_weights) != len(functions):
        raise ValueError(f"reward_weights has {len(self.reward_weights)} entries for {len(functions)} reward functions")


def check_arguments(observation_space: spaces.Space, action_space: spaces.Space, **kwargs: Any) -> None:
    """GRPO's checks of its constructor arguments ``kwargs`` on these spaces, without building anything: the
    service runs them before a job is queued, so a bad combination is a 400 instead of a failed job."""
    signature = inspect.signature(GRPO.__init__).parameters.values()
    values = {p.name: p.default for p in signature if p.default is not p.empty} | kwargs
    values["advantage"] = values["advantage"] or default_advantage(values["group_mode"])
    _check_arguments(SimpleNamespace(observation_space=observation_space, action_space=action_space, **values))  # type: ignore[arg-type]


def default_advantage(group_mode: str) -> str:
    # Branches are judged by their outcome, the only mode there is in state mode.
    return "outcome" if group_mode == "state" else "timestep"


# --------------------------------------------------------------------------------------------------------------
# The algorithm
# --------------------------------------------------------------------------------------------------------------


class GRPO(OnPolicyAlgorithm):
    """
    Group Relative Policy Optimization (GRPO), critic-free.

    Paper: DeepSeekMath, https://arxiv.org/abs/2402.03300; clip-higher from DAPO, https://arxiv.org/abs/2503.14476;
    unscaled advantages from Dr. GRPO, https://arxiv.org/abs/2503.20783; branching as TRPO's "vine" sampling,
    https://arxiv.org/abs/1502.05477. Each group is ``group_size`` episodes started from the same state (one reset
    seed), or (``group_mode="state"``) the actions tried from one state of the real trajectory, each in a fork of
    the env that then follows the policy for ``lookahead`` steps; each member is judged against its own group.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, MultiInputPolicy)
    :param env: The environment to learn from (if registered in Gym, can be str). A ``SubprocVecEnv`` must wrap
        its envs in :class:`GroupResetWrapper`; state mode needs a ``DummyVecEnv`` of forkable envs (README)
    :param learning_rate: The learning rate, it can be a function of the current progress remaining (from 1 to 0)
    :param n_steps: Episode mode: minimum number of steps per environment slot in one update, a rollout goes on
        until the complete groups hold at least ``n_steps * n_envs`` steps (or the budget is spent). State mode:
        real steps per slot in one rollout, as in PPO
    :param batch_size: Minibatch size
    :param n_epochs: Number of epochs when optimizing the surrogate loss
    :param group_size: Number of episodes per group (G); at least 2. The first group completes after about
        ``ceil(G / n_envs) * n_envs * episode_length`` steps; ``learn`` warns when its budget may not. State
        mode: number of actions sampled at each branch point for Box, MultiDiscrete and MultiBinary spaces (a
        Discrete space tries every action)
    :param group_mode: ``"episode"``: a group is ``group_size`` episodes reset with one seed; ``"state"``: a
        group is a set of actions tried from one state, each in a fork of the env. A Discrete space tries every
        action, rows weighted alike: an ascent direction, not the policy gradient (which weights them by pi(a|s))
    :param branch_interval: State mode: branch at every this many-th state of each slot's episode (from its
        first state); 4 costs CartPole a fifth of the env steps of every state (docs/benchmarks.md)
    :param branch_on: State mode: ``"interval"`` (every ``branch_interval``-th state) or ``"entropy"`` (as many
        states, those where the policy's entropy ranks in the top ``1 / branch_interval`` of recent states';
        Discrete, MultiDiscrete and MultiBinary actions)
    :param lookahead: State mode: steps each branch follows the current policy after its tried action (fewer if
        it ends); at least 1 in physical control, where an action moves positions only a step later (README).
        Returns are cut there without a bootstrap: a penalty further ahead is not seen
    :param gamma: Discount factor of the returns that are compared within a group
    :param gae_lambda: With ``advantage="nearest"``, below 1 bootstraps each step's return from the nearest
        states' mean return-to-go as GAE does from a critic's values (HalfCheetah's preset); 1: the plain return
    :param advantage: ``"timestep"`` (per-timestep group baseline), ``"outcome"`` or ``"process"`` (DeepSeekMath),
        or ``"nearest"`` (the nearest states of other episodes), see advantages.py. ``None``: ``"timestep"`` in
        episode mode, ``"outcome"`` (the only one) in state mode
    :param scale_rewards: Divide by the std of the ``"group"`` (DeepSeekMath), of the whole ``"batch"``, or
        ``"none"`` (Dr. GRPO); ``"timestep"`` divides by the spread of the members' returns, see advantages.py
    :param baseline: What a member is compared with: the group's ``"mean"`` (GRPO) or the mean of the other
        members, ``"leave_one_out"`` (RLOO)
    :param nearest_fit: With ``advantage="nearest"``: ``"linear"`` carries each neighbour's return to the state it
        values along a linear fit of the rollout's returns on the observations (fitted without that state's own
        episode; HalfCheetah's preset); ``"none"`` averages the neighbours' returns as they are
    :param tie_break: What tells apart the members of a group whose advantages all come out 0 (their rewards tied,
        as a sparse reward's before the first success): ``"none"`` leaves them at 0; ``"novelty"`` compares them
        on how far their states lie from the rollout's other episodes' (k-NN novelty, Acrobot's preset)
    :param dynamic_sampling: Leave the rows of groups whose advantages are all zero out of the mini-batches
        (DAPO), so that they do not dilute the mini-batch means
    :param proximal_policy: Centre the clip on the policy as the update starts, not on each row's behaviour
        policy (decoupled PPO, https://arxiv.org/abs/2110.00641); ``approx_kl`` is measured against it either way
    :param mask_truncated: Leave out of training the last steps of episodes a time limit cut short, whose
        returns-to-go miss what came after the cut (``advantages.truncated_tail``); ``"nearest"`` never takes them
        as neighbours either
    :param clip_range: Clipping parameter, it can be a function of the current progress remaining (from 1 to 0)
    :param clip_range_high: Upper clipping parameter (DAPO clip-higher); ``None``: same as ``clip_range``
    :param beta: Coefficient of the k3 KL penalty against the reference policy; 0 skips the reference entirely
    :param ref_update_interval: The reference policy is replaced by the current one every this many updates
        (iterative GRPO); ``None`` keeps the initial policy as reference
    :param ent_coef: Entropy coefficient for the loss calculation
    :param max_grad_norm: The maximum value for the gradient clipping
    :param target_kl: Limit the KL divergence between updates (early stop of the epoch loop), as in SB3's PPO
    :param reward_function: ``None`` to use the environment's reward, or a batched callable
        ``(state, action, next_state) -> Tensor[batch, 1]``, a name from ``rewards.REWARD_FUNCTIONS``, or a list
        of them; evaluated once per rollout on the algorithm's device, on the env's own observations (before
        VecNormalize and VecTransposeImage)
    :param reward_weights: Weights of the reward functions (default: 1 each)
    :param use_sde: Whether to use generalized State Dependent Exploration (gSDE)
    :param sde_sample_freq: Sample a new noise matrix every n steps when using gSDE (-1: once per rollout)
    :param stats_window_size: Window size for the rollout logging (episodes averaged in ``rollout/ep_rew_mean``)
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation
    :param verbose: Verbosity level: 0 for no output, 1 for info messages, 2 for debug messages
    :param seed: Seed for the pseudo random generators (network, sampling and the groups' reset seeds)
    :param device: Device (cpu, cuda, ...) on which the code should be run ("auto": CUDA when available)
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": GRPOPolicy,
        "CnnPolicy": GRPOCnnPolicy,
        "MultiInputPolicy": GRPOMultiInputPolicy,
    }
    rollout_buffer: GroupRolloutBuffer

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 256,
        batch_size: int = 256,
        n_epochs: int = 10,
        group_size: int = 16,
        group_mode: str = "episode",
        branch_interval: int = 4,
        branch_on: str = "interval",
        lookahead: int = 2,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        advantage: str | None = None,
        scale_rewards: str = "group",
        baseline: str = "mean",
        nearest_fit: str = "none",
        tie_break: str = "none",
        dynamic_sampling: bool = False,
        proximal_policy: bool = False,
        mask_truncated: bool = False,
        clip_range: float | Schedule = 0.2,
        clip_range_high: float | Schedule | None = None,
        beta: float = 0.0,
        ref_update_interval: int | None = 10,
        ent_coef: float = 0.0,
        max_grad_norm: float = 0.5,
        target_kl: float | None = None,
        reward_function: RewardFunction | str | Sequence[RewardFunction | str] | None = None,
        reward_weights: Sequence[float] | None = None,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=ent_coef,
            vf_coef=0.0,  # no critic
            max_grad_norm=max_grad_norm,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
            supported_action_spaces=(spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary),
        )
        self.batch_size = batch_size
        self.n_epochs = n_epochs
        self.group_size = group_size
        self.group_mode = group_mode
        self.branch_interval = branch_interval
        self.branch_on = branch_on
        self.lookahead = lookahead
        self.advantage = advantage or default_advantage(group_mode)
        self.scale_rewards = scale_rewards
        self.baseline = baseline
        self.nearest_fit = nearest_fit
        self.tie_break = tie_break
        self.dynamic_sampling = dynamic_sampling
        self.proximal_policy = proximal_policy
        self.mask_truncated = mask_truncated
        self.clip_range = clip_range
        self.clip_range_high = clip_range_high
        self.beta = beta
        self.ref_update_interval = ref_update_interval
        self.target_kl = target_kl
        self.reward_function = reward_function
        self.reward_weights = reward_weights
        self._n_policy_updates = 0  # train() calls, for the reference refresh
        self.num_branch_steps = 0  # environment steps taken in branches, never counted in num_timesteps
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        _check_arguments(self)  # here, so that GRPO.load(..., **kwargs) checks its overrides too
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(  # type: ignore[assignment]
            self.observation_space, self.action_space, self.lr_schedule, use_sde=self.use_sde, **self.policy_kwargs
        )
        self.policy = self.policy.to(self.device)
        self._maybe_recommend_cpu(GRPOPolicy.__name__)
        self.rollout_buffer = GroupRolloutBuffer(
            self.observation_space,
            self.action_space,
            device=self.device,
            n_envs=self.n_envs,
            group_size=self.group_size,
            store_next_obs=bool(reward_functions(self.reward_function)),
        )
        self.clip_range = FloatSchedule(self.clip_range)
        if self.clip_range_high is not None:
            self.clip_range_high = FloatSchedule(self.clip_range_high)
        self.ref_policy = None if self.beta == 0 else frozen_copy(self.policy)
        # The one place where the two group modes differ: how the env is driven to fill groups.
        self.groups: GroupMode = StateGroupMode(self) if self.group_mode == "state" else EpisodeGroupMode(self)
        self._last_env_obs: Observation | None = None  # _last_obs as the env made it, for reward functions
        if self.env is not None:
            self.groups.prepare_env(self.env)

    def _excluded_save_params(self) -> list[str]:  # all three are rebuilt on load
        return [*super()._excluded_save_params(), "ref_policy", "groups", "_last_env_obs"]

    def set_env(self, env: GymEnv, force_reset: bool = True) -> None:
        previous = self.env
        super().set_env(env, force_reset=force_reset)
        self.groups.prepare_env(self.env)  # type: ignore[arg-type]
        if self.env is not previous:
            self.groups.forget_env()

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, BaseCallback]:
        assert self.env is not None
        if reset_num_timesteps:
            self.num_branch_steps = 0
        env_reset = reset_num_timesteps or self._last_obs is None or not self.groups.env_continues(self.env)
        if env_reset:
            self._last_obs = None  # the base class resets the env
            self.groups.before_reset(self.env)
        else:
            self.groups.resume(self.env)
        message = self.groups.budget_warning(total_timesteps)
        if message is not None:
            warnings.warn(message, stacklevel=3)
        total_timesteps, callback = super()._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar
        )
        if env_reset:
            if self.rollout_buffer.store_next_obs:
                self._last_env_obs = env_observations(self.env, self._last_obs)  # type: ignore[arg-type]
            self.groups.after_reset(self.env)
        return total_timesteps, callback

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """Step the envs until the group mode says the rollout is full or the budget is spent, then score the
        complete groups and compute their group-relative advantages."""
        assert self._last_obs is not None, "No previous observation was provided"
        assert isinstance(rollout_buffer, GroupRolloutBuffer)
        self.policy.set_training_mode(False)
        rollout_buffer.reset()
        if self.use_sde:
            self.policy.reset_noise(env.num_envs)

        callback.on_rollout_start()
        n_steps = 0
        while not self.groups.rollout_full(n_steps, n_rollout_steps) and self.num_timesteps < self._total_timesteps:
            if self.use_sde and self.sde_sample_freq > 0 and n_steps % self.sde_sample_freq == 0:
                self.policy.reset_noise(env.num_envs)

            with th.no_grad():
                obs_tensor = obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]
                # The actor alone: GRPO has no value to compute.
                distribution = self.policy.get_distribution(obs_tensor)
                actions_t = distribution.get_actions()
                log_probs = distribution.log_prob(actions_t)
            actions = actions_t.cpu().numpy()
            self.groups.before_step(env, distribution)
            new_obs, rewards, dones, infos = env.step(self._env_actions(actions))
            self.num_timesteps += env.num_envs
            n_steps += 1

            # Booked before the callback may stop training: a later learn must find every slot's next episode.
            self.groups.record_step(env, actions, rewards, log_probs, new_obs, dones, infos)
            self._update_info_buffer(infos, dones)
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones
            if rollout_buffer.store_next_obs:
                self._last_env_obs = env_observations(env, new_obs)  # type: ignore[arg-type]
            callback.update_locals(locals())
            if not callback.on_step():
                return False

        rollout_buffer.release_complete_groups()
        if rollout_buffer.size:
            compute_advantages(self, rollout_buffer)
        if self.group_mode == "state":
            self.logger.record("rollout/branch_steps", self.num_branch_steps)

        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def _env_actions(self, actions: np.ndarray) -> np.ndarray:
        """Actions as the environment takes them (SB3's convention: clip, or unscale squashed actions)."""
        if isinstance(self.action_space, spaces.Box):
            actions = actions.reshape((-1, *self.action_space.shape))  # the policy's actions are flat
            if self.policy.squash_output:
                return self.policy.unscale_action(actions)
            return np.clip(actions, self.action_space.low, self.action_space.high)
        return actions

    def _policy_actions(self, actions: th.Tensor) -> th.Tensor:
        if isinstance(self.action_space, spaces.Discrete):
            return actions.long().flatten()
        return actions

    def train(self) -> None:
        """Update the policy on the released groups with the clipped surrogate loss (+ k3 KL penalty)."""
        buffer = self.rollout_buffer
        if not buffer.trainable.any():
            # The budget ran out before any group finished, or every group was flat: nothing to learn from.
            return
        # The policy as the update starts (decoupled PPO's proximal policy): rows an episode group collected
        # before the last update were sampled from an older one.
        buffer.proximal_log_probs = buffer.log_probs_under(self.policy, self._policy_actions)
        rows = buffer.trainable
        behaviour_ratio = np.exp(buffer.proximal_log_probs[rows] - buffer.log_probs[rows])
        self.logger.record(
            "rollout/stale_fraction", float(np.mean(buffer.policy_versions[rows] < buffer.policy_version))
        )
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        progress = self._current_progress_remaining
        clip_low = self.clip_range(progress)  # type: ignore[operator]
        clip_high = clip_low if self.clip_range_high is None else self.clip_range_high(progress)  # type: ignore[operator]
        pg_losses, entropy_losses, kl_refs, clip_fractions, approx_kl_divs = [], [], [], [], []
        continue_training = True
        for epoch in range(self.n_epochs):
            for batch in buffer.get(self.batch_size):
                if self.use_sde:
                    self.policy.reset_noise(len(batch.advantages))
                terms = minibatch_loss(self, batch, clip_low, clip_high)
                loss, ratio, log_ratio = terms.loss, terms.ratio, terms.log_ratio
                with th.no_grad():
                    # Schulman's k3 again, against the policy as this update started (SB3 PPO's approx_kl): stale
                    # rows measured against their older behaviour policy would stop target_kl early.
                    approx_kl = th.mean(th.expm1(log_ratio) - log_ratio).item()
                pg_losses.append(terms.policy_loss.item())
                entropy_losses.append(terms.entropy_loss.item())
                if terms.kl_ref is not None:
                    kl_refs.append(terms.kl_ref.item())
                clip_fractions.append(th.mean(((ratio < 1 - clip_low) | (ratio > 1 + clip_high)).float()).item())
                approx_kl_divs.append(approx_kl)
                if self.target_kl is not None and approx_kl > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl:.2f}")
                    break

                self.policy.optimizer.zero_grad()
                loss.backward()
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
            self._n_updates += 1
            if not continue_training:
                break

        refresh_reference(self)
        buffer.policy_version += 1
        outside = (behaviour_ratio < 1 - clip_low) | (behaviour_ratio > 1 + clip_high)
        self.logger.record("train/stale_clip_fraction", float(np.mean(outside)))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", np.mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        if kl_refs:
            self.logger.record("train/kl_ref", np.mean(kl_refs))
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_low)
        self.logger.record("train/clip_range_high", clip_high)

    def learn(
        self: SelfGRPO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "GRPO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfGRPO:
        try:
            args = (total_timesteps, callback, log_interval, tb_log_name, reset_num_timesteps, progress_bar)
            return super().learn(*args)
        finally:
            if self.env is not None:  # also when a callback stopped training or an error ends it
                self.groups.pause(self.env)

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return ["policy", "policy.optimizer"], []
