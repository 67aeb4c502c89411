"""GRPO's loss: PPO's clipped surrogate with DAPO's decoupled upper clip, the entropy bonus and the KL penalty
against a reference policy (the advantages it weighs are computed in advantages.py)."""

from typing import TYPE_CHECKING, Any, NamedTuple

import torch as th
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
    SquashedDiagGaussianDistribution,
    StateDependentNoiseDistribution,
)
from torch.distributions import kl_divergence

if TYPE_CHECKING:
    from grpo import GRPO


def k3_kl(log_prob: th.Tensor, ref_log_prob: th.Tensor) -> th.Tensor:
    """Per-sample estimate of KL(pi || pi_ref): r - log r - 1 with r = pi_ref / pi (Schulman, "Approximating
    KL Divergence", 2020; the estimator of DeepSeekMath eq. 4). Unbiased and never negative."""
    log_ratio = ref_log_prob - log_prob
    return th.exp(log_ratio) - log_ratio - 1.0


def exact_kl(distribution: Distribution, reference: Distribution) -> th.Tensor | None:
    """KL(pi || pi_ref) of each row in closed form, where the action distribution has one (categorical,
    Bernoulli, diagonal Gaussian); ``None`` otherwise (squashed or gSDE Gaussians: use :func:`k3_kl`).

    Branching needs it: it enumerates every action of a state with equal weight, where k3 averaged over those rows
    is no KL at all (22.6 instead of 0.637 at pi = [0.99, 0.01], pi_ref = [0.5, 0.5]); and elsewhere it is
    exact where k3 only estimates."""
    if type(distribution) is not type(reference) or isinstance(distribution, StateDependentNoiseDistribution):
        return None
    if isinstance(distribution, CategoricalDistribution):
        return kl_divergence(distribution.distribution, reference.distribution)
    if isinstance(distribution, MultiCategoricalDistribution):
        pairs = zip(distribution.distribution, reference.distribution, strict=True)
        return th.stack([kl_divergence(p, q) for p, q in pairs], dim=1).sum(dim=1)
    if isinstance(distribution, (BernoulliDistribution, DiagGaussianDistribution)) and not isinstance(
        distribution, SquashedDiagGaussianDistribution
    ):
        return kl_divergence(distribution.distribution, reference.distribution).sum(dim=1)
    return None


def clipped_surrogate_loss(
    ratio: th.Tensor, advantages: th.Tensor, clip_low: float, clip_high: float, weights: th.Tensor | None = None
) -> th.Tensor:
    """PPO's clipped objective (negated, averaged over steps) with DAPO's decoupled upper clip
    (Yu et al. 2025, "clip-higher": ``1 + clip_high`` lets unlikely good actions grow faster). ``weights``: the
    behaviour-to-proximal importance weights of decoupled PPO (Hilton et al. 2021, arXiv:2110.00641)."""
    unclipped = advantages * ratio
    clipped = advantages * th.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    surrogate = th.min(unclipped, clipped)
    if weights is not None:
        surrogate = weights * surrogate
    # Step-level mean over the mini-batch (DAPO's token-level loss), not a per-episode mean that would
    # weight the steps of short episodes more.
    return -surrogate.mean()


class MinibatchLoss(NamedTuple):
    loss: th.Tensor  # what is minimised: the policy loss, the entropy bonus and the KL penalty
    policy_loss: th.Tensor
    entropy_loss: th.Tensor
    kl_ref: th.Tensor | None  # against the reference policy, when there is one
    ratio: th.Tensor  # what the clip is applied to
    log_ratio: th.Tensor  # against the policy as the update started


def minibatch_loss(model: "GRPO", batch: Any, clip_low: float, clip_high: float) -> MinibatchLoss:
    """The loss of one mini-batch of ``GroupRolloutBuffer`` samples under ``model``'s current policy."""
    distribution = model.policy.get_distribution(batch.observations)
    log_prob = distribution.log_prob(model._policy_actions(batch.actions))
    entropy = distribution.entropy()
    log_ratio = log_prob - batch.proximal_log_prob
    weights = None
    if model.proximal_policy:  # truncated at 1, as V-trace's rho-bar, so that a stale row never weighs more
        ratio = th.exp(log_ratio)
        weights = th.exp(batch.proximal_log_prob - batch.old_log_prob).clamp(max=1.0)
    else:  # the clip centred on the behaviour policy, as PPO
        ratio = th.exp(log_prob - batch.old_log_prob)
    policy_loss = clipped_surrogate_loss(ratio, batch.advantages, clip_low, clip_high, weights)
    # Entropy bonus; without an analytical form, -log pi estimates it (as in SB3's PPO).
    entropy_loss = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
    loss = policy_loss + model.ent_coef * entropy_loss
    kl_ref = None
    if model.ref_policy is not None:
        with th.no_grad():
            reference = model.ref_policy.get_distribution(batch.observations)
        kl_rows = exact_kl(distribution, reference)
        kl_ref = (k3_kl(log_prob, batch.ref_log_prob) if kl_rows is None else kl_rows).mean()
        loss = loss + model.beta * kl_ref
    return MinibatchLoss(loss, policy_loss, entropy_loss, kl_ref, ratio, log_ratio)
