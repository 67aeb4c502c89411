"""Ablations of GRPO's options (issue 12): one row per idea, each the benchmark's run with one change, >= 3 seeds.

Every cell trains the algorithm's benchmark entry (``hyperparams/grpo.yml`` for ``grpo``, ``GRPO_STATE`` for
``grpo_state``) with the cell's constructor arguments on top, and is evaluated as ``benchmarks/learning.py``
evaluates (same eval episodes, same marks). Writes ``ablations.csv`` (every eval point, the ``algo`` column naming
the cell) under ``--out``; ``benchmarks/statistics.py`` turns it into the table.

    python benchmarks/ablations.py --out docs/benchmarks/ablations            # every cell, seeds 0 1 2
    python benchmarks/ablations.py --cells dynamic_sampling --seeds 0 1 2 3 4 --out /tmp/ablations
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/ablations.py` from anywhere

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stable_baselines3.common.utils import LinearSchedule
from torch import nn

from benchmarks.hyperparams import EVAL_EVERY
from benchmarks.learning import write_points_csv
from benchmarks.runs import Job, run_jobs, use_one_thread


@dataclass(frozen=True)
class Cell:
    algo: str
    env_id: str
    overrides: dict[str, Any]
    what: str  # the idea the row tests, for the table
    budget: int = 50_000


CELLS: dict[str, Cell] = {
    "defaults": Cell(
        "grpo", "CartPole-v1", {}, "the preset as it stands (timestep advantage, scaled by the returns' std)"
    ),
    "scale_none": Cell("grpo", "CartPole-v1", {"scale_rewards": "none"}, "no std division (Dr. GRPO)"),
    "scale_batch": Cell("grpo", "CartPole-v1", {"scale_rewards": "batch"}, "one std over the batch's returns"),
    "leave_one_out": Cell("grpo", "CartPole-v1", {"baseline": "leave_one_out"}, "RLOO baseline"),
    "dynamic_sampling": Cell("grpo", "CartPole-v1", {"dynamic_sampling": True}, "flat groups' rows dropped (DAPO)"),
    "proximal_policy": Cell("grpo", "CartPole-v1", {"proximal_policy": True}, "clip centred on the proximal policy"),
    "group_8": Cell("grpo", "CartPole-v1", {"group_size": 8}, "groups of 8: twice as many updates"),
    "group_4": Cell("grpo", "CartPole-v1", {"group_size": 4}, "groups of 4: four times as many updates"),
    "acrobot_group_8": Cell("grpo", "Acrobot-v1", {"group_size": 8}, "Acrobot: groups of 8", 100_000),
    "pendulum_n_steps_256": Cell(
        "grpo", "Pendulum-v1", {"n_steps": 256}, "Pendulum: an update per 1,024 steps, not 4,096", 100_000
    ),
    "lockstep_16": Cell("grpo", "CartPole-v1", {"n_envs": 16}, "16 envs, one per member: groups run in lockstep"),
    "lr_1e-3": Cell("grpo", "CartPole-v1", {"learning_rate": 1e-3}, "learning rate 1e-3 (PPO zoo's)"),
    "acrobot_defaults": Cell("grpo", "Acrobot-v1", {}, "Acrobot: the preset as it stands", 100_000),
    "acrobot_dynamic_sampling": Cell(
        "grpo", "Acrobot-v1", {"dynamic_sampling": True}, "Acrobot: flat groups' rows dropped (DAPO)", 100_000
    ),
    "acrobot_proximal_policy": Cell(
        "grpo", "Acrobot-v1", {"proximal_policy": True}, "Acrobot: clip centred on the proximal policy", 100_000
    ),
    "acrobot_leave_one_out": Cell("grpo", "Acrobot-v1", {"baseline": "leave_one_out"}, "Acrobot: RLOO", 100_000),
    "pendulum_defaults": Cell("grpo", "Pendulum-v1", {}, "Pendulum: the preset as it stands", 100_000),
    "pendulum_group_4": Cell("grpo", "Pendulum-v1", {"group_size": 4}, "Pendulum: groups of 4", 100_000),
    "pendulum_group_16": Cell("grpo", "Pendulum-v1", {"group_size": 16}, "Pendulum: groups of 16", 100_000),
    "pendulum_scale_none": Cell(
        "grpo", "Pendulum-v1", {"scale_rewards": "none"}, "Pendulum: no std division (Dr. GRPO)", 100_000
    ),
    "pendulum_nearest": Cell(
        "grpo", "Pendulum-v1", {"advantage": "nearest"}, "Pendulum: baseline from the 16 nearest states", 100_000
    ),
    "pendulum_n_steps_512": Cell(
        "grpo", "Pendulum-v1", {"n_steps": 512}, "Pendulum: an update per 2,048 steps, not 4,096", 100_000
    ),
    "pendulum_nearest_group_4": Cell("grpo", "Pendulum-v1", {"group_size": 4}, "Pendulum: groups of 4", 100_000),
    "pendulum_n_steps_512_group_4": Cell(
        "grpo", "Pendulum-v1", {"n_steps": 512, "group_size": 4}, "Pendulum: both of the above", 100_000
    ),
    "pendulum_n_steps_256_group_4": Cell(
        "grpo",
        "Pendulum-v1",
        {"n_steps": 256, "group_size": 4},
        "Pendulum: an update per 1,024 steps, groups of 4",
        100_000,
    ),
    "pendulum_mask_truncated": Cell(
        "grpo", "Pendulum-v1", {"mask_truncated": True}, "Pendulum: the time limit's tails masked", 100_000
    ),
    "mask_truncated": Cell("grpo", "CartPole-v1", {"mask_truncated": True}, "the time limit's tails masked"),
    "acrobot_mask_truncated": Cell(
        "grpo", "Acrobot-v1", {"mask_truncated": True}, "Acrobot: the time limit's tails masked", 100_000
    ),
    # MuJoCo pilots at 300k steps (a 1M run takes 5-10 minutes a seed here): which advantage to run at 1M.
    "halfcheetah_defaults": Cell("grpo", "HalfCheetah-v5", {}, "HalfCheetah: the preset", 300_000),
    "halfcheetah_nearest": Cell(
        "grpo", "HalfCheetah-v5", {"advantage": "nearest"}, "HalfCheetah: nearest-state baseline", 300_000
    ),
    "halfcheetah_nearest_mask": Cell(
        "grpo",
        "HalfCheetah-v5",
        {"advantage": "nearest", "mask_truncated": True},
        "HalfCheetah: nearest-state baseline, time limit's tails masked",
        300_000,
    ),
    # HalfCheetah at 1M (issue 12, round three): one change each to the preset, whose 125 updates of 8,000 rows
    # (every episode lasts 1,000 steps) take ~20k gradient steps where PPO's zoo entry takes ~310k.
    "halfcheetah_1m": Cell("grpo", "HalfCheetah-v5", {}, "HalfCheetah at 1M: the preset", 1_000_000),
    "halfcheetah_epochs_20": Cell(
        "grpo", "HalfCheetah-v5", {"n_epochs": 20}, "HalfCheetah at 1M: 20 epochs, not 10", 1_000_000
    ),
    "halfcheetah_batch_256": Cell(
        "grpo", "HalfCheetah-v5", {"batch_size": 256}, "HalfCheetah at 1M: minibatches of 256, not 512", 1_000_000
    ),
    "halfcheetah_gamma_0.98": Cell(
        "grpo",
        "HalfCheetah-v5",
        {"gamma": 0.98},
        "HalfCheetah at 1M: gamma 0.98 (the zoo's; 114 masked tail steps, not 230)",
        1_000_000,
    ),
    "halfcheetah_log_std_-2": Cell(
        "grpo",
        "HalfCheetah-v5",
        {"policy_kwargs": {"log_std_init": -2, "net_arch": [256, 256]}},
        "HalfCheetah at 1M: initial action std 0.14, not 0.37 (the zoo's)",
        1_000_000,
    ),
    "halfcheetah_envs_4_group_4": Cell(
        "grpo",
        "HalfCheetah-v5",
        {"n_envs": 4, "group_size": 4},
        "HalfCheetah at 1M: 4 envs, groups of 4 (an update per 4,000 steps, not 8,000)",
        1_000_000,
    ),
    "halfcheetah_envs_4_group_4_gamma_0.98": Cell(
        "grpo",
        "HalfCheetah-v5",
        {"n_envs": 4, "group_size": 4, "gamma": 0.98},
        "HalfCheetah at 1M: 4 envs, groups of 4, gamma 0.98 (the two that helped, together)",
        1_000_000,
    ),
    "halfcheetah_envs_2_group_2_gamma_0.98": Cell(
        "grpo",
        "HalfCheetah-v5",
        {"n_envs": 2, "group_size": 2, "gamma": 0.98},
        "HalfCheetah at 1M: 2 envs, groups of 2 (an update per 2,000 steps), gamma 0.98",
        1_000_000,
    ),
    "halfcheetah_envs_4_group_4_gamma_0.95": Cell(
        "grpo",
        "HalfCheetah-v5",
        {"n_envs": 4, "group_size": 4, "gamma": 0.95},
        "HalfCheetah at 1M: 4 envs, groups of 4, gamma 0.95 (45 masked tail steps)",
        1_000_000,
    ),
    "halfcheetah_envs_4_group_4_gamma_0.98_lr_6e-4": Cell(
        "grpo",
        "HalfCheetah-v5",
        {"n_envs": 4, "group_size": 4, "gamma": 0.98, "learning_rate": 6e-4},
        "HalfCheetah at 1M: 4 envs, groups of 4, gamma 0.98, learning rate 6e-4",
        1_000_000,
    ),
    "halfcheetah_gae_0.95": Cell(
        "grpo",
        "HalfCheetah-v5",
        {"gae_lambda": 0.95},
        "HalfCheetah at 1M: returns bootstrapped from the nearest states' values, lambda 0.95",
        1_000_000,
    ),
    "halfcheetah_gae_0.9": Cell(
        "grpo",
        "HalfCheetah-v5",
        {"gae_lambda": 0.9},
        "HalfCheetah at 1M: returns bootstrapped from the nearest states' values, lambda 0.9",
        1_000_000,
    ),
    "halfcheetah_gae_0.95_envs_4_group_4": Cell(
        "grpo",
        "HalfCheetah-v5",
        {"gae_lambda": 0.95, "n_envs": 4, "group_size": 4},
        "HalfCheetah at 1M: the preset now (gae_lambda 0.95) with 4 envs, groups of 4",
        1_000_000,
    ),
    "halfcheetah_gae_0.95_envs_4_group_4_gamma_0.98": Cell(
        "grpo",
        "HalfCheetah-v5",
        {"gae_lambda": 0.95, "n_envs": 4, "group_size": 4, "gamma": 0.98},
        "HalfCheetah at 1M: the preset now (gae_lambda 0.95) with 4 envs, groups of 4, gamma 0.98",
        1_000_000,
    ),
    "halfcheetah_preset_epochs_20": Cell(
        "grpo", "HalfCheetah-v5", {"n_epochs": 20}, "HalfCheetah at 1M: the preset with 20 epochs, not 10", 1_000_000
    ),
    "halfcheetah_preset_lr_lin_6e-4": Cell(
        "grpo",
        "HalfCheetah-v5",
        {"learning_rate": LinearSchedule(6e-4, 0.0, 1.0)},
        "HalfCheetah at 1M: the preset with a learning rate from 6e-4 down to 0 (3e-4 on average)",
        1_000_000,
    ),
    "halfcheetah_preset_gae_0.9": Cell(
        "grpo", "HalfCheetah-v5", {"gae_lambda": 0.9}, "HalfCheetah at 1M: the preset with gae_lambda 0.9", 1_000_000
    ),
    "halfcheetah_preset_gae_0.8": Cell(
        "grpo", "HalfCheetah-v5", {"gae_lambda": 0.8}, "HalfCheetah at 1M: the preset with gae_lambda 0.8", 1_000_000
    ),
    "halfcheetah_preset_epochs_5": Cell(
        "grpo", "HalfCheetah-v5", {"n_epochs": 5}, "HalfCheetah at 1M: the preset with 5 epochs, not 10", 1_000_000
    ),
    "halfcheetah_preset_clip_0.1": Cell(
        "grpo", "HalfCheetah-v5", {"clip_range": 0.1}, "HalfCheetah at 1M: the preset with clip range 0.1", 1_000_000
    ),
    "halfcheetah_preset_log_std_-2": Cell(
        "grpo",
        "HalfCheetah-v5",
        {"policy_kwargs": {"log_std_init": -2, "net_arch": [256, 256]}},
        "HalfCheetah at 1M: the preset with initial action std 0.14 (the zoo's), not 0.37",
        1_000_000,
    ),
    "halfcheetah_preset_log_std_-1.5": Cell(
        "grpo",
        "HalfCheetah-v5",
        {"policy_kwargs": {"log_std_init": -1.5, "net_arch": [256, 256]}},
        "HalfCheetah at 1M: the preset with initial action std 0.22, not 0.37",
        1_000_000,
    ),
    "halfcheetah_preset_envs_2_group_2": Cell(
        "grpo",
        "HalfCheetah-v5",
        {"n_envs": 2, "group_size": 2},
        "HalfCheetah at 1M: the preset with 2 envs and groups of 2 (an update per 2,000 steps, not 4,000)",
        1_000_000,
    ),
    "halfcheetah_preset_batch_1024": Cell(
        "grpo",
        "HalfCheetah-v5",
        {"batch_size": 1024},
        "HalfCheetah at 1M: the preset with minibatches of 1,024",
        1_000_000,
    ),
    "halfcheetah_preset_clip_high_0.28": Cell(
        "grpo",
        "HalfCheetah-v5",
        {"clip_range_high": 0.28},
        "HalfCheetah at 1M: the preset with DAPO's clip-higher (upper clip 0.28)",
        1_000_000,
    ),
    # Round five: the nearest states' values corrected along a linear fit of the rollout's returns (nearest_fit).
    # The fit went into HalfCheetah's preset, so the first cell now trains the preset as it stands and the second
    # round four's preset, the row it is compared with.
    "halfcheetah_preset_nearest_fit_linear": Cell(
        "grpo",
        "HalfCheetah-v5",
        {"nearest_fit": "linear"},
        "HalfCheetah at 1M: the preset with the neighbours' returns carried along a linear fit (nearest_fit)",
        1_000_000,
    ),
    "halfcheetah_preset_nearest_fit_none": Cell(
        "grpo",
        "HalfCheetah-v5",
        {"nearest_fit": "none"},
        "HalfCheetah at 1M: round four's preset, the neighbours' plain mean (nearest_fit='none')",
        1_000_000,
    ),
    "hopper_nearest_fit_linear": Cell(
        "grpo", "Hopper-v5", {"nearest_fit": "linear"}, "Hopper at 1M: the preset with nearest_fit='linear'", 1_000_000
    ),
    "pendulum_nearest_fit_linear": Cell(
        "grpo", "Pendulum-v1", {"nearest_fit": "linear"}, "Pendulum: the preset with nearest_fit='linear'", 100_000
    ),
    "lunarlander_nearest_fit_linear": Cell(
        "grpo",
        "LunarLander-v3",
        {"nearest_fit": "linear"},
        "LunarLander: the preset with nearest_fit='linear'",
        1_000_000,
    ),
    "halfcheetah_preset_envs_8_group_8": Cell(
        "grpo",
        "HalfCheetah-v5",
        {"n_envs": 8, "group_size": 8},
        "HalfCheetah at 1M: the preset with 8 envs and groups of 8 (an update per 8,000 steps, gamma 0.98 kept)",
        1_000_000,
    ),
    "hopper_gae_0.95": Cell(
        "grpo",
        "Hopper-v5",
        {"gae_lambda": 0.95},
        "Hopper at 1M: returns bootstrapped from the nearest states' values, lambda 0.95",
        1_000_000,
    ),
    "halfcheetah_relu": Cell(
        "grpo",
        "HalfCheetah-v5",
        {"policy_kwargs": {"log_std_init": -1, "net_arch": [256, 256], "activation_fn": nn.ReLU, "ortho_init": False}},
        "HalfCheetah at 1M: ReLU, no orthogonal init (the zoo's PPO network)",
        1_000_000,
    ),
    "hopper_defaults": Cell("grpo", "Hopper-v5", {}, "Hopper: the preset", 300_000),
    "hopper_nearest_mask": Cell(
        "grpo",
        "Hopper-v5",
        {"advantage": "nearest", "mask_truncated": True},
        "Hopper: nearest-state baseline, time limit's tails masked",
        300_000,
    ),
    "lunarlander_nearest_mask": Cell(
        "grpo",
        "LunarLander-v3",
        {"advantage": "nearest", "mask_truncated": True},
        "LunarLander: nearest-state baseline, time limit's tails masked",
        300_000,
    ),
    "lunarlander_nearest_mask_gamma_0.99": Cell(
        "grpo",
        "LunarLander-v3",
        {"advantage": "nearest", "mask_truncated": True, "gamma": 0.99},
        "LunarLander: nearest-state baseline, tails masked, gamma 0.99 (returns-to-go over ~100 steps, not ~1,000)",
        300_000,
    ),
    "lunarlander_1m": Cell(
        "grpo",
        "LunarLander-v3",
        {"advantage": "nearest", "mask_truncated": True, "gamma": 0.99},
        "LunarLander at the zoo's 1M steps: nearest-state baseline, tails masked, gamma 0.99",
        1_000_000,
    ),
    "lunarlander_gamma_0.99": Cell("grpo", "LunarLander-v3", {"gamma": 0.99}, "LunarLander: gamma 0.99", 300_000),
    "acrobot_novelty": Cell(
        "grpo",
        "Acrobot-v1",
        {"tie_break": "novelty"},
        "Acrobot: groups tied on the reward compared on their states' novelty (the preset since round four)",
        100_000,
    ),
    "acrobot_no_tie_break": Cell(
        "grpo", "Acrobot-v1", {"tie_break": "none"}, "Acrobot: tied groups left at 0 (the preset before)", 100_000
    ),
    "acrobot_nearest": Cell(
        "grpo", "Acrobot-v1", {"advantage": "nearest"}, "Acrobot: baseline from the 16 nearest states", 100_000
    ),
    "novelty": Cell("grpo", "CartPole-v1", {"tie_break": "novelty"}, "groups tied on the reward compared on novelty"),
    "nearest": Cell("grpo", "CartPole-v1", {"advantage": "nearest"}, "baseline from the 16 nearest states"),
    "pendulum_gae_0.95": Cell(
        "grpo",
        "Pendulum-v1",
        {"gae_lambda": 0.95},
        "Pendulum: returns bootstrapped from the nearest states' values, lambda 0.95",
        100_000,
    ),
    "pendulum_gae_0.9": Cell(
        "grpo",
        "Pendulum-v1",
        {"gae_lambda": 0.9},
        "Pendulum: returns bootstrapped from the nearest states' values, lambda 0.9",
        100_000,
    ),
    "pendulum_process": Cell(
        "grpo", "Pendulum-v1", {"advantage": "process"}, "Pendulum: process advantage (step rewards)", 100_000
    ),
    "pendulum_proximal_policy": Cell(
        "grpo", "Pendulum-v1", {"proximal_policy": True}, "Pendulum: clip centred on the proximal policy", 100_000
    ),
    "acrobot_branch_4_16": Cell(
        "grpo_state",
        "Acrobot-v1",
        {"branch_interval": 4, "lookahead": 16},
        "Acrobot branching: every 4th state, lookahead 16",
        20_000,
    ),
    "acrobot_branch_8_8": Cell(
        "grpo_state",
        "Acrobot-v1",
        {"branch_interval": 8, "lookahead": 8},
        "Acrobot branching: every 8th state, lookahead 8",
        20_000,
    ),
    "branch_4_2_entropy": Cell(
        "grpo_state",
        "CartPole-v1",
        {"branch_interval": 4, "lookahead": 2, "branch_on": "entropy"},
        "branching at the quarter of states where the policy is least sure, lookahead 2",
        10_000,
    ),
    "acrobot_branch_8_8_entropy": Cell(
        "grpo_state",
        "Acrobot-v1",
        {"branch_interval": 8, "lookahead": 8, "branch_on": "entropy"},
        "Acrobot branching: the eighth of states where the policy is least sure, lookahead 8",
        20_000,
    ),
    "branch_1_4": Cell(
        "grpo_state",
        "CartPole-v1",
        {"branch_interval": 1, "lookahead": 4},
        "branching every state, lookahead 4",
        10_000,
    ),
    "branch_4_2": Cell(
        "grpo_state",
        "CartPole-v1",
        {"branch_interval": 4, "lookahead": 2},
        "branching every 4th state, lookahead 2",
        10_000,
    ),
}


def jobs(
    cells: Sequence[str], seeds: Sequence[int], eval_every: int | None, max_seconds: float | None = None
) -> list[Job]:
    return [
        Job(
            CELLS[name].algo,
            CELLS[name].env_id,
            seed,
            CELLS[name].budget,
            eval_every or min(EVAL_EVERY[CELLS[name].env_id], CELLS[name].budget // 10),
            max_seconds,
            overrides=tuple(CELLS[name].overrides.items()),
            label=name,
        )
        for name in cells
        for seed in seeds
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", nargs="+", choices=list(CELLS), default=list(CELLS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--eval-every", type=int, help="eval interval in env steps (default: the benchmark's)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--max-minutes",
        type=float,
        help="wall-clock cap on each run's training: a capped run is evaluated where it got to",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.workers <= 1:
        use_one_thread()
    max_seconds = None if args.max_minutes is None else args.max_minutes * 60
    results = run_jobs(jobs(args.cells, args.seeds, args.eval_every, max_seconds), args.workers)
    args.out.mkdir(parents=True, exist_ok=True)
    write_points_csv(results, args.out / "ablations.csv")
    print(f"Wrote {args.out / 'ablations.csv'}")


if __name__ == "__main__":
    main()
