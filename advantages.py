"""GRPO's advantage estimators: pure functions from a batch of complete groups to one advantage per step.

Every function takes the batch flat and time-ordered within each episode: ``rewards`` per step, ``episodes`` the
dense episode id (0..E-1) of each step (episodes contiguous) and ``episode_groups`` the dense group id (0..K-1)
of each episode. Two choices are shared by all of them:

- ``scale_rewards``: divide by the std of the group's comparison (DeepSeekMath), by one std over the batch (TRL's
  ``scale_rewards="batch"``), or not at all (Dr. GRPO, Liu et al. 2025).
- ``baseline``: the group's mean (GRPO), or the mean of the *other* members (RLOO, Ahmadian et al. 2024,
  "Back to Basics", arXiv:2402.14740). With ``n`` members a leave-one-out residual is ``n / (n - 1)`` times the
  mean's: it undoes the mean's ``(1 - 1/n)`` shrink, and is the same for every group of equal size.
"""

from typing import NamedTuple

import numpy as np

ADVANTAGE_MODES = ("outcome", "process", "timestep", "nearest")
SCALE_REWARDS = ("group", "batch", "none")
BASELINES = ("mean", "leave_one_out")
TIE_BREAKS = ("none", "novelty")  # what tells apart the members of a group tied on the reward
NEAREST_FITS = ("none", "linear")  # how the neighbours' returns are carried to the state they value


class GroupStats(NamedTuple):
    n_groups: int
    zero_std_groups: int


def _counts(groups: np.ndarray, n_groups: int) -> np.ndarray:
    return np.bincount(groups, minlength=n_groups).astype(np.float64)


def _group_std(values: np.ndarray, groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Each group's mean and unbiased std (as TRL's GRPOTrainer computes it)."""
    counts = _counts(groups, n_groups)
    mean = np.bincount(groups, weights=values, minlength=n_groups) / counts
    sq_dev = np.bincount(groups, weights=(values - mean[groups]) ** 2, minlength=n_groups)
    return mean, np.sqrt(sq_dev / np.maximum(counts - 1, 1))


def _flat(std: np.ndarray, mean: np.ndarray) -> np.ndarray:
    return std <= 1e-8 * np.maximum(1.0, np.abs(mean))


def _divisor(values: np.ndarray, group_std: np.ndarray, groups: np.ndarray, scale_rewards: str) -> np.ndarray:
    """Per-element divisor: the group's std, one std over all ``values``, or 1."""
    if scale_rewards == "group":  # DeepSeekMath: z-score within the group
        return group_std[groups]
    if scale_rewards == "batch":  # TRL scale_rewards="batch": one std over the whole rollout
        return np.full(len(groups), values.std(ddof=1) if len(values) > 1 else 0.0)
    return np.ones(len(groups))  # Dr. GRPO: no std division, which biases towards low-variance groups


def _loo_factor(groups: np.ndarray, n_groups: int, baseline: str) -> np.ndarray:
    """Per-element factor that turns a mean-baseline residual into a leave-one-out one (RLOO): n / (n - 1)."""
    if baseline == "mean":
        return np.ones(len(groups))
    counts = _counts(groups, n_groups)
    return (counts / np.maximum(counts - 1, 1))[groups]


def _normalize(
    values: np.ndarray, groups: np.ndarray, scale_rewards: str, baseline: str = "mean"
) -> tuple[np.ndarray, GroupStats]:
    n_groups = int(groups.max()) + 1
    mean, std = _group_std(values, groups, n_groups)
    zero_std = _flat(std, mean)
    divisor = _divisor(values, std, groups, scale_rewards)
    normalized = (values - mean[groups]) * _loo_factor(groups, n_groups, baseline) / (divisor + 1e-8)
    # A group whose members all scored the same carries no signal: exactly zero, not rounding noise.
    normalized[zero_std[groups]] = 0.0
    return normalized, GroupStats(n_groups, int(zero_std.sum()))


def _episode_starts(episodes: np.ndarray) -> np.ndarray:
    return np.r_[True, episodes[1:] != episodes[:-1]]


def _steps_in_episode(starts: np.ndarray) -> np.ndarray:
    index = np.arange(len(starts))
    return index - np.maximum.accumulate(np.where(starts, index, 0))


def episode_returns(rewards: np.ndarray, episodes: np.ndarray, gamma: float) -> np.ndarray:
    """Each episode's return, discounted from its first step."""
    step = _steps_in_episode(_episode_starts(episodes))
    return np.bincount(episodes, weights=rewards * gamma**step, minlength=int(episodes.max()) + 1)


def discounted_cumsum(values: np.ndarray, episode_starts: np.ndarray, gamma: float) -> np.ndarray:
    """Return-to-go ``sum_k gamma^k values[t+k]`` within each episode of a flat, time-ordered array."""
    out = np.empty_like(values, dtype=np.float64)
    running = 0.0
    for t in range(len(values) - 1, -1, -1):
        running = values[t] + gamma * running
        out[t] = running
        if episode_starts[t]:
            running = 0.0
    return out


# A step's return-to-go counts as cut short by a time limit when the discount on the first reward it misses,
# gamma^(steps to the cut), is at least this: with gamma 0.9 the last 22 steps, with 0.99 the last 230.
TRUNCATION_TOLERANCE = 0.1


def truncated_tail(
    episodes: np.ndarray, truncated: np.ndarray, gamma: float, tolerance: float = TRUNCATION_TOLERANCE
) -> np.ndarray:
    """The rows whose return-to-go a time limit cut short: the last steps of each episode in ``truncated`` (one
    flag per episode), those for which ``gamma^(steps to the cut) >= tolerance``; every step of a truncated
    episode when ``gamma`` is 1 (as DAPO's overlong filtering masks a truncated sample whole). Their returns-to-go
    say "the episode ended here" where it did not, the bias that PPO's time-limit bootstrap removes."""
    to_cut = np.bincount(episodes)[episodes] - _steps_in_episode(_episode_starts(episodes))  # 1 at the last step
    return truncated[episodes] & (gamma ** to_cut.astype(np.float64) >= tolerance)


def outcome_advantages(
    rewards: np.ndarray,
    episodes: np.ndarray,
    episode_groups: np.ndarray,
    gamma: float,
    scale_rewards: str = "group",
    baseline: str = "mean",
) -> tuple[np.ndarray, GroupStats]:
    """Outcome supervision (DeepSeekMath 4.1.2): an episode's discounted return, compared within its group,
    is the advantage of every one of its steps."""
    returns = episode_returns(rewards, episodes, gamma)
    episode_advantages, stats = _normalize(returns, episode_groups, scale_rewards, baseline)
    return episode_advantages[episodes], stats


def process_advantages(
    rewards: np.ndarray,
    episodes: np.ndarray,
    episode_groups: np.ndarray,
    gamma: float,
    scale_rewards: str = "group",
    baseline: str = "mean",
) -> tuple[np.ndarray, GroupStats]:
    """Process supervision (DeepSeekMath 4.1.3): every step reward is normalised against all step rewards of
    its group, and a step's advantage is the (``gamma``-discounted) sum of the normalised rewards from it on.

    The returned stats count groups whose *step rewards* are all equal: then every advantage is zero, even where
    the members' lengths differ (a survival reward, +1 or -1 on every step, tells them apart only by length)."""
    normalized, stats = _normalize(rewards, episode_groups[episodes], scale_rewards, baseline)
    return discounted_cumsum(normalized, _episode_starts(episodes), gamma), stats


def timestep_advantages(
    rewards: np.ndarray,
    episodes: np.ndarray,
    episode_groups: np.ndarray,
    gamma: float,
    scale_rewards: str = "group",
    baseline: str = "mean",
) -> tuple[np.ndarray, GroupStats]:
    """Per-timestep group baseline: a step's discounted return-to-go minus the mean return-to-go of its group's
    members at the same step index (0 for members whose episode already ended). Members share their start, so
    step t of each is a fair comparison.

    The scale is the spread of the comparison itself: the std of the members' returns (``"group"``), or of all
    episode returns in the batch (``"batch"``). Not the std of returns-to-go pooled over step indices, which
    mostly measures how they fall with time: it grows with the episodes' length, so a one-reward difference at
    step 0 would weigh -1.0, -0.1, -0.02 in episodes of 2, 20, 200 steps instead of -0.71 in all three (issue 12).
    The root mean square of the group's residuals is a floor: discounting shrinks late differences in the returns
    from the start (and equal returns may hide rewards that came at different times)."""
    starts = _episode_starts(episodes)
    step = _steps_in_episode(starts)
    to_go = discounted_cumsum(rewards, starts, gamma)
    groups = episode_groups[episodes]
    n_groups = int(episode_groups.max()) + 1
    members = np.bincount(episode_groups, minlength=n_groups)[groups]
    horizon = int(step.max()) + 1
    slot = groups * horizon + step  # (group, step index)
    baseline_sum = np.bincount(slot, weights=to_go, minlength=n_groups * horizon)[slot]
    residual = to_go - baseline_sum / members
    if baseline == "leave_one_out":  # the other members' mean at this step
        residual = residual * members / np.maximum(members - 1, 1)

    returns = to_go[starts]  # in episode order: starts are the episodes' first steps
    returns_mean, returns_std = _group_std(returns, episode_groups, n_groups)
    residual_rms = np.sqrt(np.bincount(groups, weights=residual**2, minlength=n_groups) / _counts(groups, n_groups))
    flat = residual_rms <= 1e-8 * np.maximum(1.0, np.abs(returns_mean))
    # Discounting shrinks late differences in the returns from the start (gamma^t): the residuals' own spread floors it.
    spread = np.maximum(returns_std, residual_rms)
    divisor = _divisor(returns, spread, groups, scale_rewards)
    advantages = np.where(flat[groups] | (divisor <= 1e-8), 0.0, residual / (divisor + 1e-8))
    return advantages, GroupStats(n_groups, int(flat.sum()))


# Steps of other episodes that make a step's baseline in nearest_state_advantages.
NEAREST_STATES = 16
_CHUNK_ROWS = 1024  # rows whose distances to the whole batch are computed at once


def _standardized(observations: np.ndarray) -> np.ndarray:
    """Observations flattened, each dimension standardised over the rollout (rows x features, float64)."""
    flat = observations.reshape(len(observations), -1).astype(np.float64)
    return (flat - flat.mean(axis=0)) / (flat.std(axis=0) + 1e-8)


def _nearest_of_other_episodes(
    z: np.ndarray, episodes: np.ndarray, candidate: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """For every row, the ``k`` candidate rows of *other* episodes whose standardised observations ``z`` are
    nearest (Euclidean; fewer where fewer candidates lie outside some episode, and every row a candidate where
    none do), and their squared distances: two rows x k arrays."""
    # As many neighbours as every row finds among the candidates outside its own episode.
    spare = int(candidate.sum()) - int(np.bincount(episodes, weights=candidate).max())
    if spare < 1:  # the excluded rows are all there is: better them than none
        candidate, spare = np.ones(len(episodes), dtype=bool), len(episodes) - int(np.bincount(episodes).max())
    neighbours = max(1, min(k, spare))
    squared = (z**2).sum(axis=1)
    nearest = np.empty((len(z), neighbours), dtype=np.int64)
    distances = np.empty((len(z), neighbours))
    for start in range(0, len(z), _CHUNK_ROWS):
        rows = slice(start, start + _CHUNK_ROWS)
        # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b: a chunk x rows matrix, never chunk x rows x observation size
        distance = squared[rows, None] + squared[None, :] - 2.0 * z[rows] @ z.T
        distance[(episodes[rows, None] == episodes[None, :]) | ~candidate[None, :]] = np.inf
        nearest[rows] = np.argpartition(distance, neighbours - 1, axis=1)[:, :neighbours]
        distances[rows] = np.maximum(np.take_along_axis(distance, nearest[rows], axis=1), 0.0)  # rounding
    return nearest, distances


# Ridge penalty of the linear fit in nearest_state_advantages, per candidate row (features are standardised).
FIT_RIDGE = 1e-3
# Beyond this many observation features the linear fit's per-episode solves cost more than the rollout: refused.
MAX_FIT_FEATURES = 256


def _linear_fits_without_own_episode(
    z: np.ndarray, values: np.ndarray, episodes: np.ndarray, candidate: np.ndarray
) -> np.ndarray:
    """For every episode, the slopes (episodes x features) of a ridge least-squares fit of ``values`` on ``z``
    (with an intercept) over the candidate rows of every *other* episode: an episode's own returns never enter
    its baseline, which would then depend on the actions it judges. Over all candidates where the other episodes
    hold fewer rows than the fit has weights."""
    x = np.c_[z, np.ones(len(z))]
    if candidate.sum() < x.shape[1]:
        candidate = np.ones(len(z), dtype=bool)
    xc, yc, ec = x[candidate], values[candidate], episodes[candidate]
    gram, cross = xc.T @ xc, xc.T @ yc
    penalty = np.diag(np.r_[np.ones(z.shape[1]), 0.0])  # the intercept is not shrunk
    slopes = np.empty((int(episodes.max()) + 1, z.shape[1]))
    for episode in range(len(slopes)):
        own = ec == episode
        rows = len(yc) - int(own.sum())
        if rows < x.shape[1]:  # too few rows elsewhere: the fit over all of them
            own, rows = np.zeros_like(own), len(yc)
        a = gram - xc[own].T @ xc[own] + FIT_RIDGE * rows * penalty
        slopes[episode] = np.linalg.solve(a, cross - xc[own].T @ yc[own])[:-1]
    return slopes


def nearest_state_advantages(
    rewards: np.ndarray,
    episodes: np.ndarray,
    episode_groups: np.ndarray,
    gamma: float,
    scale_rewards: str = "group",
    baseline: str = "mean",
    observations: np.ndarray | None = None,
    k: int = NEAREST_STATES,
    exclude: np.ndarray | None = None,
    gae_lambda: float = 1.0,
    fit: str = "none",
) -> tuple[np.ndarray, GroupStats]:
    """Per-state baseline without a critic: a step's discounted return-to-go minus the mean return-to-go of the
    ``k`` steps of *other* episodes in the rollout whose observations are nearest (Euclidean, each dimension
    standardised over the rollout), a k-nearest-neighbour estimate of the state's value under the policies that
    collected it. Group members share only their start: where they part ways within a few steps (Pendulum), the
    timestep baseline compares different states at the same step index, and this compares like with like
    (issue 12: Pendulum reaches -200 in about PPO's steps, docs/benchmarks.md). ``baseline`` changes nothing here
    (a step is never its own neighbour's episode); ``scale_rewards`` divides by the std of the group's residuals,
    of the rollout's, or not at all. ``exclude``: rows never taken as a neighbour (returns-to-go a time limit cut
    short, :func:`truncated_tail`), unless too few rows would be left. ``gae_lambda`` < 1 bootstraps from those
    values as GAE does from a critic's (Schulman et al. 2016): ``sum_l (gamma lambda)^l delta_(t+l)`` with
    ``delta_t = r_t + gamma V(s_(t+1)) - V(s_t)`` and V 0 after an episode's last step, as its returns-to-go
    take it; 1 gives the return-to-go minus V(s_t). ``fit="linear"`` carries each neighbour's return to the
    state it values along a least-squares linear fit of the returns-to-go on the standardised observations, fitted
    without that state's own episode: ``V(s) = mean_j [G_j + w . (s - s_j)]``, local-linear regression, which
    removes the bias of neighbours that lie off in some dimensions (HalfCheetah: the 16 nearest of 3,000 states in
    17 dimensions are far apart, and an episode unlike the others, the cheetah on its back, finds none near it).
    Costs rows^2 x observation size per rollout, in chunks."""
    if observations is None:
        raise ValueError("nearest_state_advantages needs the rollout's observations")
    if fit not in NEAREST_FITS:
        raise ValueError(f"fit must be one of {NEAREST_FITS}, got {fit!r}")
    starts = _episode_starts(episodes)
    to_go = discounted_cumsum(rewards, starts, gamma)
    candidate = np.ones(len(episodes), dtype=bool) if exclude is None else ~exclude
    z = _standardized(observations)
    nearest, _ = _nearest_of_other_episodes(z, episodes, candidate, k)
    base = to_go[nearest].mean(axis=1)
    if fit == "linear":
        slopes = _linear_fits_without_own_episode(z, to_go, episodes, candidate)
        base += ((z - z[nearest].mean(axis=1)) * slopes[episodes]).sum(axis=1)
    if gae_lambda < 1.0:
        # Over 1,000-step episodes a return-to-go sums hundreds of noisy rewards; the neighbours' mean return at
        # the next states stands in for all but the nearest of them (issue 12: HalfCheetah, docs/benchmarks.md).
        next_value = np.where(np.r_[starts[1:], True], 0.0, np.r_[base[1:], 0.0])
        residual = discounted_cumsum(rewards + gamma * next_value - base, starts, gamma * gae_lambda)
    else:
        residual = to_go - base
    groups = episode_groups[episodes]
    n_groups = int(episode_groups.max()) + 1
    mean, std = _group_std(residual, groups, n_groups)
    divisor = _divisor(residual, std, groups, scale_rewards)
    return residual / (divisor + 1e-8), GroupStats(n_groups, int(_flat(std, mean).sum()))


def novelty(observations: np.ndarray, episodes: np.ndarray, k: int = NEAREST_STATES) -> np.ndarray:
    """Each step's distance to its ``k``-th nearest step of another episode in the rollout (each dimension
    standardised over the rollout): large where the policies that collected the rollout seldom go. The k-NN
    distance of particle-based entropy estimates, as APT's intrinsic reward (Liu & Abbeel 2021, arXiv:2103.04551)."""
    _, distances = _nearest_of_other_episodes(
        _standardized(observations), episodes, np.ones(len(episodes), dtype=bool), k
    )
    return np.sqrt(distances.max(axis=1))


def novelty_for_tied_groups(
    advantages: np.ndarray,
    observations: np.ndarray,
    episodes: np.ndarray,
    episode_groups: np.ndarray,
    gamma: float,
    scale_rewards: str = "group",
    baseline: str = "mean",
    k: int = NEAREST_STATES,
) -> tuple[np.ndarray, int]:
    """The groups whose advantages are all zero, their members tied on the reward (Acrobot's -1 per step before
    any member reaches the goal), compared on :func:`novelty` instead: each step's novelty is its intrinsic
    reward, compared at the same step index as :func:`timestep_advantages` compares rewards, so the members that
    went where the rollout seldom goes are pushed up, and the policy explores until a group's rewards differ.
    Groups whose rewards differ keep their advantages. Returns the advantages and how many groups were re-scored.
    Issue 12: Acrobot reaches -100 after 20,000 steps (IQM over 10 seeds) instead of >=75,000 (docs/benchmarks.md)."""
    groups = episode_groups[episodes]
    tied = zero_spread_rows(advantages, groups)
    if not tied.any():
        return advantages, 0
    intrinsic, _ = timestep_advantages(
        novelty(observations, episodes, k), episodes, episode_groups, gamma, scale_rewards, baseline
    )
    return np.where(tied, intrinsic, advantages), len(np.unique(groups[tied]))


ADVANTAGE_FUNCTIONS = {
    "outcome": outcome_advantages,
    "process": process_advantages,
    "timestep": timestep_advantages,
    "nearest": nearest_state_advantages,
}


def zero_spread_rows(advantages: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Rows of the groups whose advantages are all zero: they add nothing to the gradient but count in every
    mini-batch mean, so DAPO's dynamic sampling (Yu et al. 2025) leaves them out."""
    weight = np.bincount(groups, weights=np.abs(advantages), minlength=int(groups.max()) + 1)
    return weight[groups] == 0.0
