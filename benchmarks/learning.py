"""Learning benchmark: GRPO against SB3's PPO with rl-baselines3-zoo hyperparameters, side by side.

Every (algorithm, env, seed) run trains for the env's budget and evaluates its deterministic policy each time
``num_timesteps`` crosses a multiple of the eval interval (and at the budget), on the same seeded eval episodes
for every run. It writes, under ``--out`` (default ``docs/benchmarks/``): ``learning.csv`` (every eval point),
``learning_summary.json`` (per run and per env) and ``learning_curves.png``; and the table between
``<!-- learning:start -->`` and ``<!-- learning:end -->`` in ``docs/benchmarks.md``. Runs that include
``grpo_state`` (GRPO's branching mode, ``group_mode="state"``) also write ``branching_curves.png`` (x-axis in
real steps, and in real + branch steps) and the section between ``<!-- branching:start -->`` and
``<!-- branching:end -->``; ``--sections`` chooses which sections a run rewrites.

    python benchmarks/learning.py                       # the full benchmark (hours on 2 cores)
    python benchmarks/learning.py --envs CartPole-v1 --seeds 0 --budget CartPole-v1=20000
    python benchmarks/learning.py --quick               # smoke test, writes to a temporary folder
    python benchmarks/learning.py --envs CartPole-v1 --algos grpo_state grpo ppo --sections branching \
        --out docs/benchmarks/branching --markdown docs/benchmarks.md   # branching mode, side by side

Hyperparameters live in ``benchmarks/hyperparams.py``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/learning.py` from anywhere

import argparse
import csv
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import matplotlib
import numpy as np
import stable_baselines3
import torch as th

from benchmarks import aggregates
from benchmarks.hyperparams import (  # the benchmark's settings, re-exported
    BUDGETS,
    DEFAULT_ENVS,
    EVAL_EVERY,
    HYPERPARAMS,
    SEEDS,
    THRESHOLDS,
    ZOO_BUDGETS,
)
from benchmarks.report import DEFAULT_MARKDOWN, markers, update_markdown
from benchmarks.runs import (
    ALGORITHMS,
    EVAL_EPISODES,
    EVAL_SEED,
    Job,
    RunResult,
    make_jobs,
    run_jobs,
    threshold_point,
    use_one_thread,
)
from benchmarks.runs import EvalPoint as EvalPoint  # re-exported for the tests
from benchmarks.runs import model_setup as model_setup
from benchmarks.runs import steps_to_threshold as steps_to_threshold

ALGO_LABELS = {
    "grpo": "GRPO",
    "ppo": "PPO (zoo)",
    "grpo_state": "GRPO, branching (state mode)",
    "ppo_shaped": "PPO (zoo), branching's shaped reward",
}
ALGO_COLORS = {"grpo": "C0", "ppo": "C1", "grpo_state": "C2", "ppo_shaped": "C3"}


QUICK_BUDGET = 3_000
QUICK_EVAL_EVERY = 1_000

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "benchmarks"
MARK_START, MARK_END = markers("learning")
BRANCHING_START, BRANCHING_END = markers("branching")


# --------------------------------------------------------------------------------------------------------------
# Summaries: medians over seeds, GRPO against PPO
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlgoSummary:
    n_envs: int
    budget: int
    seeds: list[int]
    final_steps: list[int]  # where the final evaluation was taken: the budget, or where a time cap cut the run
    steps_to_threshold: list[int | None]
    median_steps_to_threshold: float | None  # None: the median seed never reached the threshold
    final_returns: list[float]
    median_final_return: float
    median_steps_per_second: float
    # Real + branch env steps at the eval that reached the threshold (equal to steps_to_threshold without branches)
    total_steps_to_threshold: list[int | None]
    median_total_steps_to_threshold: float | None
    median_branch_steps_per_real_step: float


def _median_steps(steps: Sequence[int | None]) -> float | None:
    """A seed that never reaches the threshold counts as infinitely many steps; None: the median never did."""
    median = statistics.median(math.inf if s is None else s for s in steps)
    return None if math.isinf(median) else median


def summarize(runs: Sequence[RunResult]) -> AlgoSummary:
    """One algorithm on one env; a seed that never reaches the threshold counts as infinitely many steps."""
    steps = [run.steps_to_threshold for run in runs]
    reached = [threshold_point(run.points, THRESHOLDS[run.env_id]) for run in runs]
    total_steps = [None if p is None else p.timesteps + p.branch_steps for p in reached]
    return AlgoSummary(
        n_envs=runs[0].n_envs,
        budget=runs[0].budget,
        seeds=[run.seed for run in runs],
        final_steps=[run.points[-1].timesteps for run in runs],
        steps_to_threshold=steps,
        median_steps_to_threshold=_median_steps(steps),
        final_returns=[run.final_return for run in runs],
        median_final_return=statistics.median(run.final_return for run in runs),
        median_steps_per_second=statistics.median(run.steps_per_second for run in runs),
        total_steps_to_threshold=total_steps,
        median_total_steps_to_threshold=_median_steps(total_steps),
        median_branch_steps_per_real_step=statistics.median(run.branch_steps / run.num_timesteps for run in runs),
    )


def summarize_all(results: Sequence[RunResult]) -> dict[str, dict[str, AlgoSummary]]:
    """``{env_id: {algo: summary}}`` in the order the results come."""
    grouped: dict[str, dict[str, list[RunResult]]] = {}
    for run in results:
        grouped.setdefault(run.env_id, {}).setdefault(run.algo, []).append(run)
    return {env_id: {algo: summarize(runs) for algo, runs in by_algo.items()} for env_id, by_algo in grouped.items()}


def targets_met(grpo: AlgoSummary, ppo: AlgoSummary) -> dict[str, bool | None]:
    """The issue's three targets; ``None`` where the comparison says nothing (neither reached the threshold)."""
    grpo_steps, ppo_steps = grpo.median_steps_to_threshold, ppo.median_steps_to_threshold
    if grpo_steps is None and ppo_steps is None:
        steps = None
    else:
        steps = grpo_steps is not None and (ppo_steps is None or grpo_steps <= ppo_steps)
    return {
        "steps": steps,
        "final": grpo.median_final_return >= ppo.median_final_return,
        "speed": grpo.median_steps_per_second >= ppo.median_steps_per_second,
    }


# --------------------------------------------------------------------------------------------------------------
# Outputs: CSV, JSON, PNG, markdown
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunContext:
    command: str
    date: str
    revision: str
    workers: int
    machine: dict[str, Any]


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = models[0] if models else cpu
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "nproc": nproc,
        "cpu": cpu,
        "load_average_at_start": [round(load, 2) for load in os.getloadavg()],
        "python": platform.python_version(),
        "torch": th.__version__,
        "stable_baselines3": stable_baselines3.__version__,
    }


def git_revision() -> str:
    described = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return described.stdout.strip() if described.returncode == 0 else "unknown"


def write_points_csv(results: Sequence[RunResult], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        header = ["algo", "env", "seed", "timesteps", "mean_return", "std_return", "branch_steps", "train_return"]
        writer.writerow(header)
        for run in results:
            for point in run.points:
                writer.writerow(
                    [
                        run.algo,
                        run.env_id,
                        run.seed,
                        point.timesteps,
                        point.mean_return,
                        point.std_return,
                        point.branch_steps,
                        point.train_return,
                    ]
                )


def write_summary_json(
    results: Sequence[RunResult],
    summaries: dict[str, dict[str, AlgoSummary]],
    jobs: Sequence[Job],
    context: RunContext,
    path: Path,
) -> None:
    budgets = {job.env_id: job.budget for job in jobs}
    eval_every = {job.env_id: job.eval_every for job in jobs}
    envs = {
        env_id: {
            "threshold": THRESHOLDS[env_id],
            "budget": budgets[env_id],
            "eval_every": eval_every[env_id],
            **{algo: asdict(summary) for algo, summary in by_algo.items()},
            "targets_met": targets_met(by_algo["grpo"], by_algo["ppo"]) if {"grpo", "ppo"} <= by_algo.keys() else None,
        }
        for env_id, by_algo in summaries.items()
    }
    runs = [{key: value for key, value in asdict(run).items() if key != "points"} for run in results]
    hyperparams = {
        algo: {env_id: HYPERPARAMS[algo][env_id] for env_id in summaries if env_id in HYPERPARAMS[algo]}
        for algo in HYPERPARAMS
    }
    document = {**asdict(context), "eval": {"episodes": EVAL_EPISODES, "first_reset_seed": EVAL_SEED}}
    document |= {"envs": envs, "runs": runs, "hyperparams": hyperparams}
    path.write_text(json.dumps(document, indent=2) + "\n")


def draw_curves(ax: Any, results: Sequence[RunResult], env_id: str, with_branch_steps: bool = False) -> None:
    """Mean eval return over seeds, shaded from the worst seed to the best, against env steps: real ones, or
    real + branch steps (then each eval sits at the seeds' mean of that count)."""
    for algo, color in ALGO_COLORS.items():
        runs = [run for run in results if run.env_id == env_id and run.algo == algo]
        if not runs:
            continue
        steps = np.array([[p.timesteps + with_branch_steps * p.branch_steps for p in run.points] for run in runs])
        returns = np.array([[point.mean_return for point in run.points] for run in runs])
        seeds = f"{len(runs)} seed" + "s" * (len(runs) > 1)
        x = steps.mean(axis=0)
        ax.plot(x, returns.mean(axis=0), color=color, label=f"{ALGO_LABELS[algo]} ({seeds})")
        ax.fill_between(x, returns.min(axis=0), returns.max(axis=0), color=color, alpha=0.2)
    ax.axhline(THRESHOLDS[env_id], color="gray", linestyle="--", linewidth=1, label="threshold")
    ax.set_title(env_id)
    ax.set_xlabel("real + branch env steps" if with_branch_steps else "env steps")
    ax.set_ylabel(f"mean return ({EVAL_EPISODES} eval episodes)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")


def plot_curves(results: Sequence[RunResult], path: Path) -> None:
    """One subplot per env: mean eval return over seeds, shaded from the worst seed to the best."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(dict.fromkeys(run.env_id for run in results))
    ncols = min(2, len(envs))
    nrows = math.ceil(len(envs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 4 * nrows), squeeze=False)
    for ax, env_id in zip(axes.flat, envs, strict=False):
        draw_curves(ax, results, env_id)
    for ax in list(axes.flat)[len(envs) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_branching_curves(results: Sequence[RunResult], path: Path) -> None:
    """One row per env that ran branching mode: returns against real steps, and against real + branch steps."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(dict.fromkeys(run.env_id for run in results if run.algo == "grpo_state"))
    fig, axes = plt.subplots(len(envs), 2, figsize=(12, 4 * len(envs)), squeeze=False)
    for row, env_id in zip(axes, envs, strict=True):
        draw_curves(row[0], results, env_id)
        draw_curves(row[1], results, env_id, with_branch_steps=True)
        # Branching runs go on far past the others in env steps: show where they can be compared.
        budget = max(run.budget for run in results if run.env_id == env_id)
        row[1].set_xlim(0, 2 * budget)
        row[1].set_xlabel(f"real + branch env steps (up to twice the budget of {budget:,} real steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _steps(value: float | None) -> str:
    return "never" if value is None else f"{value:,.0f}"


def _steps_cell(summary: AlgoSummary | None) -> str:
    if summary is None:
        return "-"
    per_seed = " / ".join(_steps(s) for s in summary.steps_to_threshold)
    return f"{_steps(summary.median_steps_to_threshold)} ({per_seed})"


def _final_cell(summary: AlgoSummary | None) -> str:
    if summary is None:
        return "-"
    per_seed = " / ".join(f"{r:.1f}" for r in summary.final_returns)
    short = [steps for steps in summary.final_steps if steps < summary.budget]
    cut = f"; time cap: at {min(short):,}-{max(short):,} steps" if short else ""
    return f"{summary.median_final_return:.1f} ({per_seed}{cut})"


def _speed_cell(summary: AlgoSummary | None) -> str:
    return "-" if summary is None else f"{summary.median_steps_per_second:,.0f}"


def _targets_cell(grpo: AlgoSummary | None, ppo: AlgoSummary | None) -> str:
    if grpo is None or ppo is None:
        return "n/a (one algorithm)"
    words = {True: "yes", False: "no", None: "n/a"}
    return ", ".join(f"{name} {words[met]}" for name, met in targets_met(grpo, ppo).items())


def markdown_table(summaries: dict[str, dict[str, AlgoSummary]], budgets: dict[str, int]) -> str:
    header = (
        "| Env (threshold) | Budget | n_envs GRPO / PPO | Steps to threshold, GRPO | Steps to threshold, PPO "
        "| Final return, GRPO | Final return, PPO | Steps/s, GRPO | Steps/s, PPO | Target met |"
    )
    rows = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for env_id, by_algo in summaries.items():
        grpo, ppo = by_algo.get("grpo"), by_algo.get("ppo")
        n_envs = " / ".join("-" if s is None else str(s.n_envs) for s in (grpo, ppo))
        rows.append(
            f"| {env_id} ({THRESHOLDS[env_id]:g}) | {budgets[env_id]:,} | {n_envs} "
            f"| {_steps_cell(grpo)} | {_steps_cell(ppo)} | {_final_cell(grpo)} | {_final_cell(ppo)} "
            f"| {_speed_cell(grpo)} | {_speed_cell(ppo)} | {_targets_cell(grpo, ppo)} |"
        )
    return "\n".join(rows)


def markdown_section(
    summaries: dict[str, dict[str, AlgoSummary]],
    budgets: dict[str, int],
    eval_every: dict[str, int],
    context: RunContext,
    curves: str,
    statistics_table: str = "",
) -> str:
    machine = context.machine
    budget_notes = ", ".join(
        f"{env_id} {budgets[env_id]:,} (zoo {ZOO_BUDGETS[env_id]:,}, eval every {eval_every[env_id]:,})"
        for env_id in summaries
    )
    return f"""{MARK_START}
## Learning: GRPO against PPO with rl-baselines3-zoo hyperparameters

Generated by `benchmarks/learning.py` on {context.date} at revision `{context.revision}`, on {machine["nproc"]} \
CPU cores ({machine["cpu"]}; load average {machine["load_average_at_start"][0]} at start), Python \
{machine["python"]}, torch {machine["torch"]}, Stable-Baselines3 {machine["stable_baselines3"]}; \
{context.workers} runs in parallel, one torch thread each. Reproduce with:

    {context.command}

{markdown_table(summaries, budgets)}

The same runs as rliable reports them (`benchmarks/aggregates.py`): IQM over seeds, 95% stratified-bootstrap \
confidence interval, probability of improvement over PPO (steps: fewer is better; a run that never reaches the \
threshold counts as its budget in the IQM, marked `>=`, and as infinitely many steps in the probability).

{statistics_table}

- Each cell of the first table: the median over seeds, then every seed's value in parentheses. **Steps to \
threshold**: env steps at the first evaluation whose mean return is at or above the threshold ("never": not \
within the budget; a seed that never gets there counts as infinitely many steps in the median), so its \
resolution is the eval interval. **Final return**: the evaluation at the budget. **Steps/s**: env steps over \
`learn()`'s wall time minus the time spent evaluating.
- Evaluation: the deterministic policy on {EVAL_EPISODES} episodes reset with seeds {EVAL_SEED} to \
{EVAL_SEED + EVAL_EPISODES - 1}, the same for every algorithm, seed and eval point, each time `num_timesteps` \
crosses a multiple of the eval interval and at the budget (plus the untrained policy at 0, drawn in the curves \
but not counted as reaching the threshold). Where an env is normalised (VecNormalize), the eval \
env uses the training statistics frozen, and returns are the raw episode returns.
- **Target met** (issue 2): steps = GRPO's median steps to threshold at most PPO's; final = GRPO's median final \
return at least PPO's; speed = GRPO's median steps/s at least PPO's.
- Budgets: {budget_notes}. They are below the zoo's `n_timesteps` where noted, for time on a small CPU; \
PPO's linear schedules (`lin_`) decay over the budget used here, as in the zoo with `-n`.
- Hyperparameters: PPO: rl-baselines3-zoo `hyperparams/ppo.yml` verbatim (`benchmarks/hyperparams.py`); GRPO: \
its presets, `hyperparams/grpo.yml` (the same file the service reads). A run cut by `--max-minutes` is evaluated \
where it got to, and its final return says at how many steps.

![Learning curves: mean over seeds, band from the worst to the best seed]({curves})
{MARK_END}"""


def _total_cell(summary: AlgoSummary) -> str:
    per_seed = " / ".join(_steps(s) for s in summary.total_steps_to_threshold)
    return f"{_steps(summary.median_total_steps_to_threshold)} ({per_seed})"


def branching_table(summaries: dict[str, dict[str, AlgoSummary]], budgets: dict[str, int]) -> str:
    header = (
        "| Env (threshold) | Budget (real steps) | Algorithm | Real steps to threshold "
        "| Real + branch steps to threshold | Final return | Branch steps per real step | Real steps/s |"
    )
    rows = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for env_id, by_algo in summaries.items():
        if "grpo_state" not in by_algo:
            continue
        for algo in ("grpo_state", "grpo", "ppo"):
            summary = by_algo.get(algo)
            if summary is None:
                continue
            rows.append(
                f"| {env_id} ({THRESHOLDS[env_id]:g}) | {budgets[env_id]:,} | {ALGO_LABELS[algo]} "
                f"| {_steps_cell(summary)} | {_total_cell(summary)} | {_final_cell(summary)} "
                f"| {summary.median_branch_steps_per_real_step:.1f} | {_speed_cell(summary)} |"
            )
    return "\n".join(rows)


def branching_verdicts(summaries: dict[str, dict[str, AlgoSummary]]) -> str:
    """One line per env: branching against PPO, in real steps and in all env steps."""
    lines = []
    for env_id, by_algo in summaries.items():
        state, ppo = by_algo.get("grpo_state"), by_algo.get("ppo")
        if state is None or ppo is None:
            continue
        reward = HYPERPARAMS["grpo_state"][env_id].get("reward_function")
        scoring = (
            ""
            if reward is None
            else f" Branching scores its branches with `{reward}`, PPO learns from the env's own reward; both are "
            "evaluated on the env's return."
        )
        real, total, ppo_steps = (
            state.median_steps_to_threshold,
            state.median_total_steps_to_threshold,
            ppo.median_steps_to_threshold,
        )
        if real is None or ppo_steps is None or total is None:
            lines.append(
                f"- {env_id}: median real steps to the threshold, branching {_steps(real)}, PPO "
                f"{_steps(ppo_steps)}.{scoring}"
            )
            continue
        slowest = max(math.inf if s is None else s for s in state.steps_to_threshold)
        met = "met" if slowest <= ppo_steps else "not met"
        slowest_cell = _steps(None if math.isinf(slowest) else slowest)
        lines.append(
            f"- {env_id}: branching reached {THRESHOLDS[env_id]:g} after a median {_steps(real)} real steps, "
            f"against PPO's {_steps(ppo_steps)} ({ppo_steps / real:.1f}x as many); counting its branch steps it "
            f"took {_steps(total)} env steps, {total / ppo_steps:.1f}x PPO's. Every seed at the threshold in no "
            f"more real steps than PPO's median: {met} (slowest seed {slowest_cell}).{scoring}"
        )
    return "\n".join(lines)


def branching_section(
    summaries: dict[str, dict[str, AlgoSummary]],
    budgets: dict[str, int],
    eval_every: dict[str, int],
    context: RunContext,
    curves: str,
) -> str:
    machine = context.machine
    branching_envs = [env_id for env_id, by_algo in summaries.items() if "grpo_state" in by_algo]
    intervals = ", ".join(f"{env_id}: every {eval_every[env_id]:,}" for env_id in branching_envs)
    return f"""{BRANCHING_START}
## Branching mode: groups of actions tried from one state

`GRPO(..., group_mode="state")` forks the environment at the states it visits, tries a group of actions there \
(every action of a Discrete space), lets each branch follow the policy for `lookahead` steps and z-scores the \
branches' returns within the group. Generated by `benchmarks/learning.py` on {context.date} at revision \
`{context.revision}`, on {machine["nproc"]} CPU cores ({machine["cpu"]}; load average \
{machine["load_average_at_start"][0]} at start); {context.workers} runs in parallel, one torch thread each. \
Reproduce with:

    {context.command}

{branching_table(summaries, budgets)}

- Each cell: the median over seeds, then every seed's value. **Real steps** are `num_timesteps`, the steps of \
the trajectory the agent really lives; **branch steps** (`num_branch_steps`, logged as `rollout/branch_steps`) \
are the steps taken in forks, never counted in `num_timesteps`. **Real + branch steps to threshold**: both, up \
to the first evaluation at or above the threshold. **Real steps/s**: real steps over training wall time; a \
branching run spends most of that time on its branches. Evaluation as in the learning section (same eval \
episodes; {intervals} real steps): steps to threshold are only as fine as that interval, and a run that is \
there at its first evaluation may have been there sooner. Settings in `benchmarks/hyperparams.py` (`GRPO_STATE`).

{branching_verdicts(summaries)}

**When branching pays off.** A group of actions tried from one state differs only by those actions, so its \
spread is their effect alone, without the noise of different starts or of the policy's other choices, and every \
visited state yields a comparison. Learning per real step is then fast, provided (1) the environment can be \
forked: deep-copied, or saving and restoring its state with `get_state()`/`set_state()`, which a simulator allows \
and the real world does not; (2) the reward tells the actions apart within the lookahead. A dense shaped reward \
such as `optimized_cartpole` does once the push has reached the pole angle (CartPole's Euler step moves the \
angle with the previous angular velocity, so `lookahead=0` gives exactly zero advantage; the default 4 leaves a \
margin); a reward that only differs at failure or success (CartPole's +1 per step, Acrobot's -1 per step until \
the goal) carries signal only where a branch fails or succeeds inside the lookahead, which is why the Acrobot \
runs here score their branches by the tip's height (`acrobot_height`); and (3) the group is small: \
each branch point costs up to group size x (1 + lookahead) env steps, as the "Branch steps per real step" column \
shows. So branching pays where real steps are what is scarce and forks of a simulator are cheap (a costly real \
system with a model of it, a fixed interaction budget); where every env step costs the same, the real + branch \
column is the fair comparison.

![Returns against real steps (left) and real + branch steps (right): mean over seeds, band from worst to best]\
({curves})
{BRANCHING_END}"""


# --------------------------------------------------------------------------------------------------------------
# The benchmark and its command line
# --------------------------------------------------------------------------------------------------------------


def default_sections(algos: Sequence[str]) -> list[str]:
    """The markdown sections a run rewrites: the learning table compares episode-mode GRPO with PPO, so a run of
    branching mode without ``grpo`` leaves it alone."""
    sections = ["learning"] if "grpo" in algos or "grpo_state" not in algos else []
    return sections + ["branching"] * ("grpo_state" in algos)


def benchmark(
    jobs: Sequence[Job],
    workers: int,
    out_dir: Path,
    markdown: Path,
    command: str,
    sections: Sequence[str] | None = None,
) -> list[RunResult]:
    """Run the jobs and write every output, rewriting ``sections`` of the markdown (default: see
    :func:`default_sections`); returns the runs."""
    context = RunContext(
        command=command,
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        revision=git_revision(),
        workers=workers,
        machine=machine_info(),
    )
    results = run_jobs(jobs, workers)
    summaries = summarize_all(results)
    budgets = {job.env_id: job.budget for job in jobs}
    eval_every = {job.env_id: job.eval_every for job in jobs}

    out_dir.mkdir(parents=True, exist_ok=True)
    curves = out_dir / "learning_curves.png"
    write_points_csv(results, out_dir / "learning.csv")
    write_summary_json(results, summaries, jobs, context, out_dir / "learning_summary.json")
    plot_curves(results, curves)
    runs = aggregates.read_runs([out_dir / "learning.csv"])
    statistics_table = aggregates.table(runs, THRESHOLDS, "ppo" if "ppo" in {job.algo for job in jobs} else None)
    aggregates.plot_sample_efficiency(runs, out_dir / "sample_efficiency.png")
    print(f"\n{statistics_table}")
    sections = default_sections({job.algo for job in jobs}) if sections is None else sections
    if "learning" in sections:
        section = markdown_section(summaries, budgets, eval_every, context, link(curves, markdown), statistics_table)
        update_markdown(markdown, section, MARK_START, MARK_END)
        print(f"\n{markdown_table(summaries, budgets)}")
    if "branching" in sections:
        branching_curves = out_dir / "branching_curves.png"
        plot_branching_curves(results, branching_curves)
        section = branching_section(summaries, budgets, eval_every, context, link(branching_curves, markdown))
        update_markdown(markdown, section, BRANCHING_START, BRANCHING_END)
        print(f"\n{branching_table(summaries, budgets)}\n\n{branching_verdicts(summaries)}")
    print(f"\nWrote {out_dir}/learning.csv, learning_summary.json, the curves and {markdown}")
    return results


def link(target: Path, markdown: Path) -> str:
    """``target`` as a relative link from ``markdown``."""
    return Path(os.path.relpath(target.resolve(), markdown.resolve().parent)).as_posix()


def env_override(text: str) -> tuple[str | None, int]:
    """``ENV=N`` for one env, or a bare ``N`` for every env; N may be written 1e5."""
    env_id, _, value = text.rpartition("=")
    if env_id and env_id not in THRESHOLDS:
        raise argparse.ArgumentTypeError(f"unknown env {env_id!r}; known: {', '.join(THRESHOLDS)}")
    try:
        number = int(float(value))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not ENV=N or N") from error
    return env_id or None, number


def resolve(defaults: dict[str, int], overrides: Sequence[tuple[str | None, int]]) -> dict[str, int]:
    values = dict(defaults)
    for env_id, number in overrides:
        values |= {env_id: number} if env_id else dict.fromkeys(values, number)
    return values


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--envs", nargs="+", choices=list(THRESHOLDS), help=f"default: {' '.join(DEFAULT_ENVS)} (quick: CartPole-v1)"
    )
    parser.add_argument("--algos", nargs="+", choices=list(ALGORITHMS), default=list(ALGORITHMS))
    parser.add_argument("--seeds", nargs="+", type=int, help="for every env (default: 0-4, LunarLander and MuJoCo 0)")
    parser.add_argument(
        "--budget",
        nargs="+",
        type=env_override,
        default=[],
        action="extend",
        metavar="ENV=N",
        help=f"env steps per run, e.g. CartPole-v1=20000 (default: {BUDGETS})",
    )
    parser.add_argument(
        "--eval-every",
        nargs="+",
        type=env_override,
        default=[],
        action="extend",
        metavar="[ENV=]N",
        help=f"eval interval in env steps, for all envs or one (default: {EVAL_EVERY})",
    )
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel, one process each (default: 2)")
    parser.add_argument(
        "--max-minutes",
        type=float,
        help="wall-clock cap on each run's training; a capped run is evaluated where it got to, and the table says so",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: CartPole-v1, seed 0, {QUICK_BUDGET:,} steps, eval every {QUICK_EVAL_EVERY:,}; "
        "writes to a temporary folder unless --out is given",
    )
    parser.add_argument("--out", type=Path, help=f"folder for the CSV, JSON and PNG (default: {DEFAULT_OUT})")
    parser.add_argument(
        "--markdown",
        type=Path,
        help=f"file whose sections are rewritten (default: {DEFAULT_MARKDOWN}, or OUT/benchmarks.md with --out)",
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=["learning", "branching"],
        help="markdown sections to rewrite (default: learning, unless the run has grpo_state but not grpo; "
        "branching, when the run has grpo_state)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    envs = args.envs or (["CartPole-v1"] if args.quick else list(DEFAULT_ENVS))
    if args.quick:
        budgets = resolve(dict.fromkeys(THRESHOLDS, QUICK_BUDGET), args.budget)
        eval_every = resolve(dict.fromkeys(THRESHOLDS, QUICK_EVAL_EVERY), args.eval_every)
        seeds = dict.fromkeys(THRESHOLDS, args.seeds or [0])
        out_dir = args.out or Path(tempfile.mkdtemp(prefix="grpo-learning-"))
    else:
        budgets = resolve(BUDGETS, args.budget)
        eval_every = resolve(EVAL_EVERY, args.eval_every)
        seeds = dict.fromkeys(THRESHOLDS, args.seeds) if args.seeds else dict(SEEDS)
        out_dir = args.out or DEFAULT_OUT
    markdown = args.markdown or (DEFAULT_MARKDOWN if out_dir.resolve() == DEFAULT_OUT else out_dir / "benchmarks.md")

    max_seconds = None if args.max_minutes is None else 60 * args.max_minutes
    jobs = make_jobs(envs, args.algos, seeds, budgets, eval_every, max_seconds)
    workers = min(args.workers, len(jobs))
    if workers <= 1:
        use_one_thread()
    print(f"{len(jobs)} runs, {workers} at a time; writing to {out_dir} and {markdown}", flush=True)
    command = shlex.join(["python", "benchmarks/learning.py", *argv])
    benchmark(jobs, workers, out_dir, markdown, command, args.sections)


if __name__ == "__main__":
    main()
