"""Statistics over seeds as rliable computes them (Agarwal et al. 2021, "Deep RL at the Edge of the Statistical
Precipice", arXiv:2108.13264), in numpy: interquartile mean (IQM), 95% stratified-bootstrap confidence intervals
and the probability of improvement, from the eval points ``benchmarks/learning.py`` and ``benchmarks/ablations.py``
write (``learning.csv``, ``ablations.csv``).

- IQM: the mean of the middle 50% of runs (rliable's ``scipy.stats.trim_mean(x, 0.25)``: a quarter cut from each
  end, fractional runs weighted).
- Stratified bootstrap: runs are resampled with replacement within each task (here one env: within the cell);
  the interval is the 2.5th and 97.5th percentiles of the statistic over the resamples (percentile method).
- Probability of improvement of X over Y: P(X better than Y) + P(equal) / 2 over all pairs of runs (the
  Mann-Whitney U statistic, normalised), averaged over tasks.
- Steps to threshold: the first eval mark (after 0) whose mean return reaches the env's threshold. A run that
  never reaches it counts as infinitely many steps in the probability of improvement and as its budget in the IQM
  (so an IQM that includes such runs is a lower bound, and the tables mark it).

    python benchmarks/aggregates.py docs/benchmarks/learning.csv --reference ppo
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/aggregates.py` from anywhere

import argparse
import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from benchmarks.hyperparams import THRESHOLDS

BOOTSTRAP_REPS = 10_000
CONFIDENCE = 0.95


def iqm(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean along ``axis``: ``scipy.stats.trim_mean(values, 0.25, axis)``."""
    values = np.sort(np.asarray(values, dtype=np.float64), axis=axis)
    n = values.shape[axis]
    cut = int(np.floor(0.25 * n))
    return np.take(values, range(cut, n - cut), axis=axis).mean(axis=axis)


def bootstrap_ci(
    values: Sequence[float], statistic: Callable[..., np.ndarray] = iqm, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of ``statistic`` over resamples of ``values`` (one task: the stratified bootstrap
    of rliable reduces to resampling the runs)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    resamples = values[rng.integers(0, len(values), size=(BOOTSTRAP_REPS, len(values)))]
    stats = statistic(resamples, axis=1)
    low, high = np.percentile(stats, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
    return float(low), float(high)


def probability_of_improvement(x: Sequence[float], y: Sequence[float], higher_is_better: bool = True) -> float:
    """P(X > Y) + P(X = Y) / 2 over all pairs of runs (``higher_is_better=False``: P(X < Y) + ...)."""
    x, y = np.asarray(x, dtype=np.float64)[:, None], np.asarray(y, dtype=np.float64)[None, :]
    better = (x > y) if higher_is_better else (x < y)
    return float(np.mean(better + 0.5 * (x == y)))


def probability_of_improvement_ci(
    x: Sequence[float], y: Sequence[float], higher_is_better: bool = True, seed: int = 0
) -> tuple[float, float]:
    """95% interval of the probability of improvement, X's and Y's runs resampled independently."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    rng = np.random.default_rng(seed)
    reps = 2_000
    xs = x[rng.integers(0, len(x), size=(reps, len(x)))]
    ys = y[rng.integers(0, len(y), size=(reps, len(y)))]
    values = [probability_of_improvement(a, b, higher_is_better) for a, b in zip(xs, ys, strict=True)]
    low, high = np.percentile(values, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
    return float(low), float(high)


# --------------------------------------------------------------------------------------------------------------
# From eval points to runs
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    algo: str
    env_id: str
    seed: int
    marks: list[int]
    returns: list[float]
    branch_steps: list[int]

    def steps_to(self, threshold: float, with_branch_steps: bool = False) -> float:
        for mark, value, branch in zip(self.marks, self.returns, self.branch_steps, strict=True):
            if mark > 0 and value >= threshold:
                return float(mark + (branch if with_branch_steps else 0))
        return np.inf

    @property
    def final_return(self) -> float:
        return self.returns[-1]

    @property
    def budget(self) -> int:
        return self.marks[-1]


def read_runs(paths: Sequence[Path], rename: dict[str, str] | None = None) -> list[Run]:
    """Runs from eval-point CSVs; ``rename`` maps an ``algo`` column value to another name (e.g. an older run)."""
    runs: dict[tuple[str, str, int], Run] = {}
    for path in paths:
        with path.open() as f:
            for row in csv.DictReader(f):
                algo = (rename or {}).get(row["algo"], row["algo"])
                key = (algo, row["env"], int(row["seed"]))
                run = runs.setdefault(key, Run(algo, row["env"], int(row["seed"]), [], [], []))
                run.marks.append(int(row["timesteps"]))
                run.returns.append(float(row["mean_return"]))
                run.branch_steps.append(int(row.get("branch_steps") or 0))
    return list(runs.values())


@dataclass(frozen=True)
class Cell:
    """One algorithm on one env, over its seeds."""

    n: int
    steps: list[float]  # inf: never reached
    steps_iqm: float
    steps_ci: tuple[float, float]
    censored: int  # runs that never reached the threshold (counted as the budget in the IQM)
    final: list[float]
    final_iqm: float
    final_ci: tuple[float, float]


def cell(runs: Sequence[Run], threshold: float, with_branch_steps: bool = False) -> Cell:
    steps = [run.steps_to(threshold, with_branch_steps) for run in runs]
    budget = max(run.budget + (run.branch_steps[-1] if with_branch_steps else 0) for run in runs)
    capped = [min(step, budget) for step in steps]
    final = [run.final_return for run in runs]
    return Cell(
        n=len(runs),
        steps=steps,
        steps_iqm=float(iqm(capped)),
        steps_ci=bootstrap_ci(capped),
        censored=int(np.sum(np.isinf(steps))),
        final=final,
        final_iqm=float(iqm(final)),
        final_ci=bootstrap_ci(final),
    )


def steps_text(c: Cell) -> str:
    bound = ">=" if c.censored else ""
    missed = f", {c.censored} of {c.n} never" if c.censored else ""
    return f"{bound}{c.steps_iqm:,.0f} [{c.steps_ci[0]:,.0f}, {c.steps_ci[1]:,.0f}]{missed}"


def final_text(c: Cell) -> str:
    return f"{c.final_iqm:.1f} [{c.final_ci[0]:.1f}, {c.final_ci[1]:.1f}]"


def poi_text(x: Cell, y: Cell, steps: bool) -> str:
    a, b = (x.steps, y.steps) if steps else (x.final, y.final)
    p = probability_of_improvement(a, b, higher_is_better=not steps)
    low, high = probability_of_improvement_ci(a, b, higher_is_better=not steps)
    return f"{p:.2f} [{low:.2f}, {high:.2f}]"


def table(
    runs: Sequence[Run],
    thresholds: dict[str, float],
    reference: str | None,
    with_branch_steps: bool = False,
    what: dict[str, str] | None = None,
) -> str:
    """A markdown table: one row per (env, algo), IQM and 95% CI of steps to threshold and of final return, and the
    probability of improvement over ``reference`` on the same env (steps: fewer is better)."""
    grouped: dict[str, dict[str, list[Run]]] = {}
    for run in runs:
        grouped.setdefault(run.env_id, {}).setdefault(run.algo, []).append(run)
    header = "| env | run | seeds | steps to threshold, IQM [95% CI] | final return, IQM [95% CI] |"
    rule = "|---|---|---|---|---|"
    if reference:
        header += f" P(fewer steps than {reference}) | P(higher final than {reference}) |"
        rule += "---|---|"
    if what:
        header += " what it tests |"
        rule += "---|"
    lines = [header, rule]
    for env_id, by_algo in grouped.items():
        cells = {algo: cell(r, thresholds[env_id], with_branch_steps) for algo, r in by_algo.items()}
        for algo, c in cells.items():
            row = f"| {env_id} | {algo} | {c.n} | {steps_text(c)} | {final_text(c)} |"
            if reference:
                ref = cells.get(reference)
                row += (
                    " - | - |"
                    if ref is None or algo == reference
                    else f" {poi_text(c, ref, True)} | {poi_text(c, ref, False)} |"
                )
            if what:
                row += f" {what.get(algo, '')} |"
            lines.append(row)
    return "\n".join(lines)


def plot_sample_efficiency(runs: Sequence[Run], path: Path, with_branch_steps: bool = False) -> None:
    """IQM of the eval return at each mark over seeds, with its 95% bootstrap band: one panel per env."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(dict.fromkeys(run.env_id for run in runs))
    fig, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 3.6), squeeze=False)
    for ax, env_id in zip(axes[0], envs, strict=True):
        by_algo: dict[str, list[Run]] = {}
        for run in runs:
            if run.env_id == env_id:
                by_algo.setdefault(run.algo, []).append(run)
        for algo, algo_runs in by_algo.items():
            length = min(len(run.marks) for run in algo_runs)
            returns = np.array([run.returns[:length] for run in algo_runs])
            offsets = np.array([run.branch_steps[:length] for run in algo_runs]) if with_branch_steps else 0
            x = (
                (np.array(algo_runs[0].marks[:length]) + np.mean(offsets, axis=0))
                if with_branch_steps
                else np.array(algo_runs[0].marks[:length])
            )
            middle = iqm(returns, axis=0)
            band = np.array([bootstrap_ci(returns[:, i]) for i in range(length)])
            ax.plot(x, middle, label=f"{algo} ({len(algo_runs)} seeds)")
            ax.fill_between(x, band[:, 0], band[:, 1], alpha=0.2)
        ax.set_title(env_id)
        ax.set_xlabel("real + branch env steps" if with_branch_steps else "env steps")
        ax.set_ylabel("eval return (IQM, 95% CI)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", nargs="+", type=Path, help="learning.csv / ablations.csv files")
    parser.add_argument("--reference", help="the run name others are compared with (e.g. ppo)")
    parser.add_argument("--rename", nargs="*", default=[], metavar="OLD=NEW", help="rename an algo column value")
    parser.add_argument("--branch-steps", action="store_true", help="count real + branch steps")
    parser.add_argument("--plot", type=Path, help="write the sample-efficiency curves here")
    args = parser.parse_args(argv)
    rename = dict(item.split("=", 1) for item in args.rename)
    runs = read_runs(args.csv, rename)
    print(table(runs, THRESHOLDS, args.reference, args.branch_steps))
    if args.plot:
        plot_sample_efficiency(runs, args.plot, args.branch_steps)


if __name__ == "__main__":
    main()
