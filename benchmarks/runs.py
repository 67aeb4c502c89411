"""The runs of the learning benchmark (``benchmarks/learning.py``, ``benchmarks/ablations.py``): one (algorithm,
env, seed) job trained with the benchmark's hyperparameters and evaluated on the same seeded episodes at every
eval interval, and a pool of processes that runs many.
"""

import math
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, VecNormalize, sync_envs_normalization

import presets
from benchmarks.hyperparams import HYPERPARAMS, THRESHOLDS
from grpo import GRPO
from rewards import RewardFunctionWrapper

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"grpo": GRPO, "ppo": PPO, "grpo_state": GRPO, "ppo_shaped": PPO}
# Eval episode i starts from reset seed EVAL_SEED + i, for every run and every evaluation.
EVAL_EPISODES = 10
EVAL_SEED = 10_000

# --------------------------------------------------------------------------------------------------------------
# Hyperparameters -> environments and models
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSetup:
    n_envs: int
    normalize: dict[str, Any] | None  # VecNormalize kwargs; None: no normalisation
    kwargs: dict[str, Any]  # the algorithm's constructor arguments
    reward_wrapper: str | None = None  # a reward function the env's reward is replaced with (PPO on GRPO's reward)


def model_setup(hyperparams: dict[str, Any]) -> ModelSetup:
    """Translate a zoo-style entry of ``benchmarks/hyperparams.py`` as rl-baselines3-zoo's ExperimentManager does,
    through the loader of GRPO's presets."""
    hyperparams = dict(hyperparams)
    reward_wrapper = hyperparams.pop("reward_wrapper", None)
    preset = presets.Preset("", hyperparams)
    kwargs = preset.algorithm_kwargs()
    kwargs.pop("n_timesteps", None)  # the budget is the benchmark's
    return ModelSetup(n_envs=preset.n_envs, normalize=preset.normalize, kwargs=kwargs, reward_wrapper=reward_wrapper)


def make_env(
    env_id: str,
    n_envs: int,
    seed: int,
    normalize: dict[str, Any] | None,
    evaluation: bool = False,
    reward_wrapper: str | None = None,
) -> VecEnv:
    if normalize is not None and evaluation:  # statistics come from the training env; returns are reported as is
        normalize = {**normalize, "training": False, "norm_reward": False}
    if reward_wrapper is None or evaluation:  # evaluations always score the env's own reward
        return presets.make_env(env_id, n_envs, seed, normalize)
    env = make_vec_env(env_id, n_envs, seed, wrapper_class=RewardFunctionWrapper, wrapper_kwargs={"fn": reward_wrapper})
    return env if normalize is None else VecNormalize(env, **normalize)


# --------------------------------------------------------------------------------------------------------------
# One run: train, evaluating at fixed timesteps
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    algo: str
    env_id: str
    seed: int
    budget: int
    eval_every: int
    max_seconds: float | None = None  # a wall-clock cap on training; the run then ends short of its budget
    overrides: tuple[tuple[str, Any], ...] = ()  # constructor arguments over the algorithm's entry (ablations)
    label: str = ""  # the name its results go by (default: algo)

    @property
    def name(self) -> str:
        return self.label or self.algo


@dataclass(frozen=True)
class EvalPoint:
    timesteps: int  # the eval mark that num_timesteps crossed (it may overshoot by up to n_envs - 1)
    mean_return: float
    std_return: float
    branch_steps: int = 0  # env steps taken in branches so far (GRPO's state mode), never in timesteps
    # Mean return of the last (up to 100) training episodes, as sampled: NaN before one ended. Beside the
    # deterministic eval it tells "never explored a success" from "found one, not learned yet".
    train_return: float = math.nan


@dataclass
class RunResult:
    algo: str
    env_id: str
    seed: int
    budget: int
    n_envs: int
    num_timesteps: int  # env steps actually taken: PPO ends its last rollout past the budget
    train_seconds: float  # learn() wall time minus the time spent evaluating
    steps_to_threshold: int | None  # first eval mark after 0 at or above the threshold; None: never
    branch_steps: int  # env steps taken in branches (GRPO's state mode), on top of num_timesteps
    final_return: float  # the eval at the budget
    steps_per_second: float
    points: list[EvalPoint]


def eval_marks(budget: int, every: int) -> list[int]:
    return [*range(every, budget, every), budget]


class IntervalEvaluation(BaseCallback):
    """Evaluates the deterministic policy whenever ``num_timesteps`` crosses the next mark, on the same seeded
    episodes each time, and keeps count of the seconds it spends so they can be taken out of training speed."""

    def __init__(self, eval_env: VecEnv, marks: Sequence[int]):
        super().__init__()
        self.eval_env = eval_env
        self.marks = list(marks)
        self.points: list[EvalPoint] = []
        self.seconds = 0.0
        self._next = 0

    @property
    def finished(self) -> bool:
        return self._next == len(self.marks)

    def _on_training_start(self) -> None:
        self.evaluate(0)  # the untrained policy, where every curve starts

    def _on_step(self) -> bool:
        crossed = self._next
        while crossed < len(self.marks) and self.num_timesteps >= self.marks[crossed]:
            crossed += 1
        if crossed > self._next:
            self._next = crossed
            self.evaluate(self.marks[crossed - 1])
        return True

    def evaluate(self, mark: int) -> None:
        start = time.perf_counter()
        sync_envs_normalization(self.model.get_env(), self.eval_env)
        self.eval_env.seed(EVAL_SEED)  # one episode per eval env: episode i always starts from EVAL_SEED + i
        mean, std = evaluate_policy(self.model, self.eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True)
        branch_steps = getattr(self.model, "num_branch_steps", 0)
        episodes = [episode["r"] for episode in self.model.ep_info_buffer or []]
        train_return = float(np.mean(episodes)) if episodes else math.nan
        self.points.append(EvalPoint(mark, float(mean), float(std), branch_steps, train_return))
        self.seconds += time.perf_counter() - start


class WallClockLimit(BaseCallback):
    """Stops training once ``max_seconds`` have passed since it began (None: never)."""

    def __init__(self, max_seconds: float | None):
        super().__init__()
        self.max_seconds = max_seconds
        self.reached = False
        self._deadline = math.inf

    def _on_training_start(self) -> None:
        if self.max_seconds is not None:
            self._deadline = time.monotonic() + self.max_seconds

    def _on_step(self) -> bool:
        self.reached = time.monotonic() > self._deadline
        return not self.reached


def threshold_point(points: Sequence[EvalPoint], threshold: float) -> EvalPoint | None:
    """The first eval at or above ``threshold``; the untrained policy (mark 0) is drawn but never counts."""
    return next((p for p in points if p.timesteps > 0 and p.mean_return >= threshold), None)


def steps_to_threshold(points: Sequence[EvalPoint], threshold: float) -> int | None:
    point = threshold_point(points, threshold)
    return None if point is None else point.timesteps


def run_one(job: Job) -> RunResult:
    setup = model_setup(HYPERPARAMS[job.algo][job.env_id])
    kwargs = {**setup.kwargs, **dict(job.overrides)}
    n_envs = kwargs.pop("n_envs", setup.n_envs)  # an override may change the VecEnv's size too
    env = make_env(job.env_id, n_envs, job.seed, setup.normalize, reward_wrapper=setup.reward_wrapper)
    eval_env = make_env(job.env_id, EVAL_EPISODES, EVAL_SEED, setup.normalize, evaluation=True)
    model = ALGORITHMS[job.algo]("MlpPolicy", env, seed=job.seed, device="cpu", **kwargs)
    evaluation = IntervalEvaluation(eval_env, eval_marks(job.budget, job.eval_every))
    deadline = WallClockLimit(job.max_seconds)

    start = time.perf_counter()
    model.learn(job.budget, callback=CallbackList([evaluation, deadline]))
    train_seconds = time.perf_counter() - start - evaluation.seconds
    if deadline.reached:  # cut by the time cap: the last evaluation is where training got to
        evaluation.evaluate(model.num_timesteps)
    elif not evaluation.finished:  # learn() stopped short of the budget: the last mark still gets its evaluation
        evaluation.evaluate(evaluation.marks[-1])
    env.close()
    eval_env.close()

    return RunResult(
        algo=job.name,
        env_id=job.env_id,
        seed=job.seed,
        budget=job.budget,
        n_envs=n_envs,
        num_timesteps=model.num_timesteps,
        train_seconds=train_seconds,
        steps_to_threshold=steps_to_threshold(evaluation.points, THRESHOLDS[job.env_id]),
        branch_steps=getattr(model, "num_branch_steps", 0),
        final_return=evaluation.points[-1].mean_return,
        steps_per_second=model.num_timesteps / train_seconds,
        points=evaluation.points,
    )


def use_one_thread() -> None:
    """Each run gets one core's worth of torch: runs go in parallel as processes instead."""
    th.set_num_threads(1)


def make_jobs(
    envs: Sequence[str],
    algos: Sequence[str],
    seeds: dict[str, Sequence[int]],
    budgets: dict[str, int],
    eval_every: dict[str, int],
    max_seconds: float | None = None,
) -> list[Job]:
    return [
        Job(algo, env_id, seed, budgets[env_id], eval_every[env_id], max_seconds)
        for env_id in envs
        for algo in algos
        if env_id in HYPERPARAMS[algo]  # grpo_state has entries for CartPole and Acrobot only
        for seed in seeds[env_id]
    ]


def run_jobs(jobs: Sequence[Job], workers: int) -> list[RunResult]:
    """Run the jobs, ``workers`` processes at a time (in this process when 1), longest budgets first."""
    results: list[RunResult] = []
    order = sorted(jobs, key=lambda job: -job.budget)
    if workers <= 1:
        for job in order:
            results.append(run_one(job))
            print_progress(results[-1], len(results), len(jobs))
    else:
        # spawn: fresh interpreters, no torch state inherited across fork
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=use_one_thread) as pool:
            futures = [pool.submit(run_one, job) for job in order]
            for future in as_completed(futures):
                results.append(future.result())
                print_progress(results[-1], len(results), len(jobs))
    rank = {(job.name, job.env_id, job.seed): i for i, job in enumerate(jobs)}
    return sorted(results, key=lambda r: rank[r.algo, r.env_id, r.seed])


def print_progress(result: RunResult, done: int, total: int) -> None:
    reached = "never" if result.steps_to_threshold is None else f"{result.steps_to_threshold:,}"
    print(
        f"[{done}/{total}] {result.algo} {result.env_id} seed {result.seed}: final {result.final_return:.1f}, "
        f"threshold at {reached}, {result.steps_per_second:,.0f} steps/s ({result.train_seconds:.0f} s training)",
        flush=True,
    )
